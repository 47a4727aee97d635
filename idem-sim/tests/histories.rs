//! Kept histories: every shrunk scenario that once broke a rule (idem-sim/histories/*.json) is
//! run again and must keep every rule now. `IDEM_SIM_REPLAY=<file>` replays one file and prints
//! its history.

use idem_sim::Scenario;

fn load(path: &std::path::Path) -> Scenario {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

#[test]
fn every_kept_history_keeps_every_rule() {
    if let Ok(one) = std::env::var("IDEM_SIM_REPLAY") {
        // Relative to the workspace (where the replay command is run from), or absolute.
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let scenario = load(&workspace.join(&one));
        let resolved = idem_sim::run::resolve(&scenario);
        let outcome = idem_sim::run::run(&scenario);
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
        if let Err(v) = idem_sim::simulate(&scenario) {
            panic!("{}: {v}", file.display());
        }
    }
}
