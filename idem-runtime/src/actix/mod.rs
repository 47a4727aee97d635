//! The actix-web adapter: raw body buffering, extractor re-run, response capture and replay,
//! problem+json, and the answers to duplicates in flight (status resource, webhooks).

use actix_web::body::{to_bytes_limited, BoxBody};
use actix_web::http::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, RETRY_AFTER,
};
use actix_web::http::StatusCode;
use actix_web::{dev, web, HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::NEVER_REPLAYED;
use crate::engine::{Decision, Ticket};
use crate::key::{parse_key_headers, IdempotencyKey};
use crate::key_source::{
    form_fingerprint_body, from_cookies, from_form, from_query, query_without, FormKeyError,
    KeySource,
};
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::{Fingerprint, Guarantee, OnConflict, Policy, StorageKey, StoredResponse};
use tracing::Instrument;

mod config;
mod context;
mod operator;
mod status;
#[cfg(feature = "postgres")]
mod tx;
pub mod webhook;

use config::find;
pub use config::{Idempotency, IdempotencyBuilder};
pub use context::IdempotencyContext;
pub use operator::{default_principal, OperatorError, RecordInfo};
#[cfg(feature = "postgres")]
pub use tx::{IdemTx, TxClient, TxEnded};

/// The header replays carry.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Turns a problem into its `application/problem+json` response.
pub fn problem_response(p: &Problem) -> HttpResponse {
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
fn refused(policy: &Policy, kind: ProblemKind, detail: impl Into<String>) -> HttpResponse {
    refused_with(policy, reject(kind, detail))
}

fn refused_with(policy: &Policy, resp: HttpResponse) -> HttpResponse {
    observe::outcome(policy.endpoint, None, Outcome::Rejected);
    resp
}

/// The request body: still a stream, or read into memory (raw, before any decompression).
enum Body {
    Raw(web::Payload),
    Buffered(Bytes),
}

impl Body {
    async fn buffer(self, req: &HttpRequest, limit: usize) -> Result<Bytes, HttpResponse> {
        match self {
            Body::Raw(payload) => buffer_body(req, payload, limit).await,
            Body::Buffered(b) => Ok(b),
        }
    }

    fn into_payload(self) -> dev::Payload {
        match self {
            Body::Raw(payload) => payload.into_inner(),
            Body::Buffered(b) => dev::Payload::from(b),
        }
    }
}

/// The key, from the first of the endpoint's sources that has one (the app's key header when
/// the endpoint names none). `Err` is the 400's detail: a malformed key where one was found.
fn find_key(
    req: &HttpRequest,
    policy: &Policy,
    default_header: &HeaderName,
    content_type: &str,
    body: &Body,
) -> Result<Option<IdempotencyKey>, String> {
    let header = |name| parse_key_headers(req.headers().get_all(name).map(|v| v.as_bytes()));
    if policy.key.is_empty() {
        return header(default_header.as_str()).map_err(|e| e.to_string());
    }
    for source in policy.key {
        let found = match *source {
            KeySource::Header(name) => header(name).map_err(FormKeyError::from),
            KeySource::Query(name) => from_query(req.query_string(), name).map_err(Into::into),
            KeySource::Cookie(name) => {
                let cookies = req.headers().get_all(COOKIE).map(|v| v.as_bytes());
                from_cookies(cookies, name).map_err(Into::into)
            }
            KeySource::Form(name) => match body {
                Body::Buffered(b) => from_form(content_type, b, name),
                Body::Raw(_) => Ok(None),
            },
        };
        match found {
            Ok(Some(key)) => return Ok(Some(key)),
            Ok(None) => {}
            Err(e) => return Err(format!("{source}: {e}")),
        }
    }
    Ok(None)
}

/// The 400 detail for a missing key: where this endpoint looks for one.
fn missing_key(policy: &Policy, default_header: &HeaderName) -> String {
    let places = if policy.key.is_empty() {
        format!("an {default_header} header")
    } else {
        policy
            .key
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    format!(
        "this endpoint requires an idempotency key in {places}: 1 to 255 printable ASCII \
         characters, unique per operation (a UUID works well)"
    )
}

/// The names of this endpoint's key sources of one kind (`pick` chooses it), if any.
fn key_names(
    policy: &Policy,
    pick: impl Fn(KeySource) -> Option<&'static str>,
) -> Option<Vec<&'static str>> {
    let names: Vec<&'static str> = policy.key.iter().filter_map(|s| pick(*s)).collect();
    (!names.is_empty()).then_some(names)
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
    let Some(engine) = idem.engine_for(policy.store).cloned() else {
        return store_not_registered(policy);
    };
    let shared = &idem.shared;

    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    // A key in a form field needs the body first; otherwise the body is read once the key is
    // known to be valid.
    let mut body = Body::Raw(payload);
    if policy.key.iter().any(|s| matches!(s, KeySource::Form(_))) {
        body = match body.buffer(&req, policy.max_body).await {
            Ok(b) => Body::Buffered(b),
            Err(resp) => return refused_with(policy, resp),
        };
    }
    let key = match find_key(&req, policy, &shared.header, &content_type, &body) {
        Ok(Some(key)) => key,
        Ok(None) if policy.required => {
            return refused(
                policy,
                ProblemKind::KeyMissing,
                missing_key(policy, &shared.header),
            )
        }
        Ok(None) => return keyless(&engine, policy, req, body.into_payload(), handler).await,
        Err(detail) => return refused(policy, ProblemKind::KeyInvalid, detail),
    };
    // A callback that is present but not allowed is refused before anything runs; a missing one
    // only matters if this request turns out to be a duplicate.
    let callback = match req.headers().get(webhook::CALLBACK_HEADER) {
        Some(v) if policy.on_conflict == OnConflict::Webhook => {
            match shared.webhook.check(v.as_bytes()) {
                // The delivery carries the client's own key, for correlation.
                Ok(url) => Some((url, key.as_str().to_owned())),
                Err(e) => return refused(policy, ProblemKind::CallbackInvalid, e.to_string()),
            }
        }
        _ => None,
    };

    let body = match body.buffer(&req, policy.max_body).await {
        Ok(b) => b,
        Err(resp) => return refused_with(policy, resp),
    };

    let principal = idem.principal(&req);
    let storage_key =
        StorageKey::scoped(&shared.prefix, policy.endpoint, principal.as_bytes(), &key);
    // Nor is a query parameter that carries the key.
    let without_key = key_names(policy, |s| match s {
        KeySource::Query(name) => Some(name),
        _ => None,
    })
    .and_then(|names| query_without(req.query_string(), &names))
    .map(|q| match q.as_str() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    });
    let path = match &without_key {
        Some(p) => p.as_str(),
        None => req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    };
    let method = req.method().as_str();
    // A form field that carries the key is not part of "the same request".
    let form = key_names(policy, |s| match s {
        KeySource::Form(name) => Some(name),
        _ => None,
    })
    .and_then(|fields| form_fingerprint_body(&content_type, &body, &fields));
    let (fp_type, fp_body): (&str, &[u8]) = match &form {
        Some((t, b)) => (t, b),
        None => (&content_type, &body),
    };
    let fingerprint = match policy.guarantee {
        Guarantee::Strict => Fingerprint::strict(method, path, fp_type, fp_body),
        Guarantee::Result => Fingerprint::result(method, path, fp_type, fp_body),
        Guarantee::Semantic => Fingerprint::semantic(method, path, policy.fingerprint, fp_body),
    };

    // Everything from `begin` on runs in a spawned task, so that a client that disconnects
    // (which drops this future) can neither cancel the handler halfway through its side effects
    // nor leave a key acquired by nobody until its lease runs out.
    let async_after = match policy.on_conflict {
        OnConflict::Accepted => policy.respond_async_after,
        _ => None,
    };
    let own_status = async_after.map(|_| storage_key.clone());
    tracing::Span::current().record("key", storage_key.status_id());
    let idem2 = idem.clone();
    let task_body = async move {
        let key_id = storage_key.status_id().to_owned();
        let (resp, outcome) = match engine.begin(policy, storage_key, fingerprint).await {
            Decision::Replay { response, waited } => (
                replay(&response),
                if waited {
                    Outcome::Waited
                } else {
                    Outcome::Replayed
                },
            ),
            Decision::Reject(problem) => (
                problem_response(&problem),
                match problem.kind {
                    ProblemKind::InProgress => Outcome::Conflict,
                    ProblemKind::KeyReused => Outcome::Mismatch,
                    ProblemKind::StoreUnavailable => Outcome::StoreError,
                    _ => Outcome::Rejected,
                },
            ),
            Decision::Unprotected => (
                plain(req, dev::Payload::from(body), handler).await,
                Outcome::StoreError,
            ),
            Decision::Execute(ticket) => execute(&idem2, policy, ticket, req, body, handler).await,
            Decision::Accepted(key) => (
                status::accepted(idem2.status_path(), &key),
                Outcome::Accepted,
            ),
            Decision::Webhook(key) => match callback {
                None => (
                    reject(
                        ProblemKind::CallbackInvalid,
                        webhook::CallbackError::Missing.to_string(),
                    ),
                    Outcome::Rejected,
                ),
                Some((url, raw_key)) => {
                    let config = idem2.shared.webhook.clone();
                    actix_web::rt::spawn(
                        webhook::deliver_when_done(engine, config, key, raw_key, url)
                            .in_current_span(),
                    );
                    (webhook_accepted(), Outcome::Accepted)
                }
            },
        };
        observe::outcome(policy.endpoint, Some(&key_id), outcome);
        resp
    };
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

fn webhook_accepted() -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((CONTENT_TYPE, "application/json"))
        .body(r#"{"status":"processing","delivery":"webhook"}"#)
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

/// 500 for an endpoint naming a store the app did not register; logged once.
fn store_not_registered(policy: &Policy) -> HttpResponse {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let name = policy.store.unwrap_or_default();
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(endpoint = policy.endpoint, store = name, "idem: this endpoint names a store the app did not register; add `.named_store(\"{name}\", …)` to the Idempotency builder");
    }
    observe::outcome(policy.endpoint, None, Outcome::StoreError);
    reject(
        ProblemKind::Internal,
        format!("this endpoint's idempotency store `{name}` is not configured on the server"),
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

/// Reads the raw body (still compressed, if it was sent compressed), refusing more than `limit`.
async fn buffer_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, HttpResponse> {
    let too_large = || {
        reject(
            ProblemKind::BodyTooLarge,
            format!("the request body is larger than this endpoint's limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // The usual body arrives in one chunk: keep that chunk rather than copying it.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            reject(
                ProblemKind::BodyUnreadable,
                format!("the request body could not be read: {e}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            return Err(too_large());
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    buf.reserve(declared.map_or(0, |n| n as usize).min(limit));
                    buf.extend_from_slice(&earlier);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// A request without a key where keys are optional: run plainly (in a transaction of its own
/// on a transactional endpoint).
async fn keyless<F, Fut>(
    engine: &crate::Engine,
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
    let status = e.as_response_error().status_code();
    problem_response(
        &Problem::new(ProblemKind::RequestInvalid, e.to_string()).with_status(status.as_u16()),
    )
}

/// Releases the key if dropped while armed: the handler panicked (the task unwinds through it)
/// or the task was dropped before the handler finished.
struct ReleaseOnDrop(Option<Ticket>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(ticket) = self.0.take() {
            actix_web::rt::spawn(async move { ticket.release().await });
        }
    }
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
    fn of(
        policy: &Policy,
        result: Result<Result<(HttpResponse, StoredResponse), HttpResponse>, actix_web::Error>,
    ) -> Verdict {
        match result {
            // Under `result` and `semantic` a server error is not an outcome worth keeping: the
            // retry runs the handler again.
            Ok(Ok((resp, _)))
                if policy.guarantee != Guarantee::Strict && resp.status().is_server_error() =>
            {
                Verdict::Release(resp)
            }
            Ok(Ok((resp, stored))) => Verdict::Keep(resp, stored),
            Ok(Err(too_big)) => Verdict::Release(too_big),
            // Validation failures are not an execution: cache nothing (Stripe does the same).
            Err(e) => Verdict::Refused(extractor_problem(&e)),
        }
    }
}

async fn execute<F, Fut>(
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
    let mut armed = ReleaseOnDrop(Some(ticket.clone()));
    req.extensions_mut().insert(IdempotencyContext::new(
        ticket.key().status_id(),
        ticket.token(),
        ticket.attempt(),
    ));
    #[cfg(feature = "postgres")]
    let tx = if policy.transactional {
        match tx::open(ticket.engine(), &req).await {
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
    let result = ticket
        .keep_alive(async {
            match handler(req, dev::Payload::from(body)).await {
                Ok(resp) => Ok(capture(idem, policy, resp).await),
                Err(e) => Err(e),
            }
        })
        .await;
    armed.0 = None;
    let verdict = Verdict::of(policy, result);
    #[cfg(feature = "postgres")]
    if let Some(tx) = tx {
        return tx::finish(tx, &ticket, verdict).await;
    }
    match verdict {
        Verdict::Keep(resp, stored) => {
            ticket.complete(&stored).await;
            (resp, Outcome::Executed)
        }
        Verdict::Release(resp) => {
            ticket.release().await;
            (resp, Outcome::Executed)
        }
        Verdict::Refused(resp) => {
            ticket.release().await;
            (resp, Outcome::Rejected)
        }
    }
}

/// Buffers the handler's response and splits it into what the client gets now and what is
/// stored for replay. `Err` when the body could not be buffered within the size limit.
async fn capture(
    idem: &Idempotency,
    policy: &Policy,
    resp: HttpResponse,
) -> Result<(HttpResponse, StoredResponse), HttpResponse> {
    let limit = idem.shared.max_response;
    let (head, body) = resp.into_parts();
    let bytes = match to_bytes_limited(body, limit).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "idem: the handler's response body failed; nothing stored");
            return Err(reject(
                ProblemKind::HandlerFailed,
                "the handler's response body failed; nothing was stored, so a retry runs it again",
            ));
        }
        Err(_) => {
            tracing::error!(
                limit,
                "idem: handler response larger than max_response_bytes; nothing stored"
            );
            return Err(reject(
                ProblemKind::HandlerFailed,
                "the handler's response is too large to be stored for replay",
            ));
        }
    };
    let engine = &idem.shared.engine;
    let headers = head
        .headers()
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            engine.is_replayed(name)
                || (policy.replay_headers.contains(&name) && !NEVER_REPLAYED.contains(&name))
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect();
    let stored = StoredResponse {
        status: head.status().as_u16(),
        headers,
        body: bytes.clone(),
    };
    Ok((head.set_body(BoxBody::new(bytes)), stored))
}

/// Builds the replay of a stored response: status, stored headers, body bytes, and
/// `Idempotent-Replayed: true`.
pub fn replay(stored: &StoredResponse) -> HttpResponse {
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
