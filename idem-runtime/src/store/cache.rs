//! A local replay cache in front of a shared store: [`CachedStore`].

use async_trait::async_trait;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::clock::Instant;
use tokio::sync::broadcast::error::RecvError;

use super::{Begin, Fenced, Invalidation, Store, StoreError, TransactionalStore};
use crate::{FencingToken, Fingerprint, Record, RecordState, StorageKey, StoredResponse};

/// A store with a local, byte-bounded cache of completed records in front of it; everything but
/// replays goes to the inner store.
///
/// A completed record never changes until it expires or is purged, so a replay need not cross
/// the network every time. The first replay of a key reads the record's remaining life and keeps
/// it (its response as stored: sealed, when the app seals); later replays of that key on this
/// instance are answered from memory. In-progress records are never cached.
///
/// **Staleness.** A purge or erasure on any instance reaches every cache through the store's
/// push channel ([`Store::invalidations`]: Redis pub/sub, PostgreSQL `NOTIFY`) within the
/// channel's delay (milliseconds). The channel is lossy while it is disconnected; every
/// reconnection flushes the whole cache, and a receiver that fell behind flushes too. Whatever
/// else might be lost, no entry outlives [`max_age`](Self::max_age) (30 s by default) nor its
/// record's own expiry.
///
/// ```no_run
/// # async fn demo() -> Result<(), idem_runtime::StoreError> {
/// use idem_runtime::{CachedStore, RedisStore};
/// let redis = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let store = CachedStore::new(redis, 64 << 20); // at most 64 MiB of replays in memory
/// # let _ = store; Ok(()) }
/// ```
pub struct CachedStore<S> {
    inner: Arc<S>,
    shared: Arc<Shared>,
    /// Kept here, not in `Shared`: the invalidation task holds `Shared` from `new` on, so a
    /// setting written there afterwards could not be.
    max_age: Duration,
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        CachedStore {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            max_age: self.max_age,
        }
    }
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("entries", &self.shared.cache.len())
            .field("bytes", &self.shared.cache.weight())
            .finish_non_exhaustive()
    }
}

struct Shared {
    cache: Cache<String, Entry, ByBytes>,
    /// Bumped by every invalidation: an entry read before a bump is not admitted after it.
    epoch: AtomicU64,
    hits: AtomicU64,
    /// Keys whose admission read is in flight: a burst of replays of one key (right after it
    /// completed) reads its record once, not once per replay.
    admitting: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[derive(Clone)]
struct Entry {
    fingerprint: Fingerprint,
    response: StoredResponse,
    until: Instant,
    bytes: u64,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Entry> for ByBytes {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        key.len() as u64 + entry.bytes
    }
}

impl<S: Store> CachedStore<S> {
    /// `inner` with a cache of at most `max_bytes` of completed records (keys, headers and
    /// bodies). Call it inside the tokio runtime: it starts the task that drops invalidated
    /// entries (without a runtime, or with a store that pushes nothing, entries only age out).
    pub fn new(inner: S, max_bytes: u64) -> Self {
        let shared = Arc::new(Shared {
            // quick_cache sizes its tables from an estimate of the item count: ~2 KiB each.
            cache: Cache::with_weighter((max_bytes / 2048).max(16) as usize, max_bytes, ByBytes),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            admitting: Default::default(),
        });
        if let (Some(rx), Ok(runtime)) =
            (inner.invalidations(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(invalidate_forever(rx, Arc::downgrade(&shared)));
        }
        CachedStore {
            inner: Arc::new(inner),
            shared,
            max_age: Duration::from_secs(30),
        }
    }

    /// The longest an entry is replayed from memory, whatever the store pushes (30 s by
    /// default): the bound on a stale replay if an invalidation were lost while the push
    /// channel stayed connected.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Replays answered from memory so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Keeps the completed record of `key` after its first replay: one read for its remaining
    /// life, then admitted unless an invalidation arrived since `epoch`.
    async fn admit(&self, key: &StorageKey, fingerprint: &Fingerprint, epoch: u64) {
        let first = {
            let mut admitting = self
                .shared
                .admitting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            admitting.insert(key.as_str().to_owned())
        };
        if !first {
            return;
        }
        // Leaves the set however the read ends (cancelled too).
        struct Admitting<'a>(&'a Shared, &'a str);
        impl Drop for Admitting<'_> {
            fn drop(&mut self) {
                let mut set = self.0.admitting.lock().unwrap_or_else(|p| p.into_inner());
                set.remove(self.1);
            }
        }
        let _admitting = Admitting(&self.shared, key.as_str());
        self.admit_once(key, fingerprint, epoch).await;
    }

