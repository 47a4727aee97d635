//! Kept histories: every shrunk scenario that once broke a rule (idem-sim/histories/*.json) is
//! run again and must keep every rule now (one on a real server on a lane of its own: in real
//! time, so it may not meet its defect again the same way). `IDEM_SIM_REPLAY=<file>` replays one file and prints
//! its history.

use idem_sim::Scenario;

fn load(path: &std::path::Path) -> Scenario {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The lane a history on a real server runs on (its servers started), or `None` for one in
/// virtual time.
fn lane(scenario: &Scenario) -> Option<idem_sim::lane::Lane> {
    if scenario.backend == idem_sim::scenario::Backend::Memory {
        return None;
    }
    Some(idem_sim::lane::Lane::new(scenario.backend).unwrap_or_else(|e| panic!("{e}")))
}

/// Whether the servers `scenario` needs are here; one skip line if not (a failure under `CI`).
fn servers_here(scenario: &Scenario, file: &std::path::Path) -> bool {
    match idem_sim::servers::available(scenario.backend) {
        Ok(()) => true,
        Err(missing) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{}: {missing}, and CI is set",
                file.display()
            );
            eprintln!("skipped {}: {missing}", file.display());
            false
        }
    }
}

#[test]
fn every_kept_history_keeps_every_rule() {
    if let Ok(one) = std::env::var("IDEM_SIM_REPLAY") {
        // Relative to the workspace (where the replay command is run from), or absolute.
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let scenario = load(&workspace.join(&one));
        let resolved = idem_sim::run::resolve(&scenario);
        let outcome = match lane(&scenario) {
            Some(lane) => idem_sim::run::run_on(&scenario, &lane).unwrap_or_else(|e| panic!("{e}")),
            None => idem_sim::run::run(&scenario),
        };
        for event in &outcome.events {
            println!("{event:?}");
        }
        let verdict = idem_sim::oracle::check(&scenario, &resolved, &outcome);
        println!("{verdict:?}");
        assert!(verdict.is_ok());
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("histories");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    for file in files {
        let scenario = load(&file);
        if !servers_here(&scenario, &file) {
            continue;
        }
        let verdict = match lane(&scenario) {
            Some(lane) => idem_sim::simulate_on(&scenario, &lane),
            None => idem_sim::simulate(&scenario),
        };
        if let Err(v) = verdict {
            panic!("{}: {v}", file.display());
        }
    }
}
