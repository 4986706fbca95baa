//! Golden scenarios: every `tests/scenarios/NAME.json` replays to `NAME.expected.json`.
//! The expected files were worked out by hand from the pricing document's tables;
//! `tests/scenarios/README.md` shows the arithmetic behind each.

use std::path::{Path, PathBuf};

use flowcredits_core::Rules;
use flowcredits_sim::{MemoryBackend, parse_scenario, replay};
use serde_json::Value;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json") && !path.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    files
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn every_scenario_replays_to_its_expected_report() {
    let files = scenario_files();
    assert!(files.len() >= 8, "the golden scenarios are missing: found {files:?}");
    let rules = Rules::shipped();
    for path in files {
        let scenario = parse_scenario(&std::fs::read_to_string(&path).unwrap(), &rules).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let mut backend = MemoryBackend::new(rules.clone(), scenario.team.clone());
        let actual = replay(&scenario, &mut backend).to_json();
        let expected = read_json(&path.with_extension("expected.json"));
        assert_eq!(actual, expected, "{}:\n{}", path.display(), serde_json::to_string_pretty(&actual).unwrap());
    }
}

#[test]
fn replaying_twice_gives_the_same_report() {
    let rules = Rules::shipped();
    for path in scenario_files() {
        let scenario = parse_scenario(&std::fs::read_to_string(&path).unwrap(), &rules).unwrap();
        let first = replay(&scenario, &mut MemoryBackend::new(rules.clone(), scenario.team.clone())).to_json();
        let second = replay(&scenario, &mut MemoryBackend::new(rules.clone(), scenario.team.clone())).to_json();
        assert_eq!(first, second, "{}", path.display());
    }
}
