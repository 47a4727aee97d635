//! Performance as the dataset grows: each store preloaded with 10^4 … 10^7 completed records
//! (one tenth of them already expired: garbage for the reaper), then new-key and replay
//! throughput and latency through the `Store` trait (64 tasks, one thread), bytes per record,
//! and the reaper's cost — its time, and the replay p99 while it runs.
//!
//! ```text
//! cargo bench --bench growth                      # memory, Redis, PostgreSQL; 10^4 … 10^7
//! GROWTH_ONLY=redis GROWTH_MAX=1000000 cargo bench --bench growth
//! ```
//!
//! Writes `docs/growth-*.svg` (charts) and prints the table BENCHMARKS.md shows. Loopback only;
//! every load is bounded in time and count (`support/ops.rs`).

#[path = "support/ops.rs"]
mod ops;
#[path = "support/plot.rs"]
mod plot;
#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use idem::{Begin, MemoryStore, RecordState, RedisStore, Store};
use idem_runtime::PostgresStore;
use ops::{fingerprint, key, response, Load, Stats, LEASE, TTL};
use std::time::{Duration, Instant};

/// One measured size of one store.
pub struct Point {
    pub store: &'static str,
    pub records: u64,
    pub load_secs: f64,
    pub new_key: Stats,
    pub replay: Stats,
    pub bytes_per_record: f64,
    /// Time to drop the expired tenth (what was dropped, when not all of it), and the replay
    /// p99 meanwhile.
    pub reap: String,
    pub replay_while_reaping: Stats,
}

const TASKS: usize = 64;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os("GROWTH_PLOT_ONLY").is_some() {
        let points = load(std::path::Path::new("docs/growth.csv"));
        print_table(&points);
        plot::charts(&points, std::path::Path::new("docs"));
        return;
    }
    let secs = env_f64("GROWTH_SECS", 3.0).clamp(0.5, 30.0);
    let max = env_f64("GROWTH_MAX", 1e7) as u64;
    let sizes: Vec<u64> = [10_000u64, 100_000, 1_000_000, 10_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let only = std::env::var("GROWTH_ONLY").ok();
    let wanted = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let mut points = Vec::new();
    println!("growth: {TASKS} tasks on one thread, {secs} s per measurement, sizes {sizes:?}");
    if wanted("memory") {
        local.block_on(&rt, memory(&sizes, secs, &mut points));
    }
    if wanted("redis") && redis_server::available("the Redis part of the growth benchmark") {
        local.block_on(&rt, redis(&sizes, secs, &mut points));
    }
    if wanted("postgres") {
        if let Err(e) = local.block_on(&rt, postgres(&sizes, secs, &mut points)) {
            println!("skipped the PostgreSQL part of the growth benchmark: {e}");
        }
    }
    print_table(&points);
    save(&points, std::path::Path::new("docs/growth.csv"));
    plot::charts(&points, std::path::Path::new("docs"));
}

/// Writes the points as CSV (what the charts are drawn from; `GROWTH_PLOT_ONLY=1` redraws them
/// from it without measuring).
fn save(points: &[Point], path: &std::path::Path) {
    let mut out = String::from("store,records,load_secs,replay_per_sec,replay_p50_us,replay_p99_us,new_key_per_sec,new_key_p50_us,new_key_p99_us,bytes_per_record,reap,replay_p99_while_reaping_us\n");
    for p in points {
        out.push_str(&fields(p).join(","));
        out.push('\n');
    }
    if let Err(e) = std::fs::write(path, out) {
        println!("{} not written: {e}", path.display());
    }
}

/// One point's columns, as the table and the CSV show them.
fn fields(p: &Point) -> [String; 12] {
    [
        p.store.to_owned(),
        p.records.to_string(),
        format!("{:.1}", p.load_secs),
        format!("{:.0}", p.replay.ops_per_sec),
        p.replay.p50_us.to_string(),
        p.replay.p99_us.to_string(),
        format!("{:.0}", p.new_key.ops_per_sec),
        p.new_key.p50_us.to_string(),
        p.new_key.p99_us.to_string(),
        format!("{:.0}", p.bytes_per_record),
        p.reap.clone(),
        p.replay_while_reaping.p99_us.to_string(),
    ]
}

