//! Seeded runs: a seed draws scenarios (proptest's ChaCha generator), a failing one is shrunk,
//! written as JSON and reported with the command that replays it.

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use proptest::strategy::Strategy;

use crate::lane::Lane;
use crate::oracle::{Counts, Violation};
use crate::real::scenario_on;
use crate::scenario::{scenario, Backend, Scenario};

/// How big the scenarios of a seed are.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Scenarios drawn per seed.
    pub cases: u32,
    /// At most this many operations per scenario.
    pub ops: usize,
    /// At most this many faults per scenario.
    pub faults: usize,
}

/// A seed whose scenarios broke a rule: the shrunk scenario and the rule.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub reason: String,
    pub scenario: Option<Box<Scenario>>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.reason)?;
        if let Some(s) = &self.scenario {
            writeln!(
                f,
                "shrunk to {} operation(s) and {} fault(s):",
                s.ops.len(),
                s.faults.len()
            )?;
            writeln!(
                f,
                "{}",
                serde_json::to_string_pretty(s).unwrap_or_else(|e| e.to_string())
            )?;
        }
        Ok(())
    }
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(b"idem-sim");
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs the scenarios of `seed`, adding what they did to `counts`; the shrunk failure if one
/// broke a rule.
pub fn run_seed(seed: u64, size: Size, counts: &mut Counts) -> Result<(), Failure> {
    let check = |s: &Scenario| crate::simulate(s);
    run_seed_with(
        seed,
        size,
        scenario(size.ops, size.faults),
        check,
        None,
        counts,
    )
}

/// Runs the scenarios of `seed` on `lane`'s real server (in real time), adding what they did to
/// `counts`; the failure, shrunk for at most `shrink_secs`, if one broke a rule.
pub fn run_seed_on(
    seed: u64,
    size: Size,
    lane: &Lane,
    shrink_secs: u32,
    counts: &mut Counts,
) -> Result<(), Failure> {
    let strategy = scenario_on(lane.backend, size.ops, size.faults);
    let check = |s: &Scenario| crate::simulate_on(s, lane);
    run_seed_with(seed, size, strategy, check, Some(shrink_secs), counts)
}

fn run_seed_with(
    seed: u64,
    size: Size,
    strategy: impl Strategy<Value = Scenario>,
    check: impl Fn(&Scenario) -> Result<Counts, Violation>,
    shrink_secs: Option<u32>,
    counts: &mut Counts,
) -> Result<(), Failure> {
    let config = Config {
        cases: size.cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_shrink_time: shrink_secs.map_or(0, |s| s * 1000),
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng(seed));
    let seen = std::cell::RefCell::new(Counts::default());
    // Counted until the first failure (not the runs that shrink it), the failing one included.
    let failed = std::cell::Cell::new(false);
    let result = runner.run(&strategy, |s| {
        match check(&s) {
            Ok(c) if !failed.get() => seen.borrow_mut().add(&c),
            Ok(_) => {}
            Err(v) => {
                if !failed.replace(true) {
                    seen.borrow_mut().operations += s.ops.len() as u64;
                }
                return Err(TestCaseError::fail(v.0));
            }
        }
        Ok(())
    });
    counts.add(&seen.borrow());
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, minimal)) => Err(Failure {
            seed,
            reason: reason.to_string(),
            scenario: Some(Box::new(minimal)),
        }),
        Err(TestError::Abort(reason)) => Err(Failure {
            seed,
            reason: reason.to_string(),
            scenario: None,
        }),
    }
}

/// What a run of seeds on real servers did: the counts up to the first failure, and every
/// seed that broke a rule.
#[derive(Debug, Default)]
pub struct LaneRun {
    pub counts: Counts,
    pub failures: Vec<Failure>,
}

/// Runs `seeds` on `backend`, `lanes` at once — each lane a thread with servers of its own,
/// taking the next seed when done with one — stopping at the first failing seed (the lanes
/// running then finish theirs); `progress` is called after every seed. An error when the
/// servers cannot be started.
pub fn run_seeds_on(
    backend: Backend,
    seeds: std::ops::Range<u64>,
    lanes: usize,
    size: Size,
    shrink_secs: u32,
    progress: &(dyn Fn(u64, &Counts) + Sync),
) -> Result<LaneRun, String> {
    let next = AtomicU64::new(seeds.start);
    let done = AtomicU64::new(0);
    let out = Mutex::new(LaneRun::default());
    let lanes: Vec<Lane> = (0..lanes.max(1))
        .map(|_| Lane::new(backend))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("starting a lane's servers: {e}"))?;
    std::thread::scope(|scope| {
        for lane in &lanes {
            let (next, done, out) = (&next, &done, &out);
            let end = seeds.end;
            scope.spawn(move || loop {
                let stop = !out
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failures
                    .is_empty();
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if stop || seed >= end {
                    return;
                }
                let mut counts = Counts::default();
                let result = run_seed_on(seed, size, lane, shrink_secs, &mut counts);
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.counts.add(&counts);
                if let Err(f) = result {
                    out.failures.push(f);
                }
                progress(done.fetch_add(1, Ordering::SeqCst) + 1, &out.counts);
            });
        }
    });
    Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The CI seed set on `backend`'s real servers, as a test runs it: `seeds` seeds (`env`, if
/// set, says how many), `lanes` at once, 8 scenarios of up to 10 operations and 4 faults per
/// seed. Prints one skip line when the servers are missing (a failure under `CI`), and each
/// failing seed with its history, the servers' logs and the shrunk scenario; panics if a seed
/// broke a rule.
pub fn ci_seed_set(backend: Backend, seeds: u64, lanes: usize, env: &str) {
    let test = format!("the CI seeds on {backend:?}");
    if let Err(missing) = crate::servers::available(backend) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {missing}, and CI is set: they must run in CI"
        );
        eprintln!("skipped {test}: {missing}");
        return;
    }
    let seeds = seeds_from_env(env, seeds);
    let size = Size {
        cases: 8,
        ops: 10,
        faults: 4,
    };
    let started = std::time::Instant::now();
    let quiet = |_: u64, _: &Counts| {};
    let run = run_seeds_on(backend, 0..seeds, lanes, size, 60, &quiet)
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    if !run.failures.is_empty() {
        println!("first violation after {} operations", run.counts.operations);
    }
    println!(
        "{seeds} seeds on {backend:?}, {} operations, {} requests, {} effects in {:.1?}; windows: {:?}",
        run.counts.operations,
        run.counts.requests,
        run.counts.effects,
        started.elapsed(),
        run.counts.windows
    );
    for f in &run.failures {
        eprintln!("{f}");
    }
    assert!(run.failures.is_empty(), "{test}: a seed broke a rule");
}

/// How many seeds a CI set runs: the number in `env` if it is set, else `default`.
pub fn seeds_from_env(env: &str, default: u64) -> u64 {
    std::env::var(env)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
