//! The fault suite: crashes, stalls, resets and abandoned clients against real processes. Each
//! test ends with the number of executions it promises (see `docs/failure-behaviour.md`).

mod common;

use actix_web::web;
use common::demo::{free_port, start_example};
use common::proxy::FaultProxy;
use common::redis::{available, RedisServer};
use common::{problem, start_with, Charge, Counters, TestServer};
use idem::RedisStore;
use std::time::{Duration, Instant};

/// The store deadline of these apps: `/slow`'s 1 s lease is renewed every 333 ms, and a lease
/// must be longer than three deadlines.
const DEADLINE: Duration = Duration::from_millis(300);

/// A private Redis, and a fault proxy in front of it for the app to connect through.
async fn redis_behind_proxy() -> (RedisServer, FaultProxy) {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    (redis, proxy)
}

async fn redis_app(url: &str, renew: bool) -> TestServer {
    redis_app_with(url, renew, DEADLINE).await
}

async fn redis_app_with(url: &str, renew: bool, deadline: Duration) -> TestServer {
    let store = RedisStore::builder()
        .url(url)
        .response_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let idem = common::builder()
        .store(store)
        .store_timeout(deadline)
        .renew_leases(renew)
        .build();
    start_with(Some(idem), web::Data::new(Counters::default()))
}

fn charge(amount: i64, delay_ms: u64) -> Charge {
    Charge { amount, delay_ms }
}

