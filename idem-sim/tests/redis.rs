//! The CI seed set on a real Redis: scenarios drawn as in `seeds.rs`, run in real time (their
//! times scaled down) on private `redis-server`s — several lanes at once, each with its own
//! server — with faults of the server itself (`SIGSTOP`, `kill -9` and restart, `maxmemory`)
//! beside the in-process ones. A failure prints its seed, the history, the server's log and
//! the shrunk scenario. Without `redis-server` on PATH it skips with one line (a failure under
//! `CI`).

use idem_sim::oracle::Counts;
use idem_sim::scenario::Backend;
use idem_sim::seeds::{run_seeds_on, Size};

/// Seeds of the set (`IDEM_SIM_REDIS_SEEDS` runs another number of them).
const SEEDS: u64 = 24;
/// Lanes at once.
const LANES: usize = 12;

#[test]
fn the_ci_seeds_keep_every_rule_on_redis() {
    if !idem_sim::servers::redis_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not on PATH, and CI is set: the simulator's Redis seeds must run in CI"
        );
        eprintln!("skipped the_ci_seeds_keep_every_rule_on_redis: redis-server is not on PATH");
        return;
    }
    let seeds = std::env::var("IDEM_SIM_REDIS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEEDS);
    let size = Size {
        cases: 8,
        ops: 10,
        faults: 4,
    };
    let started = std::time::Instant::now();
    let quiet = |_: u64, _: &Counts| {};
    let run = run_seeds_on(Backend::Redis, 0..seeds, LANES, size, 60, &quiet)
        .unwrap_or_else(|e| panic!("{e}"));
    if !run.failures.is_empty() {
        println!("first violation after {} operations", run.counts.operations);
    }
    println!(
        "{seeds} seeds on Redis, {} operations, {} requests, {} effects in {:.1?}; windows: {:?}",
        run.counts.operations,
        run.counts.requests,
        run.counts.effects,
        started.elapsed(),
        run.counts.windows
    );
    for f in &run.failures {
        eprintln!("{f}");
    }
    assert!(run.failures.is_empty(), "a seed broke a rule on Redis");
}
