//! Multi-step operations: [`Steps`], recovery points on PostgreSQL.
//!
//! An operation with several side effects in several systems (create a row, charge a card,
//! send a receipt) records each step's result under its record as the step finishes. A retry —
//! or the completer, after a crash — runs the handler again, and every finished step returns
//! its recorded result instead of running: the operation resumes at the first unfinished step.

use actix_web::http::header::{self, HeaderName};
use actix_web::{dev, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Mutex};

use crate::engine::deadline;
use crate::problem::{Problem, ProblemKind};
use crate::seal::Sealer;
use crate::secret::KeyDerivation;
use crate::store::postgres::{PostgresStore, RecordedStep};
use crate::store::{Fenced, StoreError};
use crate::{FencingToken, StorageKey, StoredResponse};

/// The purpose a stored request is sealed for (see `Sealer::seal_blob`).
pub(crate) const REQUEST_PURPOSE: &str = "request";

/// What an attempt of an endpoint on a PostgreSQL store hands to [`Steps`]: put in the
/// request's extensions by the runtime before the handler's extractors run.
pub(crate) struct StepsContext {
    pub(crate) store: PostgresStore,
    pub(crate) key: StorageKey,
    pub(crate) token: FencingToken,
    pub(crate) attempt: u32,
    /// Who the request belongs to (the app's scope), kept with the request: the completer
    /// resumes the operation under it.
    pub(crate) principal: String,
    /// The operation's id, set once its steps start (shared with the `IdempotencyContext`,
    /// whose downstream keys must agree).
    pub(crate) operation: Arc<std::sync::OnceLock<i64>>,
    /// The request's body, kept with the request for the completer.
    pub(crate) body: bytes::Bytes,
    /// The app's key header, and the endpoint's own key sources (its header sources are kept
    /// with the request too).
    pub(crate) app_header: HeaderName,
    pub(crate) key_sources: &'static [crate::KeySource],
    pub(crate) sealer: Option<Arc<Sealer>>,
    pub(crate) derivation: Arc<KeyDerivation>,
    /// The store deadline: every call `Steps` makes to the store (a pooled connection
    /// included) ends within it, as `begin` does — a pool exhausted by long transactions
    /// answers 503, it does not hold the request without bound.
    pub(crate) timeout: std::time::Duration,
}

/// The request headers a completer re-sends besides the key's: the body's type and encoding,
/// the credentials the app authenticates with (they decide the principal, hence the storage
/// key) and cookies.
const RESENT: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// The request in its stored form: `:method`, `:path` and `:principal` pseudo-headers, the
/// kept headers and the body, in a record's encoding, sealed under the app secret.
fn stored_request(req: &HttpRequest, ctx: &StepsContext, sealer: &Sealer) -> Vec<u8> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path(), |p| p.as_str());
    let mut headers = vec![
        (":method", req.method().as_str().as_bytes()),
        (":path", path.as_bytes()),
        (":principal", ctx.principal.as_bytes()),
    ];
    let endpoint_headers = ctx.key_sources.iter().filter_map(|s| match s {
        crate::KeySource::Header(n) => HeaderName::from_bytes(n.as_bytes()).ok(),
        _ => None,
    });
    let key_headers: Vec<HeaderName> = std::iter::once(ctx.app_header.clone())
        .chain(endpoint_headers)
        .collect();
    for name in RESENT.iter().chain(&key_headers) {
        for value in req.headers().get_all(name) {
            headers.push((name.as_str(), value.as_bytes()));
        }
    }
    let encoded = StoredResponse::new(0, headers, &ctx.body).encode();
    sealer.seal_blob(REQUEST_PURPOSE, ctx.key.as_str(), &encoded)
}

