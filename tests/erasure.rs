//! Erasure of one principal (GDPR-style) on every store: `Idempotency::erase_principal` removes
//! all of that account's records — every endpoint, every key — and nothing of anyone else's.
//! Counted both ways: the erasure reports how many went, the other account's retries all still
//! replay, the erased account's retries run afresh. Real servers: a private `redis-server`, the
//! local PostgreSQL.

mod common;

use actix_web::{post, web, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, Idempotency, MemoryStore, Store};
use std::sync::atomic::{AtomicUsize, Ordering};

#[post("/a")]
#[idempotent(name = "a")]
async fn a(runs: web::Data<AtomicUsize>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

#[post("/b")]
#[idempotent(name = "b")]
async fn b(runs: web::Data<AtomicUsize>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

/// Account `acct_a` makes 5 operations, `acct_b` 7, over two endpoints; `acct_a` is erased.
async fn erase_one_of_two(store: impl Store) {
    let idem = Idempotency::builder()
        .scope_by_header(actix_web::http::header::HeaderName::from_static(
            "x-account",
        ))
        .secret(b"erasure-test-secret-0123456789abcdef".to_vec())
        .store(store)
        .build();
    let runs = web::Data::new(AtomicUsize::new(0));
    let (i, r) = (idem.clone(), runs.clone());
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(i.clone())
            .app_data(r.clone())
            .service(a)
            .service(b);
    });
    let ops = |account: &'static str, n: usize| {
        (0..n).map(move |i| {
            (
                account,
                if i % 2 == 0 { "/a" } else { "/b" },
                format!("{account}-{i}"),
            )
        })
    };
    let all: Vec<_> = ops("acct_a", 5).chain(ops("acct_b", 7)).collect();
    let send = |account: &str, path: &str, key: &str| {
        common::client()
            .post(format!("http://{addr}{path}"))
            .header("x-account", account)
            .header("Idempotency-Key", key)
            .send()
    };
    for (account, path, key) in &all {
        assert_eq!(send(account, path, key).await.expect("first").status(), 201);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 12);

    let erased = idem.erase_principal("acct_a").await.expect("erase");
    assert_eq!(erased, 5, "all of acct_a's records, and only those");

    let mut replayed = 0;
    for (account, path, key) in &all {
        let resp = send(account, path, key).await.expect("retry");
        assert_eq!(resp.status(), 201);
        if resp.headers().contains_key("idempotent-replayed") {
            assert_eq!(*account, "acct_b", "{key}: an erased record replayed");
            replayed += 1;
        }
    }
    assert_eq!(replayed, 7, "every one of acct_b's records is intact");
    assert_eq!(runs.load(Ordering::SeqCst), 17, "acct_a's 5 ran afresh");
    assert_eq!(idem.erase_principal("nobody").await.expect("erase"), 0);
    handle.stop(true).await;
}

#[actix_rt::test]
async fn erasure_on_the_memory_store() {
    erase_one_of_two(MemoryStore::default()).await;
}

#[actix_rt::test]
async fn erasure_on_redis() {
    if !available("erasure_on_redis") {
        return;
    }
    let server = RedisServer::start();
    let store = idem::RedisStore::connect(&server.url())
        .await
        .expect("connect");
    erase_one_of_two(store).await;
}

/// On a cluster, through the per-principal index in each slot: no keyspace scan.
#[actix_rt::test]
async fn erasure_on_a_redis_cluster() {
    if !available("erasure_on_a_redis_cluster") {
        return;
    }
    let cluster = common::redis::RedisCluster::start();
    let store = idem::RedisStore::builder()
        .cluster(cluster.urls())
        .connect()
        .await
        .expect("connect to the cluster");
    erase_one_of_two(store).await;
    // Nothing was found by scanning: the nodes ran no SCAN.
    assert_eq!(cluster.calls("scan"), 0);
}

#[actix_rt::test]
async fn erasure_on_postgresql() {
    let table = common::pg::table("idem_erasure");
    let Some(store) = common::pg::store("erasure (PostgreSQL)", &table).await else {
        return;
    };
    erase_one_of_two(store).await;
    common::pg::drop_tables(&common::pg::client().await, &[&table]).await;
}
