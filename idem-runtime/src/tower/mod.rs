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

use crate::actix::{Idempotency, IdempotencyContext};
use crate::flow::execute::{run_handler, settle, Answer, Ran, ReleaseOnDrop};
use crate::flow::front::{front, Front};
use crate::flow::prepare::Unkeyed;
use crate::flow::task::{answer, task, Run, Task};
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::Policy;
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
    if let Some(p) = unsupported(policy) {
        return refused(p);
    }
    let (mut parts, body) = req.into_parts();
    let principal = match principal(&idem, &parts) {
        Ok(p) => p,
        Err(p) => return refused(p),
    };
    let (engine, policy, keyed) =
        match front(&idem, policy, &parts, || None, &principal, Unread(body)).await {
            Front::Done(Ok(response)) => return Ok(replay(&response)),
            Front::Done(Err(problem)) => return Ok(Answer::problem(&problem)),
            Front::Unkeyed(_, _, Unkeyed::Unread(Unread(body))) => {
                return plain(inner, Request::from_parts(parts, body)).await
            }
            Front::Unkeyed(_, _, Unkeyed::Read(raw)) => {
                return plain(inner, Request::from_parts(parts, B::from(raw))).await
            }
            Front::Keyed(engine, policy, keyed) => (engine, policy, keyed),
        };
    // Everything from `begin` on runs in a spawned task, so that a client that disconnects
    // (which drops this future) can neither cancel the handler halfway through its side effects
    // nor leave a key acquired by nobody until its lease runs out.
    let idem2 = idem.clone();
    let run = move |run: Run, body: Bytes| async move {
        let policy = &policy;
        let ticket = match run {
            Run::Plain => {
                let req = Request::from_parts(parts, B::from(body));
                let resp = plain(inner, req)
                    .await
                    .unwrap_or_else(|_| Answer::problem(&crate::flow::handler_failed()));
                return (resp, Outcome::StoreError);
            }
            Run::Under(ticket) => ticket,
        };
        let idem = &idem2;
        let mut armed = ReleaseOnDrop::new(idem, &ticket);
        parts.extensions.insert(IdempotencyContext::new(
            ticket.key(),
            ticket.token(),
            ticket.attempt(),
            idem.derivation_for(&ticket),
        ));
        let req = Request::from_parts(parts, B::from(body));
        let run = async {
            match call(inner, req).await {
                Ok(resp) => {
                    let (resp, stored) = capture::capture(idem, policy, &ticket, resp).await;
                    Ran::Answered(resp, stored)
                }
                // The inner service failed without an answer, after it started.
                Err(_) => Ran::Panicked,
            }
        };
        let verdict = run_handler(idem, policy, &ticket, run).await;
        armed.disarm();
        settle(idem, &ticket, verdict).await
    };
    let Task { work, early } = task(&idem, engine, policy, keyed, run);
    let spawned = tokio::spawn(Box::pin(work).in_current_span());
    Ok(answer(&idem, &policy, early, spawned).await)
}

/// Who sent the request, as the app's scope says: the principal a keyed request runs under, or
/// the problem it is refused with (see `Idempotency::principal_of`); the outer `Err` when the
/// scope is one the tower layer cannot read (a closure over actix-web's request).
pub(super) fn principal(
    idem: &Idempotency,
    parts: &http::request::Parts,
) -> Result<Result<String, Problem>, Problem> {
    let Some(found) = idem.shared.scope.of_http(parts) else {
        return Err(not_here(
            "a scope given as a closure over actix-web's request (use `scope_by_extension`, \
             `scope_by_header` or `unscoped`)",
        ));
    };
    Ok(found.principal(idem.shared.anonymous))
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
    if !policy.transactional {
        return None;
    }
    tracing::error!(
        endpoint = policy.endpoint,
        "idem: transactional is not available behind the tower layer"
    );
    Some(not_here("transactional"))
}
