//! Fair capacity: one principal cannot fill a store for everyone, cached 4xx answers may live
//! shorter, and replayed answers keep the headers that belong to them.

mod common;

use actix_web::{post, web, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, MemoryStore, RedisStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Runs(AtomicUsize);

/// 64 KiB per answer: a flood of these fills a store fast.
#[post("/report")]
#[idempotent]
async fn report(runs: web::Data<Runs>) -> HttpResponse {
    runs.0.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().body(vec![b'r'; 64 << 10])
}

/// A 4xx whose record lives 1 s instead of the hour.
#[post("/validate")]
#[idempotent(ttl = "1h", client_error_ttl = "1s", lease = "300ms")]
async fn validate(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Conflict().json(serde_json::json!({ "error": "insufficient funds", "run": n }))
}

/// A 503 with `Retry-After`, and a body the handler compressed itself.
#[post("/busy")]
#[idempotent]
async fn busy(runs: web::Data<Runs>) -> HttpResponse {
    runs.0.fetch_add(1, Ordering::SeqCst);
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "7"))
        .insert_header(("Content-Encoding", "gzip"))
        .body(vec![
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
}

fn start(idem: idem::Idempotency, runs: web::Data<Runs>) -> std::net::SocketAddr {
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(report)
            .service(validate)
            .service(busy);
    });
    std::mem::forget(handle);
    addr
}

async fn post(addr: std::net::SocketAddr, path: &str, who: &str, key: &str) -> reqwest::Response {
    common::client()
        .post(format!("http://{addr}{path}"))
        .header("Authorization", format!("Bearer {who}"))
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("response")
}

