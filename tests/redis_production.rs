//! Redis in production, with real processes: a Redis that may evict records is refused, a
//! failover loses a completed payment without durability and never with it, and a Sentinel-managed
//! master is followed across a failover without a restart.

mod common;

use actix_web::{post, web, HttpResponse};
use common::demo::{free_port, run_example_to_exit, start_example_logged};
use common::redis::{available, RedisServer};
use common::sentinel::{Sentinels, SERVICE};
use idem::{idempotent, IdempotencyContext, RedisStore};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs per operation (by the operation's stable id).
#[derive(Default)]
struct Runs(Mutex<HashMap<String, usize>>);

impl Runs {
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

#[post("/pay")]
#[idempotent]
async fn pay(ctx: IdempotencyContext, runs: web::Data<Runs>) -> HttpResponse {
    let n = {
        let mut runs = runs.0.lock().unwrap();
        let n = runs.entry(ctx.key().to_owned()).or_default();
        *n += 1;
        *n
    };
    HttpResponse::Created().json(serde_json::json!({ "op": ctx.key(), "run": n }))
}

fn app(
    store: RedisStore,
    runs: web::Data<Runs>,
) -> (std::net::SocketAddr, actix_web::dev::ServerHandle) {
    let idem = common::builder().store(store).build();
    common::serve(2, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(pay);
    })
}

async fn post(addr: std::net::SocketAddr, key: &str) -> Result<reqwest::Response, reqwest::Error> {
    common::client()
        .post(format!("http://{addr}/pay"))
        .header("Idempotency-Key", key)
        .send()
        .await
}

/// `maxmemory-policy volatile-lru` (a common managed-Redis setting): the demo refuses to start,
/// naming the setting; with `IDEM_REDIS_ALLOW_EVICTION=1` (`allow_eviction()`) it starts and says
/// so. The store alone refuses too.
#[actix_web::test]
async fn an_evicting_redis_is_refused_unless_allowed() {
    if !available("an_evicting_redis_is_refused_unless_allowed") {
        return;
    }
    for policy in ["volatile-lru", "allkeys-lru"] {
        let redis = RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", policy]);
        let err = RedisStore::connect(&redis.url()).await.unwrap_err();
        assert!(err.to_string().contains("maxmemory-policy"), "{err}");
        let env = [("IDEM_REDIS_URL", redis.url())];
        let (status, stderr) =
            run_example_to_exit("payments", free_port(), &env, Duration::from_secs(20)).await;
        assert!(!status.success(), "the demo must not start on {policy}");
        assert!(
            stderr.contains("maxmemory-policy") && stderr.contains(policy),
            "{stderr}"
        );
    }
    let redis =
        RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru"]);
    let allowed = RedisStore::builder()
        .url(redis.url())
        .allow_eviction()
        .connect()
        .await
        .expect("allowed");
    assert_eq!(allowed.eviction_policy(), "volatile-lru");
    let port = free_port();
    let env = [
        ("IDEM_REDIS_URL", redis.url()),
        ("IDEM_REDIS_ALLOW_EVICTION", "1".to_string()),
    ];
    let (_demo, log) = start_example_logged("payments", port, &env).await;
    let r = common::client()
        .post(format!("http://127.0.0.1:{port}/payments"))
        .header("Idempotency-Key", "evictable")
        .json(&serde_json::json!({ "amount": 1, "currency": "EUR" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "with eviction allowed, it serves");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("volatile-lru") && said.contains("eviction allowed"),
        "and says so: {said}"
    );
    let _ = std::fs::remove_file(log);
}

/// Master and replica; the replica cut off; a payment completes on the master only; the master
/// dies and the replica is promoted. What the retry does is the window durability closes.
///
/// The replica is cut off by stalling a proxy on its replication link rather than by `SIGSTOP`:
/// a stopped process still has the kernel buffer the master's writes on its socket and applies
/// them after `SIGCONT`, so the loss would depend on timing. The stalled proxy holds them, and
/// the reset at the failover drops them: deterministically the replica never gets them.
async fn failover(durable: bool, replica_up: bool) -> (u16, usize, Option<reqwest::StatusCode>) {
    let mut master = RedisServer::start();
    let link = common::proxy::FaultProxy::start(([127, 0, 0, 1], master.port).into()).await;
    let replica = RedisServer::replica_through(link.addr.port()).await;
    if !replica_up {
        link.stall();
    }
    let mut builder = RedisStore::builder().url(master.url());
    if durable {
        builder = builder.durability(1, Duration::from_millis(300));
    }
    let store = builder.connect().await.expect("connect to the master");
    let runs = web::Data::new(Runs::default());
    let (before, _h1) = app(store, runs.clone());
    let first = post(before, "pay-1").await.unwrap().status();
    link.reset();
    link.resume();
    master.kill();
    replica.cli(&["REPLICAOF", "NO", "ONE"]).expect("promote");
    // The app follows the promoted replica (as clients of a failed-over Redis do).
    let store = RedisStore::connect(&replica.url())
        .await
        .expect("connect to the new master");
    let (after, _h2) = app(store, runs.clone());
    let retry = post(after, "pay-1").await.unwrap();
    let replayed = retry.headers().contains_key("idempotent-replayed");
    let again = post(after, "pay-1").await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let _ = replayed;
    (first.as_u16(), runs.total(), Some(retry.status()))
}

/// Without durability, asynchronous replication loses the completed payment in a failover, and
/// its retry runs it again: the documented window.
#[actix_web::test]
async fn a_failover_without_durability_runs_a_completed_payment_again() {
    if !available("a_failover_without_durability_runs_a_completed_payment_again") {
        return;
    }
    let (first, runs, retry) = failover(false, false).await;
    assert_eq!(first, 201);
    assert_eq!(retry.unwrap(), 201);
    assert_eq!(runs, 2, "the window: the replica never had the record");
}

/// With `durability(1, …)` the same sequence never runs the payment twice: the first request
/// fails closed (503, no execution) while the replica cannot acknowledge; with the replica up,
/// the record is on it when it is promoted and the retry replays.
#[actix_web::test]
async fn a_failover_with_durability_never_runs_a_payment_twice() {
    if !available("a_failover_with_durability_never_runs_a_payment_twice") {
        return;
    }
    let (first, runs, retry) = failover(true, false).await;
    assert_eq!(first, 503, "not replicated: fail closed");
    assert_eq!(retry.unwrap(), 201);
    assert_eq!(runs, 1, "ran once, after the failover");

    let (first, runs, retry) = failover(true, true).await;
    assert_eq!(first, 201);
    assert_eq!(retry.unwrap(), 201);
    assert_eq!(runs, 1, "the promoted replica had the record: replayed");
}

/// One master, one replica, three Sentinels; the master is killed mid-traffic. The app follows
/// the new master without a restart, and with `durability(1, …)` 200 duplicates over 10 keys
/// across the failover run each key at most once, answered only 201, 409 or 503.
#[actix_web::test]
async fn sentinel_failover_mid_traffic_runs_each_key_at_most_once() {
    if !available("sentinel_failover_mid_traffic_runs_each_key_at_most_once") {
        return;
    }
    let mut master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let sentinels = Sentinels::start(master.port, 1);
    let store = RedisStore::builder()
        .sentinel(sentinels.urls(), SERVICE)
        .durability(1, Duration::from_millis(300))
        .connect()
        .await
        .expect("connect through the sentinels");
    let runs = web::Data::new(Runs::default());
    let (addr, _h) = app(store, runs.clone());
    let keys: Vec<String> = (0..10).map(|i| format!("sentinel-{i}")).collect();
    let mut answers = Vec::new();
    for round in 0..20 {
        if round == 5 {
            master.kill();
        }
        let batch = keys.iter().map(|k| post(addr, k));
        for r in futures_util::future::join_all(batch).await {
            answers.push(
                r.expect("an HTTP answer, never a dropped connection")
                    .status()
                    .as_u16(),
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(answers.len(), 200);
    assert!(
        answers.iter().all(|s| matches!(s, 201 | 409 | 503)),
        "only 201, 409 or 503: {answers:?}"
    );
    let started = Instant::now();
    while sentinels.master_port() != Some(replica.port) {
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After the failover, without restarting the app: every key completes.
    for k in &keys {
        let started = Instant::now();
        loop {
            let r = post(addr, k).await.unwrap();
            if r.status() == 201 {
                break;
            }
            assert!(matches!(r.status().as_u16(), 409 | 503), "{}", r.status());
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{k} never completed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let per_key = runs.0.lock().unwrap().clone();
    assert!(
        per_key.values().all(|&n| n == 1),
        "each key ran at most once: {per_key:?}"
    );
    assert_eq!(per_key.len(), keys.len());
}

/// With `durability(1, …)` a first request still costs 2 round trips: `WAIT` rides behind
/// `begin` and `complete` (4 commands); a replay is 1 round trip and no `WAIT` for reads.
#[actix_web::test]
async fn durability_costs_no_extra_round_trip() {
    if !available("durability_costs_no_extra_round_trip") {
        return;
    }
    let master = RedisServer::start();
    let _replica = RedisServer::replica_of(&master);
    let proxy = common::proxy::FaultProxy::start(([127, 0, 0, 1], master.port).into()).await;
    let store = RedisStore::builder()
        .url(proxy.url())
        .durability(1, Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let runs = web::Data::new(Runs::default());
    let idem = common::builder().store(store).build();
    assert!(idem.check_secret().await.unwrap());
    let i = idem.clone();
    let r = runs.clone();
    let (addr, _h) = common::serve(1, move |cfg| {
        cfg.app_data(i.clone()).app_data(r.clone()).service(pay);
    });
    // The store's subscriber connects (through the proxy too) on its own time: wait until it
    // has subscribed, so that none of its traffic falls in the counted window.
    let subscribed = || {
        master
            .cli(&["PUBSUB", "NUMSUB", "idem:erased"])
            .is_some_and(|out| out.lines().nth(1).is_some_and(|n| n.trim() == "1"))
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !subscribed() {
        assert!(
            std::time::Instant::now() < until,
            "the subscriber never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.cli(&["CONFIG", "RESETSTAT"]);
    let turns = proxy.turns();
    assert_eq!(post(addr, "rt").await.unwrap().status(), 201);
    assert_eq!(
        proxy.turns() - turns,
        2,
        "begin+WAIT, complete+WAIT: two round trips"
    );
    assert_eq!((master.calls("evalsha"), master.calls("wait")), (2, 2));
    let turns = proxy.turns();
    let replay = post(addr, "rt").await.unwrap();
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(proxy.turns() - turns, 1);
}

/// Data nodes behind Sentinel that need a password and keep idem's records in a database other
/// than 0: the store reaches them with `sentinel_node`'s settings (the Sentinels' own URLs carry
/// none of them), and the records land in that database.
#[actix_web::test]
async fn sentinel_reaches_data_nodes_with_their_password_and_database() {
    if !available("sentinel_reaches_data_nodes_with_their_password_and_database") {
        return;
    }
    let master = RedisServer::start();
    let auth = ["-a", "node-pw", "--no-auth-warning"];
    assert_eq!(
        master
            .cli(&["CONFIG", "SET", "requirepass", "node-pw"])
            .as_deref(),
        Some("OK")
    );
    let sentinels = Sentinels::start_with_auth(master.port, 0, Some("node-pw"));
    let store = RedisStore::builder()
        .sentinel(sentinels.urls(), SERVICE)
        .sentinel_node("redis://:node-pw@master/3")
        .connect()
        .await
        .expect("connect to the data node through the sentinels");
    let runs = web::Data::new(Runs::default());
    let (addr, _h) = app(store, runs.clone());
    assert_eq!(post(addr, "auth-1").await.unwrap().status(), 201);
    let replay = post(addr, "auth-1").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let size = |db: &str| {
        let args = [&auth[..], &["-n", db, "DBSIZE"]].concat();
        master.cli(&args).and_then(|n| n.parse::<u64>().ok())
    };
    assert!(size("3").unwrap_or(0) >= 1, "the record is in database 3");
    assert_eq!(size("0"), Some(0), "nothing in database 0");
}
