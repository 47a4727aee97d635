//! The CI seed set: a fixed set of seeds across the option space, every scenario checked by the
//! oracle. A failure prints its seed, the shrunk scenario (as JSON, to keep under
//! `idem-sim/histories/`) and the command that replays it.

use idem_sim::oracle::Counts;
use idem_sim::seeds::{run_seed, Size};

/// Seeds of the CI set (`IDEM_SIM_SEEDS` runs another number of them).
const SEEDS: u64 = 64;

#[test]
fn the_ci_seeds_keep_every_rule() {
    let seeds = idem_sim::seeds::seeds_from_env("IDEM_SIM_SEEDS", SEEDS);
    let size = Size {
        cases: 32,
        ops: 10,
        faults: 4,
    };
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(f) = run_seed(seed, size, &mut counts) {
            if failures.is_empty() {
                println!(
                    "first violation after {} operations (seed {seed})",
                    counts.operations
                );
            }
            failures.push(f);
        }
    }
    println!(
        "{seeds} seeds, {} operations, {} requests, {} effects in {:.1?}; windows: {:?}",
        counts.operations,
        counts.requests,
        counts.effects,
        started.elapsed(),
        counts.windows
    );
    for f in &failures {
        eprintln!("{f}");
        eprintln!(
            "replay: save the JSON above as idem-sim/histories/<name>.json, then `IDEM_SIM_REPLAY=idem-sim/histories/<name>.json cargo test -p idem-sim --test histories -- --nocapture`"
        );
    }
    assert!(
        failures.is_empty(),
        "{} seed(s) broke a rule",
        failures.len()
    );
}
