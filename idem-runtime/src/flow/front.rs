//! A request up to the store's task, whatever the framework: its endpoint's store and stable
//! name, the setup checks (lease against the store deadline, the webhook secret), the request
//! read for the store ([`prepare`]), and a replay this process holds in memory. Every answer
//! given here is counted here; the adapter only renders it.

use std::sync::Arc;

use super::prepare::{prepare, BodySource, Keyed, Prepared, Unkeyed};
use super::{callback_of, name_conflict, problem_outcome, store_not_registered, Callback, Head};
use crate::actix::Idempotency;
use crate::engine::Engine;
use crate::observe::{self, Outcome};
use crate::problem::Problem;
use crate::{OnConflict, Policy, StoredResponse};

/// What became of a request before its task. Not boxed: it is built once per request and
/// moved straight into the task, where a box would cost every keyed request an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Front<S> {
    /// Answered already (and counted): a problem, or a replay from this process's memory.
    Done(Result<StoredResponse, Problem>),
    /// No key where none is required: the handler runs plainly, under the endpoint's policy.
    Unkeyed(Arc<Engine>, Policy, Unkeyed<S>),
    /// Keyed: `begin` decides, in the task ([`super::task`]).
    Keyed(Arc<Engine>, Policy, Keyed<Callback>),
}

/// Runs the flow up to the store's task for `req` (whose matched route `pattern` gives, if the
/// framework knows it), sent by `principal` (or refused with that problem if it is keyed), with
/// its body still in `body`.
pub(crate) async fn front<S: BodySource>(
    idem: &Idempotency,
    policy: &'static Policy,
    req: &impl Head,
    pattern: impl FnOnce() -> Option<String>,
    principal: &Result<String, Problem>,
    body: S,
) -> Front<S> {
    let Some(engine) = idem.engine_for(policy.store).cloned() else {
        return Front::Done(Err(store_not_registered(policy)));
    };
    // From here on the endpoint is known by its stable name (the storage keys' endpoint part,
    // metrics, logs).
    let policy = match idem
        .shared
        .names
        .resolve_route(policy, req.method(), pattern)
    {
        Ok(name) => Policy {
            endpoint: name,
            ..*policy
        },
        Err(conflict) => return Front::Done(Err(name_conflict(policy, &conflict))),
    };
    idem.check_secret_when_due(&engine);
    if policy.on_conflict == OnConflict::Webhook {
        #[cfg(feature = "webhook")]
        if !idem.shared.webhook.can_sign() {
            return Front::Done(Err(super::webhook::secret_missing(&policy)));
        }
        #[cfg(not(feature = "webhook"))]
        return Front::Done(Err(super::webhook_not_compiled(&policy)));
    }
    let after_key = callback_of(req, &policy, idem);
    let keyed = match prepare(idem, &policy, req, principal, body, after_key).await {
        Prepared::Keyed(keyed) => keyed,
        Prepared::Refused(p) => {
            observe::outcome(policy.endpoint, None, Outcome::Rejected);
            return Front::Done(Err(p));
        }
        Prepared::Unkeyed(body) => return Front::Unkeyed(engine, policy, body),
    };
    let key = &keyed.storage_key;
    tracing::Span::current().record("key", key.status_id());
    // A completed record this process holds in memory is answered here, without a task: it
    // changes nothing, so a hang-up that drops the request's future loses nothing.
    match engine.begin_now(&policy, key, &keyed.fingerprint) {
        Some(answer) => {
            let outcome = match &answer {
                Ok(_) => Outcome::Replayed,
                Err(problem) => problem_outcome(problem),
            };
            observe::outcome(policy.endpoint, Some(key.status_id()), outcome);
            Front::Done(answer)
        }
        None => Front::Keyed(engine, policy, keyed),
    }
}
