//! [`SharedStore`]: any store behind one type, so that the instances of a run share the memory
//! store or a real server's alike (`Arc<dyn Store>` is not a `Store` itself).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_runtime::{
    Begin, Fenced, FencingToken, Fingerprint, Invalidation, Record, StorageKey, Store, StoreError,
    StoredResponse, TransactionalStore,
};

/// A store shared by every instance of a run; every call goes to the store it holds.
#[derive(Clone)]
pub struct SharedStore(pub Arc<dyn Store>);

impl SharedStore {
    /// `store`, shared.
    pub fn new(store: impl Store) -> Self {
        SharedStore(Arc::new(store))
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
        self.0.begin(key, fingerprint, lease, keep).await
    }

    async fn begin_tentative(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.0.begin_tentative(key, fingerprint, lease, keep).await
    }

    async fn confirm(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.confirm(key, token, lease).await
    }

    async fn discard(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.0.discard(key, token).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.complete(key, token, response, ttl).await
    }

    async fn release(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.0.release(key, token).await
    }

    async fn give_back(&self, key: &StorageKey, token: FencingToken) -> Result<Fenced, StoreError> {
        self.0.give_back(key, token).await
    }

    fn begin_now(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Begin> {
        self.0.begin_now(key, fingerprint)
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.renew(key, token, lease).await
    }

    async fn purge(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.0.purge(key).await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.0.get(key).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        self.0.wait(key, timeout).await
    }

    async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, StoreError> {
        self.0.purge_prefix(key_prefix).await
    }

    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        self.0.transactional()
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        self.0.invalidations()
    }
}
