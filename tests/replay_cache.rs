//! The local replay cache (`CachedStore`) on Redis and PostgreSQL: instance B answers replays
//! from memory; a purge on instance A stops B's replays within the invalidation delay, and also
//! when the purge's message was lost with B's push connection — B's reconnection flushes its
//! cache. B's cache keeps entries for a minute, so only the invalidation can explain a stop.

mod common;

use actix_web::{post, web, HttpResponse};
use common::proxy::FaultProxy;
use common::redis::RedisServer;
use idem::idempotent;
use idem_runtime::{CachedStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Runs(AtomicU64);

#[post("/pay")]
#[idempotent(name = "pay")]
async fn pay(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "run": n }))
}

/// How long a purge may take to reach the other instance's cache: the push itself takes
/// milliseconds; after a lost message, B's push connection reconnects within ~0.2 s + connect.
const BOUND: Duration = Duration::from_secs(3);

macro_rules! app {
    ($store:expr, $runs:expr) => {
        actix_web::test::init_service(
            actix_web::App::new()
                .app_data(common::builder().store($store).build())
                .app_data($runs.clone())
                .service(pay),
        )
        .await
    };
}

/// `POST /pay` with `key`: status and whether it was a replay.
async fn post<S: idem_runtime::testing::TestApp>(app: &S, key: &str) -> (u16, bool) {
    let req = actix_web::test::TestRequest::post()
        .uri("/pay")
        .insert_header(("Idempotency-Key", key))
        .to_request();
    let resp = actix_web::test::call_service(app, req).await;
    (
        resp.status().as_u16(),
        resp.headers().contains_key("idempotent-replayed"),
    )
}

/// The scenario on two instances: A on `direct`, B on `cached` (through `proxy`).
async fn scenario<A: Store + Clone, B: Store + Clone>(
    direct: A,
    cached: CachedStore<B>,
    proxy: &FaultProxy,
) {
    let runs = web::Data::new(Runs::default());
    let a = app!(direct.clone(), runs);
    let b = app!(cached.clone(), runs);
    let purger = common::builder().store(direct.clone()).build();

    // Round 0: a purge; round 1: a purge whose message is lost; round 2: an erasure of the
    // principal (a prefix).
    for (round, lose_the_message) in [(0, false), (1, true), (2, false)] {
        let key = format!("cached-{round}");
        assert_eq!(post(&a, &key).await, (201, false));
        let ran = runs.0.load(Ordering::SeqCst);
        assert_eq!(
            post(&b, &key).await,
            (201, true),
            "B replays from the store"
        );
        // Then from its cache: the first replay's admission is skipped if an invalidation (the
        // flush of B's just-established subscription) crossed it; a later replay admits.
        let hits = cached.hits();
        for _ in 0..50 {
            assert_eq!(post(&b, &key).await, (201, true));
            if cached.hits() > hits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cached.hits() > hits, "B answers from its cache");

        if lose_the_message {
            // The purge's message is held at B's side of the network, then dropped with B's
            // connections.
            proxy.stall();
        }
        let t0 = Instant::now();
        if round == 2 {
            assert!(purger.erase_principal("").await.unwrap() >= 1, "A erases");
        } else {
            assert!(purger.purge("pay", "", &key).await.unwrap(), "A purges");
        }
        if lose_the_message {
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.reset();
            proxy.resume();
        }
        // B stops replaying: its next request with the key runs the handler afresh.
        loop {
            let answer = post(&b, &key).await;
            if answer == (201, false) {
                break;
            }
            assert!(
                t0.elapsed() < BOUND,
                "round {round}: B still answers {answer:?} after {:?}",
                t0.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "round {round} (message lost: {lose_the_message}): B stopped replaying {:?} after the purge",
            t0.elapsed()
        );
        assert_eq!(runs.0.load(Ordering::SeqCst), ran + 1, "one new run");
    }
}

#[actix_web::test]
async fn a_purge_reaches_another_instances_cache_on_redis() {
    if !common::redis::available("a_purge_reaches_another_instances_cache_on_redis") {
        return;
    }
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let direct = idem::RedisStore::connect(&redis.url()).await.unwrap();
    let through = idem::RedisStore::connect(&proxy.url()).await.unwrap();
    let cached = CachedStore::new(through, 1 << 20).max_age(Duration::from_secs(60));
    scenario(direct, cached, &proxy).await;
}

#[actix_web::test]
async fn a_purge_reaches_another_instances_cache_on_postgres() {
    let table = common::pg::table("cache");
    let Some(direct) = common::pg::store(
        "a_purge_reaches_another_instances_cache_on_postgres",
        &table,
    )
    .await
    else {
        return;
    };
    let proxy = FaultProxy::start(common::pg::address()).await;
    let through =
        idem_runtime::PostgresStore::connect_table(&proxy.pg_config(&common::pg::config()), &table)
            .await
            .expect("connect through the proxy");
    let cached = CachedStore::new(through, 1 << 20).max_age(Duration::from_secs(60));
    scenario(direct, cached, &proxy).await;
    common::pg::drop_tables(&common::pg::client().await, &[&table]).await;
}
