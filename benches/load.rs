//! The load benchmark: one JSON handler served three ways in one run — plain (no macro),
//! `#[idempotent]` on the memory store, `#[idempotent]` on a private Redis — each driven by our
//! own bounded keep-alive HTTP/1.1 load (fixed connections, fixed duration, loopback only) for
//! three scenarios: a new key every request, the replay of one key, and a same-key storm (every
//! connection on one key that changes every 10 ms). Prints req/s, p50, p99, the ratio to plain
//! measured in the same run, and Redis commands per request from `INFO commandstats`.
//!
//! With the local PostgreSQL (`IDEM_PG`, default `host=127.0.0.1 … dbname=test`) it adds three
//! targets, all reaching the database through a loopback proxy that counts round trips:
//! `plain+insert` (no macro; the handler inserts a ledger row), `postgres` (the plain handler,
//! records in a `PostgresStore`) and `pg transactional` (the ledger insert in the transaction that
//! stores the response). The first is the baseline of the other two.
//!
//! A `memory sealed` target is the memory one with an app secret: responses sealed at rest.
//! `plain echo` / `memory echo` serve a trivial handler (echo a 25-byte JSON body), the latter's
//! ratio taken to the former. `axum plain` / `axum memory` serve the JSON handler on axum, plain
//! and behind idem's tower layer (memory store), the latter's ratio taken to the former.
//!
//! `cargo bench --bench load` (`LOAD_SECS`, default 3, and `LOAD_CONNS`, default 64, override;
//! `LOAD_ONLY=memory|echo|axum|redis|postgres` and `LOAD_SCENARIO=replay|new key|same-key storm` narrow it).
//! `LOAD_ONLY=pairs` runs only interleaved pairs of plain and memory (`LOAD_PAIRS` of them, default 5).

use actix_web::{post, web, App, HttpResponse, HttpServer};
use idem::{idempotent, CachedStore, Idempotency, MemoryStore, RedisStore};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::{IdemTx, PostgresStore};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

#[path = "../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

#[post("/plain")]
async fn plain(body: web::Json<serde_json::Value>) -> HttpResponse {
    answer(&body)
}

#[post("/idem")]
#[idempotent(ttl = "1h")]
async fn protected(body: web::Json<serde_json::Value>) -> HttpResponse {
    answer(&body)
}

/// The JSON handler with records kept 10 s (the lease must exceed three store deadlines): after
/// a warm-up the store holds as many records as expire each second (a steady state, as a
/// service's store is), instead of growing by every request. `LOAD_ONLY=pairs` measures it.
#[post("/idem-steady")]
#[idempotent(ttl = "10s", lease = "7s")]
async fn protected_steady(body: web::Json<serde_json::Value>) -> HttpResponse {
    answer(&body)
}

/// The trivial handler: echoes its 25-byte JSON body. A replay must never cost more than this.
#[post("/echo")]
async fn echo(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created()
        .content_type("application/json")
        .body(body)
}

#[post("/idem-echo")]
#[idempotent(ttl = "1h")]
async fn echo_protected(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created()
        .content_type("application/json")
        .body(body)
}

/// The ledger the PostgreSQL handlers write to.
struct Ledger {
    pool: idem_runtime::deadpool_postgres::Pool,
    insert: String,
}

#[post("/plain-pg")]
async fn plain_pg(body: web::Json<serde_json::Value>, ledger: web::Data<Ledger>) -> HttpResponse {
    let Ok(db) = ledger.pool.get().await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    insert(&db, &ledger.insert, &body).await
}

#[post("/idem-pg")]
#[idempotent(ttl = "1h", store = "pg")]
async fn protected_pg(body: web::Json<serde_json::Value>) -> HttpResponse {
    answer(&body)
}

#[post("/idem-pg-tx")]
#[idempotent(ttl = "1h", store = "pg", transactional)]
async fn transactional_pg(
    tx: IdemTx,
    body: web::Json<serde_json::Value>,
    ledger: web::Data<Ledger>,
) -> HttpResponse {
    let Ok(db) = tx.client().await else {
        return HttpResponse::InternalServerError().finish();
    };
    insert(&db, &ledger.insert, &body).await
}