/// The points of a CSV written by [`save`].
fn load(path: &std::path::Path) -> Vec<Point> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let stats = |ops: &str, p50: &str, p99: &str| Stats {
        ops_per_sec: ops.parse().unwrap_or(0.0),
        p50_us: p50.parse().unwrap_or(0),
        p99_us: p99.parse().unwrap_or(0),
        errors: 0,
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let name = *f.first()?;
            let store = ["memory", "redis", "postgres"]
                .into_iter()
                .find(|s| *s == name)?;
            Some(Point {
                store,
                records: f.get(1)?.parse().ok()?,
                load_secs: f.get(2)?.parse().ok()?,
                replay: stats(f.get(3)?, f.get(4)?, f.get(5)?),
                new_key: stats(f.get(6)?, f.get(7)?, f.get(8)?),
                bytes_per_record: f.get(9)?.parse().ok()?,
                reap: (*f.get(10)?).to_owned(),
                replay_while_reaping: stats("0", "0", f.get(11)?),
            })
        })
        .collect()
}

/// The sizes of one store's measurement.
struct Sized {
    name: &'static str,
    records: u64,
    load_secs: f64,
    bytes_per_record: f64,
}

/// Measures one loaded size: replays, new keys, then `prepare` (untimed: garbage for the
/// reaper) and the reaper (`reap`, which says what it did) under replays.
async fn measure<S, P, PF, F, Fut>(sized: Sized, store: &S, secs: f64, prepare: P, reap: F) -> Point
where
    S: Store + Clone,
    P: FnOnce() -> PF,
    PF: std::future::Future<Output = ()>,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let Sized {
        name,
        records,
        load_secs,
        bytes_per_record,
    } = sized;
    let replay = ops::run(store, Load::Replay { n: records }, TASKS, secs).await;
    let new_key = ops::run(store, Load::NewKey { from: 1 << 40 }, TASKS, secs).await;
    prepare().await;
    // The reaper runs while replays go on; the measurement lasts at least as long as it.
    let t0 = Instant::now();
    let (reaped, replay_while_reaping) = tokio::join!(
        async {
            let said = reap().await;
            if said.is_empty() {
                format!("{:.2} s", t0.elapsed().as_secs_f64())
            } else {
                said
            }
        },
        ops::run(store, Load::Replay { n: records }, TASKS, secs)
    );
    let p = Point {
        store: name,
        records,
        load_secs,
        new_key,
        replay,
        bytes_per_record,
        reap: reaped,
        replay_while_reaping,
    };
    println!(
        "{name} {records}: loaded in {load_secs:.1} s; replay {:.0}/s p99 {} µs; new key {:.0}/s p99 {} µs; {:.0} B/record; reaped: {}, replay p99 meanwhile {} µs; errors {}/{}/{}",
        p.replay.ops_per_sec,
        p.replay.p99_us,
        p.new_key.ops_per_sec,
        p.new_key.p99_us,
        p.bytes_per_record,
        p.reap,
        p.replay_while_reaping.p99_us,
        p.replay.errors,
        p.new_key.errors,
        p.replay_while_reaping.errors,
    );
    p
}

/// Process resident memory, in bytes.
fn resident() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

/// Checks that record 1 replays: the loaders write what the store reads.
async fn check_loaded<S: Store>(store: &S) {
    match store.get(&key(1)).await {
        Ok(Some(r)) if matches!(r.state, RecordState::Completed { .. }) => {}
        other => panic!("the preloaded record does not read back: {other:?}"),
    }
    match store.begin(&key(1), &fingerprint(), LEASE, TTL).await {
        Ok(Begin::Replay(r)) if r == response() => {}
        other => panic!("the preloaded record does not replay: {other:?}"),
    }
}

/// Hands the pages malloc keeps after a store is dropped back to the kernel, so that the next
/// store's resident growth is its own (glibc's `malloc_trim`).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim takes a byte count and only releases free memory.
        unsafe {
            malloc_trim(0);
        }
    }
}

