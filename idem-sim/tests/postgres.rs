//! The CI seed set on PostgreSQL: scenarios drawn as in `seeds.rs`, run in real time (their
//! times scaled down) on tables of the local PostgreSQL — several lanes at once, each with its
//! own tables — records-only and `transactional` endpoints (a transactional handler's effect is
//! a row of its transaction: only committed ones count), with faults of the link to the server
//! (a TCP proxy: stalls, resets, lost answers, delays) beside the in-process ones. Without a
//! reachable PostgreSQL it skips with one line (a failure under `CI`).

#[test]
fn the_ci_seeds_keep_every_rule_on_postgres() {
    idem_sim::seeds::ci_seed_set(
        idem_sim::scenario::Backend::Postgres,
        24,
        8,
        "IDEM_SIM_PG_SEEDS",
    );
}
