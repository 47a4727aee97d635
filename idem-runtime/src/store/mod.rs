//! Where records live. Every store implements [`Store`]; the same conformance suite
//! (`idem_runtime::conformance`, feature `conformance`) runs against each of them.

use async_trait::async_trait;
use std::time::Duration;
use thiserror::Error;

use crate::{FencingToken, Fingerprint, Record, StorageKey, StoredResponse};

pub(crate) mod cache;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod waiters;

/// The answer of [`Store::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// No live record existed (or its lease ran out, or it was released); the caller now holds
    /// the lease.
    Acquired {
        /// The new lease holder's token.
        token: FencingToken,
        /// 1 for the first acquisition of this key, +1 for each later one (after a release or a
        /// lease that ran out) while the record is kept.
        attempt: u32,
    },
    /// Another request with the same fingerprint holds the lease.
    InProgress {
        /// Time left on the current lease.
        lease_left: Duration,
    },
    /// A record exists for another payload.
    Mismatch,
    /// The request already completed; here is its response.
    Replay(StoredResponse),
}

/// What a token-checked write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The token still held the lease; the write happened.
    Done,
    /// The lease expired or was taken over by another token; nothing was written.
    Lost,
}

/// A store failure. Any of these makes the engine fail closed (503) or open, per policy; the
/// variant tells the operator whose move it is (`Unavailable`: wait or fail over; `Config`: fix
/// the setup; `Corrupt`: look at the data). Each keeps what it came from — the driver's own
/// error (a `redis::RedisError`, a `tokio_postgres::Error`) or a message — as its
/// [`source`](std::error::Error::source), for `downcast_ref`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is at its capacity and refuses new records (live records are never evicted).
    #[error("the idempotency store is full")]
    Full,
    /// This principal holds as many records as the store allows one principal; others are
    /// still admitted.
    #[error("this principal holds as many idempotency records as it may")]
    PrincipalFull,
    /// The call did not finish within its deadline.
    #[error("the idempotency store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or answered with a transient error.
    #[error("the idempotency store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store is set up in a way that cannot work or cannot keep the promise — a missing
    /// table, a refused password or permission, a Redis that may evict records: fixed by its
    /// operator, not by retrying.
    #[error("the idempotency store is misconfigured: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store returned data it could not decode.
    #[error("the idempotency store returned a corrupt record: {0}")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A change to records made by any client of a shared store, pushed to the others: what a
/// [`CachedStore`](crate::CachedStore) drops its copies on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The record of this storage key changed or went (completed, released, purged).
    Key(String),
    /// Every record whose storage key starts with this went (an erasure).
    Prefix(String),
    /// Anything may have changed: the push channel was (re)connected, and what was sent while it
    /// was down is lost.
    All,
}

