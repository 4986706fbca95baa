//! `flowcredits run` and `flowcredits estimate` as a user runs them: the real binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn flowcredits(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(args).output().unwrap()
}

/// Writes a flow file for one test and returns its path.
fn flow_file(name: &str, yaml: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("engine_cli_{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"))
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

const COUNTDOWN: &str = r#"
name: countdown
blocks:
  - { id: start, kind: start }
  - { id: times, kind: select, config: { path: n } }
  - { id: loop, kind: repeat }
  - { id: check, kind: if, config: { test: { op: ge, value: 0 } } }
  - { id: ran, kind: display, config: { label: iterations } }
edges:
  - { from: start.input, to: times.value }
  - { from: times.value, to: loop.times }
  - { from: loop.index, to: check.value }
  - { from: loop.done, to: ran.value }
"#;

#[test]
fn run_prints_outputs_and_a_receipt_as_json() {
    let path = flow_file("countdown", COUNTDOWN);
    let output = flowcredits(&["run", path.to_str().unwrap(), "--team", "acme", "--input", r#"{"n": 30}"#, "--cloud-run", "--plan", "free", "--run-id", "r1", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = stdout_json(&output);
    assert_eq!(report["outcome"], "completed", "a running run finishes past Free's 25 credits");
    assert_eq!(report["outputs"], json!([{"at": "ran", "label": "iterations", "value": 30}]));
    assert_eq!(report["total"], 30);
    let checks: Vec<&Value> = report["executions"].as_array().unwrap().iter().filter(|execution| execution["block"] == "check").collect();
    assert_eq!(checks.len(), 30);
    assert_eq!(checks[0], &json!({"id": "r1/loop#0/check", "block": "check", "kind": "if", "credits": 1, "ok": true}));
}

#[test]
fn run_prints_a_readable_receipt() {
    let path = flow_file("countdown_text", COUNTDOWN);
    let output = flowcredits(&["run", path.to_str().unwrap(), "--team", "acme", "--input", r#"{"n": 2}"#, "--run-id", "r2"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("run r2 of flow `countdown` for team acme: completed"), "{text}");
    assert!(text.contains("iterations (ran): 2"), "a labelled value says where it was shown: {text}");
    assert!(text.lines().any(|line| line.contains("r2/loop#1/check") && line.contains("if") && line.trim_end().ends_with('0')), "{text}");
    assert!(text.lines().last().unwrap().contains("0 credits"), "{text}");
}

#[test]
fn an_invalid_flow_lists_every_problem_and_fails() {
    let path = flow_file("invalid", "name: bad\nblocks:\n  - { id: a, kind: select }\n  - { id: b, kind: nope }\n");
    let output = flowcredits(&["run", path.to_str().unwrap(), "--team", "acme"]);
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("block `a`, config.path: missing") && error.contains("block `b`, kind: unknown block kind `nope`") && error.contains("fix these"), "{error}");
}

#[test]
fn bad_arguments_say_what_to_do() {
    let path = example("health-check");
    // A bad value is a usage error (status 2) whether clap or the command finds it.
    // JSON input may be a negative number, which looks like an option.
    let negative = flowcredits(&["run", &path, "--team", "acme", "--input", "-1", "--json"]);
    assert!(negative.status.success(), "{}", String::from_utf8_lossy(&negative.stderr));
    let output = flowcredits(&["run", &path, "--team", "acme", "--input", "{oops"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--input is not JSON"));
    // With --json, a script reads the error from stdout too.
    let output = flowcredits(&["run", &path, "--team", "acme", "--input", "{oops", "--json"]);
    let refused: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON error on stdout");
    assert_eq!(refused["exit_code"], 2, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("--input is not JSON"), "{refused}");
    let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
    let output = flowcredits(&["run", &path, "--team", "acme", "--input", &deep]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--input is nested more than 128 levels deep"), "{}", String::from_utf8_lossy(&output.stderr));
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("l.db");
    let ledger = ledger.to_str().unwrap();
    for args in [
        vec!["run", path.as_str(), "--team", "acme", "--config", "x"],
        vec!["run", path.as_str(), "--team", "acme", "--plan", "gold"],
        vec!["teams", "create", "acme", "--plan", "gold", "--db", ledger],
        vec!["teams", "create", "acme", "--plan", "free", "--payg", "--db", ledger],
        vec!["teams", "create", "acme", "--plan", "free", "--payg-cap-usd", "5", "--db", ledger],
        vec!["run", path.as_str(), "--team", "acme", "--plan", "team", "--db", ledger],
    ] {
        let output = flowcredits(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // An unknown model is a problem of the flow file, named by block and field, said once.
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.yaml");
    std::fs::write(&agent, "name: m\nblocks:\n  - { id: start, kind: start }\n  - { id: think, kind: ai_agent, config: { model: gpt-99 } }\nedges:\n  - { from: start.input, to: think.prompt }\n").unwrap();
    let output = flowcredits(&["estimate", agent.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("block `think`, config.model: unknown model `gpt-99`") && stderr.matches("gpt-99").count() == 1, "{stderr}");
    // Every block with an unknown model is named at once, as other problems of the file are.
    std::fs::write(&agent, "name: m\nblocks:\n  - { id: start, kind: start }\n  - { id: think, kind: ai_agent, config: { model: gpt-99 } }\n  - { id: img, kind: ai_media, config: { model: gpt-image-9 } }\nedges:\n  - { from: start.input, to: think.prompt }\n  - { from: start.input, to: img.prompt }\n").unwrap();
    let stderr = String::from_utf8_lossy(&flowcredits(&["estimate", agent.to_str().unwrap()]).stderr).into_owned();
    assert!(stderr.contains("fix these and try again") && stderr.contains("`gpt-99`") && stderr.contains("block `img`, config.model: unknown model `gpt-image-9`"), "{stderr}");
    // `run` says the same, with the models the price book has.
    let stderr = String::from_utf8_lossy(&flowcredits(&["run", agent.to_str().unwrap(), "--team", "t"]).stderr).into_owned();
    assert!(stderr.contains("fix these and try again") && stderr.contains("unknown model `gpt-99` for ai_agent; the price book lists: ") && stderr.contains("gpt-5") && stderr.contains("block `img`, config.model: unknown model `gpt-image-9`"), "{stderr}");
    let output = flowcredits(&["estimate", &path, "--trigger", "api", "--cloud-run"]);
    assert_eq!(output.status.code(), Some(2), "a bad combination is a usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("drop --cloud-run"));
    // A value outside the list is a usage error, as clap reports them (status 2).
    let output = flowcredits(&["estimate", &path, "--trigger", "cron"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("possible values: manual, api, mcp"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn estimate_reports_needs_credits_and_costs() {
    let output = flowcredits(&["estimate", &example("health-check"), "--trigger", "api", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let estimate = stdout_json(&output);
    assert_eq!(estimate["needs_credits"], true);
    assert_eq!(estimate["exact"], Value::Null);
    assert_eq!(estimate["minimum"], 0);
    assert_eq!(estimate["per_iteration"], json!([{"loop": "retry", "credits": 2}]));
    let local = stdout_json(&flowcredits(&["estimate", &example("user-names"), "--json"]));
    assert_eq!((local["needs_credits"].clone(), local["exact"].clone()), (json!(false), json!(0)));
}

#[test]
fn run_with_db_meters_against_the_durable_ledger_and_pauses_at_the_limit() {
    let db = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("engine_cli_{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let db = db.to_str().unwrap();
    let path = flow_file("db_countdown", COUNTDOWN);
    let path = path.to_str().unwrap();
    // A mistyped ledger path makes no empty ledger; a team not in the ledger says how to add it.
    let missing = flowcredits(&["run", path, "--team", "acme", "--db", db]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no ledger at"), "{}", String::from_utf8_lossy(&missing.stderr));
    assert!(!std::path::Path::new(db).exists());
    assert!(flowcredits(&["teams", "create", "acme", "--plan", "free", "--db", db]).status.success());
    let stranger = flowcredits(&["run", path, "--team", "zeta", "--db", db]);
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("create it first: flowcredits teams create zeta"), "{}", String::from_utf8_lossy(&stranger.stderr));
    assert_eq!(stranger.status.code(), Some(2), "a team not in the ledger is a bad --team, as the help says");
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("--team"), "{}", String::from_utf8_lossy(&stranger.stderr));
    let first = flowcredits(&["run", path, "--team", "acme", "--db", db, "--input", r#"{"n": 30}"#, "--cloud-run", "--run-id", "d1", "--json"]);
    assert_eq!(stdout_json(&first)["total"], 30, "the first run finishes past Free's 25 credits");
    let second = flowcredits(&["run", path, "--team", "acme", "--db", db, "--input", r#"{"n": 1}"#, "--cloud-run", "--run-id", "d2", "--json"]);
    assert_eq!(second.status.code(), Some(3));
    let report = stdout_json(&second);
    assert_eq!((report["outcome"].clone(), report["executions"].clone()), (json!("paused"), json!([])));
    // Free has neither pay-as-you-go nor purchases: the one way back is the next period.
    assert_eq!(report["error"], "the team has no credits left; run it again when they return (wait for the next billing period)", "{report}");
    let local = flowcredits(&["run", path, "--team", "acme", "--db", db, "--input", r#"{"n": 1}"#, "--run-id", "d3", "--json"]);
    assert_eq!(stdout_json(&local)["outcome"], "completed", "a local run needs no credits");
}