/// One ledger row, through a statement prepared once per connection; then the usual answer.
async fn insert(
    db: &idem_runtime::deadpool_postgres::ClientWrapper,
    sql: &str,
    body: &serde_json::Value,
) -> HttpResponse {
    let amount = body["amount"].as_i64().unwrap_or(0);
    let done = match db.prepare_cached(sql).await {
        Ok(statement) => db.execute(&statement, &[&amount]).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(_) => answer(body),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

fn answer(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Created().json(serde_json::json!({
        "id": "pay_000001",
        "amount": body["amount"],
        "currency": body["currency"],
        "status": "succeeded",
    }))
}

/// Starts an app with `layer` registered, on one worker, in its own thread and actix system.
fn serve(layer: Idempotency, ledger: Option<web::Data<Ledger>>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = Arc::new(OnceLock::new());
    let seen = worker.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                // The factory runs on the worker thread: remember where its CPU time is kept.
                if let Ok(task) = std::fs::read_link("/proc/thread-self") {
                    // The link reads `<pid>/task/<tid>`, relative to /proc.
                    let _ = seen.set(std::path::Path::new("/proc").join(task).join("schedstat"));
                }
                let app = App::new()
                    .app_data(layer.clone())
                    .service(plain)
                    .service(protected)
                    .service(protected_steady)
                    .service(echo)
                    .service(echo_protected);
                match &ledger {
                    Some(l) => app
                        .app_data(l.clone())
                        .service(plain_pg)
                        .service(protected_pg)
                        .service(transactional_pg),
                    None => app,
                }
            })
            .workers(1)
            .disable_signals()
            .backlog(1024)
            .bind(("127.0.0.1", 0))
            .expect("bind");
            let _ = tx.send(server.addrs()[0]);
            let _ = server.run().await;
        })
    });
    let addr = rx.recv().expect("server address");
    WORKERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((addr, worker));
    addr
}

/// The trivial handler's body: 25 bytes of JSON.
const TRIVIAL: &[u8] = br#"{"amount":12,"cur":"EUR"}"#;

#[path = "support/body.rs"]
mod support;

#[path = "support/driver.rs"]
mod driver;

#[path = "support/worker_cpu.rs"]
mod worker_cpu;
use worker_cpu::{per_answer_us, worker_cpu_ns, WORKERS};

#[path = "support/axum_app.rs"]
mod axum_app;

#[path = "support/pairs.rs"]
mod pairs;
use driver::{drive, Row, Scenario};

/// The PostgreSQL part: an app whose records live in PostgreSQL, reached (like the ledger)
/// through a round-trip-counting proxy.
struct Pg {
    addr: SocketAddr,
    /// The same app with `CachedStore` in front of the store: replays from memory.
    cached: SocketAddr,
    proxy: proxy::FaultProxy,
    db: idem_runtime::tokio_postgres::Client,
    tables: [String; 2],
}

/// A proxy on its own thread and runtime, so that it does not share the load client's.
fn start_proxy(target: SocketAddr) -> proxy::FaultProxy {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let _ = tx.send(proxy::FaultProxy::start(target).await);
            std::future::pending::<()>().await
        })
    });
    rx.recv().expect("proxy")
}

