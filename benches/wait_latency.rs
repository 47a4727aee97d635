//! How long after the first request completes does a waiting duplicate (`on_conflict = "wait"`)
//! wake up? Measured from the start of `complete` to the return of `wait`, on the memory store
//! on a private Redis (pub/sub push; the polling fallback would show as ~250 ms), and on the
//! local PostgreSQL (`LISTEN`/`NOTIFY`; `IDEM_PG` overrides the connection string).
//!
//! `cargo bench --bench wait_latency`

use criterion::{criterion_group, criterion_main, Criterion};
use idem::{Begin, Fingerprint, MemoryStore, RedisStore, StorageKey, Store, StoredResponse};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::PostgresStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

const KEEP: Duration = Duration::from_secs(60);

fn key(i: u64) -> StorageKey {
    let k = idem::IdempotencyKey::parse(format!("bench-{i}").as_bytes()).expect("valid key");
    StorageKey::scoped("bench:", "wait_latency", b"", &k)
}

/// One round: acquire a key, start a waiter, complete, and time the waiter's wake-up.
async fn one(store: Arc<dyn Store>, i: u64) -> Duration {
    let k = key(i);
    let fp = Fingerprint::strict("POST", "/", "", b"");
    let Ok(Begin::Acquired { token, .. }) =
        store.begin(&k, &fp, Duration::from_secs(30), KEEP).await
    else {
        panic!("acquire");
    };
    let (s2, k2) = (store.clone(), k.clone());
    let waiter = tokio::spawn(async move {
        s2.wait(&k2, Duration::from_secs(5)).await.expect("wait");
        Instant::now()
    });
    // Let the waiter register and block first.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let started = Instant::now();
    let resp = StoredResponse::new(201, None::<(&str, &str)>, "{}");
    store
        .complete(&k, token, &resp, Duration::from_secs(60))
        .await
        .expect("complete");
    let woke = waiter.await.expect("waiter");
    woke.saturating_duration_since(started)
}

fn bench(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, store: Arc<dyn Store>) {
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    total += one(store.clone(), n).await;
                }
                total
            })
        })
    });
}

fn wait_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bench(
        c,
        "wait wake-up / memory",
        &rt,
        Arc::new(MemoryStore::default()),
    );

    let pg = std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let table = format!("bench_wait_{}", std::process::id());
    match rt.block_on(PostgresStore::connect_table(&pg, &table)) {
        Ok(store) => {
            // Give the LISTEN connection a moment to listen.
            std::thread::sleep(Duration::from_millis(200));
            bench(c, "wait wake-up / postgres", &rt, Arc::new(store));
            let drop = format!(
                "DROP TABLE {table}_steps, {table}_requests, {table}; DROP SEQUENCE {table}_token;"
            );
            let _ = rt.block_on(async {
                let (db, conn) =
                    idem_runtime::tokio_postgres::connect(&pg, idem_runtime::tokio_postgres::NoTls)
                        .await?;
                tokio::spawn(conn);
                db.batch_execute(&drop).await
            });
        }
        Err(e) => println!("skipped wait_latency on PostgreSQL: {e}"),
    }

    if !redis_server::available("wait_latency on Redis") {
        return;
    }
    let server = redis_server::RedisServer::start();
    let store = rt
        .block_on(RedisStore::connect(&server.url()))
        .expect("connect");
    // Give the completion subscriber a moment to subscribe.
    std::thread::sleep(Duration::from_millis(200));
    bench(c, "wait wake-up / redis", &rt, Arc::new(store));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    targets = wait_latency
}
criterion_main!(benches);