/// A place to keep idempotency records.
///
/// Every method is one atomic step. Implementations keep leases and TTLs as expiries on the
/// record itself (a crashed worker's lease simply runs out), and check the fencing token on every
/// write that follows `begin`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Looks at `key` and, when it is absent, released or its lease ran out, records it as in
    /// progress for `lease` under a fresh token. A record that is not completed is kept for
    /// `keep` (the endpoint's TTL) so that attempts are counted across releases and takeovers.
    /// See [`Begin`] for the other answers.
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError>;

    /// [`begin`](Store::begin) for a request that may give the key up before its operation
    /// starts — while the app secret rotates, a request holds its key while it looks for its
    /// record under the previous secrets. A record this makes (where there was none, or only a
    /// tentative one whose lease ran out) is *tentative*: while its lease lasts it is in
    /// progress like any other, but once the lease ran out it is as if it had never been — the
    /// next `begin` is a first attempt, [`get`](Store::get) does not show it, and no completer
    /// resumes it — until [`confirm`](Store::confirm) makes it an operation's. So a record that
    /// a refused delete left behind is never taken for an operation that ran. A record that was
    /// there (released, or in progress with its lease lapsed) is taken over as `begin` takes it
    /// over, and is not tentative.
    ///
    /// The default is `begin`: such a store cannot tell a left-over record from an operation's,
    /// and during a rotation a plain handler's retry may then run under the other secret's key
    /// (another downstream key); the conformance suite's
    /// `tentative_records_are_gone_once_lapsed` fails for it.
    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin(key, fingerprint, lease, keep).await
    }

    /// Makes the tentative record held by `token` (see
    /// [`begin_tentative`](Store::begin_tentative)) an operation's, before the operation
    /// starts, and extends its lease to `lease` from now, as [`renew`](Store::renew) does
    /// (what it took to look must not shorten the operation's lease): from then on it outlives
    /// its lease like any record in progress. A record that is not tentative is only renewed.
    /// Fenced like a completion. The default, for a store without tentative records, renews.
    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.renew(key, token, lease).await
    }

    /// Deletes the record `token` holds, for a request that gives its key up before anything
    /// ran (an admission refusal, a look under a previous secret): fenced like a release, so a
    /// key whose lease lapsed and that another request took over is left alone. The default
    /// is [`purge`](Store::purge), unfenced: the caller then deletes only while it can count on
    /// its lease, and a delete that lands late (a slow store) may remove another request's
    /// record; the conformance suite's `discard_is_fenced` fails for it.
    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let _ = token;
        self.purge(key).await.map(|_| Fenced::Done)
    }

    /// Stores `response` as the completed result for `ttl`, only if `token` still holds the
    /// lease.
    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError>;

    /// Frees the in-progress record held by `token`, so the next request runs afresh (as the next
    /// attempt).
    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError>;

    /// Gives back the lease `token` holds without saying anything about the operation: the
    /// request was refused before its handler ran (the instance started draining after its
    /// `begin`). The key is free for the next request as after [`release`](Store::release) —
    /// the default — but a store that resumes abandoned operations (PostgreSQL's completer)
    /// leaves the record as its `begin` found it: in progress with its lease lapsed when a crash
    /// had abandoned it (its completer's to finish), released when its client's attempt had
    /// released it (that client's to retry). A wrapper store forwards it to the store it wraps.
    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.release(key, token).await
    }

    /// `begin`'s answer when this store can give it at once, from this process's own memory,
    /// without changing anything: [`Begin::Replay`] of a completed record or [`Begin::Mismatch`]
    /// of a live one. `None` means "ask [`begin`](Store::begin)" — the default, and the answer
    /// for anything a store would have to ask the network about. It must never answer what
    /// `begin` would not (a purged or expired record is `None`); the adapters try it before
    /// they spawn the task that calls `begin`, so a replay served from memory costs no task.
    fn begin_now(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        let _ = (key, fingerprint);
        None
    }

    /// Extends the lease held by `token` to `lease` from now.
    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError>;

    /// Forgets the record of `key` whatever its state (an operator's purge, for a support case):
    /// the next request with this key runs afresh. Returns whether there was one.
    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError>;

    /// Reads the live record of `key`, if any.
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError>;

    /// Returns once the record of `key` changes state (completed, released or expired) or after
    /// `timeout`, whichever is first. The default polls [`get`](Store::get); stores that can push
    /// should.
    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        settle(self, key, timeout, Duration::from_millis(50), None).await
    }

    /// Forgets every record whose storage key starts with `key_prefix` — all of one principal's
    /// records, whose keys share `prefix ‖ tag ‖ "-"` (see `Idempotency::erase_principal`) —
    /// and returns how many it removed. Records in progress go too: their operation may still
    /// complete, unrecorded. Built-in stores work in bounded batches (their costs are in
    /// docs/stores.md). The default refuses: a store must say how it finds them.
    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        let _ = key_prefix;
        Err(StoreError::Config(
            format!(
                "{} cannot erase records by principal (Store::purge_prefix)",
                std::any::type_name::<Self>()
            )
            .into(),
        ))
    }

    /// This store as one whose records commit in the same transaction as a handler's own
    /// writes, if it is one: what `#[idempotent(transactional)]` endpoints need. `None` by
    /// default; a `PostgresStore` returns itself, and a store that wraps another should return
    /// the inner store's, so that transactional endpoints keep working through the wrapper.
    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        None
    }

    /// Changes other clients make to this store's records, as they happen, if the store can
    /// push them: [`Invalidation::Key`] for a purge (and a completion or release),
    /// [`Invalidation::Prefix`] for an erasure, and [`Invalidation::All`] whenever the push
    /// channel (re)connects. `None` by default; Redis (pub/sub) and PostgreSQL
    /// (`LISTEN`/`NOTIFY`) push them.
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
}

/// A capability beyond [`Store`]: records that commit or roll back with a handler's own writes,
/// in one database transaction (the handler gets it as `IdemTx`). Reached through
/// [`Store::transactional`]. Sealed: the transaction is a PostgreSQL one, and `PostgresStore`
/// (feature `postgres`) is its implementation.
pub trait TransactionalStore: Store + sealed::Sealed {
    /// The PostgreSQL store that opens the transactions.
    #[doc(hidden)]
    #[cfg(feature = "postgres")]
    fn postgres(&self) -> &postgres::PostgresStore;
}

mod sealed {
    /// Only this crate's stores are transactional.
    pub trait Sealed {}
}

/// Returns once the record of `key` is no longer in progress (completed, released or expired),
/// or after `timeout`: it is re-read every `every`, and sooner whenever `wake` is notified (a
/// store's completion push).
pub(crate) async fn settle<S: Store + ?Sized>(
    store: &S,
    key: &StorageKey,
    timeout: Duration,
    every: Duration,
    wake: Option<&tokio::sync::Notify>,
) -> Result<(), StoreError> {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        // Created before the read: a completion pushed in between still wakes it.
        let notified = wake.map(tokio::sync::Notify::notified);
        let record = store.get(key).await?;
        if !matches!(
            record,
            Some(Record {
                state: crate::RecordState::InProgress { .. },
                ..
            })
        ) {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        let pause = (until - now).min(every);
        match notified {
            Some(n) => {
                let _ = tokio::time::timeout(pause, n).await;
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}
