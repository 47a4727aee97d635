//! Where an app's worker thread keeps its CPU time, and how much it has used.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// Each app's worker thread: where its CPU time is read.
pub(crate) static WORKERS: Mutex<Vec<(SocketAddr, Arc<OnceLock<std::path::PathBuf>>)>> =
    Mutex::new(Vec::new());

/// Nanoseconds the app at `addr`'s worker thread has run on a CPU so far (user and kernel, the
/// loopback TCP work it does included), if Linux tells.
pub(crate) fn worker_cpu_ns(addr: SocketAddr) -> Option<u64> {
    let workers = WORKERS.lock().unwrap_or_else(|p| p.into_inner());
    let (_, path) = workers.iter().find(|(a, _)| *a == addr)?;
    schedstat_ns(path.get()?)
}

/// Nanoseconds on a CPU so far of the thread whose `/proc/…/schedstat` is at `path`.
pub(crate) fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// µs of CPU per answer between two readings of the same clock (`before` and `after`, ns) over
/// `answers` answers, if both were read.
pub(crate) fn per_answer_us(
    before: Option<u64>,
    after: Option<u64>,
    answers: usize,
) -> Option<f64> {
    before
        .zip(after)
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e3 / answers.max(1) as f64)
}

/// One trivial-handler cost: scenario, target, µs per answer, plain echo's cost ÷ this.
pub(crate) type Cost = (&'static str, &'static str, Option<f64>, Option<f64>);

/// Prints the trivial handler's cost table, if it was measured.
pub(crate) fn print_costs(costs: &[Cost]) {
    if costs.is_empty() {
        return;
    }
    println!();
    println!("The trivial handler's server cost (its worker thread's CPU time per answer):");
    println!();
    println!("| scenario | target | server CPU µs/req | plain echo's cost ÷ this |");
    println!("| --- | --- | ---: | ---: |");
    for (scenario, target, cost, ratio) in costs {
        println!(
            "| {scenario} | {target} | {} | {} |",
            cost.map_or("—".into(), |c| format!("{c:.2}")),
            ratio
                .filter(|_| *target != "plain echo")
                .map_or("—".into(), |r| format!("{r:.2}")),
        );
    }
}
