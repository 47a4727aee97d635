//! The in-process store: a sharded map with per-entry deadlines, lazy expiry plus a sweeper
//! thread, waiters woken on completion, and a hard cap in bytes.
//!
//! It never evicts a live record: when the cap is reached, new keys are refused with
//! [`StoreError::Full`] (503) until records expire. A cache with an admission policy (moka and
//! friends) may drop a live record, which would let a duplicate run twice.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::Instant;
use tokio::sync::Notify;

mod entry;
mod principals;
mod shard;
mod sweeper;

use super::{Begin, Fenced, Store, StoreError};
use crate::{FencingToken, Fingerprint, Record, StorageKey, StoredResponse};
use entry::{Entry, EntryState};
use principals::Principals;
use shard::{Hashed, Shard};

/// Shards of the map, each behind its own lock: a sweep holds one shard's lock while it walks
/// it, so at 10^7 records a shard is ~40k entries (a few ms), not 300k.
const SHARDS: usize = 256;
/// How often, at most, a full store scans one shard for records it may drop.
const RESCUE_EVERY_MS: u64 = 50;
/// Bytes charged per entry on top of its key and response: the map slot, the entry, allocator
/// rounding and the map's spare capacity (measured by tests/flood.rs against resident memory).
const ENTRY_OVERHEAD: usize = 320;

/// An in-memory [`Store`] for one process. Cheap to clone; clones share the records.
///
/// ```
/// use idem_runtime::MemoryStore;
/// let store = MemoryStore::builder().max_bytes(64 << 20).build();
/// assert_eq!(store.used_bytes(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.inner.max_bytes)
            .field("used_bytes", &self.used_bytes())
            .field("records", &self.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    shards: Vec<Mutex<Shard>>,
    /// Per shard: when a full store last scanned it for records to drop (ms since `born`), so a
    /// flood of new keys against a full store costs a scan per shard per interval, not per key.
    last_rescue: Vec<AtomicU64>,
    /// When a full store last scanned the other shards too (ms since `born`): at most once per
    /// interval for the whole store.
    last_rescue_all: AtomicU64,
    born: Instant,
    used: AtomicUsize,
    entries: AtomicUsize,
    max_bytes: usize,
    next_token: AtomicU64,
    /// Per-principal caps and what each principal holds, when the store has them.
    principals: Option<Principals>,
    /// Picks a key's shard and its bucket there; seeded per store (see [`Hashed::new`]).
    hasher: foldhash::fast::RandomState,
}

/// Builder for [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_bytes: usize,
    sweep_every: Option<Duration>,
    per_principal: Option<(usize, usize)>,
}

impl Default for MemoryStore {
    /// A store capped at 256 MiB, swept every second.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl MemoryStoreBuilder {
    /// Hard cap on the bytes records may take (keys, fingerprints, stored responses and
    /// bookkeeping). New keys get [`StoreError::Full`] beyond it; responses of requests already
    /// admitted are still stored, so the cap can be exceeded by at most the responses in flight.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Caps what one principal may hold: at most `records` records and `bytes` bytes (counted
    /// like [`max_bytes`](Self::max_bytes)). A principal at its cap gets 429
    /// `urn:idem:problem:too-many-keys` for new keys while everyone else is still admitted, so
    /// one client flooding unique keys cannot fill the store for all. Anonymous requests count
    /// as one principal (as does every request of an unscoped app: leave this off there). Off
    /// by default.
    pub fn per_principal(mut self, records: usize, bytes: usize) -> Self {
        self.per_principal = Some((records, bytes));
        self
    }

    /// How often the sweeper thread drops expired records; `None` leaves expiry lazy only.
    pub fn sweep_every(mut self, every: Option<Duration>) -> Self {
        self.sweep_every = every;
        self
    }

