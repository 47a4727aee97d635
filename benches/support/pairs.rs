//! Interleaved pairs (`LOAD_ONLY=pairs`): plain and `#[idempotent]` on the memory store, run
//! one after the other several times on the same app, for the JSON handler and the trivial
//! one, new key and replay, and for new keys whose records expire after 10 s (a store in steady
//! state rather than one that grows by every request). On a two-core machine shared with the load generator a single
//! three-second run of each swings by ±20 % from one minute to the next; a pair run back to back
//! shares the machine's state, so the ratio of each pair, and their median, are what to read.

use std::net::SocketAddr;
use std::time::Duration;

use super::driver::{drive, Scenario};
use super::worker_cpu::{per_answer_us, schedstat_ns, worker_cpu_ns};

/// One measured run: requests per second and, if Linux tells, the worker's CPU µs per answer.
struct Measured {
    rps: f64,
    cpu_us: Option<f64>,
    answers: usize,
    p99_us: u32,
}

/// CPU nanoseconds used so far by the memory stores' sweeper threads (in `LOAD_ONLY=pairs`
/// there is one, the app's): idempotency work too, done off the worker thread.
fn sweeper_cpu_ns() -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "idem-memory-swe" {
            continue;
        }
        let ns = schedstat_ns(&task.path().join("schedstat"))?;
        total = Some(total.unwrap_or(0) + ns);
    }
    total
}

async fn measure(
    addr: SocketAddr,
    path: &'static str,
    scenario: Scenario,
    run: u64,
    conns: usize,
    secs: f64,
    body: &[u8],
) -> Measured {
    let before = worker_cpu_ns(addr);
    let (rps, _, p99_us, n, mix) = drive(addr, path, scenario, run, conns, secs, body).await;
    // Every request must have been answered with a 201 (a new key: executed): a ratio of
    // errors is not a measurement.
    let expected = match scenario {
        Scenario::NewKey => mix.starts_with(&format!("{n} fresh")),
        _ => mix.ends_with("/ 0 409 / 0 other"),
    };
    assert!(n > 0 && expected, "{path}: unexpected answers: {mix}");
    let cpu_us = per_answer_us(before, worker_cpu_ns(addr), n);
    Measured {
        rps,
        cpu_us,
        answers: n,
        p99_us,
    }
}

fn median(mut xs: Vec<f64>) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some((xs[xs.len() / 2], xs[0], xs[xs.len() - 1]))
}

fn show(m: Option<(f64, f64, f64)>) -> String {
    m.map_or("—".into(), |(mid, lo, hi)| {
        format!("**{mid:.2}** ({lo:.2}–{hi:.2})")
    })
}

/// `LOAD_ONLY=pairs`: `LOAD_PAIRS` interleaved pairs (default 5) on the app at `addr`, on a
/// runtime of their own.
pub(crate) fn main(addr: SocketAddr, conns: usize, secs: f64, json: &[u8], trivial: &[u8]) {
    let rounds = std::env::var("LOAD_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::sleep(Duration::from_millis(300));
    let first_run = std::process::id() as u64 * 1000;
    let pairs = run_pairs(
        addr,
        rounds.unwrap_or(5).clamp(1, 21),
        conns,
        secs,
        json,
        trivial,
        first_run,
    );
    tokio::task::LocalSet::new().block_on(&rt, pairs);
}

/// Runs `rounds` interleaved pairs per handler and scenario on the app at `addr` (routes
/// `/plain`, `/idem`, `/echo`, `/idem-echo`) and prints one table: per pair, the idempotent
/// run's req/s over plain's and plain's CPU per answer over the idempotent one's; the median
/// and the range of each; the memory store's sweeper thread's CPU over the group per
/// idempotent answer, and the CPU ratio with it added to the idempotent side.
#[allow(clippy::too_many_arguments)]
async fn run_pairs(
    addr: SocketAddr,
    rounds: usize,
    conns: usize,
    secs: f64,
    json: &[u8],
    trivial: &[u8],
    mut run: u64,
) {
    let mut lines = Vec::new();
    // `LOAD_SCENARIO` narrows it to one scenario, `LOAD_HANDLER` (`json` or `echo`) to one
    // handler.
    let scenario_only = std::env::var("LOAD_SCENARIO").ok();
    let handler_only = std::env::var("LOAD_HANDLER").ok();
    for scenario in [Scenario::NewKey, Scenario::Replay] {
        if scenario_only
            .as_deref()
            .is_some_and(|s| s != scenario.name())
        {
            continue;
        }
        for (tag, handler, plain, idem, body) in [
            ("json", "1 KiB JSON", "/plain", "/idem", json),
            (
                "steady",
                "1 KiB JSON, kept 10 s",
                "/plain",
                "/idem-steady",
                json,
            ),
            ("echo", "trivial echo", "/echo", "/idem-echo", trivial),
        ] {
            if handler_only.as_deref().is_some_and(|h| h != tag) {
                continue;
            }
            if tag == "steady" {
                // Records that expire within a run are a new-key question only.
                if scenario != Scenario::NewKey {
                    continue;
                }
                // Fill the store to its steady state first: as many records as expire.
                run += 1;
                measure(addr, idem, scenario, run, conns, 12.0, body).await;
            }
            let (mut rps, mut cpu, mut cpu_pairs) = (Vec::new(), Vec::new(), Vec::new());
            let (mut plain_p99, mut idem_p99) = (Vec::new(), Vec::new());
            let (swept_before, mut idem_answers) = (sweeper_cpu_ns(), 0);
            for _ in 0..rounds {
                run += 1;
                let p = measure(addr, plain, scenario, run, conns, secs, body).await;
                run += 1;
                let m = measure(addr, idem, scenario, run, conns, secs, body).await;
                rps.push(m.rps / p.rps);
                idem_answers += m.answers;
                plain_p99.push(f64::from(p.p99_us));
                idem_p99.push(f64::from(m.p99_us));
                if let (Some(pc), Some(mc)) = (p.cpu_us, m.cpu_us) {
                    cpu.push(pc / mc);
                    cpu_pairs.push((pc, mc));
                }
            }
            // The sweeper's CPU over the whole group, charged to the idempotent answers.
            let swept_us = per_answer_us(swept_before, sweeper_cpu_ns(), idem_answers);
            let with_sweeper = swept_us.map(|s| {
                cpu_pairs
                    .iter()
                    .map(|(pc, mc)| pc / (mc + s))
                    .collect::<Vec<_>>()
            });
            lines.push(format!(
                "| {} | {handler} | {rounds} | {} | {} | {} | {} | {:.0} / {:.0} |",
                scenario.name(),
                show(median(rps)),
                show(median(cpu)),
                swept_us.map_or("—".into(), |s| format!("{s:.2}")),
                show(with_sweeper.and_then(median)),
                median(plain_p99).map_or(0.0, |m| m.0),
                median(idem_p99).map_or(0.0, |m| m.0),
            ));
        }
    }
    println!();
    println!("Interleaved pairs, memory store × plain on the same app ({secs} s runs, {conns} connections):");
    println!();
    println!("| scenario | handler | pairs | req/s × plain: median (range) | plain's CPU/answer ÷ this: median (range) | sweeper µs/answer | CPU ratio, sweeper counted | p99 µs, plain / this (medians) |");
    println!("| --- | --- | ---: | --- | --- | ---: | --- | --- |");
    for line in lines {
        println!("{line}");
    }
}
