//! One execution of an idempotent handler, whatever the framework, from the lease taken to the
//! record written: the handler runs under its renewed lease, a panic is caught, and the verdict
//! is written with a fenced `complete` or `release` that is retried while the lease is held (in
//! the background once the client has its answer). The adapters supply the handler's run (its
//! response captured) and their response type, through [`Answer`].

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use crate::actix::Idempotency;
use crate::engine::Ticket;
use crate::observe::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::store::Fenced;
use crate::{Guarantee, Policy, StoredResponse};

/// What the flow needs of an adapter's response type.
pub(crate) trait Answer: Sized {
    /// The `application/problem+json` answer of `p`.
    fn problem(p: &Problem) -> Self;
    /// Whether this is a 5xx.
    fn is_server_error(&self) -> bool;
    /// Sets header `name` (lowercase) to `value`, replacing any.
    fn set_header(&mut self, name: &'static str, value: &str);
    /// The replay of a stored response (with `Idempotent-Replayed: true`).
    fn replay(stored: &StoredResponse) -> Self;
    /// 202 pointing at the status resource of `key` (`on_conflict = "accepted"`).
    fn accepted(status_path: &str, key: &crate::StorageKey) -> Self;
    /// 202 for a duplicate of a webhook endpoint.
    #[cfg(feature = "webhook")]
    fn webhook_accepted() -> Self;
}

/// How the handler ended.
pub(crate) enum Ran<R> {
    /// It answered; what the client gets and what is stored.
    Answered(R, StoredResponse),
    /// The request was refused before the handler's body started (an actix extractor): this
    /// answer, and nothing happened.
    Refused(R),
    /// It answered with a step's failure (a multi-step operation stopped half done): never
    /// kept, whatever the guarantee, so that the next attempt resumes the operation.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Unfinished(R),
    /// It panicked.
    Panicked,
}

/// What becomes of one execution's result.
pub(crate) enum Verdict<R> {
    /// Store the response for replay, and answer with it.
    Keep(R, StoredResponse),
    /// Store nothing and release the key (the retry runs afresh); answer with this.
    Release(R),
    /// The request was refused before the handler ran: not an execution; release and answer.
    Refused(R),
}

impl<R: Answer> Verdict<R> {
    /// A problem answer, kept and replayed like a response.
    pub(crate) fn kept(p: &Problem) -> Verdict<R> {
        let stored = StoredResponse::new(
            p.status(),
            [("content-type", "application/problem+json")],
            p.to_json(),
        );
        Verdict::Keep(R::problem(p), stored)
    }

    fn of(policy: &Policy, ran: Ran<R>) -> Verdict<R> {
        let strict = policy.guarantee == Guarantee::Strict;
        match ran {
            // Under `result` and `semantic` a server error is not an outcome worth keeping: the
            // retry runs the handler again.
            Ran::Answered(resp, _) if !strict && resp.is_server_error() => Verdict::Release(resp),
            Ran::Answered(resp, stored) => Verdict::Keep(resp, stored),
            Ran::Unfinished(resp) => Verdict::Release(resp),
            // Validation failures are not an execution: cache nothing (Stripe does the same).
            Ran::Refused(resp) => Verdict::Refused(resp),
            // `strict` promises the same response: a panic's 500 is kept like a returned one. A
            // transactional handler's writes are rolled back, so nothing happened: released.
            Ran::Panicked if strict && !policy.transactional => Verdict::kept(&Problem::new(
                ProblemKind::HandlerFailed,
                "the handler failed (it panicked) after it started; under guarantee \
                 \"strict\" this answer is kept, and retries with this key get it again",
            )),
            Ran::Panicked => Verdict::Release(R::problem(&Problem::new(
                ProblemKind::HandlerFailed,
                "the handler failed (it panicked) before producing a response; nothing was kept, \
                 so a retry with the same key runs it again",
            ))),
        }
    }
}

/// Releases the key if dropped while armed: the task was dropped before the handler finished
/// (its runtime stopped), or it unwound through code outside the handler.
pub(crate) struct ReleaseOnDrop(Option<(Ticket, Idempotency)>);

impl ReleaseOnDrop {
    /// Armed for `ticket`.
    pub(crate) fn new(idem: &Idempotency, ticket: &Ticket) -> Self {
        ReleaseOnDrop(Some((ticket.clone(), idem.clone())))
    }

    /// The handler finished (or the key was released otherwise): nothing to do on drop.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some((ticket, idem)) = self.0.take() {
            idem.spawn_tracked(async move { ticket.release().await });
        }
    }
}

