//! Seeded runs: a seed draws scenarios (proptest's ChaCha generator), a failing one is shrunk,
//! written as JSON and reported with the command that replays it.

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::oracle::Counts;
use crate::scenario::{scenario, Scenario};

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
    let config = Config {
        cases: size.cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng(seed));
    let seen = std::cell::RefCell::new(Counts::default());
    // Counted until the first failure (not the runs that shrink it), the failing one included.
    let failed = std::cell::Cell::new(false);
    let result = runner.run(&scenario(size.ops, size.faults), |s| {
        match crate::simulate(&s) {
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
