//! The idempotency flow as every adapter runs it, whatever the web framework: what a request is
//! read as ([`Head`]), its key and fingerprint ([`request`], [`prepare`]), everything up to the
//! store's task ([`front`]), the task and its answer ([`task`]), and one execution from the lease
//! taken to the record written ([`execute`]). The adapters (`actix`, `tower`) translate their
//! request and response types, run their handler, and spawn the task on their runtime.

pub(crate) mod capture;
pub(crate) mod chunks;
pub(crate) mod execute;
pub(crate) mod front;
pub(crate) mod prepare;
#[cfg(feature = "webhook")]
pub(crate) mod receivers;
pub(crate) mod request;
pub(crate) mod status;
pub(crate) mod task;
#[cfg(feature = "webhook")]
pub(crate) mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::actix::Idempotency;
use crate::key::IdempotencyKey;
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::Policy;

/// What the flow reads of a request's head, whatever the framework's request type.
pub(crate) trait Head {
    /// The method, as sent (`POST`).
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query string, without `?` (empty when there is none).
    fn query(&self) -> &str;
    /// The path and query as sent; `/` when the target has none.
    fn path_and_query(&self) -> &str;
    /// Each value of header `name` (lowercase), in order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }
}

/// 413 for a body over the endpoint's limit.
pub(crate) fn body_too_large(limit: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("the request body is larger than this endpoint's limit of {limit} bytes"),
    )
}

/// 400 for a body that could not be read.
pub(crate) fn body_unreadable(e: impl std::fmt::Display) -> Problem {
    Problem::new(
        ProblemKind::BodyUnreadable,
        format!("the request body could not be read: {e}"),
    )
}

/// The declared `Content-Length`, if it is one.
pub(crate) fn content_length(req: &impl Head) -> Option<u64> {
    std::str::from_utf8(req.header("content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 500 for an endpoint naming a store the app did not register; logged once.
pub(crate) fn store_not_registered(policy: &Policy) -> Problem {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let name = policy.store.unwrap_or_default();
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(endpoint = policy.endpoint, store = name, "idem: this endpoint names a store the app did not register; add `.named_store(\"{name}\", …)` to the Idempotency builder");
    }
    observe::outcome(policy.endpoint, None, Outcome::StoreError);
    Problem::new(
        ProblemKind::Internal,
        format!("this endpoint's idempotency store `{name}` is not configured on the server"),
    )
}

/// 500 for a second handler claiming an endpoint name another handler of the app owns; logged
/// each time (it is a deploy error to fix at once).
pub(crate) fn name_conflict(policy: &Policy, conflict: &crate::actix::Conflict) -> Problem {
    tracing::error!(
        endpoint = policy.endpoint,
        name = conflict.name,
        owner = conflict.owner,
        "idem: two handlers claim one endpoint name; give each its own `name`"
    );
    observe::outcome(conflict.name, None, Outcome::Rejected);
    Problem::new(
        ProblemKind::Internal,
        format!(
            "the endpoint name `{}` belongs to another handler of this app (`{}`); each \
             idempotent handler needs its own name",
            conflict.name, conflict.owner
        ),
    )
}

/// How an answer is counted: a replay (after waiting for the first request, or not), or a
/// problem by its kind.
pub(crate) fn replay_outcome(waited: bool) -> Outcome {
    if waited {
        Outcome::Waited
    } else {
        Outcome::Replayed
    }
}

/// How a problem answer is counted.
pub(crate) fn problem_outcome(problem: &Problem) -> Outcome {
    match problem.kind {
        ProblemKind::InProgress => Outcome::Conflict,
        ProblemKind::KeyReused => Outcome::Mismatch,
        ProblemKind::StoreUnavailable => Outcome::StoreError,
        _ => Outcome::Rejected,
    }
}

/// A request's webhook callback (feature `webhook`), checked once its key is known.
#[cfg(feature = "webhook")]
pub(crate) type Callback = webhook::Callback;
/// Nothing without the `webhook` feature.
#[cfg(not(feature = "webhook"))]
pub(crate) type Callback = ();

/// The check `prepare` runs once the key and the principal are known: the request's
/// `Idempotency-Callback` on a webhook endpoint (400 `callback-invalid` for one that is not
/// allowed, or that belongs to another principal).
pub(crate) fn callback_of<'a>(
    req: &'a impl Head,
    policy: &'a Policy,
    idem: &'a Idempotency,
) -> impl FnOnce(&IdempotencyKey, &str) -> Result<Callback, Problem> + 'a {
    move |key, principal| {
        #[cfg(feature = "webhook")]
        return webhook::callback(req, policy, &idem.shared.webhook, key, principal)
            .map_err(|e| Problem::new(ProblemKind::CallbackInvalid, e.to_string()));
        #[cfg(not(feature = "webhook"))]
        {
            let _ = (req, policy, idem, key, principal);
            Ok(())
        }
    }
}

/// 500 for a handler that did not finish: nothing was stored.
pub(crate) fn handler_failed() -> Problem {
    Problem::new(
        ProblemKind::HandlerFailed,
        "the handler failed before producing a response; nothing was stored, so a retry with \
         the same key runs it again",
    )
}

/// 500 for a webhook endpoint in a build without the `webhook` feature (the attribute and
/// `policy!` refuse to compile one; only a hand-made `Policy` gets here).
#[cfg(not(feature = "webhook"))]
pub(crate) fn webhook_not_compiled(policy: &Policy) -> Problem {
    observe::outcome(policy.endpoint, None, Outcome::Rejected);
    Problem::new(
        ProblemKind::Internal,
        "this endpoint answers duplicates by webhook, but the server was built without idem's \
         `webhook` feature",
    )
}