/// A flood of unique keys from one principal, against a 16 MiB memory store that the flood
/// alone would exhaust (400 × 64 KiB = 25 MiB): the flooder is capped at its 4 MiB share and
/// gets 429; another principal's new key still runs.
#[actix_web::test]
async fn a_flooding_principal_is_capped_and_others_still_run() {
    let store = MemoryStore::builder()
        .max_bytes(16 << 20)
        .per_principal(100_000, 4 << 20)
        .build();
    let runs = web::Data::new(Runs::default());
    let addr = start(common::builder().store(store.clone()).build(), runs.clone());
    let mut refused = None;
    for i in 0..400 {
        let r = post(addr, "/report", "flooder", &format!("flood-{i}")).await;
        if r.status() != 201 {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("the flooder is stopped before the flood ends");
    assert!(r.headers().contains_key("retry-after"));
    let p = common::problem(r, 429).await;
    assert_eq!(p["type"], "urn:idem:problem:too-many-keys");
    assert!(
        (50..70).contains(&at),
        "capped near 4 MiB / 64 KiB, at {at}"
    );
    assert!(
        store.used_bytes() < 5 << 20,
        "the store keeps room for everyone else"
    );

    let other = post(addr, "/report", "someone-else", "mine").await;
    assert_eq!(other.status(), 201, "another principal still runs");
    // The flooder's finished operations still replay.
    let replay = post(addr, "/report", "flooder", "flood-0").await;
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
}

/// The per-principal admission limit on a shared Redis: a burst of 5 new keys, then 429 for
/// that principal only; its replays and other principals are not limited.
#[actix_web::test]
async fn new_keys_are_admitted_per_principal_on_redis() {
    if !available("new_keys_are_admitted_per_principal_on_redis") {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let runs = web::Data::new(Runs::default());
    let idem = common::builder()
        .store(store)
        .admission_limit(5, Duration::from_secs(60))
        .build();
    let addr = start(idem, runs.clone());
    for i in 0..5 {
        assert_eq!(
            post(addr, "/report", "flooder", &format!("k{i}"))
                .await
                .status(),
            201
        );
    }
    let r = post(addr, "/report", "flooder", "k5").await;
    assert!(r.headers().contains_key("retry-after"));
    common::problem(r, 429).await;
    let replay = post(addr, "/report", "flooder", "k0").await;
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        post(addr, "/report", "someone-else", "k5").await.status(),
        201
    );
    assert_eq!(
        runs.0.load(Ordering::SeqCst),
        6,
        "the refused key never ran"
    );
    // The refused key was released: once admitted again, it runs.
}

/// `client_error_ttl`: a cached 4xx replays within its shorter life, then the key runs afresh.
#[actix_web::test]
async fn a_cached_4xx_lives_its_own_shorter_ttl() {
    let runs = web::Data::new(Runs::default());
    let addr = start(
        common::builder()
            .store_timeout(Duration::from_millis(90))
            .build(),
        runs.clone(),
    );
    let first = post(addr, "/validate", "a", "v").await;
    assert_eq!(first.status(), 409);
    let again = post(addr, "/validate", "a", "v").await;
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = post(addr, "/validate", "a", "v").await;
    assert_eq!(later.status(), 409);
    assert!(later.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

/// A replayed 503 keeps its `Retry-After`, and a body the handler compressed keeps its
/// `Content-Encoding`.
#[actix_web::test]
async fn replays_keep_retry_after_and_content_encoding() {
    let runs = web::Data::new(Runs::default());
    let addr = start(common::builder().build(), runs.clone());
    let first = post(addr, "/busy", "a", "b").await;
    let first_body = first.bytes().await.unwrap();
    let replay = post(addr, "/busy", "a", "b").await;
    assert_eq!(replay.status(), 503);
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(replay.headers()["retry-after"], "7");
    assert_eq!(replay.headers()["content-encoding"], "gzip");
    assert_eq!(replay.bytes().await.unwrap(), first_body);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

/// Refusals by the admission limit leave nothing behind: 40 keys refused after the burst add no
/// record to Redis (`DBSIZE` unchanged), while the admitted keys still replay.
#[actix_web::test]
async fn refused_keys_leave_nothing_in_the_store() {
    if !available("refused_keys_leave_nothing_in_the_store") {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let size = || async { redis.cli(&["DBSIZE"]).expect("DBSIZE") };
    refused_keys_leave_nothing(common::builder().store(store), size).await;
}

/// The same on PostgreSQL: the records table's row count.
#[actix_web::test]
async fn refused_keys_leave_no_row_on_postgres() {
    let table = common::pg::table("fair_rec");
    let Some(store) = common::pg::store("refused_keys_leave_no_row_on_postgres", &table).await
    else {
        return;
    };
    let db = common::pg::client().await;
    let size = || async { common::pg::count(&db, &table).await.to_string() };
    refused_keys_leave_nothing(common::builder().store(store), size).await;
    common::pg::drop_tables(&db, &[&table]).await;
}

/// Five keys admitted (limit 5 an hour), then 40 refused with 429: `size` (the store's record
/// count) unchanged by them, and the admitted ones still replay.
async fn refused_keys_leave_nothing<F, Fut>(
    builder: idem::IdempotencyBuilder<idem::Scoped>,
    size: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let runs = web::Data::new(Runs::default());
    let idem = builder
        .admission_limit(5, Duration::from_secs(3600))
        .build();
    let addr = start(idem, runs.clone());
    for i in 0..5 {
        let key = format!("k{i}");
        assert_eq!(post(addr, "/report", "flooder", &key).await.status(), 201);
    }
    let before = size().await;
    for i in 5..45 {
        let r = post(addr, "/report", "flooder", &format!("k{i}")).await;
        common::problem(r, 429).await;
    }
    assert_eq!(size().await, before, "no record left behind");
    // A fresh principal's 40 new keys at once: all pass the look before `begin` (nothing is
    // spent yet), 5 win the admission and the rest lose it after their `begin` — those leave
    // no record either.
    let burst =
        (0..40).map(|i| async move { post(addr, "/report", "burst", &format!("b{i}")).await });
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(admitted, 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 201 | 429)),
        "{statuses:?}"
    );
    let grown: i64 =
        size().await.trim().parse::<i64>().unwrap() - before.trim().parse::<i64>().unwrap();
    assert_eq!(grown, 5, "only the admitted keys' records");
    let replay = post(addr, "/report", "flooder", "k0").await;
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(runs.0.load(Ordering::SeqCst), 10);
}
