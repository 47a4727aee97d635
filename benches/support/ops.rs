//! The growth benchmark's load on a store: 64 tasks calling the `Store` trait back to back —
//! replays of random preloaded keys, or new keys (`begin` + `complete`) — bounded in time and
//! in count, with every operation's latency.

use idem::{Begin, Fingerprint, IdempotencyKey, StorageKey, Store, StoredResponse};
use std::time::{Duration, Instant};

/// Never more than this many operations per task, whatever the duration.
const MAX_OPS_PER_TASK: usize = 500_000;
pub const LEASE: Duration = Duration::from_secs(30);
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// The storage key of preloaded record `i` (as an app without a secret derives it).
pub fn key(i: u64) -> StorageKey {
    let raw = format!("g{i}");
    let k = IdempotencyKey::parse(raw.as_bytes()).expect("a valid key");
    StorageKey::scoped("idem:", "growth", b"", &k)
}

/// The fingerprint every record is made with.
pub fn fingerprint() -> Fingerprint {
    Fingerprint::strict("POST", "/growth", "application/json", b"{\"amount\":1000}")
}

/// The response every record keeps: ~200 bytes, like a small JSON answer.
pub fn response() -> StoredResponse {
    StoredResponse::new(201, [(
            "content-type",
            "application/json",
        )], format!(
            "{{\"id\":\"pay_000001\",\"amount\":1000,\"currency\":\"EUR\",\"status\":\"succeeded\",\"note\":\"{}\"}}",
            "x".repeat(100)
        ))
}

/// What one measurement saw.
pub struct Stats {
    pub ops_per_sec: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub errors: usize,
}

/// What the tasks do.
#[derive(Clone, Copy)]
pub enum Load {
    /// `begin` of a random record among `0..n` (skipping every tenth: reaped garbage), expecting
    /// a replay.
    Replay { n: u64 },
    /// `begin` + `complete` of keys never used, from `from` on.
    NewKey { from: u64 },
}

/// Runs `load` on `store` with `tasks` tasks for `secs`.
pub async fn run<S: Store + Clone>(store: &S, load: Load, tasks: usize, secs: f64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::task::spawn_local(async move { task(store, load, t as u64, deadline).await })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for h in handles {
        let (l, e) = h.await.expect("a load task");
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        ops_per_sec: lat.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

async fn task<S: Store>(store: S, load: Load, t: u64, deadline: Instant) -> (Vec<u32>, usize) {
    let (fp, resp) = (fingerprint(), response());
    let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (mut lat, mut errors) = (Vec::new(), 0);
    for i in 0..MAX_OPS_PER_TASK as u64 {
        if Instant::now() >= deadline {
            break;
        }
        // The memory store answers without ever yielding: let the other tasks (and the
        // reaper's) run.
        if i % 16 == 15 {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        let ok = match load {
            Load::Replay { n } => {
                // xorshift: a different record each time, all over the table.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut i = rng % n;
                if i.is_multiple_of(10) {
                    i = (i + 1) % n;
                }
                matches!(
                    store.begin(&key(i), &fp, LEASE, TTL).await,
                    Ok(Begin::Replay(_))
                )
            }
            Load::NewKey { from } => {
                let k = key(from + t * MAX_OPS_PER_TASK as u64 + i);
                match store.begin(&k, &fp, LEASE, TTL).await {
                    Ok(Begin::Acquired { token, .. }) => {
                        store.complete(&k, token, &resp, TTL).await.is_ok()
                    }
                    _ => false,
                }
            }
        };
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            errors += 1;
        }
    }
    (lat, errors)
}
