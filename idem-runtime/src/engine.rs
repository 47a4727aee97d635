//! The decision flow of DESIGN §3, independent of any web framework: given a scoped key and a
//! fingerprint, ask the store once and say what to do; then, for the request that runs, keep its
//! lease alive and write (or release) its record with fencing.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::problem::{Problem, ProblemKind};
use crate::rotation::{Earlier, Looked};
use crate::store::{Begin, Store, StoreError};
pub(crate) use crate::ticket::Ticket;
use crate::{Fingerprint, OnConflict, OnStoreError, Policy, StorageKey, StoredResponse};

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

/// Headers replayed by default. `retry-after` keeps a replayed 429/503 meaningful, and
/// `content-encoding` belongs to the body: a handler that compressed its own body is replayed
/// with the same bytes and the same encoding.
pub const DEFAULT_REPLAYED: &[&str] = &[
    "content-type",
    "content-encoding",
    "retry-after",
    "content-language",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "link",
    "cache-control",
];

/// 429 for a principal over its share: new keys per window, or records held.
fn too_many_keys(wait: Duration) -> Problem {
    Problem::new(
        ProblemKind::TooManyKeys,
        "this client started more new operations (or holds more idempotency records) than it \
         may; retry after Retry-After seconds. Other clients are not affected",
    )
    .retry_after(wait.as_secs_f64().ceil() as u64)
}

pub(crate) fn in_progress() -> Problem {
    Problem::new(
        ProblemKind::InProgress,
        "a request with this Idempotency-Key is still being processed; \
         retry with the same key after Retry-After seconds",
    )
    // Handlers usually finish long before their lease runs out; the shortest hint gets the
    // retry its replay soonest.
    .retry_after(1)
}

/// 422 for a key already used with another payload.
pub(crate) fn key_reused() -> Problem {
    Problem::new(
        ProblemKind::KeyReused,
        "this Idempotency-Key was already used with a different request payload; \
         use a new key for a new request",
    )
}

/// A completed record's response, opened (a sealed record) with its key.
pub(crate) fn opened(
    policy: &Policy,
    key: &StorageKey,
    stored: StoredResponse,
) -> Result<StoredResponse, Problem> {
    key.open(stored)
        .map_err(|why| unreadable(policy.endpoint, key, why))
}

/// 500 for a completed record that cannot be opened: the operation ran, so it is neither run
/// again nor answered with a response it cannot vouch for. Logged and counted.
pub(crate) fn unreadable(
    endpoint: &str,
    key: &StorageKey,
    why: crate::seal::Unreadable,
) -> Problem {
    crate::observe::count(crate::observe::metric::RECORD_UNREADABLE_TOTAL);
    tracing::error!(endpoint, key = %key, reason = %why, "idem: a completed record could not be opened; refusing to replay it (and the operation is not run again)");
    Problem::new(
        ProblemKind::RecordUnreadable,
        "the operation with this Idempotency-Key already ran, but its stored result cannot be \
         read; it is not run again",
    )
}

/// What the engine decided for one request.
#[derive(Debug)]
pub(crate) enum Decision {
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
    Webhook(#[cfg_attr(not(feature = "webhook"), allow(dead_code))] StorageKey),
}

/// The framework-agnostic engine: one store, its call deadline, and the replay allow-list.
pub(crate) struct Engine {
    store: Arc<dyn Store>,
    store_timeout: Duration,
    replay_headers: Vec<String>,
    pub(crate) renew_leases: bool,
    /// How long a handler's lease is renewed at most (`IdempotencyBuilder::max_run_time`).
    pub(crate) max_run_time: Duration,
    /// The per-principal limit on new keys, if the app set one.
    admission: Option<Arc<crate::admission::Admission>>,
    /// When the next check that every instance uses the same secret is due, in ms since
    /// `born` (0: at once), and whether one is under way: read on every request, so atomics.
    secret_due_ms: std::sync::atomic::AtomicU64,
    secret_checking: std::sync::atomic::AtomicBool,
    born: crate::clock::Instant,
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
    let started = crate::clock::Instant::now();
    let mut call = std::pin::pin!(call);
    // A store that answers at once (the memory store, a cached record) needs no timer: polled
    // once before one is made.
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(StoreError::Timeout(limit))),
    };
    crate::observe::store_call(op, started.elapsed(), result.is_err());
    result
}

