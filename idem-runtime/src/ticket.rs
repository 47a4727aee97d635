//! The lease on one key, held by the request that runs its handler: renewed concurrently with the
//! handler, and ended by a fenced `complete` or `release` that is retried while the lease can
//! still be held.
//!
//! The lease is tracked on this process's clock, conservatively: it is held until the send time
//! of the last `begin` or `renew` the store acknowledged, plus the lease. Stores accept a fenced
//! write from the token that still owns the record even past its lease end (nobody took it over);
//! a takeover hands out a new token, which fences the old holder out. So retrying a write past
//! the local estimate is harmless, and giving up at it is the earliest point where a duplicate
//! may legitimately have run.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::engine::{deadline, Engine};
use crate::store::{Fenced, StoreError};
use crate::{FencingToken, StorageKey, StoredResponse};

/// First pause before a failed `complete` or `release` is tried again; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The lease on one key, held by the request that runs its handler.
#[derive(Clone)]
pub(crate) struct Ticket {
    engine: Arc<Engine>,
    key: StorageKey,
    token: FencingToken,
    attempt: u32,
    lease: Duration,
    ttl: Duration,
    client_error_ttl: Option<Duration>,
    /// When the last acknowledged `begin`/`renew` was sent: the lease is held until then +
    /// `lease`. Shared by the clones (the renewal and the completion run from different ones).
    renewed: Arc<Mutex<Instant>>,
    /// When the `begin` that took the lease was sent: renewals stop `max_run_time` after it.
    began: Instant,
    /// The derivation of a previous app secret, when this ticket resumes an operation started
    /// under it (its downstream keys stay that derivation's).
    derivation: Option<Arc<crate::secret::KeyDerivation>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// A lease taken under `policy` by a `begin` sent at `sent`.
    pub(crate) fn new(
        engine: Arc<Engine>,
        key: StorageKey,
        (token, attempt): (FencingToken, u32),
        policy: &crate::Policy,
        sent: Instant,
    ) -> Self {
        Ticket {
            engine,
            key,
            token,
            attempt,
            lease: policy.lease,
            ttl: policy.ttl,
            client_error_ttl: policy.client_error_ttl,
            renewed: Arc::new(Mutex::new(sent)),
            began: sent,
            derivation: None,
        }
    }

    /// This ticket resumes an operation started under a previous secret's `derivation`.
    pub(crate) fn with_derivation(mut self, derivation: Arc<crate::secret::KeyDerivation>) -> Self {
        self.derivation = Some(derivation);
        self
    }

    /// The derivation of the previous secret this ticket's operation started under, if not the
    /// current one.
    pub(crate) fn derivation(&self) -> Option<&Arc<crate::secret::KeyDerivation>> {
        self.derivation.as_ref()
    }

    /// The storage key this ticket holds.
    pub(crate) fn key(&self) -> &StorageKey {
        &self.key
    }

    /// The fencing token of this lease.
    pub(crate) fn token(&self) -> FencingToken {
        self.token
    }

    /// Which acquisition of the key this is (1 for the first).
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The engine this lease was taken through.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// How long a completed response of `status` is to be kept: the endpoint's TTL, or its
    /// shorter `client_error_ttl` for a 4xx.
    pub(crate) fn ttl_for(&self, status: u16) -> Duration {
        match self.client_error_ttl {
            Some(short) if (400..500).contains(&status) => short,
            _ => self.ttl,
        }
    }

