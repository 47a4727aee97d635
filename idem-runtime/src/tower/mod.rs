//! The tower adapter (feature `tower`): [`IdempotencyLayer`] makes a `tower::Service` over
//! `http` 1 requests idempotent — an axum route (`post(create).layer(…)`), a hyper service, any
//! tower stack. It runs the same flow as the actix-web adapter on the same engine and stores:
//! the same storage keys, fingerprints, records and answers, so an actix-web instance and a
//! tower instance of one app, on one store, with one endpoint `name`, run a key once between
//! them.
//!
//! The layer takes the app's [`Idempotency`] (built as for actix-web) and one endpoint's policy,
//! written with `idem::policy!` — the attribute's options, checked at compile time:
//!
//! ```ignore
//! // Not a doctest: `idem::policy!` is the facade's; see its documentation for a full example.
//! let create = post(create_payment).layer(IdempotencyLayer::new(
//!     &idem,
//!     idem::policy!(name = "payments.create", ttl = "24h", on_conflict = "wait"),
//! ));
//! ```
//!
//! What differs from actix-web: a tower layer does not know the route a request matched, so a
//! policy names its endpoint (`name` is required); the scope is the builder's `unscoped()`,
//! `scope_by_header` or `scope_by_extension` (a closure over actix's request cannot read an
//! `http` request); `transactional` is actix-web only for now. `on_conflict = "accepted"`
//! answers 202 with the `Location` of a status resource that [`StatusService`] serves, and
//! `"webhook"` delivers the first response to the duplicate's `Idempotency-Callback`.

mod body;
mod capture;
mod status;

use bytes::Bytes;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument;

use crate::actix::config::Scope;
use crate::actix::{Idempotency, IdempotencyContext};
use crate::engine::Decision;
use crate::flow::execute::{
    refuse_while_draining, run_handler, settle, Answer, Ran, ReleaseOnDrop,
};
use crate::flow::prepare::{prepare, Keyed, Prepared, Unkeyed};
#[cfg(feature = "webhook")]
use crate::flow::webhook;
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::{OnConflict, Policy};
use body::{replay, Unread};
pub use body::{BoxError, IdemBody};
pub use status::StatusService;

/// A tower [`Layer`](tower_layer::Layer) that makes the service it wraps idempotent under one
/// endpoint's policy (`idem::policy!`), with the app's [`Idempotency`].
#[derive(Clone)]
pub struct IdempotencyLayer {
    idem: Idempotency,
    policy: &'static Policy,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field(
                "endpoint",
                &self.policy.name.unwrap_or(self.policy.endpoint),
            )
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// The layer of one endpoint: `policy` from `idem::policy!`, `idem` the app's (shared by
    /// every endpoint, and by an actix-web app of the same service).
    pub fn new(idem: &Idempotency, policy: &'static Policy) -> Self {
        IdempotencyLayer {
            idem: idem.clone(),
            policy,
        }
    }
}

impl<S> tower_layer::Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            idem: self.idem.clone(),
            policy: self.policy,
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around another. It never fails by itself: every
/// refusal is an `application/problem+json` answer.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    idem: Idempotency,
    policy: &'static Policy,
}

impl<S> std::fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService")
            .field(
                "endpoint",
                &self.policy.name.unwrap_or(self.policy.endpoint),
            )
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower_service::Service<Request<B>> for IdempotencyService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<IdemBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<IdemBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; a clone is left for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (idem, policy) = (self.idem.clone(), self.policy);
        let span = tracing::info_span!(
            "idem",
            endpoint = policy.name.unwrap_or(policy.endpoint),
            key = tracing::field::Empty
        );
        Box::pin(flow(idem, policy, inner, req).instrument(span))
    }
}

