//! The long run: `cargo run --release -p idem-sim -- --seeds 20000` runs seeds until done (or
//! until one breaks a rule: it prints the shrunk scenario as JSON, and exits 1), with a
//! progress line, then a table of what ran by option.
//!
//! Options: `--seeds N` (default 1000), `--from S` (first seed, default 0), `--cases N`
//! (scenarios per seed, default 16), `--ops N` (at most N operations per scenario, default
//! 10), `--faults N` (at most N faults per scenario, default 4).
//!
//! On a real server: `--backend redis` runs in real time on private `redis-server`s,
//! `--backend postgres` on tables of the local PostgreSQL (`IDEM_PG`), `--lanes N` at once
//! (default 8, each with its own server or tables), a failing seed shrunk for at most
//! `--shrink S` seconds (default 120) and printed with its history and the server's log.

use std::io::Write;
use std::time::Instant;

use idem_sim::oracle::Counts;
use idem_sim::scenario::Backend;
use idem_sim::seeds::{run_seed, run_seeds_on, Size};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds = arg(&args, "--seeds", 1000);
    let from = arg(&args, "--from", 0);
    let size = Size {
        cases: arg(&args, "--cases", 16) as u32,
        ops: arg(&args, "--ops", 10) as usize,
        faults: arg(&args, "--faults", 4) as usize,
    };
    let started = Instant::now();
    let backend = match args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        None | Some("memory") => Backend::Memory,
        Some("redis") => Backend::Redis,
        Some("postgres") => Backend::Postgres,
        Some(other) => {
            eprintln!("unknown --backend {other}: memory, redis or postgres");
            std::process::exit(2);
        }
    };
    let mut counts = Counts::default();
    if backend != Backend::Memory {
        let lanes = arg(&args, "--lanes", 8) as usize;
        let shrink = arg(&args, "--shrink", 120) as u32;
        let progress = |done: u64, c: &Counts| {
            eprint!(
                "\rseed {done}/{seeds}, {} operations, {} requests, {:.0?}   ",
                c.operations,
                c.requests,
                started.elapsed()
            );
            let _ = std::io::stderr().flush();
        };
        let run = match run_seeds_on(backend, from..from + seeds, lanes, size, shrink, &progress) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        eprintln!();
        counts = run.counts;
        if let Some(failure) = run.failures.first() {
            eprintln!("{failure}");
            std::process::exit(1);
        }
        report(&counts, from, seeds, started);
        return;
    }
    for (done, seed) in (from..from + seeds).enumerate() {
        if let Err(failure) = run_seed(seed, size, &mut counts) {
            eprintln!();
            eprintln!("{failure}");
            eprintln!("replay: save the JSON above as idem-sim/histories/<name>.json and run `IDEM_SIM_REPLAY=idem-sim/histories/<name>.json cargo test -p idem-sim --test histories -- --nocapture`");
            std::process::exit(1);
        }
        let done = done as u64 + 1;
        let width = 30;
        let filled = (done * width / seeds.max(1)) as usize;
        eprint!(
            "\r[{}{}] seed {done}/{seeds}, {} operations, {} requests, 0 violations, {:.0?}   ",
            "#".repeat(filled),
            ".".repeat(width as usize - filled),
            counts.operations,
            counts.requests,
            started.elapsed()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    report(&counts, from, seeds, started);
}

/// The table of what ran.
fn report(counts: &Counts, from: u64, seeds: u64, started: Instant) {
    println!(
        "seeds {from}..{}: {} operations, {} requests, {} effects, {} lost answers, 0 violations, in {:.1?}",
        from + seeds,
        counts.operations,
        counts.requests,
        counts.effects,
        counts.lost,
        started.elapsed()
    );
    println!();
    println!("| what ran | count |");
    println!("| --- | --- |");
    for (option, n) in &counts.by_option {
        println!("| {option} | {n} |");
    }
    let mut windows: Vec<_> = counts.windows.iter().collect();
    windows.sort();
    for (w, n) in windows {
        println!("| extra effect explained by: {} | {n} |", w.row());
    }
    let mut statuses: Vec<_> = counts.statuses.iter().collect();
    statuses.sort();
    for (s, n) in statuses {
        println!("| answer {s} | {n} |");
    }
}
