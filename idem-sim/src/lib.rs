//! A deterministic simulator that checks idem's exactly-once promise.
//!
//! A [`Scenario`] — endpoints with their options (guarantee, `on_conflict`, key source, scope,
//! `on_store_error`, admission limit, replay cache, response limit, actix-web or tower), app
//! instances sharing one store, logical operations with what their clients do (retries,
//! duplicates in parallel, hang-ups, a changed body, a doubled scope header, a key reused after
//! its expiry) and faults (outages, a slow or full store, lost or failed completions, `kill -9`
//! and restart) — is drawn from a seed, [`run`](run::run) in virtual time on one thread, and its
//! history checked by the [`oracle`]. A failing scenario is shrunk by proptest to the fewest
//! operations and faults that still fail, printed with its seed and kept as JSON for replay.

pub mod actix_app;
pub mod app;
pub mod effects;
pub mod history;
pub mod lane;
pub mod oracle;
pub mod proxy;
pub mod real;
pub mod real_time;
pub mod run;
pub mod scenario;
pub mod seeds;
pub mod servers;
pub mod shared_store;
pub mod windows;
pub mod world;

pub use scenario::Scenario;

/// Runs `scenario` and checks its history: the counts of a run that kept every rule, or the
/// broken rule.
pub fn simulate(scenario: &Scenario) -> Result<oracle::Counts, oracle::Violation> {
    let resolved = run::resolve(scenario);
    let outcome = run::run(scenario);
    oracle::check(scenario, &resolved, &outcome)
}

/// Runs `scenario` on `lane`'s real server (see [`run::run_on`]) and checks its history; a
/// broken rule carries the history and the servers' logs.
pub fn simulate_on(
    scenario: &Scenario,
    lane: &lane::Lane,
) -> Result<oracle::Counts, oracle::Violation> {
    let resolved = run::resolve(scenario);
    let outcome = run::run_on(scenario, lane).map_err(oracle::Violation)?;
    oracle::check(scenario, &resolved, &outcome).map_err(|v| {
        let mut report = v.0;
        report.push_str("\nhistory:\n");
        for e in history::canonical(&outcome.events) {
            report.push_str(&format!("  {e:?}\n"));
        }
        report.push_str(&lane.logs());
        oracle::Violation(report)
    })
}
