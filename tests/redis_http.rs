//! Many app instances sharing one Redis or one Redis Cluster, round trips counted by the server,
//! and faults done to real `redis-server` processes.

mod common;

use actix_web::web;
use common::redis::{available, RedisCluster, RedisServer};
use common::{start_with, Charge, Counters, TestServer};
use idem::{Idempotency, RedisStore};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const STORE_DEADLINE: Duration = Duration::from_millis(800);

const KEEP: Duration = Duration::from_secs(60);

fn idem(store: RedisStore) -> Idempotency {
    common::builder()
        .store(store)
        .store_timeout(STORE_DEADLINE)
        .build()
}

async fn single_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url()).await.expect("connect")
}

async fn cluster_store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder()
        .cluster(cluster.urls())
        .connect()
        .await
        .expect("connect to the cluster")
}

fn charge(amount: i64, delay_ms: u64) -> Charge {
    Charge { amount, delay_ms }
}

/// 300 concurrent same-key requests spread over `apps`: exactly one runs the handler, every other
/// answer is 409 or the replay of that one.
async fn storm_over(stores: Vec<RedisStore>) {
    let counters = web::Data::new(Counters::default());
    let apps: Vec<TestServer> = stores
        .into_iter()
        .map(|store| start_with(Some(idem(store)), counters.clone()))
        .collect();
    storm(&apps, &counters).await;
}