/// An extractor for the steps of a multi-step operation (an `#[idempotent]` handler on a
/// PostgreSQL store). Each step runs at most once per operation, whatever crashes and retries
/// happen between them:
///
/// - [`run`](Steps::run): a step that writes to PostgreSQL; its writes and its recovery point
///   commit in one transaction.
/// - [`foreign`](Steps::foreign): a step in another system (an HTTP call); its result is
///   recorded right after it returns, and it gets a [downstream key](Steps::downstream_key) to
///   send as that system's own `Idempotency-Key`, so a call retried after a crash between its
///   return and its record is deduplicated there.
///
/// Steps run one after another, in the same order on every attempt: the n-th step called is
/// matched with the n-th recorded, by name. A different name there means the handler's code
/// changed between attempts: [`StepError::Changed`], never a silent skip.
///
/// ```ignore
/// // Not compiled here: the attribute comes from `idem` (examples/rides.rs runs this).
/// #[post("/rides")]
/// #[idempotent(store = "pg", guarantee = "result")]
/// async fn create(body: web::Json<NewRide>, steps: Steps) -> Result<HttpResponse, StepError> {
///     let ride: i64 = steps.run("create_ride", async |tx| {
///         tx.query_one("INSERT INTO rides (rider) VALUES ($1) RETURNING id", &[&body.rider])
///             .await
///             .map(|row| row.get(0))
///     }).await?;
///     let charge: String = steps.foreign("charge", async |key| processor.charge(key, 1200).await).await?;
///     steps.run("send_receipt", async |tx| {
///         tx.execute("INSERT INTO outbox (ride) VALUES ($1)", &[&ride]).await
///     }).await?;
///     Ok(HttpResponse::Created().json((ride, charge)))
/// }
/// ```
pub struct Steps {
    ctx: Arc<StepsContext>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps")
            .field("attempt", &self.ctx.attempt)
            .finish_non_exhaustive()
    }
}

struct State {
    recorded: Vec<RecordedStep>,
    next: usize,
}

/// Why a step did not return a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The step's own code failed (its transaction was rolled back): nothing was recorded, and
    /// the next attempt runs it again.
    #[error("step `{step}` failed: {source}")]
    Failed {
        /// The step.
        step: String,
        /// What it returned.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The handler calls another step where an earlier attempt recorded `recorded`: its code
    /// changed between the attempts.
    #[error(
        "step #{seq} is `{called}` in this attempt, but an earlier attempt of this operation \
         recorded `{recorded}` there: the handler's steps changed between attempts"
    )]
    Changed {
        /// The step's place (0 for the first).
        seq: usize,
        /// The name an earlier attempt recorded.
        recorded: String,
        /// The name this attempt called.
        called: String,
    },
    /// Another attempt took the operation over (this one's lease was lost): the step was not
    /// recorded by this attempt (its transaction rolled back).
    #[error("step `{step}`: another attempt took this operation over")]
    LeaseLost {
        /// The step.
        step: String,
    },
    /// The store failed; whether a step's transaction committed is unknown when its `COMMIT`
    /// went unanswered, and the next attempt finds out.
    #[error("step `{step}`: the idempotency store failed: {source}")]
    Store {
        /// The step.
        step: String,
        /// The store's error.
        source: StoreError,
    },
    /// `Steps` was taken by a handler that cannot have steps: not `#[idempotent]`, run without
    /// a key, or on a store other than PostgreSQL (recovery points are kept beside the record).
    #[error("Steps needs an #[idempotent] endpoint on a PostgreSQL store, running under a key")]
    Unsupported,
    /// The app has no secret ([`IdempotencyBuilder::secret`](crate::IdempotencyBuilder::secret)):
    /// steps keep the request's credentials for the completer, sealed under it, and derive
    /// downstream keys from it. Refused before anything runs.
    #[error(
        "Steps needs an app secret (IdempotencyBuilder::secret): the stored request holds \
         credentials sealed under it, and downstream keys are derived from it"
    )]
    NoSecret,
    /// A recorded result could not be opened or decoded as the type asked for.
    #[error("step `{step}`: its recorded result cannot be read: {why}")]
    Unreadable {
        /// The step.
        step: String,
        /// Why.
        why: String,
    },
}

impl ResponseError for StepError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.problem().status())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        super::problem_response(&self.problem())
    }
}

