//! [`SharedStore`]: any store behind one type, so that the instances of a run share the memory
//! store or a real server's alike (`Arc<dyn Store>` is not a `Store` itself). Each instance's
//! handle also measures its calls: on a real server, one slower than [`SLOW_CALL_MS`] is
//! recorded as a slow store (`slow N ms, measured`) on that instance — what the oracle's
//! windows then read like a planned one, since to the runtime it is the same.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_runtime::{
    Begin, Fenced, FencingToken, Fingerprint, Invalidation, Record, StorageKey, Store, StoreError,
    StoredResponse, TransactionalStore,
};

use crate::history::Event;
use crate::world::World;

/// Store calls at least this slow are recorded.
pub const SLOW_CALL_MS: u64 = 10;

/// A store shared by every instance of a run; every call goes to the store it holds.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<dyn Store>,
    /// Where its slow calls are recorded, and as which instance's.
    observer: Option<(Arc<World>, usize)>,
}

impl SharedStore {
    /// `store`, shared.
    pub fn new(store: impl Store) -> Self {
        SharedStore {
            inner: Arc::new(store),
            observer: None,
        }
    }

    /// The same store as instance `instance` of `world` uses it: its slow calls recorded.
    pub fn for_instance(&self, world: &Arc<World>, instance: usize) -> Self {
        SharedStore {
            inner: self.inner.clone(),
            observer: Some((world.clone(), instance)),
        }
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut watch = self.observer.as_ref().map(|(world, instance)| Watch {
            world,
            instance: *instance,
            at: world.now(),
            dropped: None,
        });
        let out = call.await;
        if let (Some(w), Err(StoreError::Unavailable(e))) = (&mut watch, &out) {
            w.dropped = dropped(e.as_ref());
        }
        out
    }
}

/// The connection failure `e` is, if it is one (a connection dropped, reset or refused: what
/// the store meets after its server was killed or its link reset, on each connection's next
/// call) — never a server's answer (an `OOM`, an SQLSTATE): how the runtime classes those is
/// what is under test.
fn dropped(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(redis) = e.downcast_ref::<redis::RedisError>() {
        return (redis.is_io_error()
            || redis.is_connection_dropped()
            || redis.is_connection_refusal())
        .then(|| redis.to_string());
    }
    // (Not a decoding or protocol error, which has no SQLSTATE either: only the connection
    // closed, or an I/O error under it.)
    let pg = e.downcast_ref::<idem_runtime::tokio_postgres::Error>()?;
    let io = std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>());
    (pg.is_closed() || io).then(|| pg.to_string())
}

/// One call under watch: recorded when it ends — answered, or dropped at the caller's deadline
/// — if it took [`SLOW_CALL_MS`] or more, or failed on a dropped connection (then as an outage
/// from [`SLOW_CALL_MS`] before it began: the request that made it was sent that little
/// earlier).
struct Watch<'a> {
    world: &'a World,
    instance: usize,
    at: u64,
    dropped: Option<String>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let took = self.world.now().saturating_sub(self.at);
        if let Some(error) = self.dropped.take() {
            self.world.history.push(Event::Fault {
                instance: self.instance,
                what: format!("outage, measured: {error}"),
                at: self.at.saturating_sub(SLOW_CALL_MS),
                until: Some(self.at + took + 1),
            });
        } else if took >= SLOW_CALL_MS {
            self.world.history.push(Event::Fault {
                instance: self.instance,
                what: format!("slow {took} ms, measured"),
                at: self.at,
                until: Some(self.at + took),
            });
        }
    }
}

#[async_trait]
impl Store for SharedStore {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.timed(self.inner.begin(key, fingerprint, lease, keep))
            .await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.timed(self.inner.begin_tentative(key, fingerprint, lease, keep))
            .await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.timed(self.inner.confirm(key, token, lease)).await
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.timed(self.inner.discard(key, token)).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        self.timed(self.inner.complete(key, token, response, ttl))
            .await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.timed(self.inner.release(key, token)).await
    }

    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.timed(self.inner.give_back(key, token)).await
    }

    fn begin_now(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        self.inner.begin_now(key, fingerprint)
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.timed(self.inner.renew(key, token, lease)).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.timed(self.inner.purge(key)).await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.timed(self.inner.get(key)).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        self.inner.wait(key, timeout).await
    }

    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        self.timed(self.inner.purge_prefix(key_prefix)).await
    }

    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        self.inner.transactional()
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        self.inner.invalidations()
    }
}