/// Runs one request through the idempotency flow.
async fn flow<S, B, RB>(
    idem: Idempotency,
    policy: &'static Policy,
    inner: S,
    req: Request<B>,
) -> Result<Response<IdemBody>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    if idem.shared.disabled {
        return plain(inner, req).await;
    }
    let refused = |p: Problem| {
        observe::outcome(
            policy.name.unwrap_or(policy.endpoint),
            None,
            Outcome::Rejected,
        );
        Ok(Answer::problem(&p))
    };
    let Some(engine) = idem.engine_for(policy.store).cloned() else {
        return Ok(Answer::problem(&crate::flow::store_not_registered(policy)));
    };
    let name = match idem
        .shared
        .names
        .resolve_route(policy, req.method().as_str(), || None)
    {
        Ok(name) => name,
        Err(conflict) => {
            return Ok(Answer::problem(&crate::flow::name_conflict(
                policy, &conflict,
            )))
        }
    };
    let policy = &Policy {
        endpoint: name,
        ..*policy
    };
    if let Some(p) = crate::flow::execute::lease_too_short(&idem, &engine, policy) {
        return Ok(Answer::problem(&p));
    }
    idem.check_secret_when_due(&engine);
    if let Some(p) = unsupported(policy) {
        return refused(p);
    }
    if policy.on_conflict == OnConflict::Webhook {
        #[cfg(feature = "webhook")]
        if idem.shared.webhook.secret.is_empty() {
            return Ok(Answer::problem(&webhook::secret_missing(policy)));
        }
        #[cfg(not(feature = "webhook"))]
        return refused(not_here(
            "on_conflict = \"webhook\" without idem's `webhook` feature",
        ));
    }
    let (mut parts, body) = req.into_parts();
    let principal = match principal(&idem, &parts) {
        Ok(p) => p,
        Err(p) => return refused(p),
    };
    let after_key = crate::flow::callback_of(&parts, policy, &idem);
    let prepared = prepare(&idem, policy, &parts, &principal, Unread(body), after_key).await;
    let Keyed {
        storage_key,
        fingerprint,
        body,
        checked: callback,
    } = match prepared {
        Prepared::Keyed(keyed) => keyed,
        Prepared::Refused(p) => return refused(p),
        Prepared::Unkeyed(Unkeyed::Unread(Unread(body))) => {
            return plain(inner, Request::from_parts(parts, body)).await
        }
        Prepared::Unkeyed(Unkeyed::Read(raw)) => {
            return plain(inner, Request::from_parts(parts, B::from(raw))).await
        }
    };
    #[cfg(not(feature = "webhook"))]
    let () = callback;
    tracing::Span::current().record("key", storage_key.status_id());
    // A completed record this process holds in memory is answered here, without a task.
    if let Some(answer) = engine.begin_now(policy, &storage_key, &fingerprint) {
        let (resp, outcome) = match answer {
            Ok(response) => (replay(&response), Outcome::Replayed),
            Err(problem) => rejected(&problem),
        };
        observe::outcome(policy.endpoint, Some(storage_key.status_id()), outcome);
        return Ok(resp);
    }

    // Everything from `begin` on runs in a spawned task, so that a client that disconnects
    // (which drops this future) can neither cancel the handler halfway through its side effects
    // nor leave a key acquired by nobody until its lease runs out.
    let async_after = match policy.on_conflict {
        OnConflict::Accepted => policy.respond_async_after,
        _ => None,
    };
    let own_status = async_after.map(|_| storage_key.clone());
    let inflight = idem.shared.inflight.enter();
    let named = *policy;
    let status_path = idem.status_path().to_owned();
    let own_path = status_path.clone();
    let task = async move {
        let policy = &named;
        let _inflight = inflight;
        let key_id = storage_key.status_id().to_owned();
        let (resp, outcome) = match engine.begin(policy, storage_key, fingerprint).await {
            Decision::Replay { response, waited } => {
                (replay(&response), crate::flow::replay_outcome(waited))
            }
            Decision::Reject(problem) => rejected(&problem),
            Decision::Unprotected => {
                let req = Request::from_parts(parts, B::from(body));
                match plain(inner, req).await {
                    Ok(resp) => (resp, Outcome::StoreError),
                    Err(_) => (failed(), Outcome::StoreError),
                }
            }
            Decision::Execute(ticket) => {
                if idem.shared.inflight.draining() {
                    refuse_while_draining(&idem, &ticket).await
                } else {
                    let mut armed = ReleaseOnDrop::new(&idem, &ticket);
                    parts.extensions.insert(IdempotencyContext::new(
                        ticket.key(),
                        ticket.token(),
                        ticket.attempt(),
                        idem.shared.derivation.clone(),
                    ));
                    let req = Request::from_parts(parts, B::from(body));
                    let run = async {
                        match call(inner, req).await {
                            Ok(resp) => {
                                let (resp, stored) = capture::capture(&idem, policy, resp).await;
                                Ran::Answered(resp, stored)
                            }
                            // The inner service failed without an answer, after it started.
                            Err(_) => Ran::Panicked,
                        }
                    };
                    let verdict = run_handler(&idem, policy, &ticket, run).await;
                    armed.disarm();
                    settle(&idem, &ticket, verdict).await
                }
            }
            Decision::Accepted(key) => (status::accepted(&status_path, &key), Outcome::Accepted),
            #[cfg(feature = "webhook")]
            Decision::Webhook(key) => match webhook::answer(&idem, engine.clone(), key, callback) {
                Ok(()) => (status::webhook_accepted(), Outcome::Accepted),
                Err(p) => rejected(&p),
            },
            // Refused before the store was asked.
            #[cfg(not(feature = "webhook"))]
            Decision::Webhook(_) => (
                Answer::problem(&not_here("on_conflict = \"webhook\"")),
                Outcome::Rejected,
            ),
        };
        observe::outcome(policy.endpoint, Some(&key_id), outcome);
        resp
    };
    let mut task = tokio::spawn(Box::pin(task).in_current_span());
    if let (Some(after), Some(key)) = (async_after, own_status) {
        // `accepted` with `respond_async_after`: a slow first request gets 202 too, and its
        // handler goes on in the task.
        tokio::select! {
            done = &mut task => return Ok(finished(policy, done)),
            _ = tokio::time::sleep(after) => {
                return Ok(status::accepted(&own_path, &key));
            }
        }
    }
    Ok(finished(policy, task.await))
}

