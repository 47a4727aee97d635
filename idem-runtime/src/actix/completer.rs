//! The completer: finishes operations with steps whose attempt died (its lease lapsed before
//! completion) without waiting for their client, by re-sending each one's stored request through
//! the app itself — as the client's own retry would — so that the handler runs again, skips its
//! finished steps and completes the record. The client's later retry simply replays.

use actix_http::Request;
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::HttpMessage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::resumed::{Resumed, Stage};
use super::steps::REQUEST_PURPOSE;
use super::Idempotency;
use crate::store::postgres::Abandoned;
use crate::StoredResponse;

/// Put in the extensions of a completer's last request: the runtime records the operation's
/// terminal failure instead of running the handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GiveUp {
    /// The completer attempts made.
    pub(crate) attempts: u32,
}

/// What the completer does with an operation after re-sending it.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Nothing: its next claim (after the backoff) tries again, the attempt counted.
    Retry,
    /// Give the attempt back: nothing was tried.
    Refund,
    /// Leave it for good (to its client's retry).
    Fail,
}

/// What the answer to a re-sent request (`give_up`: its last one) means for its operation.
fn next_step(answer: &Result<(u16, Stage), String>, give_up: bool) -> Next {
    match answer {
        // Refused for now, before the handler ran, by idem or by a middleware in front of it
        // (a limit, a drain): nothing was tried, so no attempt is used up.
        Ok((429 | 503, stage)) if *stage < Stage::Ran => Next::Refund,
        // idem answered that another attempt holds the key (409, or 202 under `accepted`).
        Ok((202 | 409, Stage::Reached)) => Next::Refund,
        // Answered without reaching an idempotent endpoint, and not by a refusal: the route
        // moved (404, 405) or something else handled it (2xx, 3xx). Re-sending would run that
        // again and again. (A middleware's 401/403/5xx is an attempt like any other.)
        Ok((status, Stage::Outside)) if *status < 400 || matches!(status, 404 | 405) => {
            tracing::error!(status, "idem: the completer's request did not reach an #[idempotent] endpoint; the operation is left to its client");
            Next::Fail
        }
        // The last word was this completer's own request's: recorded as the operation's
        // failure, or refused by the app (its auth, say) — the completer stops here either
        // way, and a client's retry may still finish it.
        _ if give_up => Next::Fail,
        _ => Next::Retry,
    }
}

/// Settings of a [`Completer`]; from [`Idempotency::completer`].
#[derive(Debug, Clone)]
pub struct CompleterBuilder {
    idem: Idempotency,
    every: Duration,
    max_attempts: u32,
    backoff: Duration,
    batch: i64,
}