    fn last_renewed(&self) -> Instant {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when this process may count on holding the lease.
    pub(crate) fn held_until(&self) -> Instant {
        self.last_renewed() + self.lease
    }

    /// How long one renewal may take: the store deadline, but never more than `lease / 6`, so
    /// that a renewal sent every `lease / 3`, and the retry of a failed one, both end before the
    /// lease does — whatever lease the endpoint chose. A store slower than that for a short
    /// lease loses the lease (see "Failure behaviour"); it never makes the endpoint unusable.
    fn renew_deadline(&self) -> Duration {
        self.engine
            .store_timeout()
            .min(self.lease / 6)
            .max(Duration::from_millis(1))
    }

    /// One renewal; an acknowledged one moves the local lease end.
    async fn renew_once(&self) -> Result<Fenced, StoreError> {
        let store = self.engine.store();
        let call = store.renew(&self.key, self.token, self.lease);
        self.renewing("renew", self.renew_deadline(), call).await
    }

    /// The renewal that gives the handler a whole lease before it starts, after what the
    /// request did under its key took time out of it (a look under previous secrets): under
    /// the store deadline — fenced, it lands only while this ticket holds the key — and, for
    /// this request's own tentative record (`fresh`), the
    /// [`confirm`](crate::store::Store::confirm) that makes it the operation's.
    ///
    /// Its answer counts only while a third of the lease is left to send the next renewal
    /// in: a renewal that landed but answered late (a slow network, a replica `WAIT`) leaves
    /// the lease to whoever took the key over meanwhile, and is a timeout.
    pub(crate) async fn renew_before_start(&self, fresh: bool) -> Result<Fenced, StoreError> {
        let store = self.engine.store();
        let limit = self.engine.store_timeout();
        let sent = Instant::now();
        let answer = if fresh {
            let call = store.confirm(&self.key, self.token, self.lease);
            self.renewing("confirm", limit, call).await
        } else {
            let call = store.renew(&self.key, self.token, self.lease);
            self.renewing("renew", limit, call).await
        };
        match answer {
            Ok(Fenced::Done) if Instant::now() + self.lease / 3 > self.held_until() => {
                Err(StoreError::Timeout(sent.elapsed()))
            }
            answer => answer,
        }
    }

    /// A call that renews the lease (`op`), under `limit`; an acknowledged one moves the local
    /// lease end to the lease from when it was sent.
    async fn renewing(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<Fenced, StoreError>>,
    ) -> Result<Fenced, StoreError> {
        let sent = Instant::now();
        let answer = deadline(op, limit, call).await;
        if let Ok(Fenced::Done) = answer {
            let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            *renewed = (*renewed).max(sent);
        }
        answer
    }

    /// Renews the lease every `lease / 3` for as long as it is polled, up to the engine's
    /// `max_run_time` after the `begin`; never returns. A failed renewal is tried again after
    /// `lease / 6`; a lost lease stops the renewals.
    async fn renew_forever(&self) -> Infallible {
        if !self.engine.renew_leases {
            return std::future::pending().await;
        }
        let every = (self.lease / 3).max(Duration::from_millis(10));
        let mut next = self.last_renewed() + every;
        // `None`: past the clock's end (`Duration::MAX`, "never stop").
        let stop = self.began.checked_add(self.engine.max_run_time);
        loop {
            tokio::time::sleep_until(next).await;
            if stop.is_some_and(|stop| Instant::now() >= stop) {
                // A handler that never finishes must not hold its key forever (409 to every
                // retry, out of every completer's reach): its lease lapses now, and a retry
                // after it takes the key over and runs (this one's completion is fenced out).
                crate::observe::count(crate::observe::metric::RUN_TIME_EXCEEDED_TOTAL);
                tracing::error!(key = %self.key, max_run_time = ?self.engine.max_run_time, "idem: the handler ran past max_run_time; its lease is no longer renewed, and a retry after it lapses runs again");
                return std::future::pending().await;
            }
            let sent = Instant::now();
            match self.renew_once().await {
                Ok(Fenced::Done) => {
                    crate::observe::count(crate::observe::metric::LEASE_RENEWALS_TOTAL);
                    next = sent + every;
                }
                Ok(Fenced::Lost) => {
                    crate::observe::count(crate::observe::metric::LEASE_LOST_TOTAL);
                    tracing::warn!(key = %self.key, "idem: lease lost while the handler runs (another request took the key over); its response will not be stored");
                    return std::future::pending().await;
                }
                Err(error) => {
                    tracing::warn!(key = %self.key, %error, "idem: lease renewal failed; trying again");
                    next = Instant::now() + every / 2;
                }
            }
        }
    }

    /// Runs `work` while renewing the lease every `lease / 3`, so a slow handler is not taken
    /// over by a duplicate. The renewal runs beside `work`, never instead of it: a slow store
    /// does not pause the handler. If the lease is lost anyway (another request took the key over
    /// after the store was unreachable for a whole lease), `work` still finishes and its
    /// `complete` is refused by fencing.
    pub(crate) async fn keep_alive<F: Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        // A handler that finishes without waiting needs no renewal timer at all.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = first {
            return out;
        }
        // Boxed: its timers would otherwise be part of every execution's future, renewed or not.
        let renew = Box::pin(self.renew_forever());
        tokio::select! {
            biased;
            out = &mut work => out,
            never = renew => match never {},
        }
    }

    /// Retries the fenced write `call` (named `op`) while the lease is held, renewing it
    /// meanwhile; the last error once the lease can no longer be counted on.
    async fn until_settled<Fut>(
        &self,
        op: &'static str,
        call: impl Fn() -> Fut,
    ) -> Result<Fenced, StoreError>
    where
        Fut: Future<Output = Result<Fenced, StoreError>>,
    {
        let tries = async {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let error = match deadline(op, self.engine.store_timeout(), call()).await {
                    Ok(fenced) => return Ok(fenced),
                    Err(error) => error,
                };
                // Re-read after every try: the renewals beside it may have extended the lease.
                let left = self.held_until().saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(error);
                }
                tracing::warn!(key = %self.key, %error, op, "idem: store write failed; trying again while the lease is held");
                // At the lease's end at the latest: a backoff that would overshoot it gave up
                // while the store was back for the rest of the lease. The write is fenced, so a
                // try as the lease ends is safe (a takeover refuses it).
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        };
        tokio::select! {
            biased;
            settled = tries => settled,
            never = self.renew_forever() => match never {},
        }
    }

    /// One attempt at storing the handler's response, under the store deadline.
    pub(crate) async fn complete_once(
        &self,
        response: &StoredResponse,
    ) -> Result<Fenced, StoreError> {
        let store = self.engine.store();
        let stored = self.key.to_stored(response);
        deadline(
            "complete",
            self.engine.store_timeout(),
            store.complete(
                &self.key,
                self.token,
                &stored,
                self.ttl_for(response.status()),
            ),
        )
        .await
    }

    /// Stores the handler's response for replay, retrying with backoff while the lease is held.
    /// Returns whether it was stored; the outcome is logged, since the client gets its response
    /// either way.
    pub(crate) async fn complete(&self, response: &StoredResponse) -> bool {
        let store = self.engine.store();
        // Sealed once: every retry writes the same bytes.
        let stored = self.key.to_stored(response);
        let written = self
            .until_settled("complete", || {
                store.complete(
                    &self.key,
                    self.token,
                    &stored,
                    self.ttl_for(response.status()),
                )
            })
            .await;
        match written {
            Ok(Fenced::Done) => true,
            Ok(Fenced::Lost) => {
                crate::observe::count(crate::observe::metric::LEASE_LOST_TOTAL);
                tracing::warn!(key = %self.key, "idem: another request took the key over before completion; this response was not stored (fencing)");
                false
            }
            Err(error) => {
                crate::observe::count(crate::observe::metric::COMPLETE_ABANDONED_TOTAL);
                tracing::error!(key = %self.key, %error, "idem: could not store the response while the lease was held; the key stays in progress until its lease ends, and a retry after that runs the operation again");
                false
            }
        }
    }

    /// One attempt at releasing the key, under the store deadline.
    pub(crate) async fn release_once(&self) -> Result<Fenced, StoreError> {
        let store = self.engine.store();
        deadline(
            "release",
            self.engine.store_timeout(),
            store.release(&self.key, self.token),
        )
        .await
    }

    /// [`Store::give_back`](crate::store::Store::give_back) of this ticket's lease, once, under the store deadline.
    pub(crate) async fn give_back_once(&self) -> Result<Fenced, StoreError> {
        let store = self.engine.store();
        deadline(
            "give_back",
            self.engine.store_timeout(),
            store.give_back(&self.key, self.token),
        )
        .await
    }

    /// [`give_back_once`](Self::give_back_once) tried three more times (after 100 ms, 400 ms
    /// and 1.6 s), without renewing the lease: if every try fails, the lease lapses by itself.
    pub(crate) async fn give_back_later(&self) {
        for pause in [100, 400, 1600] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match self.give_back_once().await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(key = %self.key, %error, "idem: giving the key back failed")
                }
            }
        }
        tracing::error!(key = %self.key, "idem: could not give the key back; it frees itself when its lease ends");
    }

    /// Deletes the record this ticket's `begin` made, for a request that gives its key up
    /// before anything ran (an admission refusal, a look under a previous secret), with
    /// [`Store::discard`](crate::store::Store::discard): once now; when the store fails, again
    /// in the background with backoff while the lease is held. The built-in stores' discard is
    /// fenced; on a store with the unfenced default, the first try is sent whatever is left of
    /// the lease, and a try that lands after it may delete another request's record.
    pub(crate) async fn forget(&self) {
        if self.forget_once().await {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ticket = self.clone();
            runtime.spawn(async move { ticket.forget_while_held().await });
        }
    }

    async fn forget_once(&self) -> bool {
        let store = self.engine.store();
        let discarded = deadline(
            "discard",
            self.engine.store_timeout(),
            store.discard(&self.key, self.token),
        )
        .await;
        // `Lost`: the key is another request's by now; nothing of this one is left there.
        match discarded {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "idem: could not delete a record this request gave up; trying again while its lease is held");
                false
            }
        }
    }

    async fn forget_while_held(&self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // A try starts only if it ends (store deadline) before the lease does.
            if Instant::now() + backoff + self.engine.store_timeout() >= self.held_until() {
                tracing::error!(key = %self.key, "idem: could not delete a record this request gave up; it frees itself when its lease ends");
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if self.forget_once().await {
                return;
            }
        }
    }

    /// Forgets the in-progress record so the next request with this key runs afresh, retrying
    /// with backoff while the lease is held (after that, the lease end frees the key anyway).
    pub(crate) async fn release(&self) {
        let store = self.engine.store();
        let released = self
            .until_settled("release", || store.release(&self.key, self.token))
            .await;
        if let Err(error) = released {
            tracing::error!(key = %self.key, %error, "idem: could not release the key; it frees itself when its lease ends");
        }
    }
}