/// The answer when a shutdown started after this request's `begin`: nothing new runs here; the
/// lease is given back (not released: the refusal says nothing about the operation, which may
/// be one its completer is to finish) and the retry runs it on another instance.
pub(crate) async fn refuse_while_draining<R: Answer>(
    idem: &Idempotency,
    ticket: &Ticket,
) -> (R, Outcome) {
    if let Err(error) = ticket.give_back_once().await {
        // Tried again, never turned into a release (which would hand an abandoned operation to
        // this client) nor renewed: at worst the lease lapses by itself.
        tracing::warn!(key = %ticket.key(), %error, "idem: giving the key back failed; trying again in the background");
        let ticket = ticket.clone();
        idem.spawn_tracked(async move { ticket.give_back_later().await });
    }
    let p = Problem::new(
        ProblemKind::ShuttingDown,
        "this server is shutting down and starts no new operation; retry with the same key",
    )
    .retry_after(1);
    (R::problem(&p), Outcome::Rejected)
}

/// Runs the handler (`run`: its response captured) under `ticket`'s renewed lease, a panic
/// caught; then what becomes of it, with the expiry header on a kept answer.
pub(crate) async fn run_handler<R: Answer>(
    idem: &Idempotency,
    policy: &Policy,
    ticket: &Ticket,
    run: impl Future<Output = Ran<R>>,
) -> Verdict<R> {
    let ran = ticket
        .keep_alive(AssertUnwindSafe(run).catch_unwind())
        .await
        .unwrap_or_else(|_| {
            tracing::error!(endpoint = policy.endpoint, "idem: the handler panicked");
            Ran::Panicked
        });
    with_expiry(idem, ticket, Verdict::of(policy, ran))
}

/// Writes a verdict's record (stored, or the key released) and answers with its response.
pub(crate) async fn settle<R>(
    idem: &Idempotency,
    ticket: &Ticket,
    verdict: Verdict<R>,
) -> (R, Outcome) {
    match verdict {
        Verdict::Keep(resp, stored) => {
            settle_complete(idem, ticket, stored).await;
            (resp, Outcome::Executed)
        }
        Verdict::Release(resp) => {
            settle_release(idem, ticket).await;
            (resp, Outcome::Executed)
        }
        Verdict::Refused(resp) => {
            settle_release(idem, ticket).await;
            (resp, Outcome::Rejected)
        }
    }
}

/// The header that tells a client how long its key is kept: an HTTP-date after which the record
/// is gone and a retry with the same key runs as a new operation.
pub(crate) const EXPIRES_HEADER: &str = "idempotency-expires";

/// The [`EXPIRES_HEADER`] date of a response with `status` kept now under `ticket`; `None` when
/// the app turned the header off.
pub(crate) fn expiry_date(idem: &Idempotency, ticket: &Ticket, status: u16) -> Option<String> {
    idem.shared
        .expiry_header
        .then(|| httpdate::fmt_http_date(crate::clock::wall() + ticket.ttl_for(status)))
}

/// A kept response with [`EXPIRES_HEADER`] on both the client's answer and the stored copy (so
/// that every replay says the same), unless the app turned it off. A captured response has it
/// in its record already; a record made without it (a problem kept for a panic) is made again
/// with it.
pub(crate) fn with_expiry<R: Answer>(
    idem: &Idempotency,
    ticket: &Ticket,
    verdict: Verdict<R>,
) -> Verdict<R> {
    let Verdict::Keep(mut resp, mut stored) = verdict else {
        return verdict;
    };
    if !idem.shared.expiry_header {
        return Verdict::Keep(resp, stored);
    }
    let kept = stored
        .headers()
        .find(|(name, _)| *name == EXPIRES_HEADER)
        .and_then(|(_, date)| std::str::from_utf8(date).ok());
    match kept {
        Some(date) => resp.set_header(EXPIRES_HEADER, date),
        None => {
            let date = expiry_date(idem, ticket, stored.status()).unwrap_or_default();
            resp.set_header(EXPIRES_HEADER, &date);
            stored = stored.with_header(EXPIRES_HEADER, date.as_bytes());
        }
    }
    Verdict::Keep(resp, stored)
}

/// Stores the response: one attempt while the client waits; if the store failed, the client gets
/// its answer now and the attempts go on in the background while the lease is held (a graceful
/// shutdown waits for them).
async fn settle_complete(idem: &Idempotency, ticket: &Ticket, stored: StoredResponse) {
    match ticket.complete_once(&stored).await {
        Ok(Fenced::Done) => {}
        Ok(Fenced::Lost) => {
            crate::observe::count(crate::observe::metric::LEASE_LOST_TOTAL);
            tracing::warn!(key = %ticket.key(), "idem: another request took the key over before completion; this response was not stored (fencing)");
        }
        Err(error) => {
            tracing::warn!(key = %ticket.key(), %error, "idem: storing the response failed; retrying in the background while the lease is held");
            let ticket = ticket.clone();
            idem.spawn_tracked(async move {
                ticket.complete(&stored).await;
            });
        }
    }
}

/// Releases the key, like [`settle_complete`] stores: once inline, then in the background.
pub(crate) async fn settle_release(idem: &Idempotency, ticket: &Ticket) {
    if let Err(error) = ticket.release_once().await {
        tracing::warn!(key = %ticket.key(), %error, "idem: releasing the key failed; retrying in the background while the lease is held");
        let ticket = ticket.clone();
        idem.spawn_tracked(async move { ticket.release().await });
    }
}
