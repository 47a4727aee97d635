//! One execution of an idempotent handler, from the lease taken to the record written: the
//! handler runs under its renewed lease, a panic is caught, the response is captured, and the
//! verdict is written with a fenced `complete` or `release` that is retried while the lease is
//! held (in the background once the client has its answer).

use actix_web::{dev, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use std::future::Future;

use super::capture::capture;
use super::{extractor_problem, problem_response, HandlerResult, Idempotency, IdempotencyContext};
use crate::engine::Ticket;
use crate::flow::execute::{run_handler, settle, Answer, Ran, ReleaseOnDrop};
#[cfg(feature = "postgres")]
use crate::flow::execute::{with_expiry, Verdict};
use crate::observe::Outcome;
use crate::problem::Problem;
#[cfg(feature = "postgres")]
use crate::problem::ProblemKind;
use crate::Policy;

impl Answer for HttpResponse {
    fn problem(p: &Problem) -> Self {
        problem_response(p)
    }

    fn is_server_error(&self) -> bool {
        self.status().is_server_error()
    }

    fn set_header(&mut self, name: &'static str, value: &str) {
        use actix_web::http::header::{HeaderName, HeaderValue};
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }

    fn replay(stored: &crate::StoredResponse) -> Self {
        super::replay(stored)
    }

    fn accepted(status_path: &str, key: &crate::StorageKey) -> Self {
        super::status::accepted(status_path, key)
    }

    #[cfg(feature = "webhook")]
    fn webhook_accepted() -> Self {
        use actix_web::http::header::CONTENT_TYPE;
        HttpResponse::Accepted()
            .insert_header((CONTENT_TYPE, "application/json"))
            .body(crate::flow::webhook::ACCEPTED_BODY)
    }
}

/// Runs the handler under `ticket` and writes its record; answers with the client's response.
/// `principal` is who the request belongs to, as its storage key was derived.
pub(super) async fn execute<F, Fut>(
    idem: &Idempotency,
    policy: &Policy,
    ticket: Ticket,
    req: HttpRequest,
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))] principal: String,
    body: Bytes,
    handler: F,
) -> (HttpResponse, Outcome)
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    #[cfg(feature = "postgres")]
    {
        if let Some(p) = super::resumed::started_anew(&req, ticket.attempt()) {
            return settle(idem, &ticket, Verdict::Refused(problem_response(&p))).await;
        }
        super::resumed::reached(&req, super::resumed::Stage::Ran);
        let give_up = req.extensions().get::<super::completer::GiveUp>().copied();
        if let Some(give_up) = give_up {
            return Box::pin(give_up_now(idem, &ticket, give_up.attempts)).await;
        }
    }
    let mut armed = ReleaseOnDrop::new(idem, &ticket);
    let context = IdempotencyContext::new(
        ticket.key(),
        ticket.token(),
        ticket.attempt(),
        idem.derivation_for(&ticket),
    );
    #[cfg(feature = "postgres")]
    let operation = context.operation();
    req.extensions_mut().insert(context);
    #[cfg(feature = "postgres")]
    steps_context(
        idem,
        policy,
        &ticket,
        &req,
        &body,
        principal,
        operation.clone(),
    );
    #[cfg(feature = "postgres")]
    let tx = if policy.transactional {
        match Box::pin(super::tx::open(ticket.engine(), &req)).await {
            Ok(tx) => Some(tx),
            Err(resp) => {
                armed.disarm();
                ticket.release().await;
                return (resp, Outcome::StoreError);
            }
        }
    } else {
        None
    };
    // The handler's run is built in the call, not bound to a local first: a local moved into
    // the call would keep a slot of its own in this future.
    let verdict = run_handler(idem, policy, &ticket, async {
        match handler(req, dev::Payload::from(body)).await {
            #[cfg(feature = "postgres")]
            Ok(resp) if super::steps::unfinished(&resp) => Ran::Unfinished(resp),
            Ok(resp) => {
                let (resp, stored) = capture(idem, policy, &ticket, resp).await;
                Ran::Answered(resp, stored)
            }
            Err(e) => Ran::Refused(extractor_problem(&e)),
        }
    })
    .await;
    armed.disarm();
    #[cfg(feature = "postgres")]
    if matches!(verdict, Verdict::Refused(_)) {
        forget_unstarted(&ticket, &operation).await;
    }
    #[cfg(feature = "postgres")]
    if let Some(tx) = tx {
        return Box::pin(super::tx::finish(tx, &ticket, verdict)).await;
    }
    settle(idem, &ticket, verdict).await
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
    principal: String,
    operation: std::sync::Arc<std::sync::OnceLock<i64>>,
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
            principal,
            operation,
            body: body.clone(),
            app_header: shared.header.clone(),
            key_sources: policy.key,
            sealer: shared.sealer.clone(),
            derivation: idem.derivation_for(ticket),
            timeout: ticket.engine().store_timeout(),
        }));
}

/// After a refusal by an extractor that ran after `Steps` (the handler's body never ran): the
/// request stored by this attempt goes, if this attempt started the operation's steps, so that
/// it leaves nothing behind (a corrected body is then no "key reused").
#[cfg(feature = "postgres")]
async fn forget_unstarted(ticket: &Ticket, operation: &std::sync::OnceLock<i64>) {
    if operation.get() != Some(&(ticket.token().0 as i64)) {
        return;
    }
    let Some(tx) = ticket.engine().store().transactional() else {
        return;
    };
    let engine = ticket.engine();
    let forget = tx.postgres().forget_request(ticket.key(), ticket.token());
    if let Err(error) =
        crate::engine::deadline("forget_request", engine.store_timeout(), forget).await
    {
        tracing::warn!(%error, "idem: the request stored for a refused attempt could not be deleted; a retry with another payload gets 422 until the record expires");
    }
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
