//! The actix-web adapter: raw body buffering, extractor re-run, response capture and replay,
//! problem+json, and the answers to duplicates in flight (status resource, webhooks).

use actix_web::body::BoxBody;
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{dev, web, HttpRequest, HttpResponse};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::flow::front::{front, Front};
use crate::flow::prepare::Unkeyed;
use crate::flow::task::{answer, task, Run, Task};
use crate::observe::Outcome;
use crate::problem::{Problem, ProblemKind};
use crate::{Policy, StoredResponse};
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
mod previous_secrets;
#[cfg(feature = "postgres")]
mod resumed;
pub(crate) mod scope;
mod shutdown;
mod status;
#[cfg(feature = "postgres")]
mod steps;
#[cfg(feature = "postgres")]
mod tx;

#[cfg(feature = "postgres")]
pub use completer::{Completer, CompleterBuilder};
use config::find;
pub use config::{Idempotency, IdempotencyBuilder, NoScope, ScopeChosen, Scoped};
pub use context::IdempotencyContext;
pub(crate) use names::Conflict;
pub use operator::{OperatorError, RecordInfo};
#[cfg(feature = "postgres")]
pub use resumed::Resumed;
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
    #[cfg(feature = "postgres")]
    resumed::reached(&req, resumed::Stage::Reached);
    if idem.shared.disabled {
        // `Idempotency::disabled()`: the handler alone, for unit tests.
        return Box::pin(plain(req, payload.into_inner(), handler)).await;
    }
    let principal = idem.principal_of(&req);
    let pattern = || req.match_pattern();
    let (engine, policy, keyed) =
        match front(&idem, policy, &req, pattern, &principal, payload).await {
            Front::Done(Ok(response)) => return replay(&response),
            Front::Done(Err(problem)) => return problem_response(&problem),
            Front::Unkeyed(engine, policy, body) => {
                // The completer's request always has its operation's key.
                #[cfg(feature = "postgres")]
                if let Some(problem) = resumed::mismatch(&req, None) {
                    return problem_response(&problem);
                }
                let payload = match body {
                    Unkeyed::Unread(payload) => payload.into_inner(),
                    Unkeyed::Read(raw) => dev::Payload::from(raw),
                };
                // Boxed, like the task below: the handler's future is not part of this one's
                // size.
                return Box::pin(keyless(&engine, &policy, req, payload, handler)).await;
            }
            Front::Keyed(engine, policy, keyed) => (engine, policy, keyed),
        };
    #[cfg(feature = "postgres")]
    let keyed = match resumed::under_recorded(&req, keyed) {
        Ok(keyed) => keyed,
        Err(problem) => return problem_response(&problem),
    };
    // Keyed: the principal was found (`prepare` refuses a keyed request without one).
    let principal = principal.unwrap_or_default();
    let (spawned, early) = spawn_task(&idem, engine, policy, keyed, req, principal, handler);
    answer(&idem, &policy, early, spawned).await
}

/// Spawns a keyed request's task. Everything from `begin` on runs in a spawned task, so that a
/// client that disconnects (which drops the request's future) can neither cancel the handler
/// halfway through its side effects nor leave a key acquired by nobody until its lease runs out.
///
/// A plain function, not part of `flow`'s future: the task's future (several KiB, the
/// handler's inside) would otherwise keep a slot in it, copied with it on every move.
fn spawn_task<F, Fut>(
    idem: &Idempotency,
    engine: std::sync::Arc<crate::engine::Engine>,
    policy: Policy,
    keyed: crate::flow::prepare::Keyed<crate::flow::Callback>,
    req: HttpRequest,
    principal: String,
    handler: F,
) -> (
    tokio::task::JoinHandle<HttpResponse>,
    Option<(std::time::Duration, crate::StorageKey)>,
)
where
    F: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = HandlerResult> + 'static,
{
    let idem2 = idem.clone();
    let named = policy;
    let run = move |run: Run, body| async move {
        let policy = &named;
        match run {
            Run::Plain => (
                plain(req, dev::Payload::from(body), handler).await,
                Outcome::StoreError,
            ),
            Run::Under(ticket) => {
                execute::execute(&idem2, policy, ticket, req, principal, body, handler).await
            }
        }
    };
    let Task { work, early } = task(idem, engine, policy, keyed, run);
    // Several KiB (the handler's future is inside): boxed once here, not copied on each move
    // into the span, the task and its cell.
    (
        actix_web::rt::spawn(Box::pin(work).in_current_span()),
        early,
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
    let Ok(status) = StatusCode::from_u16(stored.status()) else {
        return reject(
            ProblemKind::Internal,
            "the stored response has an invalid status",
        );
    };
    let mut resp = HttpResponse::with_body(status, BoxBody::new(stored.body().clone()));
    let headers = resp.headers_mut();
    for (name, value) in stored.shared_headers() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::FromRequest;

    static POLICY: Policy = Policy::new("size");

    /// A request's future is moved, and copied each time, into its span and into actix's boxed
    /// handler future: it must not hold the handler's future (which runs in the spawned task),
    /// whatever that one's size.
    #[actix_web::test]
    async fn a_requests_future_does_not_hold_its_handlers() {
        let (req, mut raw) = actix_web::test::TestRequest::post().to_http_parts();
        let payload = web::Payload::from_request(&req, &mut raw)
            .await
            .expect("payload");
        // A handler whose own future is 8 KiB.
        let handler = |_: HttpRequest, _: dev::Payload| async move {
            let held = [7u8; 8192];
            tokio::task::yield_now().await;
            std::hint::black_box(&held);
            Ok(HttpResponse::Ok().finish())
        };
        let request = run(req, payload, &POLICY, handler);
        let size = std::mem::size_of_val(&request);
        assert!(size <= 2048, "the request's future is {size} B");
    }
}
