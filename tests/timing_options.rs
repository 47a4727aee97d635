//! Every `ttl` × `lease` the attribute accepts serves requests — the first one, its replay and
//! a duplicate in flight — under the builder's default store deadline (2 s), on the memory store
//! and on Redis: ttl ∈ {2 s, 1 min, 24 h} × lease ∈ {default, 5 s, 60 s}. The combinations that
//! can never work (a lease not below the ttl: 2 s with 5 s or 60 s, 1 min with 60 s) do not
//! compile (`tests/ui/fail/lease_not_below_ttl.rs`).

mod common;

use actix_web::{post, web, HttpRequest, HttpResponse};
use common::redis::{available, RedisServer};
use idem::{idempotent, Idempotency, RedisStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Runs of each endpoint's body.
#[derive(Default)]
struct Runs(AtomicUsize);

/// The shared body: counts, then waits `x-delay-ms`.
async fn run(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(common::delay_of(&req)).await;
    HttpResponse::Created().body(format!("run {n}"))
}

#[post("/ttl_2s")]
#[idempotent(ttl = "2s")]
async fn ttl_2s(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

#[post("/ttl_1m")]
#[idempotent(ttl = "1m")]
async fn ttl_1m(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

#[post("/ttl_1m_lease_5s")]
#[idempotent(ttl = "1m", lease = "5s")]
async fn ttl_1m_lease_5s(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

#[post("/ttl_24h")]
#[idempotent(ttl = "24h")]
async fn ttl_24h(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

#[post("/ttl_24h_lease_5s")]
#[idempotent(ttl = "24h", lease = "5s")]
async fn ttl_24h_lease_5s(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

#[post("/ttl_24h_lease_60s")]
#[idempotent(ttl = "24h", lease = "60s")]
async fn ttl_24h_lease_60s(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

const PATHS: [&str; 6] = [
    "/ttl_2s",
    "/ttl_1m",
    "/ttl_1m_lease_5s",
    "/ttl_24h",
    "/ttl_24h_lease_5s",
    "/ttl_24h_lease_60s",
];

/// Each endpoint of an app on `idem` (default store deadline): a first request (its duplicate
/// sent while it runs gets 409), then its replay; each body ran once.
async fn every_combination_serves(idem: Idempotency, store: &str) {
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let (addr, handle) = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(ttl_2s)
            .service(ttl_1m)
            .service(ttl_1m_lease_5s)
            .service(ttl_24h)
            .service(ttl_24h_lease_5s)
            .service(ttl_24h_lease_60s);
    });
    let client = common::client();
    let send = |path: &str, delay: u64| {
        client
            .post(format!("http://{addr}{path}"))
            .header("Idempotency-Key", format!("{store}{path}"))
            .header("x-delay-ms", delay.to_string())
            .send()
    };
    for (i, path) in PATHS.into_iter().enumerate() {
        // Two sends of one key, the second 150 ms after the first (each runs 600 ms if it is
        // the one that runs): one runs (201), the other meets it in flight (409) — whichever
        // reached the store first, on a loaded machine.
        let first = send(path, 600);
        let duplicate = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            send(path, 600).await
        };
        let (first, duplicate) = tokio::join!(first, duplicate);
        let mut statuses = [
            first.expect("first").status().as_u16(),
            duplicate.expect("duplicate").status().as_u16(),
        ];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 409],
            "{store} {path}: one runs, one is in flight"
        );
        let replay = send(path, 0).await.expect("replay");
        assert_eq!(replay.status(), 201, "{store} {path}: replay");
        assert_eq!(
            replay.headers()["idempotent-replayed"],
            "true",
            "{store} {path}"
        );
        assert_eq!(
            runs.0.load(Ordering::SeqCst),
            i + 1,
            "{store} {path}: one run"
        );
    }
    handle.stop(true).await;
}

#[actix_web::test]
async fn every_accepted_ttl_and_lease_serves_on_the_memory_store() {
    every_combination_serves(common::builder().build(), "memory").await;
}

#[actix_web::test]
async fn every_accepted_ttl_and_lease_serves_on_redis() {
    if !available("every_accepted_ttl_and_lease_serves_on_redis") {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    every_combination_serves(common::builder().store(store).build(), "redis").await;
}

#[post("/hangs")]
#[idempotent(lease = "1200ms")]
async fn hangs(req: HttpRequest, runs: web::Data<Runs>) -> HttpResponse {
    run(req, runs).await
}

/// The answer to a retry sent while a first request with the same key still runs (it takes
/// 4 s; the retry goes 2.5 s in; lease 1.2 s), on an app with `max_run_time`: 201 from a second
/// run once renewals stopped, 409 while they go on.
async fn retry_of_a_long_run(max_run_time: Option<Duration>) -> (u16, usize) {
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let mut b = common::builder();
    if let Some(max) = max_run_time {
        b = b.max_run_time(max);
    }
    let idem = b.build();
    let (addr, handle) = common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(hangs);
    });
    let client = common::client();
    let send = |delay: u64| {
        client
            .post(format!("http://{addr}/hangs"))
            .header("Idempotency-Key", "hang-1")
            .header("x-delay-ms", delay.to_string())
            .send()
    };
    let (_, retry) = tokio::join!(send(4000), async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        send(0).await.expect("retry")
    });
    let status = retry.status().as_u16();
    handle.stop(true).await;
    (status, runs.0.load(Ordering::SeqCst))
}

/// A handler that runs past `max_run_time` no longer holds its key: its lease lapses and a
/// retry runs (the documented at-least-once window); below it, the key stays held.
#[actix_web::test]
async fn renewals_stop_after_max_run_time() {
    let (status, runs) = retry_of_a_long_run(Some(Duration::from_millis(500))).await;
    assert_eq!((status, runs), (201, 2), "taken over after max_run_time");
    let (status, runs) = retry_of_a_long_run(None).await;
    assert_eq!(
        (status, runs),
        (409, 1),
        "held while renewed (default: an hour)"
    );
}

/// `max_run_time(Duration::MAX)` ("never stop renewing") serves: the renewal's end does not
/// overflow the clock.
#[actix_web::test]
async fn an_unbounded_max_run_time_serves() {
    let runs = web::Data::new(Runs::default());
    let r = runs.clone();
    let idem = common::builder().max_run_time(Duration::MAX).build();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(r.clone())
            .service(hangs);
    });
    let answer = common::client()
        .post(format!("http://{addr}/hangs"))
        .header("Idempotency-Key", "unbounded")
        .header("x-delay-ms", "700")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 201);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    handle.stop(true).await;
}
