//! The durable-ledger commands as a user runs them: `simulate --db`, `teams`, `usage`,
//! `invoices`, `migrate` and `ledger verify`, on a temporary database file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flowcredits(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = flowcredits(args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("flowcredits-cli-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).filter(|path| path.extension().is_some_and(|ext| ext == "json") && !path.to_str().unwrap().ends_with(".expected.json")).collect();
    files.sort();
    files
}

#[test]
fn simulate_on_the_store_gives_the_golden_reports() {
    let dir = TempDir::new("golden");
    let files = scenarios();
    assert!(!files.is_empty());
    for (index, scenario) in files.iter().enumerate() {
        let db = dir.file(&format!("golden-{index}.db"));
        let output = ok(&["simulate", "--db", &db, scenario.to_str().unwrap()]);
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(scenario.with_extension("expected.json")).unwrap()).unwrap();
        let actual: serde_json::Value = serde_json::from_str(&output).unwrap();
        assert_eq!(actual, expected, "{}", scenario.display());
        assert!(ok(&["ledger", "verify", "--db", &db]).contains(" 0 mismatches"));
    }
}

#[test]
fn teams_usage_invoices_and_verify() {
    let dir = TempDir::new("office");
    let db = dir.file("ledger.db");
    assert!(ok(&["migrate", "--db", &db]).contains(&format!("schema version {}", flowcredits_store::SCHEMA_VERSION)));
    assert!(ok(&["teams", "create", "acme", "--plan", "team", "--payg", "--payg-cap-usd", "12.5", "--db", &db]).contains("cap $12.500"));
    let scenario = dir.file("payg.json");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios/payg_billing.json"), &scenario).unwrap();
    ok(&["simulate", "--db", &db, "--team", "solo-team", &scenario]);
    // Replayed again into the same team it would collide with its own runs: refused, saying what to do.
    let again = flowcredits(&["simulate", "--db", &db, "--team", "solo-team", &scenario]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("pass another --team"), "{}", String::from_utf8_lossy(&again.stderr));
    // A refusal is said once, not once per error layer.
    let refused = flowcredits(&["teams", "create", "tiny", "--plan", "free", "--payg", "--db", &db]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(message.matches("has no pay-as-you-go").count(), 1, "{message}");

    let teams: serde_json::Value = serde_json::from_str(&ok(&["teams", "list", "--json", "--db", &db])).unwrap();
    let names: Vec<&str> = teams.as_array().unwrap().iter().map(|team| team["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "solo-team"]);
    let show = ok(&["teams", "show", "solo-team", "--db", &db]);
    assert!(show.contains("plan solo") && show.contains("payg_enabled") && show.contains("simulate"), "{show}");

    let usage: serde_json::Value = serde_json::from_str(&ok(&["usage", "--team", "solo-team", "--period", "2026-03", "--json", "--db", &db])).unwrap();
    assert_eq!((usage["used"].as_u64(), usage["payg_credits"].as_u64(), usage["payg_amount_usd"].as_str()), (Some(1078), Some(1001), Some("1.001")));
    let lines = usage["breakdown"].as_array().unwrap();
    assert_eq!(lines.iter().map(|line| line["credits"].as_u64().unwrap()).sum::<u64>(), 1078, "the breakdown adds up to the usage");
    assert!(lines.iter().all(|line| line["trigger"] == "api"));
    // Without --period: the period today is in, where this team (last active in March 2026) used nothing.
    let today: serde_json::Value = serde_json::from_str(&ok(&["usage", "--team", "solo-team", "--json", "--db", &db])).unwrap();
    let label = flowcredits_core::Period::containing(flowcredits_core::AnchorDay::FIRST, flowcredits_core::Timestamp::now()).label();
    assert_eq!((today["period"]["label"].as_str(), today["used"].as_u64()), (Some(label.as_str()), Some(0)), "{today}");
    let text = ok(&["usage", "--team", "solo-team", "--period", "2026-03", "--db", &db]);
    assert!(text.contains("used 1078 of 50 included credits"), "{text}");

    // Invoices close the periods that ended by now (March 2026 is long over).
    let invoices: serde_json::Value = serde_json::from_str(&ok(&["invoices", "--team", "solo-team", "--json", "--db", &db])).unwrap();
    assert_eq!(invoices[0]["amount_due_usd"], "1.001");
    assert_eq!(invoices[0]["period"]["start"], "2026-03-01T00:00:00Z");
    assert!(ok(&["ledger", "verify", "--db", &db]).contains(" 0 mismatches"));
    // Scripts get JSON from the commands that write, and from verify.
    let verified: serde_json::Value = serde_json::from_str(&ok(&["ledger", "verify", "--json", "--db", &db])).unwrap();
    assert_eq!((verified["ok"].as_bool(), verified["mismatches"].as_array().map(Vec::len)), (Some(true), Some(0)), "{verified}");
    assert!(verified["entries"].as_u64().unwrap() > 0, "{verified}");
    let created: serde_json::Value = serde_json::from_str(&ok(&["teams", "create", "beta", "--plan", "solo", "--anchor-day", "9", "--json", "--db", &db])).unwrap();
    assert_eq!((created["name"].as_str(), created["plan"].as_str(), created["anchor_day"].as_u64()), (Some("beta"), Some("solo"), Some(9)), "{created}");
    let migrated: serde_json::Value = serde_json::from_str(&ok(&["migrate", "--json", "--db", &db])).unwrap();
    assert_eq!((migrated["schema_version"].as_i64(), migrated["migrations_applied"].as_u64()), (Some(flowcredits_store::SCHEMA_VERSION), Some(0)), "{migrated}");

    // A command that only reads does not make a ledger at a mistyped path.
    let typo = dir.file("typo.db");
    for args in [vec!["teams", "list", "--db", &typo], vec!["usage", "--team", "acme", "--db", &typo], vec!["ledger", "verify", "--db", &typo]] {
        let refused = flowcredits(&args);
        assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("no ledger at"), "{args:?}");
    }
    assert!(!Path::new(&typo).exists());
    let unknown = flowcredits(&["usage", "--team", "nobody", "--db", &db]);
    assert!(!unknown.status.success());
    // The refusal says where to look and how to make the team.
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("team `nobody` is not in") && stderr.contains("flowcredits teams create nobody --plan"), "{stderr}");
}
