//! The CI seed set on a real Redis: scenarios drawn as in `seeds.rs`, run in real time (their
//! times scaled down) on private `redis-server`s — several lanes at once, each with its own
//! server — with faults of the server itself (`SIGSTOP`, `kill -9` and restart, `maxmemory`) and
//! of the link to it (a TCP proxy: stalls, resets, lost answers, delays) beside the in-process
//! ones. Without `redis-server` on PATH it skips with one line (a failure under `CI`).

#[test]
fn the_ci_seeds_keep_every_rule_on_redis() {
    idem_sim::seeds::ci_seed_set(
        idem_sim::scenario::Backend::Redis,
        24,
        12,
        "IDEM_SIM_REDIS_SEEDS",
    );
}
