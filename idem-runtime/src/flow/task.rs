//! A keyed request's task, whatever the framework: `begin`, and the answer to each of its
//! decisions — a replay, a problem, the handler run plainly (the store down under
//! `on_store_error = "proceed"`) or under its lease, a 202 for `accepted` or `webhook` — then
//! the task's answer, with a slow first request's 202 under `respond_async_after`. The adapter
//! supplies the handler's run and spawns the task on its runtime.

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::execute::{refuse_while_draining, Answer};
use super::prepare::Keyed;
use super::{handler_failed, problem_outcome, replay_outcome, Callback};
use crate::actix::Idempotency;
use crate::engine::{Decision, Engine, Ticket};
use crate::observe::{self, Outcome};
use crate::{OnConflict, Policy, StorageKey};

/// How the task runs the handler.
pub(crate) enum Run {
    /// Without protection: the store failed and the endpoint says `on_store_error = "proceed"`.
    Plain,
    /// Under this lease: the execution.
    Under(Ticket),
}

/// A task to spawn, and what its request answers if it is not done in time.
pub(crate) struct Task<F> {
    /// The task's work.
    pub(crate) work: F,
    /// `accepted` with `respond_async_after`: after this long, the request answers 202 for its
    /// own key and the task goes on.
    pub(crate) early: Option<(Duration, StorageKey)>,
}

/// A keyed request's task: `begin`, and the answer to its decision; `handler` runs the handler
/// with the request's body as [`Run`] says. Counted in the graceful shutdown from the moment it
/// is made (before it is spawned), whether or not its client is still there.
pub(crate) fn task<R, H, Fut>(
    idem: &Idempotency,
    engine: Arc<Engine>,
    policy: Policy,
    keyed: Keyed<Callback>,
    handler: H,
) -> Task<impl Future<Output = R>>
where
    R: Answer,
    H: FnOnce(Run, Bytes) -> Fut,
    Fut: Future<Output = (R, Outcome)>,
{
    let early = match policy.on_conflict {
        OnConflict::Accepted => policy.respond_async_after,
        _ => None,
    }
    .map(|after| (after, keyed.storage_key.clone()));
    let inflight = idem.shared.inflight.enter();
    let idem = idem.clone();
    let work = async move {
        let _inflight = inflight;
        let policy = &policy;
        let Keyed {
            storage_key,
            fingerprint,
            earlier,
            derivation,
            body,
            checked: callback,
        } = keyed;
        #[cfg(not(feature = "webhook"))]
        let () = callback;
        let key_id = storage_key.status_id().to_owned();
        let (resp, outcome) = match engine
            .begin(policy, storage_key, fingerprint, &earlier)
            .await
        {
            Decision::Replay { response, waited } => (R::replay(&response), replay_outcome(waited)),
            Decision::Reject(problem) => (R::problem(&problem), problem_outcome(&problem)),
            Decision::Unprotected => (
                Box::pin(handler(Run::Plain, body)).await.0,
                Outcome::StoreError,
            ),
            Decision::Execute(ticket) if idem.shared.inflight.draining() => {
                // A shutdown started after this request's `begin`: nothing new runs here.
                refuse_while_draining(&idem, &ticket).await
            }
            // Boxed: the handler's future (KiBs) is not part of every task's, which would be
            // copied with it into its allocation.
            Decision::Execute(ticket) => {
                // Resumed under a previous secret's record: its downstream keys stay that
                // secret's.
                let ticket = match derivation {
                    Some(d) => ticket.with_derivation(d),
                    None => ticket,
                };
                Box::pin(handler(Run::Under(ticket), body)).await
            }
            Decision::Accepted(key) => (R::accepted(idem.status_path(), &key), Outcome::Accepted),
            #[cfg(feature = "webhook")]
            Decision::Webhook(key) => match super::webhook::answer(&idem, engine, key, callback) {
                Ok(()) => (R::webhook_accepted(), Outcome::Accepted),
                Err(p) => (R::problem(&p), Outcome::Rejected),
            },
            #[cfg(not(feature = "webhook"))]
            Decision::Webhook(_) => (
                R::problem(&super::webhook_not_compiled(policy)),
                Outcome::Rejected,
            ),
        };
        observe::outcome(policy.endpoint, Some(&key_id), outcome);
        resp
    };
    Task { work, early }
}

/// The answer of a spawned [`task`]: its own, or — see [`Task::early`] — a 202 if it is not
/// done in time. A task that did not finish (the handler panicked outside its catch) is a 500.
pub(crate) async fn answer<R: Answer>(
    idem: &Idempotency,
    policy: &Policy,
    early: Option<(Duration, StorageKey)>,
    mut task: tokio::task::JoinHandle<R>,
) -> R {
    let done = match early {
        Some((after, key)) => tokio::select! {
            done = &mut task => done,
            _ = tokio::time::sleep(after) => return R::accepted(idem.status_path(), &key),
        },
        None => task.await,
    };
    done.unwrap_or_else(|join| {
        // The handler ran (and failed): that is an execution, released.
        observe::outcome(policy.endpoint, None, Outcome::Executed);
        tracing::error!(
            endpoint = policy.endpoint,
            panicked = join.is_panic(),
            "idem: handler did not finish; its key was released"
        );
        R::problem(&handler_failed())
    })
}