impl Engine {
    /// An engine over `store`; every store call gets `store_timeout`. `extra_replay_headers` are
    /// added to [`DEFAULT_REPLAYED`]; names in [`NEVER_REPLAYED`] are dropped from it.
    pub(crate) fn new(
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
            max_run_time: Self::DEFAULT_MAX_RUN_TIME,
            admission: None,
            secret_due_ms: Default::default(),
            secret_checking: Default::default(),
            born: crate::clock::Instant::now(),
            store_timeout,
            replay_headers,
        }
    }

    /// Limits new keys per principal with `admission` (shared by the app's engines).
    pub(crate) fn with_admission(
        mut self,
        admission: Option<Arc<crate::admission::Admission>>,
    ) -> Self {
        self.admission = admission;
        self
    }

    /// How long a handler's lease is renewed at most, by default: an hour.
    pub(crate) const DEFAULT_MAX_RUN_TIME: Duration = Duration::from_secs(3600);

    /// Renews a handler's lease for at most `max` (see `IdempotencyBuilder::max_run_time`).
    pub(crate) fn with_max_run_time(mut self, max: Duration) -> Self {
        self.max_run_time = max;
        self
    }

    /// Turns lease renewal off. A test hook for the fault suite (a handler slower than its
    /// lease is then taken over, and fencing must refuse its late `complete`); never useful in
    /// production.
    #[doc(hidden)]
    pub(crate) fn without_lease_renewal(mut self) -> Self {
        self.renew_leases = false;
        self
    }

    /// The store behind this engine.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The deadline of every store call.
    pub(crate) fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Whether a response header named `name` (lower case) is kept for replay.
    pub(crate) fn is_replayed(&self, name: &str) -> bool {
        self.replay_headers.iter().any(|h| h == name)
    }

    /// Step 4 of the flow: one atomic `begin`, and what it means for this request. A duplicate
    /// in progress gets what the endpoint's [`OnConflict`] promises; with `wait`, this returns
    /// once the first request completes (its replay), is released (this request then runs), or
    /// `wait_timeout` passes (409).
    pub(crate) async fn begin(
        self: &Arc<Self>,
        policy: &Policy,
        mut key: StorageKey,
        fingerprint: Fingerprint,
        earlier: &[Earlier],
    ) -> Decision {
        let wait_until = tokio::time::Instant::now() + policy.wait_timeout;
        // Whether the store already showed this key's record (the admission check reads it).
        let seen = match self.refused_before_begin(&key, earlier).await {
            Err(refusal) => return refusal,
            Ok(seen) => seen,
        };
        let mut waited = false;
        // While it looks under previous secrets, a request may give its key up: the record its
        // `begin` makes is tentative until it runs (see `Store::begin_tentative`).
        let looks = !earlier.is_empty();
        loop {
            let sent = tokio::time::Instant::now();
            let begin = if looks {
                self.store
                    .begin_tentative(&key, &fingerprint, policy.lease, policy.ttl)
            } else {
                self.store
                    .begin(&key, &fingerprint, policy.lease, policy.ttl)
            };
            let answer = deadline("begin", self.store_timeout, begin).await;
            return match answer {
                Ok(Begin::Acquired { token, attempt }) => {
                    let ticket = Ticket::new(self.clone(), key, (token, attempt), policy, sent);
                    let ticket = match self.look_under_earlier(policy, ticket, earlier).await {
                        Looked::Run(ticket) => ticket,
                        // Resumed under a previous secret's key: acquired again, renewed.
                        Looked::Decided(Decision::Execute(resumed)) => {
                            return match self.renewed_after_look(policy, &resumed, false).await {
                                Ok(()) => Decision::Execute(resumed),
                                Err(refused) => refused,
                            };
                        }
                        Looked::Decided(decision) => return decision,
                        Looked::Wait(other, ours) => {
                            match self.wait_for(policy, &other, wait_until).await {
                                Ok(()) => {
                                    waited = true;
                                    key = ours;
                                    continue;
                                }
                                Err(decision) => return decision,
                            }
                        }
                    };
                    // Only a new operation (its first acquisition, and nothing under a previous
                    // secret) spends the principal's admission; a retry of a released or
                    // abandoned one does not.
                    let new_operation = attempt <= 1;
                    if let Some(wait) = new_operation
                        .then(|| self.over_admission(ticket.key()))
                        .flatten()
                    {
                        // Lost a race for the principal's last admission (checked before
                        // `begin`, spent after it). Not this principal's turn: the record this
                        // new operation's `begin` made goes (a release would keep it for its
                        // TTL: a burst of new keys would fill the store past the limit).
                        ticket.forget().await;
                        return Decision::Reject(too_many_keys(wait));
                    }
                    if looks {
                        if let Err(refused) =
                            self.renewed_after_look(policy, &ticket, attempt <= 1).await
                        {
                            return refused;
                        }
                    }
                    if attempt > 1 {
                        crate::observe::count(crate::observe::metric::REATTEMPTS_TOTAL);
                    }
                    Decision::Execute(ticket)
                }
                Ok(Begin::Replay(stored)) => match opened(policy, &key, stored) {
                    Ok(response) => Decision::Replay { response, waited },
                    Err(problem) => Decision::Reject(problem),
                },
                Ok(Begin::Mismatch) => Decision::Reject(key_reused()),
                Ok(Begin::InProgress { .. }) => match policy.on_conflict {
                    OnConflict::RetryAfter => Decision::Reject(in_progress()),
                    OnConflict::Accepted => Decision::Accepted(key),
                    OnConflict::Webhook => Decision::Webhook(key),
                    OnConflict::Wait => match self.wait_for(policy, &key, wait_until).await {
                        Ok(()) => {
                            waited = true;
                            continue;
                        }
                        Err(decision) => decision,
                    },
                },
                // The store already showed this key's record — another request held it (this
                // duplicate waited), or the admission check read it: whatever it answers now,
                // running this request unprotected could run the operation twice.
                Err(e) if waited || seen => {
                    tracing::error!(endpoint = policy.endpoint, error = %e, waited, "idem: the store failed after it showed this key's record; rejecting the request");
                    Decision::Reject(self.store_problem(&e))
                }
                Err(e) => self.store_failed(policy, e),
            };
        }
    }

    /// Gives the handler of `ticket`, which held its key while the request looked under the
    /// previous secrets, a whole lease again — the look's store calls came out of it — before
    /// it runs: a renewal, or for the tentative record this request's `begin` made (`fresh`),
    /// the `confirm` that makes it the operation's. `Err` with the answer when it cannot
    /// (the lease was lost to another request, or the store failed); never run unprotected:
    /// the request already showed the store its key.
    async fn renewed_after_look(
        &self,
        policy: &Policy,
        ticket: &Ticket,
        fresh: bool,
    ) -> Result<(), Decision> {
        match ticket.renew_before_start(fresh).await {
            Ok(crate::store::Fenced::Done) => Ok(()),
            // Its lease lapsed while it looked, and another request took the key: that one runs.
            Ok(crate::store::Fenced::Lost) => Err(Decision::Reject(in_progress())),
            Err(e) => {
                tracing::error!(endpoint = policy.endpoint, error = %e, "idem: the store failed before the operation could start; rejecting the request");
                if fresh {
                    // Tentative: it is as if it had never been once its lease lapsed; sooner
                    // if this (fenced) delete goes through.
                    ticket.forget().await;
                } else if ticket.give_back_once().await.is_err() {
                    // Tried again in the background, as the operation was found.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let ticket = ticket.clone();
                        runtime.spawn(async move { ticket.give_back_later().await });
                    }
                }
                Err(Decision::Reject(self.store_problem(&e)))
            }
        }
    }

    /// A duplicate's wait for the request holding `key`, until `wait_until` at most: `Err`
    /// with the answer when it cannot wait (no time left, or the store failed: it already said
    /// another request holds the key, so the duplicate never runs unprotected).
    async fn wait_for(
        &self,
        policy: &Policy,
        key: &StorageKey,
        wait_until: tokio::time::Instant,
    ) -> Result<(), Decision> {
        let now = tokio::time::Instant::now();
        if now >= wait_until {
            return Err(Decision::Reject(in_progress()));
        }
        let left = wait_until - now;
        // `wait` makes its own store calls; bound the whole of it.
        let waited_for = deadline(
            "wait",
            left + self.store_timeout,
            self.store.wait(key, left),
        )
        .await;
        waited_for.map_err(|e| {
            tracing::error!(endpoint = policy.endpoint, error = %e, "idem: the store failed while a duplicate waited for the first request; rejecting it");
            Decision::Reject(self.store_problem(&e))
        })
    }

    /// `begin`'s answer when the store can give it at once from this process's memory: `Ok`
    /// with the response to replay, or `Err` with the problem (a key reused for another payload,
    /// a record that cannot be opened); `None` when `begin` must ask the store. Changes nothing,
    /// so it is safe to call where a hang-up may drop the caller.
    pub(crate) fn begin_now(
        &self,
        policy: &Policy,
        key: &StorageKey,
        fingerprint: &Fingerprint,
    ) -> Option<Result<StoredResponse, Problem>> {
        match self.store.begin_now(key, fingerprint)? {
            Begin::Replay(stored) => Some(opened(policy, key, stored)),
            Begin::Mismatch => Some(Err(key_reused())),
            // Only those two may come from memory; anything else goes through `begin`.
            _ => None,
        }
    }

    /// `Err(429)` when `key`'s principal is over its admission limit and `key` has no record,
    /// under the current secret or a previous one (it would be a new operation): refused
    /// before `begin`, so a refusal writes nothing to the store. A key with a live record (a
    /// replay, a duplicate in flight) goes on to `begin`, which answers it as usual:
    /// `Ok(true)`, the store showed the record (a store error after this never runs the request
    /// unprotected). A released or abandoned operation's record is not live (`Store::get`
    /// shows none): its retry over the limit gets 429 like a new key, and runs once the
    /// principal is under it again. Store errors on that look refuse with 429 too: the request
    /// was over its limit either way.
    async fn refused_before_begin(
        &self,
        key: &StorageKey,
        earlier: &[Earlier],
    ) -> Result<bool, Decision> {
        let Some(wait) = self
            .admission
            .as_ref()
            .and_then(|a| a.peek(key.principal_tag()).err())
        else {
            return Ok(false);
        };
        for key in std::iter::once(key).chain(earlier.iter().map(|e| &e.key)) {
            match self.get(key).await {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => continue,
                Err(_) => break,
            }
        }
        crate::observe::count(crate::observe::metric::ADMISSION_REFUSED_TOTAL);
        Err(Decision::Reject(too_many_keys(wait)))
    }

    /// How long `key`'s principal must wait for a new key, if it is over the admission limit.
    fn over_admission(&self, key: &StorageKey) -> Option<Duration> {
        let refused = self.admission.as_ref()?.admit(key.principal_tag()).err();
        if refused.is_some() {
            crate::observe::count(crate::observe::metric::ADMISSION_REFUSED_TOTAL);
        }
        refused
    }

    /// Step 7: fail closed (503) or open, per policy. A full store always fails closed: it
    /// answered, and running unprotected because of a flood would hand the flood the power to
    /// switch idempotency off. So does a corrupt answer: a record is there.
    pub(crate) fn store_failed(&self, policy: &Policy, error: StoreError) -> Decision {
        if matches!(error, StoreError::PrincipalFull) {
            // Answered to this principal only, and never a reason to run unprotected.
            crate::observe::count(crate::observe::metric::PRINCIPAL_FULL_TOTAL);
            return Decision::Reject(too_many_keys(Duration::from_secs(10)));
        }
        let full = matches!(error, StoreError::Full);
        if full {
            crate::observe::count(crate::observe::metric::STORE_FULL_TOTAL);
        }
        // A corrupt answer is not an outage: a record is there (unreadable, or changing under
        // two tries), and running unprotected could run a finished operation again.
        let answered = full || matches!(error, StoreError::Corrupt(_));
        if policy.on_store_error == OnStoreError::Proceed && !answered {
            tracing::warn!(endpoint = policy.endpoint, %error, "idem: store failed; running the handler WITHOUT idempotency protection (on_store_error = \"proceed\")");
            return Decision::Unprotected;
        }
        tracing::error!(endpoint = policy.endpoint, %error, "idem: store failed; rejecting the request");
        Decision::Reject(self.store_problem(&error))
    }

    /// The 503 a client gets when the store failed.
    pub(crate) fn store_problem(&self, error: &StoreError) -> Problem {
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

    /// Whether a check that the app's instances agree on the secret is due on this store (never
    /// done, or older than five minutes, and none under way); marks it under way if so.
    pub(crate) fn secret_check_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.born.elapsed().as_millis() as u64;
        now >= self.secret_due_ms.load(Ordering::Relaxed)
            && !self.secret_checking.swap(true, Ordering::AcqRel)
    }

    /// Ends a check started after [`secret_check_due`](Self::secret_check_due): a completed one
    /// (whatever it found) is not repeated for five minutes, a failed one on the next request.
    pub(crate) fn secret_check_done(&self, completed: bool) {
        use std::sync::atomic::Ordering;
        if completed {
            let next = self.born.elapsed() + crate::secret::CHECK_EVERY;
            self.secret_due_ms
                .store(next.as_millis() as u64, Ordering::Relaxed);
        }
        self.secret_checking.store(false, Ordering::Release);
    }

    /// Forgets the record of `key` (an operator's purge), under the store deadline.
    pub(crate) async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        deadline("purge", self.store_timeout, self.store.purge(key)).await
    }

    /// Reads the record of `key`, under the store deadline.
    pub(crate) async fn get(&self, key: &StorageKey) -> Result<Option<crate::Record>, StoreError> {
        deadline("get", self.store_timeout, self.store.get(key)).await
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