impl StepError {
    /// The problem a client gets for this error.
    fn problem(&self) -> Problem {
        let kind = match self {
            StepError::Failed { .. } => ProblemKind::HandlerFailed,
            StepError::Changed { .. } => ProblemKind::StepsChanged,
            StepError::LeaseLost { .. } => ProblemKind::InProgress,
            StepError::Store { .. } => ProblemKind::StoreUnavailable,
            StepError::Unreadable { .. } => ProblemKind::RecordUnreadable,
            StepError::Unsupported | StepError::NoSecret => ProblemKind::Internal,
        };
        let p = Problem::new(kind, self.to_string());
        match kind {
            ProblemKind::InProgress | ProblemKind::StoreUnavailable => p.retry_after(1),
            _ => p,
        }
    }
}

/// What the n-th step call finds.
enum Claim {
    /// Recorded by an earlier attempt: its (sealed) result.
    Done(i32, Vec<u8>),
    /// To run, at this place.
    Run(i32),
}

impl Steps {
    /// The key to send downstream as that system's `Idempotency-Key` for `step`: stable
    /// across the attempts of this operation and the instances of the app (derived from the
    /// record's key under the app secret), different per step, and unrelated to the client's
    /// own key.
    pub fn downstream_key(&self, step: &str) -> String {
        let operation = self.ctx.operation.get().copied().filter(|op| *op != 0);
        self.ctx
            .derivation
            .downstream_key(self.ctx.key.as_str(), operation, step)
    }

    /// This attempt's number (1 for the first execution of the operation).
    pub fn attempt(&self) -> u32 {
        self.ctx.attempt
    }

    /// Runs `step` in a transaction of its own on the store's database, unless an earlier
    /// attempt finished it: its writes and its recovery point (the serialized result) commit
    /// together, and only while this attempt holds the operation's lease. Returns the result,
    /// or the recorded one.
    pub async fn run<T, E, F>(&self, name: &str, step: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, E>,
    {
        let seq = match self.claim(name)? {
            Claim::Done(seq, result) => return self.decode(seq, name, &result),
            Claim::Run(seq) => seq,
        };
        let store_err = |source| StepError::Store {
            step: name.to_owned(),
            source,
        };
        let mut client = self.connection().await.map_err(store_err)?;
        let tx = self
            .within("BEGIN", client.transaction())
            .await
            .map_err(store_err)?;
        // Dropping `tx` on an early return rolls it back.
        let value = step(&tx).await.map_err(|e| StepError::Failed {
            step: name.to_owned(),
            source: e.into(),
        })?;
        let result = self.encode(seq, name, &value)?;
        let put =
            self.ctx
                .store
                .put_step_on(&*tx, &self.ctx.key, self.ctx.token, seq, name, &result);
        let fenced = self.within("put_step", put).await.map_err(store_err)?;
        if fenced == Fenced::Lost {
            return Err(StepError::LeaseLost {
                step: name.to_owned(),
            });
        }
        // A commit past its deadline may still have happened: the next attempt finds the step
        // recorded, or runs it (its writes rolled back with it) — never both.
        self.within("COMMIT", tx.commit())
            .await
            .map_err(store_err)?;
        Ok(value)
    }

    /// Runs `step` — a call to another system — unless an earlier attempt finished it, and
    /// records its result as soon as it returns. `step` gets the
    /// [downstream key](Self::downstream_key) of this step: send it as the other system's
    /// `Idempotency-Key`, so that a call repeated after a crash between its return and its
    /// record is deduplicated there.
    pub async fn foreign<T, E, F>(&self, name: &str, step: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: AsyncFnOnce(&str) -> Result<T, E>,
    {
        let seq = match self.claim(name)? {
            Claim::Done(seq, result) => return self.decode(seq, name, &result),
            Claim::Run(seq) => seq,
        };
        let key = self.downstream_key(name);
        let value = step(&key).await.map_err(|e| StepError::Failed {
            step: name.to_owned(),
            source: e.into(),
        })?;
        let result = self.encode(seq, name, &value)?;
        let store_err = |source| StepError::Store {
            step: name.to_owned(),
            source,
        };
        let client = self.connection().await.map_err(store_err)?;
        let put = self.ctx.store.put_step_on(
            &**client,
            &self.ctx.key,
            self.ctx.token,
            seq,
            name,
            &result,
        );
        let fenced = self.within("put_step", put).await.map_err(store_err)?;
        match fenced {
            Fenced::Done => Ok(value),
            Fenced::Lost => Err(StepError::LeaseLost {
                step: name.to_owned(),
            }),
        }
    }

    /// A pooled connection for a step, within the store deadline.
    async fn connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        deadline(
            "step_connection",
            self.ctx.timeout,
            self.ctx.store.step_connection(),
        )
        .await
    }

    /// A driver call of a step, within the store deadline.
    async fn within<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let call = async { call.await.map_err(crate::store::postgres::failed) };
        deadline(op, self.ctx.timeout, call).await
    }

