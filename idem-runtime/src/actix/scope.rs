//! Who a request belongs to: the scope an app chose on its builder, the markers that make the
//! builder refuse to build without one, and what a scope finds on a request.

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;
use std::sync::Arc;

use crate::principal::{from_header, from_value, Found};

/// A scope given as a function of actix-web's request.
pub(crate) type ScopeFn = dyn Fn(&HttpRequest) -> Option<String> + Send + Sync;

/// Who a request belongs to.
#[derive(Clone)]
pub(crate) enum Scope {
    /// Nobody: one tenant, every request in one scope.
    Unscoped,
    /// A request header's value.
    Header(HeaderName),
    /// A function of actix-web's request (a closure).
    Func(Arc<ScopeFn>),
    /// The value of type `T` in the request's extensions, read by either framework.
    Extension {
        /// From an actix-web request.
        actix: fn(&HttpRequest) -> Option<String>,
        /// From an `http` request's extensions (the tower adapter).
        #[cfg(feature = "tower")]
        http: fn(&http::Extensions) -> Option<String>,
    },
}

/// The `T` in an actix-web request's extensions, as text.
pub(crate) fn actix_extension<T: std::fmt::Display + 'static>(req: &HttpRequest) -> Option<String> {
    use actix_web::HttpMessage;
    req.extensions().get::<T>().map(ToString::to_string)
}

/// The `T` in an `http` request's extensions, as text.
#[cfg(feature = "tower")]
pub(crate) fn http_extension<T: std::fmt::Display + Send + Sync + 'static>(
    extensions: &http::Extensions,
) -> Option<String> {
    extensions.get::<T>().map(ToString::to_string)
}

/// Marker of an [`IdempotencyBuilder`](super::IdempotencyBuilder) that has not yet been told
/// who a request belongs to; it cannot build.
#[derive(Debug)]
pub struct NoScope;

/// Marker of an [`IdempotencyBuilder`](super::IdempotencyBuilder) that knows who a request
/// belongs to.
pub struct Scoped(pub(crate) Scope);

impl std::fmt::Debug for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Scope::Unscoped => "Scoped(unscoped)",
            Scope::Header(_) => "Scoped(header)",
            Scope::Func(_) => "Scoped(function)",
            Scope::Extension { .. } => "Scoped(extension)",
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::actix::scope::Scoped {}
}

/// An [`IdempotencyBuilder`](super::IdempotencyBuilder) whose scope was chosen: only such a
/// builder builds.
#[diagnostic::on_unimplemented(
    message = "the Idempotency builder must be told who a request belongs to before `build()`",
    label = "no scope chosen for the idempotency keys",
    note = "choose one: `.scope_by_extension::<AccountId>()` (a value your auth middleware inserts), `.scope_by_header(name)`, `.scope(|req| ...)`, or `.unscoped()` for an app with a single tenant"
)]
pub trait ScopeChosen: sealed::Sealed {
    /// The chosen scope.
    #[doc(hidden)]
    fn chosen(self) -> Scoped;
}

impl ScopeChosen for Scoped {
    fn chosen(self) -> Scoped {
        self
    }
}

impl Scope {
    /// What this scope finds on an actix-web request (an unscoped app: the empty principal).
    pub(crate) fn of(&self, req: &HttpRequest) -> Found {
        match self {
            Scope::Unscoped => Found::One(String::new()),
            Scope::Header(name) => from_header(
                name.as_str(),
                req.headers().get_all(name).map(|v| v.as_bytes()),
            ),
            Scope::Func(f) => from_value(f(req)),
            Scope::Extension { actix, .. } => from_value(actix(req)),
        }
    }

    /// What this scope finds on an `http` request (the tower adapter); `None` for a closure
    /// over actix-web's request, which cannot read one.
    #[cfg(feature = "tower")]
    pub(crate) fn of_http(&self, parts: &http::request::Parts) -> Option<Found> {
        Some(match self {
            Scope::Unscoped => Found::One(String::new()),
            Scope::Header(name) => from_header(
                name.as_str(),
                parts
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            Scope::Extension { http, .. } => from_value(http(&parts.extensions)),
            Scope::Func(_) => return None,
        })
    }
}