    async fn admit_once(&self, key: &StorageKey, fingerprint: &Fingerprint, epoch: u64) {
        // Before the read: the record's remaining life counts from no later than the store's
        // own clock read it, so the entry never outlives the record.
        let asked = Instant::now();
        let Ok(Some(Record {
            fingerprint: fp,
            state: RecordState::Completed { response },
            expires_in,
            ..
        })) = self.inner.get(key).await
        else {
            return;
        };
        if fp != *fingerprint {
            return;
        }
        let bytes = response.size();
        let entry = Entry {
            fingerprint: fp,
            response,
            until: asked + expires_in.min(self.max_age),
            bytes: bytes as u64 + 64,
        };
        let cache = &self.shared.cache;
        if self.shared.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        cache.insert(key.as_str().to_owned(), entry);
        // An invalidation handled between the check and the insert would have missed it.
        if self.shared.epoch.load(Ordering::SeqCst) != epoch {
            cache.remove(key.as_str());
        }
    }
}

/// Applies the store's invalidations to the cache for as long as it lives.
async fn invalidate_forever(
    mut rx: tokio::sync::broadcast::Receiver<Invalidation>,
    shared: Weak<Shared>,
) {
    loop {
        let message = rx.recv().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        match message {
            Ok(Invalidation::Key(key)) => {
                shared.cache.remove(key.as_str());
            }
            Ok(Invalidation::Prefix(prefix)) => {
                shared.cache.retain(|k, _| !k.starts_with(prefix.as_str()));
            }
            // A reconnection, or messages lost because this task fell behind: anything may have
            // changed.
            Ok(Invalidation::All) | Err(RecvError::Lagged(_)) => shared.cache.clear(),
            Err(RecvError::Closed) => {
                shared.cache.clear();
                return;
            }
        }
    }
}

impl<S: Store> CachedStore<S> {
    /// `begin`'s answer from this instance's cache, if it holds the record.
    fn cached(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        let entry = self.shared.cache.get(key.as_str())?;
        if Instant::now() >= entry.until {
            self.shared.cache.remove(key.as_str());
            return None;
        }
        self.shared.hits.fetch_add(1, Ordering::Relaxed);
        Some(if entry.fingerprint == *fingerprint {
            Begin::Replay(entry.response)
        } else {
            Begin::Mismatch
        })
    }
}

impl<S: Store> CachedStore<S> {
    /// A `begin` (`inner`, the wrapped store's), answered from the cache when it can be; a
    /// replay it answers is admitted to the cache.
    async fn begin_with(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        inner: impl std::future::Future<Output = Result<Begin, StoreError>>,
    ) -> Result<Begin, StoreError> {
        if let Some(answer) = self.cached(key, fingerprint) {
            return Ok(answer);
        }
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let answer = inner.await?;
        if matches!(answer, Begin::Replay(_)) {
            // The answer is known: the admission's read goes on beside it, never inside the
            // caller's store deadline (there, a slow read turned a replay into a timeout — and,
            // under `on_store_error = "proceed"`, into a second run of the operation).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (this, key, fingerprint) = (self.clone(), key.clone(), *fingerprint);
                runtime.spawn(async move { this.admit(&key, &fingerprint, epoch).await });
            }
        }
        Ok(answer)
    }
}

#[async_trait]
impl<S: Store> Store for CachedStore<S> {
    fn begin_now(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        self.cached(key, fingerprint)
            .or_else(|| self.inner.begin_now(key, fingerprint))
    }

    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begin_with(
            key,
            fingerprint,
            self.inner.begin(key, fingerprint, lease, keep),
        )
        .await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        let inner = self.inner.begin_tentative(key, fingerprint, lease, keep);
        self.begin_with(key, fingerprint, inner).await
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.inner.discard(key, token).await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.confirm(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.complete(key, token, response, ttl).await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.inner.release(key, token).await
    }

    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.inner.give_back(key, token).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.renew(key, token, lease).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.cache.remove(key.as_str());
        self.inner.purge(key).await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        self.inner.wait(key, timeout).await
    }

    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.cache.retain(|k, _| !k.starts_with(key_prefix));
        self.inner.purge_prefix(key_prefix).await
    }

    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        self.inner.transactional()
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        self.inner.invalidations()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
