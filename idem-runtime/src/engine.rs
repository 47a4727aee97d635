//! The decision flow of DESIGN §3, independent of any web framework: given a scoped key and a
//! fingerprint, ask the store once and say what to do; then, for the request that runs, keep its
//! lease alive and write (or release) its record with fencing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::problem::{Problem, ProblemKind};
use crate::store::{Begin, Fenced, Store, StoreError};
use crate::{
    FencingToken, Fingerprint, OnConflict, OnStoreError, Policy, StorageKey, StoredResponse,
};

/// Headers never stored for replay, whatever the allow-list says: credentials, per-response
/// values and hop-by-hop headers.
pub const NEVER_REPLAYED: &[&str] = &[
    "set-cookie",
    "authorization",
    "www-authenticate",
    "proxy-authenticate",
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

/// Headers replayed by default.
pub const DEFAULT_REPLAYED: &[&str] = &[
    "content-type",
    "content-language",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "link",
    "cache-control",
];

fn in_progress() -> Problem {
    Problem::new(
        ProblemKind::InProgress,
        "a request with this Idempotency-Key is still being processed; \
         retry with the same key after Retry-After seconds",
    )
    // Handlers usually finish long before their lease runs out; the shortest hint gets the
    // retry its replay soonest.
    .retry_after(1)
}

/// What the engine decided for one request.
#[derive(Debug)]
pub enum Decision {
    /// Run the handler; the ticket holds the lease.
    Execute(Ticket),
    /// Answer with the stored response.
    Replay {
        /// The response to replay.
        response: StoredResponse,
        /// Whether this duplicate waited for it (`on_conflict = "wait"`).
        waited: bool,
    },
    /// Answer with this problem; the handler does not run.
    Reject(Problem),
    /// The store failed and the policy says `proceed`: run the handler without protection.
    Unprotected,
    /// A duplicate in progress under `accepted`: answer 202 with the status resource of this key.
    Accepted(StorageKey),
    /// A duplicate in progress under `webhook`: answer 202 and deliver the response later.
    Webhook(StorageKey),
}

/// The framework-agnostic engine: one store, its call deadline, and the replay allow-list.
pub struct Engine {
    store: Arc<dyn Store>,
    store_timeout: Duration,
    replay_headers: Vec<String>,
    renew_leases: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store_timeout", &self.store_timeout)
            .field("replay_headers", &self.replay_headers)
            .finish_non_exhaustive()
    }
}

/// Runs one store call under `limit`, turning an overrun into [`StoreError::Timeout`].
pub(crate) async fn deadline<T>(
    op: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)));
    crate::observe::store_call(op, started.elapsed(), result.is_err());
    result
}

impl Engine {
    /// An engine over `store`; every store call gets `store_timeout`. `extra_replay_headers` are
    /// added to [`DEFAULT_REPLAYED`]; names in [`NEVER_REPLAYED`] are dropped from it.
    pub fn new(
        store: Arc<dyn Store>,
        store_timeout: Duration,
        extra_replay_headers: &[String],
    ) -> Self {
        let mut replay_headers: Vec<String> =
            DEFAULT_REPLAYED.iter().map(|s| s.to_string()).collect();
        for h in extra_replay_headers {
            let h = h.to_ascii_lowercase();
            if NEVER_REPLAYED.contains(&h.as_str()) {
                tracing::warn!(header = %h, "idem: this header is never replayed; ignoring it in the allow-list");
            } else if !replay_headers.contains(&h) {
                replay_headers.push(h);
            }
        }
        Engine {
            store,
            renew_leases: true,
            store_timeout,
            replay_headers,
        }
    }

    /// Turns lease renewal off. A test hook for the fault suite (a handler slower than its
    /// lease is then taken over, and fencing must refuse its late `complete`); never useful in
    /// production.
    #[doc(hidden)]
    pub fn without_lease_renewal(mut self) -> Self {
        self.renew_leases = false;
        self
    }

    /// The store behind this engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The deadline of every store call.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Whether a response header named `name` (lower case) is kept for replay.
    pub fn is_replayed(&self, name: &str) -> bool {
        self.replay_headers.iter().any(|h| h == name)
    }

    /// Step 4 of the flow: one atomic `begin`, and what it means for this request. A duplicate
    /// in progress gets what the endpoint's [`OnConflict`] promises; with `wait`, this returns
    /// once the first request completes (its replay), is released (this request then runs), or
    /// `wait_timeout` passes (409).
    pub async fn begin(
        self: &Arc<Self>,
        policy: &Policy,
        key: StorageKey,
        fingerprint: Fingerprint,
    ) -> Decision {
        let wait_until = tokio::time::Instant::now() + policy.wait_timeout;
        let mut waited = false;
        loop {
            let answer = deadline(
                "begin",
                self.store_timeout,
                self.store
                    .begin(&key, &fingerprint, policy.lease, policy.ttl),
            )
            .await;
            return match answer {
                Ok(Begin::Acquired { token, attempt }) => {
                    if attempt > 1 {
                        crate::observe::count("idem_reattempts_total");
                    }
                    Decision::Execute(Ticket {
                        engine: self.clone(),
                        key,
                        token,
                        attempt,
                        lease: policy.lease,
                        ttl: policy.ttl,
                    })
                }
                Ok(Begin::Replay(response)) => Decision::Replay { response, waited },
                Ok(Begin::Mismatch) => Decision::Reject(Problem::new(
                    ProblemKind::KeyReused,
                    "this Idempotency-Key was already used with a different request payload; \
                     use a new key for a new request",
                )),
                Ok(Begin::InProgress { .. }) => match policy.on_conflict {
                    OnConflict::RetryAfter => Decision::Reject(in_progress()),
                    OnConflict::Accepted => Decision::Accepted(key),
                    OnConflict::Webhook => Decision::Webhook(key),
                    OnConflict::Wait => {
                        let now = tokio::time::Instant::now();
                        if now >= wait_until {
                            return Decision::Reject(in_progress());
                        }
                        let left = wait_until - now;
                        // `wait` makes its own store calls; bound the whole of it.
                        let waited_for = deadline(
                            "wait",
                            left + self.store_timeout,
                            self.store.wait(&key, left),
                        )
                        .await;
                        if let Err(e) = waited_for {
                            return self.store_failed(policy, e);
                        }
                        waited = true;
                        continue;
                    }
                },
                Err(e) => self.store_failed(policy, e),
            };
        }
    }