fn executions(redis: &RedisServer) -> i64 {
    redis
        .cli(&["GET", "idem-faults:executions"])
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 1. `kill -9` of the app mid-handler. The restarted app answers 409 until the crashed
/// attempt's lease (2 s) ends, then runs the request once more, and replays it from then on.
#[actix_web::test]
async fn app_killed_mid_handler_runs_again_only_after_its_lease() {
    if !available("app_killed_mid_handler_runs_again_only_after_its_lease") {
        return;
    }
    let redis = RedisServer::start();
    let port = free_port();
    let env = [("IDEM_REDIS_URL", redis.url())];
    let mut app = start_example("fault_app", port, &env).await;
    let c = common::client();
    let url = format!("http://127.0.0.1:{port}/work");
    let send = |delay: u64| {
        c.post(&url)
            .header("Idempotency-Key", "crash")
            .json(&serde_json::json!({ "delay_ms": delay }))
            .send()
    };
    let doomed = actix_web::rt::spawn(send(10_000));
    let started = Instant::now();
    while executions(&redis) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill();
    assert!(
        doomed.await.unwrap().is_err(),
        "the crashed request got no answer"
    );
    let _app = start_example("fault_app", port, &env).await;

    let r = send(10_000).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    problem(r, 409).await;
    assert_eq!(
        executions(&redis),
        1,
        "no second execution while the lease runs"
    );

    let mut fresh = None;
    for _ in 0..50 {
        let r = send(10_000).await.unwrap();
        if r.status() != 409 {
            fresh = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The retry carries the same payload, so it takes 10 s too; the lease ran out meanwhile.
    let fresh = fresh.expect("the key was freed when the lease ended");
    assert_eq!(fresh.status(), 201);
    assert!(!fresh.headers().contains_key("idempotent-replayed"));
    assert_eq!(
        executions(&redis),
        2,
        "once more after the lease: the documented window"
    );
    let again = send(10_000).await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(executions(&redis), 2, "and replayed from then on");
}

/// 2. A handler slower than its lease: renewal keeps duplicates out. With renewal switched off
/// (test hook), a duplicate takes the key over and runs, the stale worker's `complete` is refused
/// by fencing, and the newer owner's record stands.
#[actix_web::test]
async fn renewal_holds_the_key_and_fencing_refuses_a_stale_worker() {
    if !available("renewal_holds_the_key_and_fencing_refuses_a_stale_worker") {
        return;
    }
    let redis = RedisServer::start();

    let app = redis_app(&redis.url(), true).await;
    let first = actix_web::rt::spawn(app.post("/slow", "renewed").json(&charge(1, 3500)).send());
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dup = app
            .post("/slow", "renewed")
            .json(&charge(1, 3500))
            .send()
            .await
            .unwrap();
        assert_eq!(
            dup.status(),
            409,
            "the 1 s lease is renewed while the handler runs"
        );
    }
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(app.count(|c| &c.slow), 1);

    let app = redis_app(&redis.url(), false).await;
    let stale = actix_web::rt::spawn(app.post("/slow", "fenced").json(&charge(2, 3500)).send());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Its lease lapsed, so the key is free again: the newer request (a quick one) takes it.
    let newer = app
        .post("/slow", "fenced")
        .json(&charge(2, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(newer.status(), 200, "the lapsed lease was taken over");
    let newer_body: serde_json::Value = newer.json().await.unwrap();
    let stale_body: serde_json::Value = stale.await.unwrap().unwrap().json().await.unwrap();
    assert_ne!(stale_body, newer_body);
    let replay = app
        .post("/slow", "fenced")
        .json(&charge(2, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        replay.json::<serde_json::Value>().await.unwrap(),
        newer_body,
        "the stale worker's late complete was refused; the newer owner's record stands"
    );
    assert_eq!(
        app.count(|c| &c.slow),
        2,
        "without renewal a slow handler runs twice"
    );
}

/// 3. Redis stalled mid-request: 503 within the store deadline, no execution; after the stall,
/// the retry runs once.
#[actix_web::test]
async fn redis_stalled_mid_request() {
    if !available("redis_stalled_mid_request") {
        return;
    }
    let (_redis, proxy) = redis_behind_proxy().await;
    let app = redis_app(&proxy.url(), true).await;
    assert_eq!(
        app.post("/slow", "warm")
            .json(&charge(0, 0))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    proxy.stall();
    let started = Instant::now();
    let r = app
        .post("/slow", "stalled")
        .json(&charge(3, 0))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(r.headers().contains_key("retry-after"));
    problem(r, 503).await;
    assert!(
        took < DEADLINE + Duration::from_millis(700),
        "503 after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.resume();

    // The held `begin` reaches Redis late and leaves a lease nobody runs under: 409 until it
    // ends (1 s), then the retry runs, once.
    let mut fresh = None;
    for _ in 0..60 {
        let r = app
            .post("/slow", "stalled")
            .json(&charge(3, 0))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            fresh = Some(r);
            break;
        }
        assert!(matches!(r.status().as_u16(), 409 | 503), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = fresh.expect("the retry ran after the stall");
    assert!(!fresh.headers().contains_key("idempotent-replayed"));
    let again = app
        .post("/slow", "stalled")
        .json(&charge(3, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        app.count(|c| &c.slow),
        2,
        "the warm-up and the stalled request, once each"
    );
}

/// 4. Every Redis connection reset by the very write that stores the first response: the client
/// still gets its response, the completion is retried while the lease is held, and the retry
/// replays the real response — one execution.
#[actix_web::test]
async fn redis_reset_on_the_first_completion_still_replays() {
    if !available("redis_reset_on_the_first_completion_still_replays") {
        return;
    }
    let (_redis, proxy) = redis_behind_proxy().await;
    let app = redis_app(&proxy.url(), true).await;
    reset_on_first_completion(&app, &proxy, "/charge", 4404).await;
}

/// 4b. The same against PostgreSQL: the connection that carries the first completion is reset.
#[actix_web::test]
async fn postgres_reset_on_the_first_completion_still_replays() {
    let table = common::pg::table("faults_reset");
    let Some(direct) = common::pg::store(
        "postgres_reset_on_the_first_completion_still_replays",
        &table,
    )
    .await
    else {
        return;
    };
    drop(direct);
    let pg_addr = common::pg::address();
    let proxy = FaultProxy::start(pg_addr).await;
    let store =
        idem_runtime::PostgresStore::connect_table(&proxy.pg_config(&common::pg::config()), &table)
            .await
            .expect("connect through the proxy");
    let idem = common::builder()
        .named_store("pg", store)
        .store_timeout(DEADLINE)
        .build();
    let app = start_with(Some(idem), web::Data::new(Counters::default()));
    reset_on_first_completion(&app, &proxy, "/durable", 4405).await;
    common::pg::drop_tables(&common::pg::client().await, &[&table]).await;
}

/// Arms `proxy` to reset every connection on the write that carries the response of `amount`,
/// then: the client gets 201, the retry replays that body, one execution.
async fn reset_on_first_completion(app: &TestServer, proxy: &FaultProxy, path: &str, amount: i64) {
    // The stored body is `{"amount":…,…}`; only the completion carries it to the store.
    proxy.reset_on(format!("\"amount\":{amount}").as_bytes());
    let first = app
        .post(path, "reset")
        .json(&charge(amount, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201, "the response still reaches the client");
    let first_body = first.bytes().await.unwrap();
    assert_eq!(proxy.sprung(), 1, "the completion's connection was reset");
    let retry = app
        .retry_until_done(path, "reset", &charge(amount, 0))
        .await;
    assert_eq!(retry.status(), 201);
    assert_eq!(
        retry.headers().get("idempotent-replayed").unwrap(),
        "true",
        "the completion was retried and kept"
    );
    assert_eq!(
        retry.bytes().await.unwrap(),
        first_body,
        "the real response, replayed"
    );
    assert_eq!(app.count(|c| &c.charge), 1, "one execution");
}

/// 4c. A renewal stuck on a stalled store never pauses the handler: it runs beside it. The
/// handler (three leases long) measures the longest time it was not polled.
#[actix_web::test]
async fn a_slow_renewal_never_pauses_the_handler() {
    if !available("a_slow_renewal_never_pauses_the_handler") {
        return;
    }
    let (_redis, proxy) = redis_behind_proxy().await;
    // `/progress` has a 1.5 s lease, renewed every 500 ms; each renewal may take 450 ms.
    let app = redis_app_with(&proxy.url(), true, Duration::from_millis(450)).await;
    let run = actix_web::rt::spawn(
        app.post("/progress", "progress")
            .json(&charge(1, 4500))
            .send(),
    );
    // Stall the store across the first renewal (due 500 ms after `begin`): it hangs until the
    // store deadline.
    tokio::time::sleep(Duration::from_millis(350)).await;
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.resume();
    let dup = app
        .post("/progress", "progress")
        .json(&charge(1, 4500))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409, "the lease is still held");
    let r = run.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let gap = body["max_gap_ms"].as_u64().unwrap();
    // A 10 ms tick; a paused handler would show the stalled renewal's 450 ms.
    assert!(gap < 250, "the handler was not polled for {gap} ms");
    assert_eq!(app.count(|c| &c.progress), 1);
}

/// 4d. `on_conflict = "wait"` with `on_store_error = "proceed"`: once the store said another
/// request holds the key, a store failure while waiting answers 503, never an unprotected run.
#[actix_web::test]
async fn a_store_failure_while_waiting_never_runs_the_duplicate() {
    if !available("a_store_failure_while_waiting_never_runs_the_duplicate") {
        return;
    }
    let (_redis, proxy) = redis_behind_proxy().await;
    let app = redis_app(&proxy.url(), true).await;
    let first = actix_web::rt::spawn(app.post("/wait-proceed", "w").json(&charge(5, 2000)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dup = actix_web::rt::spawn(app.post("/wait-proceed", "w").json(&charge(5, 2000)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.resume();
    let dup = dup.await.unwrap().unwrap();
    assert!(dup.headers().contains_key("retry-after"));
    problem(dup, 503).await;
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    let r = app
        .retry_until_done("/wait-proceed", "w", &charge(5, 2000))
        .await;
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.count(|c| &c.wait), 1, "the duplicate never ran");
}

/// 4e. SIGTERM (a deploy) while a handler runs whose client already hung up: the app drains it,
/// completes its record and exits; a second instance replays it.
#[actix_web::test]
async fn sigterm_lets_an_abandoned_handler_complete() {
    if !available("sigterm_lets_an_abandoned_handler_complete") {
        return;
    }
    let redis = RedisServer::start();
    let env = [("IDEM_REDIS_URL", redis.url())];
    let port = free_port();
    let mut app = start_example("fault_app", port, &env).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    common::reset_after(
        addr,
        "/work",
        "deploy",
        &charge(0, 2500),
        Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    while executions(&redis) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = app
        .terminate(Duration::from_secs(20))
        .await
        .expect("the app exits after the drain");
    assert!(status.success(), "a clean exit: {status:?}");

    let port = free_port();
    let _second = start_example("fault_app", port, &env).await;
    let r = common::client()
        .post(format!("http://127.0.0.1:{port}/work"))
        .header("Idempotency-Key", "deploy")
        .json(&charge(0, 2500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers().get("idempotent-replayed").unwrap(),
        "true",
        "the drained handler's record"
    );
    assert_eq!(executions(&redis), 1, "one execution across the deploy");
}

/// 5. Many clients hanging up mid-handler at once: every operation runs once, and every retry
/// gets its replay.
#[actix_web::test]
async fn clients_resetting_under_load_run_each_operation_once() {
    let app = start_with(
        Some(common::builder().build()),
        web::Data::new(Counters::default()),
    );
    let keys: Vec<String> = (0..50).map(|i| format!("hangup-{i}")).collect();
    let mut hangups = Vec::new();
    for k in &keys {
        let app_addr = app.addr;
        let k = k.clone();
        hangups.push(actix_web::rt::spawn(async move {
            common::reset_after(
                app_addr,
                "/charge",
                &k,
                &charge(7, 300),
                Duration::from_millis(50),
            )
            .await
        }));
    }
    for h in hangups {
        h.await.unwrap();
    }
    for k in &keys {
        let r = app.retry_until_done("/charge", k, &charge(7, 300)).await;
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers().get("idempotent-replayed").unwrap(),
            "true",
            "{k}"
        );
    }
    assert_eq!(
        app.count(|c| &c.charge),
        keys.len(),
        "each operation ran exactly once"
    );
}
