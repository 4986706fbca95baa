//! `flowcredits simulate` as a user runs it: the real binary, files and exit statuses.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn flowcredits(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowcredits"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A command that refuses its arguments exits without reading its input: that is a
        // closed pipe here, not a failure of the test.
        if let Err(err) = input.write_all(text.as_bytes()) {
            assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn simulate_text(scenario: &str) -> Output {
    flowcredits(&["simulate", "-"], Some(scenario))
}

#[test]
fn a_scenario_file_prints_one_json_report() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scenarios/design_example.json");
    let output = flowcredits(&["simulate", path], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["runs"]["r1"]["credits"], 14);
    assert_eq!(report["periods"][0]["payg_amount_usd"], "0.000");
    assert_eq!(report["rejected"][0]["reason"], "plan team cannot buy credits");
}

#[test]
fn malformed_scenarios_exit_2_with_one_line_naming_step_and_field() {
    let start = |blocks: &str| format!(r#"{{"at":"2026-03-02T10:00:00Z","op":"start_run","run":"r1","trigger":"manual","blocks":{blocks}}}"#);
    let team = |team: &str, steps: &[String]| format!(r#"{{"team":{team},"steps":[{}]}}"#, steps.join(","));
    let plain = |steps: &[String]| team(r#"{"plan":"team"}"#, steps);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "scenario: invalid JSON"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"teleport"}"#.into()]), "step 0: field `op`: unknown op `teleport`"),
        (plain(&[start(r#"[{"type":"warp_drive"}]"#)]), "step 0: field `blocks[0].type`: unknown block kind `warp_drive`"),
        (plain(&[start(r#"[{"type":"ai_agent","model":"gpt-9"}]"#)]), "step 0: field `blocks[0].model`: unknown model `gpt-9` for ai_agent"),
        (plain(&[start("[]"), r#"{"at":"2026-03-02T10:00:01Z","op":"block","run":"r1","type":"ai_agent","model":"gpt-5","external_mcp_tools":["search",""]}"#.into()]), "step 1: field `external_mcp_tools[1]`: is empty; a tool is named"),
        (plain(&[start("[]"), r#"{"at":"2026-03-02T10:00:01Z","op":"block","run":"r1","type":"ai_media"}"#.into()]), "step 1: field `model`: ai_media needs a model"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"set_payg"}"#.into()]), "step 0: field `enabled`: is missing"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"purchase","credits":"ten"}"#.into()]), "step 0: field `credits`: must be a whole number above 0"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"set_payg","enabled":true}"#.into(), r#"{"at":"2026-03-01T10:00:00Z","op":"set_payg","enabled":false}"#.into()]), "step 1: field `at`: 2026-03-01T10:00:00Z is earlier than the step before it"),
        (plain(&[start("[]"), start("[]")]), "step 1: field `run`: run r1 was already started at step 0"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"end_run","run":"ghost"}"#.into()]), "step 0: field `run`: run ghost is not started by any earlier step"),
        (team(r#"{"plan":"team","anchor_day":29}"#, &[]), "field `team.anchor_day`: anchor day 29 is outside 1 to 28"),
        (team(r#"{"plan":"free","payg":true}"#, &[]), "field `team.payg`: plan free has no pay-as-you-go"),
        (team(r#"{"plan":"platinum"}"#, &[]), "field `team.plan`: unknown plan `platinum`"),
        (plain(&[r#"{"at":"2025-12-31T23:00:00Z","op":"set_payg","enabled":true}"#.into()]), "step 0: field `at`: no price is in force at 2025-12-31T23:00:00Z"),
        (plain(&[r#"{"at":"9999-12-15T00:00:00Z","op":"set_payg","enabled":true}"#.into()]), "step 0: field `at`: 9999-12-15T00:00:00Z is later than the latest instant flowcredits handles"),
        (plain(&[r#"{"at":"2026-03-02T10:00:00Z","op":"set_payg","enabled":true,"enable":true}"#.into()]), "step 0: field `enable`: unknown field"),
        (r#"{"team":{"plan":"team"}}"#.into(), "field `steps`: is missing"),
    ];
    for (scenario, message) in cases {
        let output = simulate_text(&scenario);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{scenario}\n{stderr}");
        assert!(stderr.starts_with(&format!("error: {message}")), "expected {message:?}, got {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(output.stdout.is_empty(), "nothing is printed for a malformed scenario");
    }
}

#[test]
fn a_missing_file_is_a_plain_failure_not_a_malformed_scenario() {
    let output = flowcredits(&["simulate", "/nonexistent/scenario.json"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot open scenario /nonexistent/scenario.json"));
}

#[test]
fn help_documents_the_format() {
    let output = flowcredits(&["simulate", "--help"], None);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in ["start_run", "external_mcp_tools", "payg_amount_usd", "rejected", "EXIT STATUS"] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

/// `--plans` and `--price-book` are offered by the commands that price, and only by them: a
/// private runner and the benchmarks take the server's or the shipped prices.
#[test]
fn only_commands_that_price_take_other_plans_or_prices() {
    for command in [vec!["simulate"], vec!["run"], vec!["estimate"], vec!["serve"], vec!["teams", "list"], vec!["usage"], vec!["invoices"], vec!["ledger", "verify"]] {
        let help = flowcredits(&[command.as_slice(), &["--help"]].concat(), None);
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("--plans <PATH>") && help.contains("--price-book <PATH>"), "{command:?} --help: {help}");
    }
    for command in [vec!["runner"], vec!["bench", "server"], vec!["migrate"]] {
        let refused = flowcredits(&[command.as_slice(), &["--plans", "plans.toml"]].concat(), None);
        assert_eq!(refused.status.code(), Some(2), "{command:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("unexpected argument '--plans'"), "{command:?}: {}", String::from_utf8_lossy(&refused.stderr));
    }
    // Where it is offered, it is used.
    let missing = flowcredits(&["simulate", "--plans", "/nonexistent/plans.toml", "-"], Some("{}"));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read plans file /nonexistent/plans.toml"), "{}", String::from_utf8_lossy(&missing.stderr));
}

/// `flowcredits … | head` closes the output early: the command ends quietly, as Unix tools do,
/// instead of panicking with a backtrace.
#[cfg(unix)]
#[test]
fn a_closed_output_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios/payg_billing.json");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_flowcredits")).arg("simulate").arg(&scenario).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(13), "ended by SIGPIPE, as `yes | head` ends: {:?}", output.status);
}
