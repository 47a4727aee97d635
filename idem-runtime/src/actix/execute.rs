//! One execution of an idempotent handler, from the lease taken to the record written: the
//! handler runs under its renewed lease, a panic is caught, the response is captured, and the
//! verdict is written with a fenced `complete` or `release` that is retried while the lease is
//! held (in the background once the client has its answer).

use actix_web::{dev, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use super::capture::capture;
use super::{extractor_problem, problem_response, HandlerResult, Idempotency, IdempotencyContext};
use crate::engine::{Engine, Ticket};
use crate::observe::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::store::Fenced;
use crate::{Guarantee, Policy, StoredResponse};

/// Releases the key if dropped while armed: the task was dropped before the handler finished
/// (its runtime stopped), or it unwound through code outside the handler.
struct ReleaseOnDrop(Option<(Ticket, Idempotency)>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some((ticket, idem)) = self.0.take() {
            idem.spawn_tracked(async move { ticket.release().await });
        }
    }
}

/// How the handler ended.
pub(super) enum Ran {
    /// It answered; what the client gets and what is stored.
    Answered(HttpResponse, StoredResponse),
    /// An extractor refused the request: the handler body never started.
    Refused(actix_web::Error),
    /// It panicked.
    Panicked,
}

/// What becomes of one execution's result.
pub(crate) enum Verdict {
    /// Store the response for replay, and answer with it.
    Keep(HttpResponse, StoredResponse),
    /// Store nothing and release the key (the retry runs afresh); answer with this.
    Release(HttpResponse),
    /// An extractor refused the request: not an execution; release and answer with its problem.
    Refused(HttpResponse),
}

impl Verdict {
    /// A problem answer, kept and replayed like a response.
    fn kept(p: &Problem) -> Verdict {
        let stored = StoredResponse {
            status: p.status(),
            headers: vec![(
                "content-type".into(),
                Bytes::from_static(b"application/problem+json"),
            )],
            body: p.to_json().into(),
        };
        Verdict::Keep(problem_response(p), stored)
    }

    fn of(policy: &Policy, ran: Ran) -> Verdict {
        let strict = policy.guarantee == Guarantee::Strict;
        match ran {
            // Under `result` and `semantic` a server error is not an outcome worth keeping: the
            // retry runs the handler again.
            Ran::Answered(resp, _) if !strict && resp.status().is_server_error() => {
                Verdict::Release(resp)
            }
            Ran::Answered(resp, stored) => Verdict::Keep(resp, stored),
            // Validation failures are not an execution: cache nothing (Stripe does the same).
            Ran::Refused(e) => Verdict::Refused(extractor_problem(&e)),
            // `strict` promises the same response: a panic's 500 is kept like a returned one. A
            // transactional handler's writes are rolled back, so nothing happened: released.
            Ran::Panicked if strict && !policy.transactional => Verdict::kept(&Problem::new(
                ProblemKind::HandlerFailed,
                "the handler failed (it panicked) after it started; under guarantee \
                 \"strict\" this answer is kept, and retries with this key get it again",
            )),
            Ran::Panicked => Verdict::Release(problem_response(&Problem::new(
                ProblemKind::HandlerFailed,
                "the handler failed (it panicked) before producing a response; nothing was kept, \
                 so a retry with the same key runs it again",
            ))),
        }
    }
}

/// Runs the handler under `ticket` and writes its record; answers with the client's response.
pub(super) async fn execute<F, Fut>(
    idem: &Idempotency,
    policy: &Policy,
    ticket: Ticket,
    req: HttpRequest,
    body: Bytes,
    handler: F,
) -> (HttpResponse, Outcome)
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    if idem.shared.inflight.draining() {
        // A shutdown started after this request's `begin`: run nothing new here; the retry
        // runs it on another instance.
        settle_release(idem, &ticket).await;
        let p = Problem::new(
            ProblemKind::ShuttingDown,
            "this server is shutting down and starts no new operation; retry with the same key",
        )
        .retry_after(1);
        return (problem_response(&p), Outcome::Rejected);
    }
    #[cfg(feature = "postgres")]
    {
        let give_up = req.extensions().get::<super::completer::GiveUp>().copied();
        if let Some(give_up) = give_up {
            return Box::pin(give_up_now(idem, &ticket, give_up.attempts)).await;
        }
    }
    let mut armed = ReleaseOnDrop(Some((ticket.clone(), idem.clone())));
    req.extensions_mut().insert(IdempotencyContext::new(
        ticket.key(),
        ticket.token(),
        ticket.attempt(),
        idem.shared.derivation.clone(),
    ));
    #[cfg(feature = "postgres")]
    steps_context(idem, policy, &ticket, &req, &body);
    #[cfg(feature = "postgres")]
    let tx = if policy.transactional {
        match Box::pin(super::tx::open(ticket.engine(), &req)).await {
            Ok(tx) => Some(tx),
            Err(resp) => {
                armed.0 = None;
                ticket.release().await;
                return (resp, Outcome::StoreError);
            }
        }
    } else {
        None
    };
    let run = AssertUnwindSafe(async {
        match handler(req, dev::Payload::from(body)).await {
            Ok(resp) => {
                let (resp, stored) = capture(idem, policy, resp).await;
                Ran::Answered(resp, stored)
            }
            Err(e) => Ran::Refused(e),
        }
    })
    .catch_unwind();
    let ran = ticket.keep_alive(run).await.unwrap_or_else(|_| {
        tracing::error!(endpoint = policy.endpoint, "idem: the handler panicked");
        Ran::Panicked
    });
    armed.0 = None;
    let verdict = with_expiry(idem, &ticket, Verdict::of(policy, ran));
    #[cfg(feature = "postgres")]
    if let Some(tx) = tx {
        return Box::pin(super::tx::finish(tx, &ticket, verdict)).await;
    }
    settle(idem, &ticket, verdict).await
}

