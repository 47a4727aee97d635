//! `IdempotencyContext`: what a handler may learn about the idempotent request it runs.

use actix_web::{dev, FromRequest, HttpMessage, HttpRequest};
use std::future::{ready, Ready};
use std::sync::Arc;

use crate::secret::KeyDerivation;
use crate::{FencingToken, StorageKey};

/// An extractor for `#[idempotent]` handlers: the hashed key, the fencing token and the attempt
/// number of this execution, to hand to systems downstream (a database unique constraint, a
/// payment processor's own idempotency key, a fenced write).
///
/// It exists only while the handler runs under a key; on an endpoint with `required = false`,
/// take `Option<IdempotencyContext>`, which is `None` for requests without a key.
///
/// ```ignore
/// // Not compiled here: the attribute comes from `idem`, which depends on this crate
/// // (tests/ui/pass/extractors.rs compiles handlers that take the context).
/// #[post("/payments")]
/// #[idempotent]
/// async fn create(ctx: IdempotencyContext, body: web::Json<NewPayment>) -> HttpResponse {
///     processor.charge(&body, ctx.key()).await // the processor deduplicates on our key too
/// }
/// ```
#[derive(Clone)]
pub struct IdempotencyContext {
    /// The record's storage key, and where its id starts in it.
    storage_key: String,
    id_at: usize,
    token: FencingToken,
    attempt: u32,
    derivation: Arc<KeyDerivation>,
    /// The id of a multi-step operation, once its `Steps` started (shared with them).
    operation: Arc<std::sync::OnceLock<i64>>,
}

impl std::fmt::Debug for IdempotencyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyContext")
            .field("key", &self.key())
            .field("token", &self.token)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl PartialEq for IdempotencyContext {
    fn eq(&self, other: &Self) -> bool {
        (&self.storage_key, self.token, self.attempt)
            == (&other.storage_key, other.token, other.attempt)
    }
}

impl Eq for IdempotencyContext {}

impl IdempotencyContext {
    pub(crate) fn new(
        key: &StorageKey,
        token: FencingToken,
        attempt: u32,
        derivation: Arc<KeyDerivation>,
    ) -> Self {
        let storage_key = key.as_str().to_owned();
        IdempotencyContext {
            id_at: storage_key.len() - key.status_id().len(),
            storage_key,
            token,
            attempt,
            derivation,
            operation: Arc::default(),
        }
    }

    /// Where a multi-step operation's id goes once its steps start.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn operation(&self) -> Arc<std::sync::OnceLock<i64>> {
        self.operation.clone()
    }

    /// A stable, opaque id of this operation (hex of the hashed idempotency key, scoped to the
    /// endpoint and principal): the same on every attempt, never the raw key.
    pub fn key(&self) -> &str {
        &self.storage_key[self.id_at..]
    }

    /// The key to send downstream as another system's `Idempotency-Key` for `step` of this
    /// operation (a payment processor's charge): 32 hex digits derived from this operation's
    /// record and `step` under the app secret — the same on every attempt and instance,
    /// different per step and operation, unguessable, and unrelated to the client's raw key. A
    /// call repeated after a crash is then deduplicated downstream. The same key
    /// `Steps::downstream_key` gives (feature `postgres`).
    pub fn downstream_key(&self, step: &str) -> String {
        let operation = self.operation.get().copied().filter(|op| *op != 0);
        self.derivation
            .downstream_key(&self.storage_key, operation, step)
    }

    /// The fencing token of this attempt's lease: larger for every later attempt on the same
    /// store, so a downstream system can refuse writes from a superseded attempt.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// 1 for the first execution of this key; more after a release (extractor error, panic, a
    /// 5xx under `result`) or after a crashed attempt's lease ran out.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl FromRequest for IdempotencyContext {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut dev::Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<IdempotencyContext>()
                .cloned()
                .ok_or_else(|| {
                    actix_web::error::ErrorInternalServerError(
                        "IdempotencyContext exists only in an #[idempotent] handler running under \
                         a key; take Option<IdempotencyContext> where keys are optional",
                    )
                }),
        )
    }
}