async fn memory(sizes: &[u64], secs: f64, points: &mut Vec<Point>) {
    for &n in sizes {
        trim();
        let before = resident();
        // The sweeper is off: its pass is measured below, on the same records.
        let store = MemoryStore::builder()
            .max_bytes(20 << 30)
            .sweep_every(None)
            .build();
        let t0 = Instant::now();
        let (fp, resp) = (fingerprint(), response());
        for i in 0..n {
            let k = key(i);
            if let Ok(Begin::Acquired { token, .. }) = store.begin(&k, &fp, LEASE, TTL).await {
                // Every tenth record expires at once: the garbage a sweep removes.
                let ttl = if i.is_multiple_of(10) {
                    Duration::from_millis(1)
                } else {
                    TTL
                };
                let _ = store.complete(&k, token, &resp, ttl).await;
            }
        }
        let load_secs = t0.elapsed().as_secs_f64();
        check_loaded(&store).await;
        let per_record = (resident() - before) / n as f64;
        let sweeper = store.clone();
        let sized = Sized {
            name: "memory",
            records: n,
            load_secs,
            bytes_per_record: per_record,
        };
        let p = measure(
            sized,
            &store,
            secs,
            || async {},
            || async move {
                // The sweep is a blocking walk on its own thread, as the sweeper runs it.
                let took = tokio::task::spawn_blocking(move || {
                    let t0 = Instant::now();
                    sweeper.sweep();
                    t0.elapsed()
                })
                .await
                .unwrap_or_default();
                format!("{:.3} s (one sweep)", took.as_secs_f64())
            },
        )
        .await;
        points.push(p);
        drop(store);
    }
}