    /// Builds the store and starts its sweeper thread, which stops once the store is dropped.
    pub fn build(self) -> MemoryStore {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            last_rescue: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            last_rescue_all: AtomicU64::new(0),
            born: Instant::now(),
            used: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            max_bytes: self.max_bytes,
            next_token: AtomicU64::new(1),
            principals: self.per_principal.map(|(records, bytes)| Principals {
                records,
                bytes,
                held: Mutex::default(),
            }),
            hasher: foldhash::fast::RandomState::default(),
        });
        if let Some(every) = self.sweep_every {
            let weak = Arc::downgrade(&inner);
            // A thread rather than a task: the store may be built outside any runtime (before
            // `HttpServer::new`), and must not depend on one worker's runtime staying alive.
            let _ = std::thread::Builder::new()
                .name("idem-memory-sweeper".into())
                .spawn(move || sweeper::run(weak, every));
        }
        MemoryStore { inner }
    }
}

impl MemoryStore {
    /// A builder with the defaults of [`MemoryStore::default`].
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_bytes: 256 << 20,
            sweep_every: Some(Duration::from_secs(1)),
            per_principal: None,
        }
    }

    /// Bytes currently charged against the cap.
    pub fn used_bytes(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Records currently held (live or expired but not yet swept).
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed)
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record held, with its storage key, as the store keeps it (a sealed response stays
    /// sealed): what a heap dump of the process would show. For tests and audits; it locks each
    /// shard in turn.
    pub fn dump(&self) -> Vec<(String, Record)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in &self.inner.shards {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (key, entry) in map.iter() {
                if let Some(record) = entry.record(now) {
                    out.push((key.as_str().to_owned(), record));
                }
            }
        }
        out
    }

    /// Drops every expired record now (the sweeper does this periodically).
    pub fn sweep(&self) {
        self.inner.sweep(Instant::now());
    }
}

