use super::*;
use crate::{IdempotencyKey, MemoryStore};

/// A memory store that says it pushes invalidations (as Redis and PostgreSQL do), so that the
/// cache starts its invalidation task.
#[derive(Clone)]
struct Pushing {
    inner: MemoryStore,
    tx: tokio::sync::broadcast::Sender<Invalidation>,
}

#[async_trait]
impl Store for Pushing {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease, keep).await
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
    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.renew(key, token, lease).await
    }
    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.inner.purge(key).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        Some(self.tx.subscribe())
    }
}

#[tokio::test]
async fn max_age_bounds_an_entry_also_when_the_store_pushes_invalidations() {
    let store = Pushing {
        inner: MemoryStore::default(),
        tx: tokio::sync::broadcast::channel(16).0,
    };
    let cached = CachedStore::new(store, 1 << 20).max_age(Duration::from_millis(50));
    let key = StorageKey::scoped("t:", "e", b"", &IdempotencyKey::parse(b"k").unwrap());
    let fp = Fingerprint::strict("POST", "/", "", b"");
    let resp = StoredResponse::new(201, None::<(&str, &str)>, "");
    let long = Duration::from_secs(3600);
    let Ok(Begin::Acquired { token, .. }) = cached.begin(&key, &fp, long, long).await else {
        panic!("acquired");
    };
    cached.complete(&key, token, &resp, long).await.unwrap();
    // The first replay admits the record (beside its answer), the second is answered from
    // memory.
    assert!(matches!(
        cached.begin(&key, &fp, long, long).await,
        Ok(Begin::Replay(_))
    ));
    tokio::task::yield_now().await;
    assert!(matches!(
        cached.begin(&key, &fp, long, long).await,
        Ok(Begin::Replay(_))
    ));
    assert_eq!(cached.hits(), 1);
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Past max_age: from the store again, not from memory.
    assert!(matches!(
        cached.begin(&key, &fp, long, long).await,
        Ok(Begin::Replay(_))
    ));
    assert_eq!(cached.hits(), 1, "an entry outlived max_age");
}
