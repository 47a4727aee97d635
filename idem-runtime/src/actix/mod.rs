//! The actix-web adapter: raw body buffering, extractor re-run, response capture and replay,
//! problem+json, and the answers to duplicates in flight (status resource, webhooks).

use actix_web::body::BoxBody;
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{dev, web, HttpRequest, HttpResponse};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::Decision;
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::{OnConflict, Policy, StoredResponse};
use tracing::Instrument;

mod body;
mod capture;
#[cfg(feature = "postgres")]
mod completer;
pub(crate) mod config;
mod context;
mod execute;
mod names;
mod operator;
mod shutdown;
mod status;
#[cfg(feature = "postgres")]
mod steps;
#[cfg(feature = "postgres")]
mod tx;

use crate::flow::prepare::{prepare, Keyed, Prepared, Unkeyed};
#[cfg(feature = "webhook")]
use crate::flow::webhook;
#[cfg(feature = "postgres")]
pub use completer::{Completer, CompleterBuilder};
use config::find;
pub use config::{Idempotency, IdempotencyBuilder, NoScope, ScopeChosen, Scoped};
pub use context::IdempotencyContext;
pub(crate) use names::Conflict;
pub use operator::{OperatorError, RecordInfo};
#[cfg(feature = "postgres")]
pub use steps::{StepError, Steps};
#[cfg(feature = "postgres")]
pub use tx::{IdemTx, TxClient, TxEnded};