impl Inner {
    /// `key` hashed, and its shard locked.
    fn shard<'k>(&self, key: &'k StorageKey) -> (Hashed<'k>, MutexGuard<'_, Shard>) {
        let at = Hashed::new(&self.hasher, key);
        // A poisoned shard only means a panic elsewhere while holding it; the map itself is
        // still consistent (every mutation is a single insert/remove), so keep serving.
        let map = self.shards[at.shard(SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (at, map)
    }

    /// Publishes occupancy gauges (a no-op without feature `metrics`).
    fn publish(&self) {
        crate::observe::memory_store(
            self.used.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        );
    }

    fn remove_entry(&self, map: &mut Shard, at: Hashed<'_>) {
        if let Some(e) = map.remove(at) {
            self.forget(at.key, e);
        }
    }

    /// Accounts for `e`, the entry of `key`, taken out of its shard; wakes its waiters.
    fn forget(&self, key: &StorageKey, e: Entry) {
        self.unaccount(key, &e);
        e.drop_waking();
    }

    /// Takes `e`, the entry of `key` taken out of its shard, off the counts (under the shard's
    /// lock, so that the counts never lag the map).
    fn unaccount(&self, key: &StorageKey, e: &Entry) {
        self.used.fetch_sub(e.size, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        if let Some(p) = &self.principals {
            p.charge(key, -1, -(e.size as isize));
        }
    }

    fn resize(&self, key: &StorageKey, entry: &mut Entry, new_size: usize) {
        if let Some(p) = &self.principals {
            p.charge(key, 0, new_size as isize - entry.size as isize);
        }
        if new_size >= entry.size {
            self.used
                .fetch_add(new_size - entry.size, Ordering::Relaxed);
        } else {
            self.used
                .fetch_sub(entry.size - new_size, Ordering::Relaxed);
        }
        entry.size = new_size;
    }

    /// Makes room for `need` more bytes, dropping the records of `map` that are not live
    /// (expired, released, or with a lapsed lease: only their attempt counts are lost).
    fn admit(&self, map: &mut Shard, shard: usize, need: usize, now: Instant) -> bool {
        if self.used.load(Ordering::Relaxed) + need <= self.max_bytes {
            return true;
        }
        let at = now.saturating_duration_since(self.born).as_millis() as u64;
        let last = self.last_rescue[shard].load(Ordering::Relaxed);
        if last != 0 && at < last + RESCUE_EVERY_MS {
            return false;
        }
        self.last_rescue[shard].store(at.max(1), Ordering::Relaxed);
        self.drop_dead(map, now);
        if self.used.load(Ordering::Relaxed) + need <= self.max_bytes {
            return true;
        }
        // The room may be in other shards: look there too (once per interval for the whole
        // store), skipping any that is busy (this shard's lock is held, so waiting for another
        // could deadlock).
        let last_all = self.last_rescue_all.load(Ordering::Relaxed);
        if last_all != 0 && at < last_all + RESCUE_EVERY_MS {
            return false;
        }
        self.last_rescue_all.store(at.max(1), Ordering::Relaxed);
        for (i, other) in self.shards.iter().enumerate() {
            if i == shard {
                continue;
            }
            if let Ok(mut other) = other.try_lock() {
                self.drop_dead(&mut other, now);
            }
            if self.used.load(Ordering::Relaxed) + need <= self.max_bytes {
                return true;
            }
        }
        false
    }

    /// `begin` (`tentative`: `begin_tentative`): see [`Store::begin_tentative`].
    fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
        tentative: bool,
    ) -> Result<Begin, StoreError> {
        let now = Instant::now();
        let (at, mut map) = self.shard(key);
        let mut attempt = 1;
        if let Some(e) = map.get(at) {
            if e.is_live(now) {
                return Ok(e.answer(fingerprint, now));
            }
            // A tentative record whose lease lapsed is as if it had never been.
            if e.expires_at > now && !e.is_tentative() {
                attempt = e.attempt.saturating_add(1);
            }
            self.remove_entry(&mut map, at);
        }
        let size = key.as_str().len() + ENTRY_OVERHEAD;
        if let Some(p) = &self.principals {
            if !p.admits(key, size) {
                return Err(StoreError::PrincipalFull);
            }
        }
        if !self.admit(&mut map, at.shard(SHARDS), size, now) {
            return Err(StoreError::Full);
        }
        if let Some(p) = &self.principals {
            p.charge(key, 1, size as isize);
        }
        let token = FencingToken(self.next_token.fetch_add(1, Ordering::Relaxed));
        map.insert_new(
            at,
            Entry {
                fingerprint: *fingerprint,
                state: EntryState::InProgress {
                    token,
                    // Made by the first duplicate that waits: most records never have one.
                    done: None,
                    lease_until: now + lease,
                    tentative: tentative && attempt == 1,
                },
                expires_at: now + keep.max(lease),
                attempt,
                acquired_at: now,
                size,
            },
        );
        self.used.fetch_add(size, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.publish();
        Ok(Begin::Acquired { token, attempt })
    }

    /// Drops the records of `map` that are not live.
    fn drop_dead(&self, map: &mut Shard, now: Instant) {
        map.remove_where(|_, e| !e.is_live(now), |k, e| self.forget(&k, e));
    }

    /// Extends the lease `token` holds on `key` to `lease` from now (`confirm`: and makes a
    /// tentative record the operation's).
    fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
        confirm: bool,
    ) -> Fenced {
        fenced(self.with_lease(key, token, |_, map, at| {
            if let Some(e) = map.get_mut(at) {
                e.renew(Instant::now() + lease, confirm);
            }
        }))
    }

    /// Runs `f` on the in-progress entry of `key` held by `token`; a lapsed lease that nobody
    /// took over still belongs to its holder (a takeover changes the token).
    fn with_lease<R>(
        &self,
        key: &StorageKey,
        token: FencingToken,
        f: impl FnOnce(&Self, &mut Shard, Hashed<'_>) -> R,
    ) -> Option<R> {
        let (at, mut map) = self.shard(key);
        let holds = matches!(
            map.get(at),
            Some(Entry { state: EntryState::InProgress { token: t, .. }, .. }) if *t == token
        );
        holds.then(|| f(self, &mut map, at))
    }
}

fn fenced(done: Option<()>) -> Fenced {
    match done {
        Some(()) => Fenced::Done,
        None => Fenced::Lost,
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn begin_now(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        let now = Instant::now();
        let (at, map) = self.inner.shard(key);
        let answer = map
            .get(at)
            .filter(|e| e.is_live(now))?
            .answer(fingerprint, now);
        // A record in progress is `begin`'s to answer (it may wait, or take over).
        (!matches!(answer, Begin::InProgress { .. })).then_some(answer)
    }

    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease, keep, false)
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease, keep, true)
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let done = self.inner.with_lease(key, token, |inner, map, at| {
            inner.remove_entry(map, at);
            inner.publish();
        });
        Ok(fenced(done))
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(self.inner.renew(key, token, lease, true))
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(fenced(self.inner.with_lease(
            key,
            token,
            |inner, map, at| {
                if let Some(e) = map.get_mut(at) {
                    let old =
                        std::mem::replace(&mut e.state, EntryState::Completed(response.clone()));
                    e.expires_at = Instant::now() + ttl;
                    inner.resize(
                        key,
                        e,
                        key.as_str().len() + ENTRY_OVERHEAD + response.size(),
                    );
                    inner.publish();
                    old.drop_waking();
                }
            },
        )))
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        Ok(fenced(self.inner.with_lease(key, token, |_, map, at| {
            if let Some(e) = map.get_mut(at) {
                // A tentative record released is as if it had never been: its lease ends now.
                let released = match e.state {
                    EntryState::InProgress {
                        tentative: true, ..
                    } => EntryState::InProgress {
                        token,
                        done: None,
                        lease_until: Instant::now(),
                        tentative: true,
                    },
                    _ => EntryState::Released,
                };
                std::mem::replace(&mut e.state, released).drop_waking();
            }
        })))
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(self.inner.renew(key, token, lease, false))
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let (at, mut map) = self.inner.shard(key);
        let existed = map.contains(at);
        self.inner.remove_entry(&mut map, at);
        self.inner.publish();
        Ok(existed)
    }

    /// One shard lock at a time; work in proportion to all records held.
    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        let mut removed = 0;
        for shard in &self.inner.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.remove_where(
                |k, _| k.as_str().starts_with(key_prefix),
                |k, e| {
                    self.inner.forget(&k, e);
                    removed += 1;
                },
            );
        }
        self.inner.publish();
        Ok(removed)
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let (at, map) = self.inner.shard(key);
        Ok(map.get(at).and_then(|e| e.record(now)))
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let (done, lease_left) = {
            let (at, mut map) = self.inner.shard(key);
            match map.get_mut(at) {
                Some(Entry {
                    state:
                        EntryState::InProgress {
                            done, lease_until, ..
                        },
                    ..
                }) => (
                    done.get_or_insert_with(|| Arc::new(Notify::new())).clone(),
                    lease_until.saturating_duration_since(Instant::now()),
                ),
                _ => return Ok(()),
            }
        };
        // `notified()` counts `notify_waiters` calls from its creation on, so a completion
        // between the lookup above and this line is not missed: re-check after creating it.
        let notified = done.notified();
        let still_running = {
            let (at, map) = self.inner.shard(key);
            matches!(
                map.get(at),
                Some(Entry { state: EntryState::InProgress { done: Some(d), .. }, .. })
                    if Arc::ptr_eq(d, &done)
            )
        };
        if still_running {
            // An expired lease notifies nobody until swept, so never wait past it.
            let _ = tokio::time::timeout(timeout.min(lease_left), notified).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod paused_clock_tests;