async fn start_pg() -> Result<Pg, String> {
    use idem_runtime::tokio_postgres::{config::Host, Config, NoTls};
    let conf = std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let parsed: Config = conf.parse().map_err(|e| format!("IDEM_PG: {e}"))?;
    let host = match parsed.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| e.to_string())?
        .find(|a| a.ip().is_loopback())
        .ok_or("the benchmark only talks to a loopback PostgreSQL")?;
    let (db, connection) = parsed
        .connect(NoTls)
        .await
        .map_err(|e| format!("{conf}: {e}"))?;
    tokio::task::spawn_local(connection);
    let proxy = start_proxy(target);
    let via_proxy = format!(
        "host=127.0.0.1 port={} user={} dbname={}",
        proxy.addr.port(),
        parsed.get_user().unwrap_or("postgres"),
        parsed.get_dbname().unwrap_or("test"),
    );
    let id = std::process::id();
    let (ledger, records) = (format!("bench_ledger_{id}"), format!("bench_idem_{id}"));
    db.batch_execute(&format!(
        "CREATE TABLE {ledger} (id bigserial PRIMARY KEY, amount bigint NOT NULL)"
    ))
    .await
    .map_err(|e| e.to_string())?;
    let store = PostgresStore::connect_table(&via_proxy, &records)
        .await
        .map_err(|e| e.to_string())?;
    let pool_config: Config = via_proxy.parse().map_err(|e| format!("{e}"))?;
    let pool = idem_runtime::deadpool_postgres::Pool::builder(
        idem_runtime::deadpool_postgres::Manager::new(pool_config, NoTls),
    )
    .max_size(16)
    .build()
    .map_err(|e| e.to_string())?;
    let ledger_data = web::Data::new(Ledger {
        pool,
        insert: format!("INSERT INTO {ledger} (amount) VALUES ($1)"),
    });
    let cached = serve(
        Idempotency::builder()
            .unscoped()
            .named_store("pg", CachedStore::new(store.clone(), 256 << 20))
            .build(),
        Some(ledger_data.clone()),
    );
    let addr = serve(
        Idempotency::builder()
            .unscoped()
            .named_store("pg", store)
            .build(),
        Some(ledger_data),
    );
    Ok(Pg {
        addr,
        cached,
        proxy,
        db,
        tables: [ledger, records],
    })
}

