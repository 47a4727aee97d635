//! The oracle's own guarantees: the windows it tolerates are the ones the failure table
//! documents (they cannot drift apart), and one scenario gives one history.

use idem_sim::history::canonical;
use idem_sim::oracle::Window;
use idem_sim::scenario::scenario;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Every window the oracle tolerates is a row of "The remaining at-least-once windows".
#[test]
fn every_tolerated_window_is_a_documented_row() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/failure-behaviour.md"),
    )
    .expect("docs/failure-behaviour.md");
    let table = doc
        .split("## The remaining at-least-once windows")
        .nth(1)
        .expect("the windows table");
    for w in Window::ALL {
        assert!(
            table.contains(&format!("\n| {}", w.row())),
            "{w:?}: \"{}\" is not a row of the windows table",
            w.row()
        );
    }
}

/// The same scenario, run twice, records the same history (virtual time, one thread), up to
/// the order of the events of one instant.
#[test]
fn one_scenario_one_history() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = scenario(10, 4);
    for _ in 0..40 {
        let s = strategy
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let first = canonical(&idem_sim::run::run(&s).events);
        let second = canonical(&idem_sim::run::run(&s).events);
        if let Some(i) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i))
        {
            panic!(
                "two histories of {}: event {i}: {:?} / {:?}",
                serde_json::to_string(&s).unwrap_or_default(),
                first.get(i),
                second.get(i)
            );
        }
    }
}