async fn redis(sizes: &[u64], secs: f64, points: &mut Vec<Point>) {
    for &n in sizes {
        // A server of its own per size: an empty one, and no multi-second FLUSHALL.
        let server = redis_server::RedisServer::start();
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let store = RedisStore::connect(&server.url()).await.expect("store");
        let used = |info: String| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let before = used(server.cli(&["INFO", "memory"]).unwrap_or_default());
        let t0 = Instant::now();
        // Records as the store's scripts write them (`scripts.rs`): state, fingerprint, token,
        // attempt, lease end, then the encoded response; `check_loaded` proves the format.
        let (fp, resp) = (fingerprint(), response().encode());
        // Expired during the replay phase already: by the reaper phase's end, Redis has had
        // all three phases to drop them.
        let garbage_ms = 500;
        let mut i = 0;
        while i < n {
            let mut pipe = redis::pipe();
            for j in i..(i + 10_000).min(n) {
                let mut v = Vec::with_capacity(71 + resp.len());
                v.push(b'c');
                v.extend_from_slice(&fp.0);
                v.extend_from_slice(format!("{:016}{:06}{:016}", j + 1, 1, 0).as_bytes());
                v.extend_from_slice(&resp);
                // Every tenth record expires soon after the load: Redis's own expiry is the
                // reaper here.
                let ttl = if j.is_multiple_of(10) {
                    garbage_ms
                } else {
                    TTL.as_millis() as u64
                };
                pipe.cmd("SET")
                    .arg(key(j).as_str())
                    .arg(v)
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            pipe.exec_async(&mut conn).await.expect("load");
            i = (i + 10_000).min(n);
        }
        let load_secs = t0.elapsed().as_secs_f64();
        check_loaded(&store).await;
        let per_record =
            (used(server.cli(&["INFO", "memory"]).unwrap_or_default()) - before) / n as f64;
        server.cli(&["CONFIG", "RESETSTAT"]);
        let sized = Sized {
            name: "redis",
            records: n,
            load_secs,
            bytes_per_record: per_record,
        };
        let p = measure(
            sized,
            &store,
            secs,
            || async {},
            || async {
                // Redis expires keys itself, and by design lets up to ~10 % of the keys with a TTL
                // stay expired in memory (its active cycle stops below that share): what it dropped
                // of the expired tenth in the phase.
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                let expired: u64 = server
                    .cli(&["INFO", "stats"])
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("expired_keys:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                format!(
                    "Redis's own: {:.0} % in {secs} s",
                    100.0 * expired as f64 / (n / 10).max(1) as f64
                )
            },
        )
        .await;
        points.push(p);
    }
}

async fn postgres(sizes: &[u64], secs: f64, points: &mut Vec<Point>) -> Result<(), String> {
    use idem_runtime::tokio_postgres::NoTls;
    let conf = std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let (db, connection) = idem_runtime::tokio_postgres::connect(&conf, NoTls)
        .await
        .map_err(|e| format!("{conf}: {e}"))?;
    tokio::task::spawn_local(connection);
    for &n in sizes {
        let table = format!("growth_{}_{n}", std::process::id());
        let store = PostgresStore::connect_table(&conf, &table)
            .await
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        load_postgres(&db, &table, n).await?;
        let load_secs = t0.elapsed().as_secs_f64();
        check_loaded(&store).await;
        let size: i64 = db
            .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let reaper = store.clone();
        let sized = Sized {
            name: "postgres",
            records: n,
            load_secs,
            bytes_per_record: size as f64 / n as f64,
        };
        let garbage = format!(
            "INSERT INTO {table} (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at, response)
             SELECT 'garbage-' || g, fingerprint, state, token, attempt, acquired_at, lease_until,
                    now() - interval '1 second', response
               FROM {table}, generate_series(1, {}) AS g WHERE key = $1",
            n / 10
        );
        let sample = key(1).as_str().to_owned();
        let db2 = &db;
        let p = measure(
            sized,
            &store,
            secs,
            || async move {
                // A tenth of the records, expired: what the reaper finds when it runs.
                if let Err(e) = db2.execute(&garbage, &[&sample]).await {
                    println!("inserting garbage failed: {e}");
                }
            },
            || async move {
                // The reaper's pass (1000-row batches on one connection; its 5 s timer may
                // join in) until no expired row is left.
                let _ = reaper.reap_all().await;
                String::new()
            },
        )
        .await;
        points.push(p);
        drop(store);
        let _ = db
            .batch_execute(&format!(
                "DROP TABLE {table}_steps, {table}_requests, {table}; DROP SEQUENCE {table}_token;"
            ))
            .await;
    }
    Ok(())
}

/// Loads `n` completed records into `table`: the keys by `COPY` into a staging table, then one
/// `INSERT … SELECT`.
async fn load_postgres(
    db: &idem_runtime::tokio_postgres::Client,
    table: &str,
    n: u64,
) -> Result<(), String> {
    use futures_util::SinkExt;
    let e = |e: idem_runtime::tokio_postgres::Error| e.to_string();
    db.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS growth_keys (i bigint, key text); TRUNCATE growth_keys",
    )
    .await
    .map_err(e)?;
    let sink = db
        .copy_in("COPY growth_keys (i, key) FROM STDIN")
        .await
        .map_err(e)?;
    let mut sink = Box::pin(sink);
    let mut i = 0;
    while i < n {
        let mut chunk = String::with_capacity(100 * 10_000);
        for j in i..(i + 10_000).min(n) {
            chunk.push_str(&format!("{j}\t{}\n", key(j).as_str()));
        }
        sink.send(actix_web::web::Bytes::from(chunk))
            .await
            .map_err(e)?;
        i = (i + 10_000).min(n);
    }
    sink.as_mut().finish().await.map_err(e)?;
    let fp = fingerprint().0.to_vec();
    let resp = response().encode().to_vec();
    db.execute(
        &format!(
            "INSERT INTO {table} (key, fingerprint, state, token, attempt, acquired_at, lease_until, expires_at, response)
             SELECT key, $1, 'c', i + 1, 1, now(), now(), now() + interval '1 day', $2
               FROM growth_keys"
        ),
        &[&fp, &resp],
    )
    .await
    .map_err(e)?;
    db.batch_execute(&format!("ANALYZE {table}"))
        .await
        .map_err(e)?;
    Ok(())
}

fn print_table(points: &[Point]) {
    println!();
    println!("| store | records | load s | replay/s | replay p50 µs | p99 µs | new key/s | p50 µs | p99 µs | bytes/record | reaping the expired tenth | replay p99 while reaping µs |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in points {
        println!("| {} |", fields(p).join(" | "));
    }
}
