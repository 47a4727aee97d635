//! OpenAPI documentation of idempotent handlers, for [utoipa](https://docs.rs/utoipa) (feature
//! `utoipa`).
//!
//! Every `#[idempotent]` handler registers its policy when the program starts. Add
//! [`IdempotencyDocs`] to the `modifiers` of your `#[derive(utoipa::OpenApi)]`, and each
//! documented operation whose `operationId` is the name of an idempotent handler (utoipa's
//! default) gains, without a line written by hand:
//!
//! - the key parameter, where the endpoint reads it (header, query, cookie; a form field is
//!   named in `x-idempotency`), required when the endpoint requires a key;
//! - the `Idempotent-Replayed` header on each of its success responses;
//! - the answers idem gives, as `application/problem+json` ([RFC 9457]) with the shared
//!   `IdempotencyProblem` schema: 400 (key missing or invalid), 409 (a request with this key is
//!   in progress, with `Retry-After`), 413, 422 (key reused with another payload), 429, 503
//!   (with `Retry-After`), and 202 with `Location` for `on_conflict = "accepted"`/`"webhook"`;
//! - an `x-idempotency` extension: `ttl`, `guarantee`, `on_conflict`, the key sources and the
//!   endpoint's stable `name`.
//!
//! A response code the handler's own annotation already lists keeps its description; the
//! problem body is added to it beside the handler's own content.
//!
//! `#[utoipa::path]` may come above or below `#[idempotent]`: either way utoipa reads the
//! handler's own signature (its `Json<T>` body, its `Path` parameters).
//!
//! ```ignore
//! #[derive(utoipa::OpenApi)]
//! use idem::openapi::IdempotencyDocs;
//!
//! #[derive(utoipa::OpenApi)]
//! #[openapi(paths(create_payment), modifiers(&IdempotencyDocs))]
//! struct ApiDoc;
//! ```
//!
//! An app whose keys come in another header than `Idempotency-Key`
//! ([`IdempotencyBuilder::header_name`](crate::IdempotencyBuilder::header_name)) names it:
//!
//! ```ignore
//! const IDEMPOTENCY_DOCS: WithHeader = IdempotencyDocs::with_header("X-Request-Key");
//! #[derive(utoipa::OpenApi)]
//! #[openapi(paths(create_payment), modifiers(&IDEMPOTENCY_DOCS))]
//! struct ApiDoc;
//! ```
//!
//! [RFC 9457]: https://www.rfc-editor.org/rfc/rfc9457

mod operation;

use std::collections::BTreeMap;

use utoipa::openapi::path::Operation;
use utoipa::openapi::OpenApi;

use crate::policy::Policy;

/// One idempotent handler, registered by the code `#[idempotent]` generates.
#[doc(hidden)]
#[derive(Debug)]
pub struct Documented {
    handler: &'static str,
    policy: &'static Policy,
}

impl Documented {
    /// The handler's function name and its policy.
    pub const fn new(handler: &'static str, policy: &'static Policy) -> Self {
        Documented { handler, policy }
    }
}

inventory::collect!(Documented);

/// A utoipa [`Modify`](utoipa::Modify) that documents every idempotent operation of an OpenAPI
/// document (see the [module documentation](self)), for an app reading keys from the default
/// `Idempotency-Key` header: `modifiers(&IdempotencyDocs)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdempotencyDocs;

impl IdempotencyDocs {
    /// The same for an app whose
    /// [`IdempotencyBuilder::header_name`](crate::IdempotencyBuilder::header_name) is `name`:
    /// the header documented for endpoints without their own `key = …`. Bind it to a `const`
    /// to name it in `modifiers(…)`, which takes an identifier.
    pub const fn with_header(name: &'static str) -> WithHeader {
        WithHeader { header_name: name }
    }

    /// Documents every idempotent operation of `doc`; what [`Modify`](utoipa::Modify) calls.
    /// Returns the `operationId`s it documented.
    pub fn apply(&self, doc: &mut OpenApi) -> Vec<String> {
        Self::with_header("Idempotency-Key").apply(doc)
    }
}

impl utoipa::Modify for IdempotencyDocs {
    fn modify(&self, openapi: &mut OpenApi) {
        self.apply(openapi);
    }
}

/// [`IdempotencyDocs`] for an app with its own key header
/// ([`IdempotencyDocs::with_header`]).
#[derive(Debug, Clone, Copy)]
pub struct WithHeader {
    header_name: &'static str,
}

impl WithHeader {
    /// Documents every idempotent operation of `doc`; what [`Modify`](utoipa::Modify) calls.
    /// Returns the `operationId`s it documented.
    pub fn apply(&self, doc: &mut OpenApi) -> Vec<String> {
        let registered = registered();
        let mut documented = Vec::new();
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
                &mut item.get,
            ];
            for op in operations.into_iter().flatten() {
                if let Some(policy) = policy_of(&registered, op) {
                    operation::document(op, policy, self.header_name);
                    documented.extend(op.operation_id.clone());
                }
            }
        }
        if !documented.is_empty() {
            operation::add_components(doc);
        }
        documented
    }
}

impl utoipa::Modify for WithHeader {
    fn modify(&self, openapi: &mut OpenApi) {
        self.apply(openapi);
    }
}

/// Registered handlers by function name. Two handlers of one name in different modules are
/// documented only when their policies document alike; otherwise which one an `operationId`
/// means is unknowable, and neither is documented (with a warning).
fn registered() -> BTreeMap<&'static str, Vec<&'static Policy>> {
    let mut by_name: BTreeMap<&'static str, Vec<&'static Policy>> = BTreeMap::new();
    for d in inventory::iter::<Documented> {
        by_name.entry(d.handler).or_default().push(d.policy);
    }
    by_name
}

fn policy_of(
    registered: &BTreeMap<&'static str, Vec<&'static Policy>>,
    op: &Operation,
) -> Option<&'static Policy> {
    let id = op.operation_id.as_deref()?;
    let policies = registered.get(id)?;
    let first = *policies.first()?;
    if policies.iter().all(|p| operation::same_docs(p, first)) {
        Some(first)
    } else {
        tracing::warn!(
            operation_id = id,
            "idempotency docs: several #[idempotent] handlers are named `{id}` with different \
             policies; give their operations distinct function names to document them"
        );
        None
    }
}