fn main() {
    let secs: f64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0)
        .clamp(0.5, 60.0);
    let conns: usize = std::env::var("LOAD_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        .clamp(1, 512);
    // `LOAD_ONLY=memory` (or `redis`) measures plain and that one target, for profiling.
    let only = std::env::var("LOAD_ONLY").ok();
    let wanted = |t: &str| only.as_deref().is_none_or(|o| o == t);
    // `LOAD_SCENARIO=replay` (or `new key`, `same-key storm`) runs that one scenario.
    let scenario_only = std::env::var("LOAD_SCENARIO").ok();
    let body = support::body(1024);

    let memory = serve(
        Idempotency::builder()
            .unscoped()
            .store(MemoryStore::builder().max_bytes(4 << 30).build())
            .build(),
        None,
    );
    if only.as_deref() == Some("pairs") {
        return pairs::main(memory, conns, secs, &body, TRIVIAL);
    }
    // The same, with an app secret: every stored response sealed (encryption at rest), every
    // replay opened.
    let sealed = serve(
        Idempotency::builder()
            .unscoped()
            .secret(b"load-benchmark-secret-0123456789abcdef".to_vec())
            .store(MemoryStore::builder().max_bytes(4 << 30).build())
            .build(),
        None,
    );
    let axum = axum_app::serve_axum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = redis_server::available("the Redis part of the load benchmark").then(|| {
        let server = redis_server::RedisServer::start();
        let store = rt
            .block_on(RedisStore::connect(&server.url()))
            .expect("connect");
        // The store's connection task lives on `rt`; the app calls it from its own worker.
        let addr = serve(
            Idempotency::builder()
                .unscoped()
                .store(store.clone())
                .build(),
            None,
        );
        // The same with the replay cache in front (its invalidation task on `rt` too).
        let cached = rt.block_on(async { CachedStore::new(store, 256 << 20) });
        let cached = serve(
            Idempotency::builder().unscoped().store(cached).build(),
            None,
        );
        (server, addr, cached)
    });
    // `durability(1, …)`: a master with one local replica, reached through a proxy that counts
    // round trips.
    let durable = (redis.is_some() && wanted("redis")).then(|| {
        let master = redis_server::RedisServer::start();
        let replica = redis_server::RedisServer::replica_of(&master);
        let proxy = start_proxy(([127, 0, 0, 1], master.port).into());
        let store = RedisStore::builder()
            .url(proxy.url())
            .durability(1, Duration::from_millis(500))
            .connect();
        let store = rt.block_on(store).expect("connect");
        let addr = serve(Idempotency::builder().unscoped().store(store).build(), None);
        (master, replica, proxy, addr)
    });
    let local = tokio::task::LocalSet::new();
    let pg = if wanted("postgres") {
        match local.block_on(&rt, start_pg()) {
            Ok(pg) => Some(pg),
            Err(e) => {
                println!("skipped the PostgreSQL part of the load benchmark: {e}");
                None
            }
        }
    } else {
        None
    };
    std::thread::sleep(Duration::from_millis(300));

    println!("load: {conns} keep-alive connections, {secs} s per run, 1 KiB JSON body, 1 server worker, loopback");
    let mut rows = Vec::new();
    let mut costs = Vec::new();
    local.block_on(&rt, async {
        let mut run = std::process::id() as u64 * 1000;
        for scenario in [Scenario::NewKey, Scenario::Replay, Scenario::Storm] {
            if scenario_only
                .as_deref()
                .is_some_and(|s| s != scenario.name())
            {
                continue;
            }
            // `LOAD_ONLY=echo`: the trivial handler's two rows alone.
            let echo_only = only.as_deref() == Some("echo");
            let mut plain_rps = 0.0;
            if !echo_only {
                run += 1;
                let (rps, p50, p99, _, mix) =
                    drive(memory, "/plain", scenario, run, conns, secs, &body).await;
                plain_rps = rps;
                rows.push(Row {
                    scenario: scenario.name(),
                    target: "plain",
                    rps,
                    p50,
                    p99,
                    ratio: None,
                    store_per_req: None,
                    mix,
                });
            }
            for (target, addr) in [("memory", memory), ("memory sealed", sealed)] {
                if !wanted("memory") {
                    break;
                }
                run += 1;
                let (rps, p50, p99, _, mix) =
                    drive(addr, "/idem", scenario, run, conns, secs, &body).await;
                rows.push(Row {
                    scenario: scenario.name(),
                    target,
                    rps,
                    p50,
                    p99,
                    ratio: Some(rps / plain_rps),
                    store_per_req: None,
                    mix,
                });
            }
            // The trivial handler, plain and on the memory store: where a replay has the least
            // handler work to save.
            if wanted("memory") || echo_only {
                let mut echo_plain = 0.0;
                let mut echo_plain_cost = None;
                for (target, path) in [("plain echo", "/echo"), ("memory echo", "/idem-echo")] {
                    run += 1;
                    let cpu_before = worker_cpu_ns(memory);
                    let (rps, p50, p99, n, mix) =
                        drive(memory, path, scenario, run, conns, secs, TRIVIAL).await;
                    // What a request costs the server: its worker's CPU time per answer. Unlike
                    // req/s, it does not depend on whether the client (on the other core) kept up.
                    let cost = per_answer_us(cpu_before, worker_cpu_ns(memory), n);
                    if target == "plain echo" {
                        echo_plain = rps;
                        echo_plain_cost = cost;
                    }
                    costs.push((
                        scenario.name(),
                        target,
                        cost,
                        cost.zip(echo_plain_cost).map(|(c, p)| p / c),
                    ));
                    rows.push(Row {
                        scenario: scenario.name(),
                        target,
                        rps,
                        p50,
                        p99,
                        ratio: (target != "plain echo").then(|| rps / echo_plain),
                        store_per_req: None,
                        mix,
                    });
                }
            }
            // The same JSON handler on axum, plain and behind the tower layer (memory store).
            if wanted("memory") || only.as_deref() == Some("axum") {
                let mut axum_plain = 0.0;
                for (target, path) in [("axum plain", "/plain"), ("axum memory", "/idem")] {
                    run += 1;
                    let (rps, p50, p99, _, mix) =
                        drive(axum, path, scenario, run, conns, secs, &body).await;
                    if target == "axum plain" {
                        axum_plain = rps;
                    }
                    rows.push(Row {
                        scenario: scenario.name(),
                        target,
                        rps,
                        p50,
                        p99,
                        ratio: (target != "axum plain").then(|| rps / axum_plain),
                        store_per_req: None,
                        mix,
                    });
                }
            }
            if let (Some((server, addr, cached)), true) = (&redis, wanted("redis")) {
                for (target, addr) in [("redis", addr), ("redis cached", cached)] {
                    run += 1;
                    server.cli(&["CONFIG", "RESETSTAT"]);
                    let (rps, p50, p99, n, mix) =
                        drive(*addr, "/idem", scenario, run, conns, secs, &body).await;
                    let cmds = (server.calls("evalsha") + server.calls("eval")) as f64;
                    // The replay scenario's warm-up request ran before the reset; nothing else
                    // did.
                    rows.push(Row {
                        scenario: scenario.name(),
                        target,
                        rps,
                        p50,
                        p99,
                        ratio: Some(rps / plain_rps),
                        store_per_req: Some(cmds / n.max(1) as f64),
                        mix,
                    });
                }
            }
            if let Some((master, _replica, proxy, addr)) = &durable {
                run += 1;
                master.cli(&["CONFIG", "RESETSTAT"]);
                let turns = proxy.turns();
                let (rps, p50, p99, n, mix) =
                    drive(*addr, "/idem", scenario, run, conns, secs, &body).await;
                let n = n.max(1) as f64;
                let cmds = ["evalsha", "eval", "wait"]
                    .map(|c| master.calls(c))
                    .iter()
                    .sum::<u64>();
                let trips = (proxy.turns() - turns) as f64 / n;
                rows.push(Row {
                    scenario: scenario.name(),
                    target: "redis durable",
                    rps,
                    p50,
                    p99,
                    ratio: Some(rps / plain_rps),
                    store_per_req: Some(cmds as f64 / n),
                    mix: format!("{mix}; {trips:.2} round trips/req"),
                });
            }
            if let Some(pg) = &pg {
                run += 1;
                let mut base_rps = plain_rps;
                for (target, addr, path) in [
                    ("plain+insert", pg.addr, "/plain-pg"),
                    ("postgres", pg.addr, "/idem-pg"),
                    ("postgres cached", pg.cached, "/idem-pg"),
                    ("pg transactional", pg.addr, "/idem-pg-tx"),
                ] {
                    // Keys of their own: the cached app shares the records table.
                    run += 1;
                    let before = pg.proxy.turns();
                    let (rps, p50, p99, n, mix) =
                        drive(addr, path, scenario, run, conns, secs, &body).await;
                    let turns = (pg.proxy.turns() - before) as f64;
                    rows.push(Row {
                        scenario: scenario.name(),
                        target,
                        rps,
                        p50,
                        p99,
                        // `postgres` against plain; the transactional one against the plain
                        // handler that does the same insert.
                        ratio: match target {
                            "plain+insert" => None,
                            "postgres" | "postgres cached" => Some(rps / plain_rps),
                            _ => Some(rps / base_rps),
                        },
                        store_per_req: Some(turns / n.max(1) as f64),
                        mix,
                    });
                    if target == "plain+insert" {
                        base_rps = rps;
                    }
                }
            }
        }
    });
    if let Some(pg) = &pg {
        let [ledger, records] = &pg.tables;
        let cleanup = format!("DROP TABLE {ledger}, {records}_steps, {records}_requests, {records}; DROP SEQUENCE {records}_token;");
        let _ = local.block_on(&rt, pg.db.batch_execute(&cleanup));
    }

    println!();
    println!(
        "| scenario | target | req/s | p50 µs | p99 µs | × plain | Redis cmds or PG round trips /req | answers |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.rps,
            r.p50,
            r.p99,
            r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
            r.store_per_req.map_or("—".into(), |x| format!("{x:.2}")),
            r.mix
        );
    }
    worker_cpu::print_costs(&costs);
    drop((redis, durable));
}
