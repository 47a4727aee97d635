//! [`FaultyStore`]: a store wrapper with scripted failures and delays, for testing what an app
//! does when its idempotency store misbehaves.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{Begin, Fenced, Store, StoreError, TransactionalStore};
use crate::{FencingToken, Fingerprint, Record, StorageKey, StoredResponse};

/// A store operation a fault can be scripted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Store::begin`].
    Begin,
    /// [`Store::complete`].
    Complete,
    /// [`Store::release`].
    Release,
    /// [`Store::renew`].
    Renew,
    /// [`Store::confirm`].
    Confirm,
    /// [`Store::get`].
    Get,
    /// [`Store::purge`].
    Purge,
    /// [`Store::wait`].
    Wait,
}

/// What happens to a call a fault is scripted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call fails at once with [`StoreError::Unavailable`]; the inner store is not asked.
    Fail,
    /// The call fails at once with [`StoreError::Full`]: the store answered that it is at
    /// capacity.
    Full,
    /// The call waits this long, then goes to the inner store (longer than the app's
    /// `store_timeout`, it times out).
    Delay(Duration),
    /// The inner store does the call, then the caller gets [`StoreError::Unavailable`] — the
    /// write happened but its answer was lost, as when a connection drops after the command.
    LoseAnswer,
    /// The inner store does the call at once; its answer reaches the caller this long after
    /// (a slow network, a replica `WAIT`): longer than the app's `store_timeout`, it times out
    /// though the call landed.
    SlowAnswer(Duration),
}

/// A fault that lasts: every call meets it while it is set (see
/// [`FaultyStore::set_condition`]), where a [`Fault`] hits a number of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Condition {
    /// Calls go to the inner store as they are.
    #[default]
    Healthy,
    /// Every call fails at once with [`StoreError::Unavailable`]: an outage, a network
    /// partition.
    Down,
    /// Every call waits this long before it goes to the inner store.
    Slow(Duration),
    /// `begin` and `complete` fail with [`StoreError::Full`] (the writes that need room); the
    /// other calls go through.
    Full,
}

#[derive(Default)]
struct Script {
    /// Faults per operation, applied in order to its next calls.
    next: HashMap<Op, Vec<Fault>>,
}

struct Shared<S> {
    inner: S,
    /// Set by [`FaultyStore::crash`]: every call fails from then on.
    crashed: std::sync::atomic::AtomicBool,
    condition: Mutex<Condition>,
    script: Mutex<Script>,
    calls: Mutex<HashMap<Op, u64>>,
    faults_fired: AtomicU64,
    /// Set by [`FaultyStore::without_tentative_records`].
    plain: std::sync::atomic::AtomicBool,
}