    /// Step 7: fail closed (503) or open, per policy.
    pub fn store_failed(&self, policy: &Policy, error: StoreError) -> Decision {
        if matches!(error, StoreError::Full) {
            crate::observe::count("idem_store_full_total");
        }
        if policy.on_store_error == OnStoreError::Proceed {
            tracing::warn!(endpoint = policy.endpoint, %error, "idem: store failed; running the handler WITHOUT idempotency protection (on_store_error = \"proceed\")");
            return Decision::Unprotected;
        }
        tracing::error!(endpoint = policy.endpoint, %error, "idem: store failed; rejecting the request");
        Decision::Reject(self.store_problem(&error))
    }

    /// The 503 a client gets when the store failed.
    pub fn store_problem(&self, error: &StoreError) -> Problem {
        match error {
            StoreError::Full => Problem::new(
                ProblemKind::StoreUnavailable,
                "the idempotency store is full; retry later",
            )
            .retry_after(5),
            _ => Problem::new(
                ProblemKind::StoreUnavailable,
                "the idempotency store is unavailable; retry with the same key later",
            )
            .retry_after(1),
        }
    }

    /// Forgets the record of `key` (an operator's purge), under the store deadline.
    pub async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        deadline("purge", self.store_timeout, self.store.purge(key)).await
    }

    /// Reads the record of `key`, under the store deadline.
    pub async fn get(&self, key: &StorageKey) -> Result<Option<crate::Record>, StoreError> {
        deadline("get", self.store_timeout, self.store.get(key)).await
    }
}

/// The lease on one key, held by the request that runs its handler.
#[derive(Clone)]
pub struct Ticket {
    engine: Arc<Engine>,
    key: StorageKey,
    token: FencingToken,
    attempt: u32,
    lease: Duration,
    ttl: Duration,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The storage key this ticket holds.
    pub fn key(&self) -> &StorageKey {
        &self.key
    }

    /// The fencing token of this lease.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Which acquisition of the key this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The engine this lease was taken through.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// How long the completed response is to be kept.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Runs `work` while renewing the lease every `lease / 3`, so a slow handler is not taken
    /// over by a duplicate. If the lease is lost anyway (the store was unreachable for a whole
    /// lease), `work` still finishes and the later `complete` is refused by fencing.
    pub async fn keep_alive<F: Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        // A handler that finishes without waiting needs no renewal timer at all.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = first {
            return out;
        }
        let every = (self.lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewing = self.engine.renew_leases;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick(), if renewing => {
                    let store = &self.engine.store;
                    match deadline("renew", self.engine.store_timeout, store.renew(&self.key, self.token, self.lease)).await {
                        Ok(Fenced::Done) => crate::observe::count("idem_lease_renewals_total"),
                        Ok(Fenced::Lost) => {
                            crate::observe::count("idem_lease_lost_total");
                            tracing::warn!(key = %self.key, "idem: lease lost while the handler runs; its response will not be stored");
                            renewing = false;
                        }
                        Err(error) => tracing::warn!(key = %self.key, %error, "idem: lease renewal failed; will retry"),
                    }
                }
            }
        }
    }

    /// Stores the handler's response for replay. Returns whether it was stored; a failure is
    /// logged, since the client still gets its response.
    pub async fn complete(&self, response: &StoredResponse) -> bool {
        let store = &self.engine.store;
        match deadline(
            "complete",
            self.engine.store_timeout,
            store.complete(&self.key, self.token, response, self.ttl),
        )
        .await
        {
            Ok(Fenced::Done) => true,
            Ok(Fenced::Lost) => {
                crate::observe::count("idem_lease_lost_total");
                tracing::warn!(key = %self.key, "idem: lease was lost before completion; the response was not stored (fencing)");
                false
            }
            Err(error) => {
                tracing::error!(key = %self.key, %error, "idem: could not store the response; the key stays in progress until its lease ends");
                false
            }
        }
    }

    /// Forgets the in-progress record so the next request with this key runs afresh.
    pub async fn release(&self) {
        let store = &self.engine.store;
        if let Err(error) = deadline(
            "release",
            self.engine.store_timeout,
            store.release(&self.key, self.token),
        )
        .await
        {
            tracing::error!(key = %self.key, %error, "idem: could not release the key; it frees itself when its lease ends");
        }
    }
}
