//! What one endpoint asks for. The macro builds a `Policy` as a `const` from the attribute, after
//! checking every value at compile time; hand-written code can build one with [`Policy::new`].

use std::time::Duration;

/// Which requests count as "the same" and which responses are kept (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Guarantee {
    /// Fingerprint of the exact body; every handler response is replayed byte for byte, 5xx
    /// included.
    Strict,
    /// Fingerprint of the canonical JSON body (key order, whitespace, number spelling ignored;
    /// non-JSON bodies by exact bytes); a 5xx is not cached, so the retry runs again.
    Result,
    /// Fingerprint of the JSON fields named by [`Policy::fingerprint`] only; otherwise as
    /// `Result`.
    Semantic,
}

/// What a duplicate gets while the first request with its key is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnConflict {
    /// 409 Conflict with `Retry-After`.
    RetryAfter,
    /// Hold the duplicate until the first completes, then answer with the replay; after
    /// `wait_timeout`, 409 with `Retry-After`.
    Wait,
    /// 202 Accepted with `Location` of a status resource (see
    /// [`Idempotency::status_service`](crate::Idempotency::status_service)).
    Accepted,
    /// 202 Accepted; once the first completes, its response is POSTed to the duplicate's
    /// `Idempotency-Callback` URL (allow-listed, HMAC-signed).
    Webhook,
}

/// What to do when the store cannot be reached or answers too late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Fail closed: 503 with `Retry-After`, the handler does not run.
    Reject,
    /// Fail open: run the handler without protection and log a warning.
    Proceed,
}

/// One endpoint's idempotency settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The handler's module path and name, for logs and for telling handlers apart.
    pub endpoint: &'static str,
    /// The endpoint's stable name (`name = "payments.create"`): the endpoint part of every
    /// storage key, and what metrics and the operator API call it. `None`: the request's method
    /// and matched route pattern (`POST /payments`), read at run time — stable across renames
    /// and moves of the handler, not across a change of its route.
    pub name: Option<&'static str>,
    /// How long a completed response is replayed.
    pub ttl: Duration,
    /// How long a completed 4xx answer is replayed, when shorter than `ttl`
    /// (`client_error_ttl = "1h"`): a client that fixes its request after a 4xx can reuse its
    /// key sooner.
    pub client_error_ttl: Option<Duration>,
    /// Lifetime of the in-progress lock; renewed every `lease / 3` while the handler runs.
    pub lease: Duration,
    /// See [`Guarantee`].
    pub guarantee: Guarantee,
    /// See [`OnConflict`].
    pub on_conflict: OnConflict,
    /// Whether a request without a key is refused (400) or run plainly.
    pub required: bool,
    /// See [`OnStoreError`].
    pub on_store_error: OnStoreError,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body: usize,
    /// With [`OnConflict::Wait`]: how long a duplicate waits before 409.
    pub wait_timeout: Duration,
    /// With [`OnConflict::Accepted`]: the first request itself gets 202 + `Location` when its
    /// handler runs longer than this; the handler goes on to completion.
    pub respond_async_after: Option<Duration>,
    /// With [`Guarantee::Semantic`]: the JSON pointers that decide "same request".
    pub fingerprint: &'static [&'static str],
    /// Response headers replayed for this endpoint on top of the app's allow-list (lower case).
    pub replay_headers: &'static [&'static str],
    /// A named store registered on the app (`IdempotencyBuilder::named_store`); `None` for the
    /// default store.
    pub store: Option<&'static str>,
    /// The handler runs in a transaction on the endpoint's PostgreSQL store (an
    /// `idem_runtime::actix::IdemTx` extractor hands it over) and the stored response is written
    /// in that same transaction: the handler's writes and the record commit together or not at
    /// all.
    pub transactional: bool,
    /// Where the key is read, in order of preference; empty means the app's key header
    /// ([`IdempotencyBuilder::header_name`](crate::IdempotencyBuilder::header_name), by default
    /// `Idempotency-Key`).
    pub key: &'static [crate::KeySource],
    /// JSON pointers whose values are replaced by `"[redacted]"` in the stored copy of the
    /// response (the first client gets them in full, replays do not). A kept body that is not
    /// JSON, or not one these pointers can be applied to, is not stored at all: replays get the
    /// `response-not-kept` marker. Never with `strict`, whose promise is a byte-exact replay.
    pub redact: &'static [&'static str],
}

impl Policy {
    /// Default TTL: 24 hours, as Stripe keeps keys.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
    /// Default lease: 30 seconds.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    /// Default body limit: 2 MiB (actix-web's own JSON default).
    pub const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;
    /// Default `wait_timeout`: 10 seconds.
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults of DESIGN §5 for `endpoint`.
    pub const fn new(endpoint: &'static str) -> Self {
        Policy {
            endpoint,
            name: None,
            ttl: Self::DEFAULT_TTL,
            client_error_ttl: None,
            lease: Self::DEFAULT_LEASE,
            guarantee: Guarantee::Strict,
            on_conflict: OnConflict::RetryAfter,
            required: true,
            on_store_error: OnStoreError::Reject,
            max_body: Self::DEFAULT_MAX_BODY,
            wait_timeout: Self::DEFAULT_WAIT_TIMEOUT,
            respond_async_after: None,
            fingerprint: &[],
            replay_headers: &[],
            store: None,
            transactional: false,
            key: &[],
            redact: &[],
        }
    }
}
