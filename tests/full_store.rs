//! A store at its capacity, on real servers: a `redis-server` whose `maxmemory` is filled until
//! every write is refused (`noeviction`, the policy idem requires) answers `Full`, and an app on
//! it fails closed under `reject` *and* `proceed` — 503 with `Retry-After`, no execution without
//! a record, never two executions of one key — while replays of what it kept still work.

mod common;

use common::redis::{available, RedisServer};
use common::{builder, problem, start, Charge};
use idem::RedisStore;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn charge(amount: i64) -> Charge {
    Charge {
        amount,
        delay_ms: 0,
    }
}

/// Fills `server` until it refuses every write for lack of memory: 64 KiB values until one is
/// refused, then smaller ones (a refused command's own buffer is freed with it, leaving room
/// for small writes), down to 16 bytes. Bounded: at most 5000 writes per size.
async fn fill(server: &RedisServer) {
    let client = redis::Client::open(server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    for (size, bound) in [(64 * 1024, 400), (1024, 5000), (16, 5000)] {
        let value = vec![b'x'; size];
        let refused = 'size: {
            for i in 0..bound {
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(format!("ballast:{size}:{i}"))
                    .arg(&value)
                    .query_async(&mut con)
                    .await;
                if let Err(e) = set {
                    assert_eq!(e.code(), Some("OOM"), "{e}");
                    break 'size true;
                }
            }
            false
        };
        assert!(
            refused,
            "maxmemory was never reached with {size}-byte values"
        );
    }
    // Closing a connection frees its buffers (tens of KiB after 64 KiB values), which would let
    // small writes in again: keep a margin by lowering `maxmemory` 1 MiB under what is used.
    drop(con);
    let info = server.cli(&["INFO", "memory"]).expect("INFO memory");
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let max = (used - (1 << 20)).to_string();
    assert_eq!(
        server.cli(&["CONFIG", "SET", "maxmemory", &max]).as_deref(),
        Some("OK")
    );
    let probe = server.cli(&["SET", "probe", "x"]).unwrap_or_default();
    assert!(probe.starts_with("OOM"), "every write is refused: {probe}");
}

/// A Redis whose `maxmemory` is reached: the conformance case "a store at capacity answers
/// Full".
#[tokio::test]
async fn a_full_redis_answers_full() {
    if !available("a_full_redis_answers_full") {
        return;
    }
    let server = RedisServer::start_with(&["--maxmemory", "8mb"]);
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    fill(&server).await;
    idem_runtime::conformance::at_capacity_answers_full(Arc::new(store)).await;
}

/// An app on a full Redis: every write refused, under `reject` and under `proceed`: 503 with
/// `Retry-After` each time, nothing runs, and what was kept before still replays.
#[actix_web::test]
async fn a_full_redis_never_runs_a_request_unprotected() {
    if !available("a_full_redis_never_runs_a_request_unprotected") {
        return;
    }
    let server = RedisServer::start_with(&["--maxmemory", "8mb"]);
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let srv = start(Some(builder().store(store).build()));
    let kept = srv
        .post("/charge", "kept")
        .json(&charge(1))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 201);
    fill(&server).await;
    for path in ["/charge", "/proceed"] {
        for _ in 0..3 {
            let r = srv
                .post(path, "full-1")
                .json(&charge(2))
                .send()
                .await
                .unwrap();
            assert!(r.headers().contains_key("retry-after"), "{path}");
            let p = problem(r, 503).await;
            assert_eq!(p["type"], "urn:idem:problem:store-unavailable", "{path}");
        }
    }
    assert_eq!(
        srv.counters.charge.load(Ordering::SeqCst),
        1,
        "only the kept one"
    );
    assert_eq!(
        srv.counters.proceed.load(Ordering::SeqCst),
        0,
        "never unprotected"
    );
    let replay = srv
        .post("/charge", "kept")
        .json(&charge(1))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

/// The same with `durability` (every write pipelined with `WAIT`, as production setups with
/// replicas run it): the refusal comes back inside a pipeline, and is still `Full`.
#[actix_web::test]
async fn a_full_redis_with_durability_never_runs_a_request_unprotected() {
    if !available("a_full_redis_with_durability_never_runs_a_request_unprotected") {
        return;
    }
    let server = RedisServer::start_with(&["--maxmemory", "8mb"]);
    let replica = RedisServer::replica_of(&server);
    let store = RedisStore::builder()
        .url(server.url())
        .durability(1, std::time::Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let srv = start(Some(builder().store(store).build()));
    fill(&server).await;
    for _ in 0..3 {
        let r = srv
            .post("/proceed", "full-d")
            .json(&charge(2))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("retry-after"));
        problem(r, 503).await;
    }
    assert_eq!(
        srv.counters.proceed.load(Ordering::SeqCst),
        0,
        "never unprotected"
    );
    drop(replica);
}
