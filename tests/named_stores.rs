//! Named stores: one app keeps most records in its default store and, for `store = "pg"`
//! endpoints, in PostgreSQL.

mod common;

use common::{problem, start, Charge};
use idem::{MemoryStore, RecordState, StorageKey, Store};

fn storage_key(endpoint: &str, key: &str) -> StorageKey {
    StorageKey::scoped(
        "idem:",
        endpoint,
        b"",
        &idem::IdempotencyKey::parse(key.as_bytes()).unwrap(),
    )
}

#[actix_web::test]
async fn endpoints_use_the_store_they_name() {
    let Some(pg) =
        common::pg::store("endpoints_use_the_store_they_name", "idem_named_stores").await
    else {
        return;
    };
    let memory = MemoryStore::default();
    let srv = start(Some(
        common::builder()
            .store(memory.clone())
            .named_store("pg", pg.clone())
            .build(),
    ));
    let key = format!("durable-{}", std::process::id());
    let body = Charge {
        amount: 9,
        delay_ms: 0,
    };
    assert_eq!(
        srv.post("/durable", &key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let again = srv.post("/durable", &key).json(&body).send().await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(srv.count(|c| &c.charge), 1);

    let durable = storage_key("POST /durable", &key);
    assert!(
        matches!(
            pg.get(&durable).await.unwrap().map(|r| r.state),
            Some(RecordState::Completed { .. })
        ),
        "the record is in PostgreSQL"
    );
    assert!(
        memory.get(&durable).await.unwrap().is_none(),
        "and not in the default store"
    );

    assert_eq!(
        srv.post("/charge", &key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let plain = storage_key("POST /charge", &key);
    assert!(
        memory.get(&plain).await.unwrap().is_some(),
        "default endpoints use the default store"
    );
    assert!(pg.get(&plain).await.unwrap().is_none());
    // Operators find and purge it without knowing which store holds it.
    let idem = srv.idem.clone().expect("registered");
    let info = idem
        .inspect("POST /durable", "", &key)
        .await
        .unwrap()
        .expect("found in the named store");
    assert_eq!(info.state, "completed");
    assert!(idem.purge("POST /durable", "", &key).await.unwrap());
    assert!(
        pg.get(&durable).await.unwrap().is_none(),
        "purged from PostgreSQL"
    );
}

#[actix_web::test]
async fn an_unregistered_store_is_a_clear_500() {
    let srv = start(Some(common::builder().build()));
    let r = srv
        .post("/durable", "k")
        .json(&Charge {
            amount: 1,
            delay_ms: 0,
        })
        .send()
        .await
        .unwrap();
    let p = problem(r, 500).await;
    assert!(p["detail"].as_str().unwrap().contains("`pg`"));
    assert_eq!(srv.count(|c| &c.charge), 0);
}