/// The task's answer; a 500 when it did not finish (the handler panicked outside its catch).
fn finished(
    policy: &Policy,
    done: Result<Response<IdemBody>, tokio::task::JoinError>,
) -> Response<IdemBody> {
    done.unwrap_or_else(|join| {
        // The handler ran (and failed): that is an execution, released.
        observe::outcome(policy.endpoint, None, Outcome::Executed);
        tracing::error!(
            endpoint = policy.endpoint,
            panicked = join.is_panic(),
            "idem: handler did not finish; its key was released"
        );
        failed()
    })
}

/// Who sent the request, as the app's scope says; `Err` when the scope is one the tower layer
/// cannot read (a closure over actix-web's request).
pub(super) fn principal(
    idem: &Idempotency,
    parts: &http::request::Parts,
) -> Result<String, Problem> {
    Ok(match &idem.shared.scope {
        Scope::Unscoped => String::new(),
        Scope::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        Scope::Extension { http, .. } => http(&parts.extensions).unwrap_or_default(),
        Scope::Func(_) => {
            return Err(not_here(
                "a scope given as a closure over actix-web's request (use `scope_by_extension`, \
                 `scope_by_header` or `unscoped`)",
            ))
        }
    })
}

/// Calls the inner service, once ready.
async fn call<S, B, RB>(mut inner: S, req: Request<B>) -> Result<Response<RB>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(req).await
}

/// The inner service alone (no key where none is required, the store down under
/// `on_store_error = "proceed"`, or a disabled layer).
async fn plain<S, B, RB>(inner: S, req: Request<B>) -> Result<Response<IdemBody>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let resp = call(inner, req).await?;
    Ok(resp.map(IdemBody::of))
}

/// A problem's answer, and how it is counted.
fn rejected(problem: &Problem) -> (Response<IdemBody>, Outcome) {
    (
        Answer::problem(problem),
        crate::flow::problem_outcome(problem),
    )
}

/// 500 for a handler that did not finish.
fn failed() -> Response<IdemBody> {
    Answer::problem(&Problem::new(
        ProblemKind::HandlerFailed,
        "the handler failed before producing a response; nothing was stored, so a retry with \
         the same key runs it again",
    ))
}

/// 500 for what this adapter does not do yet.
fn not_here(what: &str) -> Problem {
    Problem::new(
        ProblemKind::Internal,
        format!("{what} is not available behind the tower layer yet; it works on actix-web"),
    )
}

/// A 500 problem for a policy or app setting the tower adapter cannot serve (logged each time:
/// a setup error to fix at once); `None` when it can.
fn unsupported(policy: &Policy) -> Option<Problem> {
    let what = match policy.on_conflict {
        _ if policy.transactional => "transactional",
        _ => return None,
    };
    tracing::error!(
        endpoint = policy.endpoint,
        "idem: {what} is not available behind the tower layer"
    );
    Some(not_here(what))
}