/// Writes a verdict's record (stored, or the key released) and answers with its response.
async fn settle(idem: &Idempotency, ticket: &Ticket, verdict: Verdict) -> (HttpResponse, Outcome) {
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

/// On a PostgreSQL store, what a `Steps` extractor of the handler needs: the attempt, and the
/// request as a completer would re-send it. A handler without `Steps` never reads it.
#[cfg(feature = "postgres")]
fn steps_context(
    idem: &Idempotency,
    policy: &Policy,
    ticket: &Ticket,
    req: &HttpRequest,
    body: &Bytes,
) {
    let Some(tx) = ticket.engine().store().transactional() else {
        return;
    };
    let shared = &idem.shared;
    req.extensions_mut()
        .insert(std::sync::Arc::new(super::steps::StepsContext {
            store: tx.postgres().clone(),
            key: ticket.key().clone(),
            token: ticket.token(),
            attempt: ticket.attempt(),
            body: body.clone(),
            app_header: shared.header.clone(),
            key_sources: policy.key,
            sealer: shared.sealer.clone(),
            derivation: shared.derivation.clone(),
        }));
}

/// The completer's last word on an operation it could not finish: its terminal failure is
/// recorded instead of running the handler once more, and replayed to every retry.
#[cfg(feature = "postgres")]
async fn give_up_now(
    idem: &Idempotency,
    ticket: &Ticket,
    attempts: u32,
) -> (HttpResponse, Outcome) {
    let p = Problem::new(
        ProblemKind::OperationFailed,
        format!(
            "this operation did not finish: its instance stopped mid-way and the completer's \
             {attempts} attempts to finish it failed. It is not run again; the steps it \
             finished stay done. Contact the operator with this key"
        ),
    );
    tracing::error!(key = %ticket.key(), attempts, "idem: the completer gave up an operation; its failure is recorded");
    settle(idem, ticket, with_expiry(idem, ticket, Verdict::kept(&p))).await
}

/// The header that tells a client how long its key is kept: an HTTP-date after which the record
/// is gone and a retry with the same key runs as a new operation.
pub(crate) const EXPIRES_HEADER: &str = "idempotency-expires";

/// A kept response with [`EXPIRES_HEADER`] on both the client's answer and the stored copy (so
/// that every replay says the same), unless the app turned it off.
fn with_expiry(idem: &Idempotency, ticket: &Ticket, verdict: Verdict) -> Verdict {
    let Verdict::Keep(mut resp, mut stored) = verdict else {
        return verdict;
    };
    if idem.shared.expiry_header {
        let at = std::time::SystemTime::now() + ticket.ttl_for(stored.status);
        let date = actix_web::http::header::HttpDate::from(at).to_string();
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&date) {
            resp.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(EXPIRES_HEADER),
                v,
            );
            stored
                .headers
                .push((EXPIRES_HEADER.to_owned(), Bytes::from(date)));
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
async fn settle_release(idem: &Idempotency, ticket: &Ticket) {
    if let Err(error) = ticket.release_once().await {
        tracing::warn!(key = %ticket.key(), %error, "idem: releasing the key failed; retrying in the background while the lease is held");
        let ticket = ticket.clone();
        idem.spawn_tracked(async move { ticket.release().await });
    }
}

/// A 500 problem when the endpoint's lease is too short for its renewals: each renewal may take
/// up to the store deadline, and three fit in a lease, so `lease / 3` must exceed it. Logged once
/// per endpoint.
pub(super) fn lease_too_short(
    idem: &Idempotency,
    engine: &Engine,
    policy: &Policy,
) -> Option<HttpResponse> {
    if !engine.renew_leases || policy.lease / 3 > engine.store_timeout() {
        return None;
    }
    let detail = format!(
        "endpoint `{}`: its lease ({:?}) is too short for the store deadline ({:?}): a renewal \
         every lease/3 may take up to the deadline, so lease/3 must exceed it. Raise `lease` \
         on the endpoint to more than {:?}, or lower `store_timeout` on the Idempotency builder",
        policy.endpoint,
        policy.lease,
        engine.store_timeout(),
        engine.store_timeout() * 3,
    );
    let mut logged = idem
        .shared
        .short_leases
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !logged.contains(&policy.endpoint) {
        logged.push(policy.endpoint);
        tracing::error!("idem: {detail}");
    }
    crate::observe::outcome(policy.endpoint, None, Outcome::Rejected);
    Some(problem_response(&Problem::new(
        ProblemKind::Internal,
        detail,
    )))
}