async fn storm(apps: &[TestServer], counters: &web::Data<Counters>) {
    let mut tasks = Vec::new();
    for i in 0..300 {
        let req = apps[i % apps.len()]
            .post("/charge", "shared-storm")
            .json(&charge(77, 500));
        tasks.push(actix_web::rt::spawn(async move {
            let r = req.send().await.expect("response");
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            (status, replayed, r.bytes().await.expect("body"))
        }));
    }
    let (mut fresh, mut conflicts) = (Vec::new(), 0);
    let mut replays = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (201, false, body) => fresh.push(body),
            (201, true, body) => replays.push(body),
            (409, _, _) => conflicts += 1,
            (s, _, body) => panic!("unexpected {s}: {body:?}"),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one request executed");
    assert!(
        replays.iter().all(|b| *b == fresh[0]),
        "replays equal the first response"
    );
    assert_eq!(1 + replays.len() + conflicts, 300);
    assert_eq!(counters.charge.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn three_instances_share_one_redis() {
    if !available("three_instances_share_one_redis") {
        return;
    }
    let redis = RedisServer::start();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(single_store(&redis).await);
    }
    storm_over(stores).await;
}

#[actix_web::test]
async fn three_instances_share_one_cluster() {
    if !available("three_instances_share_one_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(cluster_store(&cluster).await);
    }
    storm_over(stores).await;
}

#[actix_web::test]
async fn round_trips_counted_by_the_server() {
    if !available("round_trips_counted_by_the_server") {
        return;
    }
    let redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    let scripted = |r: &RedisServer| (r.calls("evalsha"), r.calls("eval"), r.calls("script"));
    // The instances' secret check (one begin + complete, then every five minutes) done up
    // front, so that it does not count against the first request.
    let idem = app.idem.clone().expect("registered");
    assert!(idem.check_secret().await.unwrap());

    redis.cli(&["CONFIG", "RESETSTAT"]);
    let first = app
        .post("/charge", "rt")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(
        scripted(&redis),
        (2, 0, 0),
        "first request: begin + complete"
    );

    redis.cli(&["CONFIG", "RESETSTAT"]);
    let replay = app
        .post("/charge", "rt")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(scripted(&redis), (1, 0, 0), "replay: one begin");

    let slow = {
        let req = app.post("/charge", "rt-slow").json(&charge(1, 1500));
        actix_web::rt::spawn(async move { req.send().await.unwrap().status() })
    };
    // Wait until the slow request holds its key (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.calls("evalsha") < 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let dup = app
        .post("/charge", "rt-slow")
        .json(&charge(1, 1500))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    assert_eq!(
        scripted(&redis),
        (1, 0, 0),
        "duplicate in progress: one begin"
    );
    assert_eq!(slow.await.unwrap(), 201);
}

/// A 200-status response whose body is `n` bytes, as the store keeps it.
fn response_of(n: usize) -> idem::StoredResponse {
    idem::StoredResponse::new(200, [("content-type", "application/json")], vec![b'x'; n])
}

#[actix_web::test]
async fn stored_bodies_are_raw_bytes() {
    use idem::{Begin, Fingerprint, StorageKey, Store};
    if !available("stored_bodies_are_raw_bytes") {
        return;
    }
    let redis = RedisServer::start();
    let store = single_store(&redis).await;
    let usage = |key: &str| -> u64 {
        redis
            .cli(&["MEMORY", "USAGE", key])
            .and_then(|v| v.parse().ok())
            .expect("MEMORY USAGE")
    };
    let fp = Fingerprint::strict("POST", "/", "", b"");
    for (name, body_len) in [("ten-thousand", 10_000usize), ("ten-kib", 10 * 1024)] {
        let key = StorageKey::scoped(
            "idem:",
            "mem",
            b"",
            &idem::IdempotencyKey::parse(name.as_bytes()).unwrap(),
        );
        let Ok(Begin::Acquired { token: t, .. }) =
            store.begin(&key, &fp, Duration::from_secs(30), KEEP).await
        else {
            panic!("acquire");
        };
        store
            .complete(&key, t, &response_of(body_len), Duration::from_secs(60))
            .await
            .unwrap();
        let record = usage(key.as_str());
        // The same bytes with nothing around them, under a key of the same length: what the
        // allocator charges for the body alone.
        let bare_key = format!("{}-bare", &key.as_str()[..key.as_str().len() - 5]);
        redis.cli(&["SET", &bare_key, &"x".repeat(body_len)]);
        let bare = usage(&bare_key);
        println!("{name}: body {body_len} B, record {record} B, bare body {bare} B");
        assert!(
            record <= bare + 512,
            "{name}: record {record} vs bare body {bare}"
        );
        if body_len <= 10_000 {
            assert!(record <= 10 * 1024 + 512, "{name}: {record} B");
        }
    }
}

#[actix_web::test]
async fn redis_killed_then_restarted() {
    if !available("redis_killed_then_restarted") {
        return;
    }
    let mut redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    let ok = app
        .post("/charge", "before")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);

    redis.kill();
    for i in 0..3 {
        let started = Instant::now();
        let r = app
            .post("/charge", format!("down-{i}"))
            .json(&charge(1, 0))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(r.headers().contains_key("retry-after"));
        common::problem(r, 503).await;
        assert!(
            took < STORE_DEADLINE + Duration::from_secs(1),
            "503 after {took:?}"
        );
    }
    assert_eq!(
        app.count(|c| &c.charge),
        1,
        "no handler ran while Redis was down"
    );

    redis.restart();
    let r = until_not_503(&app, "after").await;
    assert_eq!(r.status(), 201, "the app recovers without a restart");
    assert_eq!(app.count(|c| &c.charge), 2);
    // The restarted server lost the scripts; the first NOSCRIPT reloads all six.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cached_scripts() < 6 {
        assert!(Instant::now() < deadline, "scripts were not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries a fresh request with `key` until the store answers again (bounded).
async fn until_not_503(app: &TestServer, key: &str) -> reqwest::Response {
    for _ in 0..60 {
        let r = app
            .post("/charge", key)
            .json(&charge(2, 0))
            .send()
            .await
            .unwrap();
        if r.status() != 503 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("store still unavailable after 6 s");
}

#[actix_web::test]
async fn redis_paused_then_resumed() {
    if !available("redis_paused_then_resumed") {
        return;
    }
    let redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    redis.pause();
    let started = Instant::now();
    let r = app
        .post("/charge", "stalled")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    common::problem(r, 503).await;
    assert!(
        took < STORE_DEADLINE + Duration::from_secs(1),
        "503 after {took:?}"
    );
    assert_eq!(app.count(|c| &c.charge), 0);

    redis.resume();
    let r = until_not_503(&app, "resumed").await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn script_flush_fails_no_request() {
    if !available("script_flush_fails_no_request") {
        return;
    }
    let redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    // Checked now, so that no background check (its own scripts) overlaps the flush below.
    let checked = app.idem.as_ref().unwrap().check_secret().await;
    assert!(checked.unwrap());
    let first = app
        .post("/charge", "f1")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);

    redis.cli(&["SCRIPT", "FLUSH"]);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let replay = app
        .post("/charge", "f1")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    let fresh = app
        .post("/charge", "f2")
        .json(&charge(1, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 201);
    assert_eq!(app.count(|c| &c.charge), 2);
    // Each lost script cost one EVAL, once; the rest went back to EVALSHA.
    assert!(redis.calls("eval") <= 2, "eval {}", redis.calls("eval"));
    assert!(redis.calls("evalsha") >= 2);
}

/// Everything the app logs in this test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_web::test]
async fn proceed_runs_unprotected_and_warns() {
    if !available("proceed_runs_unprotected_and_warns") {
        return;
    }
    let logs = captured_logs();
    let mut redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    redis.kill();
    let r = app.post("/proceed", "p").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.count(|c| &c.proceed), 1);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("WITHOUT idempotency protection")
            && l.contains("proceed")),
        "no warning logged:\n{text}"
    );
}

/// A client that hangs up while `begin` waits on a slow Redis: the key must not stay acquired by
/// nobody until its 30 s lease ends. The request goes on without its client, runs once, and the
/// retry gets its replay.
#[actix_web::test]
async fn hang_up_during_begin_leaves_no_orphan_lease() {
    if !available("hang_up_during_begin_leaves_no_orphan_lease") {
        return;
    }
    let redis = RedisServer::start();
    let app = start_with(
        Some(idem(single_store(&redis).await)),
        web::Data::new(Counters::default()),
    );
    redis.pause();
    app.send_then_reset(
        "/charge",
        "orphan",
        &charge(3, 0),
        Duration::from_millis(150),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.resume();
    let r = app
        .retry_until_done("/charge", "orphan", &charge(3, 0))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.count(|c| &c.charge), 1);
}
