//! The hot path's pieces, one by one: key parsing, fingerprints at 1 KiB and 64 KiB (strict and
//! result), sealing a response at rest and opening it (1, 16, 64 KiB), the memory store's
//! begin+complete and replay, and the same on a private Redis.
//!
//! `cargo bench --bench micro`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use idem::{Begin, Fingerprint, MemoryStore, RedisStore, StorageKey, Store, StoredResponse};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(300);

#[path = "support/body.rs"]
mod support;
use support::body;

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.bench_function("parse bare", |b| {
        b.iter(|| idem::IdempotencyKey::parse(black_box(b"8e03978e-40d5-43e8-bc93-6894a57f9324")))
    });
    g.bench_function("parse sf-string", |b| {
        b.iter(|| {
            idem::IdempotencyKey::parse(black_box(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\""))
        })
    });
    let k = idem::IdempotencyKey::parse(b"8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
    g.bench_function("scope (storage key)", |b| {
        b.iter(|| StorageKey::scoped("idem:", "payments::create", black_box(b"principal"), &k))
    });
    g.finish();
}

fn fingerprints(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    for size in [1024usize, 64 * 1024] {
        let b = body(size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("strict", size), &b, |bench, b| {
            bench
                .iter(|| Fingerprint::strict("POST", "/payments", "application/json", black_box(b)))
        });
        g.bench_with_input(BenchmarkId::new("result", size), &b, |bench, b| {
            bench
                .iter(|| Fingerprint::result("POST", "/payments", "application/json", black_box(b)))
        });
        g.bench_with_input(BenchmarkId::new("semantic", size), &b, |bench, b| {
            bench.iter(|| {
                Fingerprint::semantic("POST", "/payments", &["/amount", "/currency"], black_box(b))
            })
        });
    }
    g.finish();
}

fn storage_key(i: u64) -> StorageKey {
    let k = idem::IdempotencyKey::parse(format!("bench-{i}").as_bytes()).expect("valid");
    StorageKey::scoped("bench:", "micro", b"", &k)
}

fn response() -> StoredResponse {
    StoredResponse::new(
        201,
        [
            ("content-type", "application/json"),
            ("location", "/payments/pay_000001"),
        ],
        body(300),
    )
}

/// begin + complete on a fresh key, then a replay of one completed key.
fn store_benches(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, store: &dyn Store) {
    let fp = Fingerprint::strict("POST", "/payments", "application/json", b"{}");
    let resp = response();
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group(name);
    g.bench_function("begin+complete", |b| {
        b.iter(|| {
            rt.block_on(async {
                let k = storage_key(next.fetch_add(1, Ordering::Relaxed));
                let Ok(Begin::Acquired { token, .. }) = store.begin(&k, &fp, LEASE, TTL).await
                else {
                    panic!("acquire");
                };
                store
                    .complete(&k, token, &resp, TTL)
                    .await
                    .expect("complete")
            })
        })
    });
    let replay_key = storage_key(u64::MAX);
    rt.block_on(async {
        if let Ok(Begin::Acquired { token, .. }) = store.begin(&replay_key, &fp, LEASE, TTL).await {
            let _ = store.complete(&replay_key, token, &resp, TTL).await;
        }
    });
    g.bench_function("replay", |b| {
        b.iter(|| {
            rt.block_on(store.begin(&replay_key, &fp, LEASE, TTL))
                .expect("replay")
        })
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let memory = MemoryStore::builder().max_bytes(1 << 30).build();
    store_benches(c, "memory store", &rt, &memory);
    if !redis_server::available("micro benches on Redis") {
        return;
    }
    let server = redis_server::RedisServer::start();
    let redis = rt
        .block_on(RedisStore::connect(&server.url()))
        .expect("connect");
    store_benches(c, "redis store", &rt, &redis);
}

/// Sealing at rest: seal (on completion) and open (on replay) of 1, 16 and 64 KiB responses,
/// each call deriving its record key as a request does.
fn sealing(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    let sealing = idem_runtime::__support::RecordSealing::new(
        b"micro-benchmark-secret-0123456789abcdef",
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
    );
    let key =
        "idem:0123456789abcdef-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for kib in [1usize, 16, 64] {
        let resp = StoredResponse::new(
            201,
            [("content-type", "application/json")],
            body(kib * 1024),
        );
        let sealed = sealing.seal(key, &resp);
        g.throughput(Throughput::Bytes((kib * 1024) as u64));
        g.bench_with_input(
            BenchmarkId::new("seal", format!("{kib} KiB")),
            &resp,
            |b, r| b.iter(|| sealing.seal(key, black_box(r))),
        );
        g.bench_with_input(
            BenchmarkId::new("open", format!("{kib} KiB")),
            &sealed,
            |b, s| b.iter(|| sealing.open(key, black_box(s)).expect("opens")),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = keys, fingerprints, sealing, stores
}
criterion_main!(benches);
