//! What the code `#[idempotent]` generates calls.
//!
//! **Not public API.** Nothing here is covered by semver: it changes with the macro, in any
//! release. Its path carries the version (`__private_v0_1`), so that an `idem-macros` and an
//! `idem-runtime` of different versions fail to compile together instead of misbehaving.

pub use crate::actix::{run, HandlerResult};
pub use crate::key_source::KeySource;
pub use crate::policy::{Guarantee, OnConflict, OnStoreError, Policy};
pub use actix_web;

#[cfg(feature = "utoipa")]
pub use crate::openapi::Documented;
#[cfg(feature = "utoipa")]
pub use inventory;

/// Registers an idempotent handler for [`openapi::IdempotencyDocs`](crate::openapi): with the
/// `utoipa` feature, an `inventory` entry of the handler's name and policy; without it, nothing.
#[cfg(feature = "utoipa")]
#[doc(hidden)]
#[macro_export]
macro_rules! __idem_document_v0_1 {
    ($handler:expr, $policy:path) => {
        $crate::__private_v0_1::inventory::submit! {
            $crate::__private_v0_1::Documented::new($handler, &$policy)
        }
    };
}

/// Registers an idempotent handler for the OpenAPI docs: nothing without the `utoipa` feature.
#[cfg(not(feature = "utoipa"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __idem_document_v0_1 {
    ($handler:expr, $policy:path) => {};
}

pub use crate::__idem_document_v0_1 as document;

/// `Duration::from_millis` as a const fn path the macro can name.
pub const fn millis(ms: u64) -> core::time::Duration {
    core::time::Duration::from_millis(ms)
}

/// Called in a constant by endpoints with `on_conflict = "webhook"`: compiles to nothing with
/// the `webhook` feature, and is a compile error naming the feature without it.
pub const fn needs_webhook_feature() {
    #[cfg(not(feature = "webhook"))]
    panic!(
        "`on_conflict = \"webhook\"` needs idem's `webhook` cargo feature (on by default): \
         enable it, or choose another `on_conflict`"
    );
}
