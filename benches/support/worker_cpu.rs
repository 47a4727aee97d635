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
    let stat = std::fs::read_to_string(path.get()?).ok()?;
    stat.split_whitespace().next()?.parse().ok()
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