/// A [`Store`] that passes every call to `inner` unless a fault was scripted for it. Clones
/// share the store and the script: give one clone to the app's builder and script faults on
/// another from the test. The app's own calls count too: its first request also checks the app
/// secret through the store (a `begin` in the background), so send one request before scripting
/// faults meant for a request, and wait until [`calls`](Self::calls)`(Op::Begin)` is 2.
///
/// ```
/// use idem_runtime::testing::{Fault, FaultyStore, Op};
/// use idem_runtime::MemoryStore;
///
/// let store = FaultyStore::new(MemoryStore::default());
/// let idem = idem_runtime::Idempotency::builder()
///     .unscoped()
///     .store(store.clone())
///     .build();
/// // The next completion is lost on its way back: the handler ran and its response was stored,
/// // but the app is told the store failed.
/// store.inject(Op::Complete, Fault::LoseAnswer, 1);
/// # let _ = idem;
/// ```
pub struct FaultyStore<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        FaultyStore {
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field(
                "faults_fired",
                &self.shared.faults_fired.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`; no fault is scripted yet.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            shared: Arc::new(Shared {
                inner,
                crashed: Default::default(),
                condition: Mutex::default(),
                script: Mutex::default(),
                calls: Mutex::default(),
                faults_fired: AtomicU64::new(0),
                plain: Default::default(),
            }),
        }
    }

    /// The next `times` calls of `op` get `fault` (after any faults already scripted for it).
    pub fn inject(&self, op: Op, fault: Fault, times: usize) {
        let mut script = self.shared.script.lock().unwrap_or_else(|p| p.into_inner());
        script
            .next
            .entry(op)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// A crash point: from now on every call fails, as if this instance of the app had died
    /// here — what it already wrote stays in the inner store as it is (an operation in progress
    /// stays in progress until its lease ends), and nothing it tries afterwards lands. Call it
    /// inside a handler, between its side effect and its return, to see what a crash there does;
    /// an app on a clone of [`inner`](Self::inner) plays the restarted instance.
    pub fn crash(&self) {
        self.shared.crashed.store(true, Ordering::SeqCst);
    }

    /// Sets the fault every call meets from now on, until set again ([`Condition::Healthy`]
    /// ends it): an outage, a slow or a full store for as long as a test wants.
    pub fn set_condition(&self, condition: Condition) {
        *self
            .shared
            .condition
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = condition;
    }

    /// From now on, answers as a store on the [`Store`] defaults for tentative records: a
    /// custom store, or a wrapper that does not forward them. `begin_tentative` is `begin`,
    /// `confirm` only renews — what the engine must still handle safely.
    pub fn without_tentative_records(&self) {
        self.shared.plain.store(true, Ordering::SeqCst);
    }

    /// Forgets every fault not yet applied.
    pub fn heal(&self) {
        self.shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .clear();
    }

    /// How many calls of `op` the store received, faulty or not.
    pub fn calls(&self, op: Op) -> u64 {
        let calls = self.shared.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.get(&op).copied().unwrap_or(0)
    }

    /// How many scripted faults have been applied.
    pub fn faults_fired(&self) -> u64 {
        self.shared.faults_fired.load(Ordering::Relaxed)
    }

    /// The store it wraps.
    pub fn inner(&self) -> &S {
        &self.shared.inner
    }

    /// Counts a call of `op` and takes the fault scripted for it, if any.
    fn next_fault(&self, op: Op) -> Option<Fault> {
        *self
            .shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
        let mut script = self.shared.script.lock().unwrap_or_else(|p| p.into_inner());
        let queue = script.next.get_mut(&op)?;
        if queue.is_empty() {
            return None;
        }
        self.shared.faults_fired.fetch_add(1, Ordering::Relaxed);
        Some(queue.remove(0))
    }

    /// Runs `call` on the inner store under whatever fault `op` has next.
    async fn under<T, F>(&self, op: Op, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        if self.shared.crashed.load(Ordering::SeqCst) {
            return Err(injected(op, "failed: the app crashed"));
        }
        let condition = *self
            .shared
            .condition
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match condition {
            Condition::Healthy => {}
            Condition::Down => return Err(injected(op, "failed: the store is down")),
            Condition::Full if matches!(op, Op::Begin | Op::Complete) => {
                return Err(StoreError::Full)
            }
            Condition::Full => {}
            Condition::Slow(by) => tokio::time::sleep(by).await,
        }
        match self.next_fault(op) {
            None => call.await,
            Some(Fault::Fail) => Err(injected(op, "failed")),
            Some(Fault::Full) => Err(StoreError::Full),
            Some(Fault::Delay(by)) => {
                tokio::time::sleep(by).await;
                call.await
            }
            Some(Fault::LoseAnswer) => {
                call.await?;
                Err(injected(op, "lost its answer"))
            }
            Some(Fault::SlowAnswer(by)) => {
                let answer = call.await;
                tokio::time::sleep(by).await;
                answer
            }
        }
    }
}

fn injected(op: Op, what: &str) -> StoreError {
    StoreError::Unavailable(format!("FaultyStore: {op:?} {what} (an injected fault)").into())
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Begin, inner.begin(key, fingerprint, lease, keep))
            .await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        if self.shared.plain.load(Ordering::SeqCst) {
            return self.begin(key, fingerprint, lease, keep).await;
        }
        let inner = &self.shared.inner;
        self.under(
            Op::Begin,
            inner.begin_tentative(key, fingerprint, lease, keep),
        )
        .await
    }

    /// Scripted as [`Op::Purge`]: a give-up's delete.
    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let inner = &self.shared.inner;
        if self.shared.plain.load(Ordering::SeqCst) {
            return self
                .under(Op::Purge, inner.purge(key))
                .await
                .map(|_| Fenced::Done);
        }
        self.under(Op::Purge, inner.discard(key, token)).await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        if self.shared.plain.load(Ordering::SeqCst) {
            return self.renew(key, token, lease).await;
        }
        let inner = &self.shared.inner;
        self.under(Op::Confirm, inner.confirm(key, token, lease))
            .await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Complete, inner.complete(key, token, response, ttl))
            .await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Release, inner.release(key, token)).await
    }

    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Release, inner.give_back(key, token)).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Renew, inner.renew(key, token, lease)).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Purge, inner.purge(key)).await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Get, inner.get(key)).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let inner = &self.shared.inner;
        self.under(Op::Wait, inner.wait(key, timeout)).await
    }

    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        self.shared.inner.purge_prefix(key_prefix).await
    }

    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        self.shared.inner.transactional()
    }
}
