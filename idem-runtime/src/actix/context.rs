//! `IdempotencyContext`: what a handler may learn about the idempotent request it runs.

use actix_web::{dev, FromRequest, HttpMessage, HttpRequest};
use std::future::{ready, Ready};

use crate::FencingToken;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyContext {
    key: String,
    token: FencingToken,
    attempt: u32,
}

impl IdempotencyContext {
    pub(crate) fn new(key: &str, token: FencingToken, attempt: u32) -> Self {
        IdempotencyContext {
            key: key.to_owned(),
            token,
            attempt,
        }
    }

    /// A stable, opaque id of this operation (hex of the hashed idempotency key, scoped to the
    /// endpoint and principal): the same on every attempt, never the raw key.
    pub fn key(&self) -> &str {
        &self.key
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