/// The header replays carry.
pub(crate) const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Turns a problem into its `application/problem+json` response.
pub(crate) fn problem_response(p: &Problem) -> HttpResponse {
    let status = StatusCode::from_u16(p.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut b = HttpResponse::build(status);
    b.insert_header((CONTENT_TYPE, "application/problem+json"));
    if let Some(secs) = p.retry_after {
        b.insert_header((RETRY_AFTER, secs.to_string()));
    }
    b.body(p.to_json())
}

pub(crate) fn reject(kind: ProblemKind, detail: impl Into<String>) -> HttpResponse {
    problem_response(&Problem::new(kind, detail))
}

/// The handler as the macro hands it over: extractors re-run on the given payload, then the
/// handler's response. `Err` means an extractor refused the request (nothing is cached).
pub type HandlerResult = Result<HttpResponse, actix_web::Error>;

/// Runs one request through the idempotency flow. Called by the code `#[idempotent]` generates.
pub async fn run<F, Fut>(
    req: HttpRequest,
    payload: web::Payload,
    policy: &'static Policy,
    handler: F,
) -> HttpResponse
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = HandlerResult> + 'static,
{
    // One span per idempotent request; its `key` is the hashed key, never the raw one.
    let span = tracing::info_span!(
        "idem",
        endpoint = policy.endpoint,
        key = tracing::field::Empty
    );
    flow(req, payload, policy, handler).instrument(span).await
}

/// A request refused before the store was asked: observed, then answered.
fn refused_with(policy: &Policy, resp: HttpResponse) -> HttpResponse {
    observe::outcome(policy.endpoint, None, Outcome::Rejected);
    resp
}

async fn flow<F, Fut>(
    req: HttpRequest,
    payload: web::Payload,
    policy: &'static Policy,
    handler: F,
) -> HttpResponse
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = HandlerResult> + 'static,
{
    let Some(idem) = find(&req) else {
        return not_configured(policy.endpoint);
    };
    if idem.shared.disabled {
        // `Idempotency::disabled()`: the handler alone, for unit tests.
        return Box::pin(plain(req, payload.into_inner(), handler)).await;
    }
    let Some(engine) = idem.engine_for(policy.store).cloned() else {
        return problem_response(&crate::flow::store_not_registered(policy));
    };
    // From here on the endpoint is known by its stable name (the storage keys' endpoint part,
    // metrics, logs).
    let policy = match idem.shared.names.resolve(policy, &req) {
        Ok(name) => Policy {
            endpoint: name,
            ..*policy
        },
        Err(conflict) => return problem_response(&crate::flow::name_conflict(policy, &conflict)),
    };
    let policy = &policy;
    if let Some(p) = crate::flow::execute::lease_too_short(&idem, &engine, policy) {
        return problem_response(&p);
    }
    idem.check_secret_when_due(&engine);
    if policy.on_conflict == OnConflict::Webhook {
        #[cfg(feature = "webhook")]
        if idem.shared.webhook.secret.is_empty() {
            return problem_response(&webhook::secret_missing(policy));
        }
        #[cfg(not(feature = "webhook"))]
        return webhook_not_compiled(policy);
    }

    let principal = idem.principal(&req);
    let after_key = crate::flow::callback_of(&req, policy, &idem);
    let prepared = prepare(&idem, policy, &req, &principal, payload, after_key).await;
    let Keyed {
        storage_key,
        fingerprint,
        body,
        checked: callback,
        ..
    } = match prepared {
        Prepared::Keyed(keyed) => keyed,
        Prepared::Refused(p) => return refused_with(policy, problem_response(&p)),
        Prepared::Unkeyed(body) => {
            let payload = match body {
                Unkeyed::Unread(payload) => payload.into_inner(),
                Unkeyed::Read(raw) => dev::Payload::from(raw),
            };
            // Boxed, like the task below: the handler's future is not part of this one's size.
            return Box::pin(keyless(&engine, policy, req, payload, handler)).await;
        }
    };
    #[cfg(not(feature = "webhook"))]
    let () = callback;

    tracing::Span::current().record("key", storage_key.status_id());
    // A completed record this process holds in memory is answered here, without a task: it
    // changes nothing, so a hang-up that drops this future loses nothing.
    if let Some(answer) = engine.begin_now(policy, &storage_key, &fingerprint) {
        let (resp, outcome) = match answer {
            Ok(response) => replayed(&response, false),
            Err(problem) => rejected(&problem),
        };
        observe::outcome(policy.endpoint, Some(storage_key.status_id()), outcome);
        return resp;
    }

    // Everything from `begin` on runs in a spawned task, so that a client that disconnects
    // (which drops this future) can neither cancel the handler halfway through its side effects
    // nor leave a key acquired by nobody until its lease runs out.
    let async_after = match policy.on_conflict {
        OnConflict::Accepted => policy.respond_async_after,
        _ => None,
    };
    let own_status = async_after.map(|_| storage_key.clone());
    let idem2 = idem.clone();
    // A graceful shutdown waits for this task, whether or not its client is still there.
    let inflight = idem.shared.inflight.enter();
    let named = *policy;
    let task_body = async move {
        let policy = &named;
        let _inflight = inflight;
        let key_id = storage_key.status_id().to_owned();
        let (resp, outcome) = match engine.begin(policy, storage_key, fingerprint).await {
            Decision::Replay { response, waited } => replayed(&response, waited),
            Decision::Reject(problem) => rejected(&problem),
            Decision::Unprotected => (
                plain(req, dev::Payload::from(body), handler).await,
                Outcome::StoreError,
            ),
            Decision::Execute(ticket) => {
                execute::execute(&idem2, policy, ticket, req, body, handler).await
            }
            Decision::Accepted(key) => (
                status::accepted(idem2.status_path(), &key),
                Outcome::Accepted,
            ),
            #[cfg(feature = "webhook")]
            Decision::Webhook(key) => match webhook::answer(&idem2, engine, key, callback) {
                Ok(()) => (webhook_accepted(), Outcome::Accepted),
                Err(p) => (problem_response(&p), Outcome::Rejected),
            },
            #[cfg(not(feature = "webhook"))]
            Decision::Webhook(_) => (webhook_not_compiled(policy), Outcome::Rejected),
        };
        observe::outcome(policy.endpoint, Some(&key_id), outcome);
        resp
    };
    // Several KiB (the handler's future is inside): boxed once here, not copied on each move
    // into the span, the task and its cell.
    let task_body = Box::pin(task_body);
    let mut task = actix_web::rt::spawn(task_body.in_current_span());
    if let (Some(after), Some(key)) = (async_after, own_status) {
        // `accepted` with `respond_async_after`: a slow first request gets 202 too, and its
        // handler goes on in the task.
        tokio::select! {
            done = &mut task => return finished(policy, done),
            _ = tokio::time::sleep(after) => return status::accepted(idem.status_path(), &key),
        }
    }
    finished(policy, task.await)
}

/// 202 for a duplicate of a webhook endpoint: the first response is delivered to its callback.
#[cfg(feature = "webhook")]
fn webhook_accepted() -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((CONTENT_TYPE, "application/json"))
        .body(webhook::ACCEPTED_BODY)
}