/// A running completer (see [`Idempotency::completer`]); it stops when dropped or
/// [`stop`](Completer::stop)ped.
#[derive(Debug)]
pub struct Completer {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Idempotency {
    /// A completer for this app's operations with steps (handlers taking
    /// [`Steps`](crate::Steps), on a PostgreSQL store): every `every` (1 s by default) it claims
    /// the operations whose lease lapsed before they completed — their instance crashed or was
    /// killed — and re-sends each one's stored request through the app, which resumes it at its
    /// first unfinished step. One per app instance; several instances share the work (each
    /// operation is claimed by one of them, and its lease fences the rest).
    ///
    /// An operation gets `max_attempts` (5) tries, `backoff · 2^n` apart (1 s · 2^n); after the
    /// last, its terminal failure is recorded — `500 urn:idem:problem:operation-failed`,
    /// replayed to every retry, never run again — for an operator to settle.
    ///
    /// The re-sent request runs under the operation's recorded storage key and principal (see
    /// [`Resumed`]), not under what its own headers would derive. It keeps the method, path and
    /// query, body, `Content-Type`, `Content-Encoding`, `Authorization`, `Cookie` and the key's
    /// header, sealed under the app secret (which `Steps` requires), and only until the
    /// operation completes or fails: the app authenticates it as it did the client's, so a
    /// credential revoked in between makes it fail (an attempt) unless the app's auth lets
    /// [`Resumed`] requests through. Only this app's operations (its `key_prefix`) are claimed;
    /// a 409, 429 or 503 answer uses up no attempt.
    pub fn completer(&self) -> CompleterBuilder {
        CompleterBuilder {
            idem: self.clone(),
            every: Duration::from_secs(1),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            batch: 16,
        }
    }
}

impl CompleterBuilder {
    /// How often it looks for abandoned operations (1 s by default): an operation is finished
    /// within about its lease plus this, plus the handler's own time.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Tries per operation before its terminal failure is recorded (5 by default).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The pause after the first try, doubled after each later one (1 s by default).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts the completer on a thread of its own, with the app `app` builds — the same
    /// factory given to `HttpServer::new`, so that the request goes through the same
    /// middleware, data and routes.
    pub fn start<F, I, S, B>(self, app: F) -> Completer
    where
        F: FnOnce() -> I + Send + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<
                Request,
                Config = AppConfig,
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
            > + 'static,
        S::InitError: std::fmt::Debug,
        B: MessageBody + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (stop2, wake2) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("idem-completer".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let srv = match app().into_factory().new_service(AppConfig::default()).await {
                        Ok(srv) => srv,
                        Err(error) => {
                            tracing::error!(?error, "idem: the completer could not build the app");
                            return;
                        }
                    };
                    while !stop2.load(Ordering::SeqCst) {
                        self.tick(&srv).await;
                        tokio::select! {
                            _ = tokio::time::sleep(self.every) => {}
                            _ = wake2.notified() => {}
                        }
                    }
                });
            });
        match thread {
            Ok(thread) => Completer {
                stop,
                wake,
                thread: Some(thread),
            },
            Err(error) => {
                tracing::error!(%error, "idem: the completer's thread could not start");
                Completer {
                    stop,
                    wake,
                    thread: None,
                }
            }
        }
    }

    /// One pass: claims what is due on every PostgreSQL store of the app, and re-sends it.
    async fn tick<S, B>(&self, srv: &S)
    where
        S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    {
        let mut seen = Vec::new();
        for engine in self.idem.engines() {
            let Some(tx) = engine.store().transactional() else {
                continue;
            };
            let pg = tx.postgres();
            // Named stores may share one database table.
            if seen.contains(&pg.table_name()) {
                continue;
            }
            seen.push(pg.table_name());
            let claimed = match pg
                .claim_abandoned(self.batch, self.backoff, self.idem.prefix())
                .await
            {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "idem: the completer could not read the store");
                    continue;
                }
            };
            for op in claimed {
                let give_up = op.attempts > self.max_attempts;
                let key = op.key.clone();
                let answer = self.resend(srv, op, give_up).await;
                match &answer {
                    Ok((status, stage)) => tracing::info!(
                        key = %key,
                        status,
                        ?stage,
                        give_up,
                        "idem: the completer re-sent an abandoned operation"
                    ),
                    Err(why) => tracing::warn!(
                        key = %key,
                        why,
                        "idem: the completer could not re-send an abandoned operation"
                    ),
                }
                let result = match next_step(&answer, give_up) {
                    Next::Retry => continue,
                    Next::Refund => pg.refund_attempt(&key).await,
                    Next::Fail => pg.mark_failed(&key).await,
                };
                if let Err(error) = result {
                    tracing::warn!(key = %key, %error, "idem: the completer could not note an operation's attempt");
                }
            }
        }
    }

    /// Re-sends the stored request of `op` through the app: its status, and how far it got.
    async fn resend<S, B>(
        &self,
        srv: &S,
        op: Abandoned,
        give_up: bool,
    ) -> Result<(u16, Stage), String>
    where
        S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    {
        let plain = match &self.idem.shared.sealer {
            Some(s) => s
                .open_blob(REQUEST_PURPOSE, &op.key, &op.request)
                .map_err(|e| format!("its stored request cannot be opened: {e}"))?,
            None => op.request,
        };
        let stored = StoredResponse::decode(plain.into())
            .map_err(|e| format!("its stored request is corrupt: {e}"))?;
        let mut req = Request::with_payload(actix_http::Payload::from(stored.body().clone()));
        let mut resumed = Resumed {
            key: op.key,
            principal: None,
            stage: Arc::default(),
        };
        let stage = resumed.stage.clone();
        for (name, value) in stored.shared_headers() {
            match name {
                ":principal" => {
                    resumed.principal = Some(
                        String::from_utf8(value.to_vec())
                            .map_err(|e| format!("bad principal: {e}"))?,
                    )
                }
                ":method" => {
                    req.head_mut().method =
                        Method::from_bytes(&value).map_err(|e| format!("bad method: {e}"))?
                }
                ":path" => {
                    req.head_mut().uri =
                        Uri::try_from(value.as_ref()).map_err(|e| format!("bad path: {e}"))?
                }
                _ => {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_maybe_shared(value),
                    ) {
                        req.head_mut().headers.append(n, v);
                    }
                }
            }
        }
        // The operation it resumes: its record's key and principal, whatever the headers say.
        req.extensions_mut().insert(resumed);
        if give_up {
            req.extensions_mut().insert(GiveUp {
                attempts: op.attempts - 1,
            });
        }
        // A middleware's refusal comes back as an error; its status is what a client would get.
        let status = match srv.call(req).await {
            Ok(resp) => resp.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        Ok((status.as_u16(), Stage::of(&stage)))
    }
}

impl Completer {
    /// Stops it after the operation it is re-sending, if any, and waits for that. Call it off
    /// the runtime that opened the store's connections (`spawn_blocking`, or after that runtime
    /// stopped): the operation in flight may need it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Completer {
    /// Tells the thread to stop and does not wait for it: a drop may run on the thread whose
    /// runtime drives the store's connections (a panicking test, a server's own thread), which
    /// the completer's operation in flight may need to finish. [`stop`](Completer::stop) waits.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}
