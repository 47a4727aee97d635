//! A store that wraps a `PostgresStore` — to count or time its calls, say — keeps transactional
//! endpoints working when it forwards `Store::transactional`, and gets a clear 500 (nothing
//! runs) when it does not. The local PostgreSQL; skipped with one line without it, outside CI.

mod common;

use actix_web::{post, web, HttpResponse};
use async_trait::async_trait;
use common::pg;
use idem::{
    idempotent, Begin, Fenced, FencingToken, Fingerprint, Record, StorageKey, Store, StoreError,
    StoredResponse, TransactionalStore,
};
use idem_runtime::{IdemTx, PostgresStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts `begin` calls and passes everything to the PostgreSQL store it wraps.
struct Counting {
    inner: PostgresStore,
    /// Whether it forwards the transactional capability.
    forward: bool,
    begins: Arc<AtomicUsize>,
}

#[async_trait]
impl Store for Counting {
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
    ) -> Result<Begin, StoreError> {
        self.begins.fetch_add(1, Ordering::SeqCst);
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
    fn transactional(&self) -> Option<&dyn TransactionalStore> {
        if self.forward {
            self.inner.transactional()
        } else {
            None
        }
    }
}

/// Inserts one row in the handler's transaction.
#[post("/ledger")]
#[idempotent(transactional)]
async fn ledger(tx: IdemTx, table: web::Data<String>) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    db.execute(
        &format!("INSERT INTO {} DEFAULT VALUES", table.get_ref()),
        &[],
    )
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().json(serde_json::json!({"ok": true})))
}

#[actix_rt::test]
async fn a_wrapper_that_forwards_the_capability_stays_transactional() {
    for forward in [true, false] {
        let records = pg::table("idem_tx_wrap");
        let Some(inner) = pg::store("transactional wrapper", &records).await else {
            return;
        };
        let db = pg::client().await;
        let table = pg::table("ledger_wrap");
        db.batch_execute(&format!("CREATE TABLE {table} (id bigserial PRIMARY KEY)"))
            .await
            .expect("create the ledger");
        let begins = Arc::new(AtomicUsize::new(0));
        let store = Counting {
            inner,
            forward,
            begins: begins.clone(),
        };
        let idem = common::builder().store(store).build();
        let t = web::Data::new(table.clone());
        let (addr, handle) = common::serve(1, move |cfg| {
            cfg.app_data(idem.clone())
                .app_data(t.clone())
                .service(ledger);
        });
        let client = common::client();
        let send = || {
            client
                .post(format!("http://{addr}/ledger"))
                .header("Idempotency-Key", "wrapped-1")
                .send()
        };
        let first = send().await.expect("first");
        if forward {
            assert_eq!(first.status(), 201);
            let again = send().await.expect("retry");
            assert_eq!(again.status(), 201);
            assert_eq!(again.headers()["idempotent-replayed"], "true");
            assert_eq!(pg::count(&db, &table).await, 1, "one row for one key");
            assert!(
                begins.load(Ordering::SeqCst) >= 2,
                "went through the wrapper"
            );
        } else {
            let p = common::problem(first, 500).await;
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not PostgreSQL"),
                "{p}"
            );
            assert_eq!(pg::count(&db, &table).await, 0, "nothing ran");
        }
        handle.stop(true).await;
        pg::drop_tables(&db, &[&records, &table]).await;
    }
}