/// A stored response's replay, and how it is counted.
fn replayed(response: &StoredResponse, waited: bool) -> (HttpResponse, Outcome) {
    (replay(response), crate::flow::replay_outcome(waited))
}

/// A problem's answer, and how it is counted.
fn rejected(problem: &Problem) -> (HttpResponse, Outcome) {
    (
        problem_response(problem),
        crate::flow::problem_outcome(problem),
    )
}

fn finished(policy: &Policy, done: Result<HttpResponse, tokio::task::JoinError>) -> HttpResponse {
    done.unwrap_or_else(|join| {
        // The handler ran (and failed): that is an execution, released.
        observe::outcome(policy.endpoint, None, Outcome::Executed);
        tracing::error!(
            endpoint = policy.endpoint,
            panicked = join.is_panic(),
            "idem: handler did not finish; its key was released"
        );
        reject(
            ProblemKind::HandlerFailed,
            "the handler failed before producing a response; nothing was stored, \
             so a retry with the same key runs it again",
        )
    })
}

/// 500 for a webhook endpoint in a build without the `webhook` feature (the attribute refuses
/// to compile one; only a hand-made `Policy` gets here).
#[cfg(not(feature = "webhook"))]
fn webhook_not_compiled(policy: &Policy) -> HttpResponse {
    observe::outcome(policy.endpoint, None, Outcome::Rejected);
    reject(
        ProblemKind::Internal,
        "this endpoint answers duplicates by webhook, but the server was built without idem's \
         `webhook` feature",
    )
}

/// 500 for a handler whose app has no `Idempotency` registered; logged once.
pub(crate) fn not_configured(endpoint: &str) -> HttpResponse {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(endpoint, "idem: no `Idempotency` registered on this app; add `.app_data(idempotency.clone())` to the App");
    }
    reject(
        ProblemKind::Internal,
        "this endpoint is idempotent but the server has no idempotency layer configured",
    )
}

/// A request without a key where keys are optional: run plainly (in a transaction of its own
/// on a transactional endpoint).
async fn keyless<F, Fut>(
    engine: &crate::engine::Engine,
    policy: &Policy,
    req: HttpRequest,
    payload: dev::Payload,
    handler: F,
) -> HttpResponse
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    #[cfg(feature = "postgres")]
    if policy.transactional {
        return tx::plain(engine, req, payload, handler).await;
    }
    let _ = (engine, policy);
    plain(req, payload, handler).await
}

/// Runs the handler without idempotency (no key where none is required, or store down with
/// `on_store_error = "proceed"`).
async fn plain<F, Fut>(req: HttpRequest, payload: dev::Payload, handler: F) -> HttpResponse
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    handler(req, payload)
        .await
        .unwrap_or_else(|e| extractor_problem(&e))
}

/// Extractor errors (bad JSON, a missing query field, …) become problem+json with the status the
/// extractor chose.
fn extractor_problem(e: &actix_web::Error) -> HttpResponse {
    #[cfg(feature = "postgres")]
    if let Some(steps) = e.as_error::<steps::StepError>() {
        return actix_web::ResponseError::error_response(steps);
    }
    let status = e.as_response_error().status_code();
    problem_response(
        &Problem::new(ProblemKind::RequestInvalid, e.to_string()).with_status(status.as_u16()),
    )
}

/// Builds the replay of a stored response: status, stored headers, body bytes, and
/// `Idempotent-Replayed: true`.
pub(crate) fn replay(stored: &StoredResponse) -> HttpResponse {
    let Ok(status) = StatusCode::from_u16(stored.status) else {
        return reject(
            ProblemKind::Internal,
            "the stored response has an invalid status",
        );
    };
    let mut resp = HttpResponse::with_body(status, BoxBody::new(stored.body.clone()));
    let headers = resp.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            headers.append(n, v);
        }
    }
    headers.insert(
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    );
    resp
}