    fn claim(&self, name: &str) -> Result<Claim, StepError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.next;
        s.next += 1;
        let seq = i32::try_from(n).unwrap_or(i32::MAX);
        match s.recorded.get(n) {
            Some(r) if r.name == name => Ok(Claim::Done(r.seq, r.result.clone())),
            Some(r) => Err(StepError::Changed {
                seq: n,
                recorded: r.name.clone(),
                called: name.to_owned(),
            }),
            None => Ok(Claim::Run(seq)),
        }
    }

    fn purpose(seq: i32, name: &str) -> String {
        format!("step:{seq}:{name}")
    }

    fn encode<T: Serialize>(&self, seq: i32, name: &str, value: &T) -> Result<Vec<u8>, StepError> {
        let json = serde_json::to_vec(value).map_err(|e| StepError::Failed {
            step: name.to_owned(),
            source: Box::new(e),
        })?;
        Ok(match &self.ctx.sealer {
            Some(s) => s.seal_blob(&Self::purpose(seq, name), self.ctx.key.as_str(), &json),
            None => json,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        seq: i32,
        name: &str,
        result: &[u8],
    ) -> Result<T, StepError> {
        let unreadable = |why: String| StepError::Unreadable {
            step: name.to_owned(),
            why,
        };
        let json = match &self.ctx.sealer {
            Some(s) => s
                .open_blob(&Self::purpose(seq, name), self.ctx.key.as_str(), result)
                .map_err(|e| unreadable(e.to_string()))?,
            None => result.to_vec(),
        };
        serde_json::from_slice(&json).map_err(|e| unreadable(e.to_string()))
    }
}

impl FromRequest for Steps {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut dev::Payload) -> Self::Future {
        let ctx = req.extensions().get::<Arc<StepsContext>>().cloned();
        let request = ctx.as_ref().map(|ctx| match &ctx.sealer {
            Some(sealer) if ctx.derivation.is_keyed() => Ok(stored_request(req, ctx, sealer)),
            _ => Err(no_secret()),
        });
        Box::pin(async move {
            let (Some(ctx), Some(request)) = (ctx, request) else {
                return Err(StepError::Unsupported.into());
            };
            let request = request?;
            let store_err = |source| StepError::Store {
                step: "(start)".into(),
                source,
            };
            let stored = deadline(
                "put_request",
                ctx.timeout,
                ctx.store.put_request(&ctx.key, ctx.token, &request),
            )
            .await;
            let Some(operation) = stored.map_err(store_err)? else {
                return Err(StepError::LeaseLost {
                    step: "(start)".into(),
                }
                .into());
            };
            // Set at once: should anything below fail, the attempt still knows it stored the
            // request (and deletes it, having run nothing).
            let _ = ctx.operation.set(operation);
            let recorded = deadline("load_steps", ctx.timeout, ctx.store.load_steps(&ctx.key))
                .await
                .map_err(store_err)?;
            Ok(Steps {
                ctx,
                state: Mutex::new(State { recorded, next: 0 }),
            })
        })
    }
}

/// [`StepError::NoSecret`], logged (once per process: every request of the endpoint gets it).
fn no_secret() -> actix_web::Error {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("idem: Steps needs an app secret (IdempotencyBuilder::secret); every request of an endpoint taking Steps is refused (500) until the app has one");
    }
    StepError::NoSecret.into()
}

/// Whether `resp` is a step's failure ([`StepError`]): the operation is half done, so the
/// answer is never kept, whatever the guarantee — the next attempt resumes it.
pub(crate) fn unfinished(resp: &HttpResponse) -> bool {
    resp.error()
        .is_some_and(|e| e.as_error::<StepError>().is_some())
}
