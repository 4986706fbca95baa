//! `flowcredits serve` as an operator runs it: the real binary on a loopback port, stopped with
//! SIGTERM while a flow is running. The flow finishes and is recorded before the process exits.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{call, start, start_with, wait_for_exit};

/// Deploys a flow at `slow` that waits `delay_ms` before answering.
async fn deploy_slow(client: &reqwest::Client, base: &str, owner: &str, delay_ms: u64) {
    let slow = json!({
        "name": "slow",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "wait", "kind": "delay", "config": {"ms": delay_ms}}, {"id": "reply", "kind": "response"}],
        "edges": [{"from": "request.body", "to": "wait.value"}, {"from": "wait.value", "to": "reply.body"}]
    });
    let flow = call(client, reqwest::Method::POST, format!("{base}/v1/teams/demo/flows"), owner, json!({"name": "slow", "definition": slow})).await;
    let flow_id = flow["id"].as_str().unwrap();
    call(client, reqwest::Method::POST, format!("{base}/v1/teams/demo/flows/{flow_id}/snapshots"), owner, Value::Null).await;
    call(client, reqwest::Method::POST, format!("{base}/v1/teams/demo/deployments"), owner, json!({"flow_id": flow_id, "path": "slow"})).await;
}

#[tokio::test]
async fn a_run_cut_off_by_a_crash_is_recorded_as_interrupted_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    let (mut server, base, keys) = start(&db, true);
    let owner = keys[1].clone();
    let client = flowcredits_engine::http::client();
    deploy_slow(&client, &base, &owner, 60_000).await;
    let started = call(&client, reqwest::Method::POST, format!("{base}/hooks/demo/slow?async=true"), &owner, json!({})).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut again, base, _) = start(&db, false);
    let client = flowcredits_engine::http::client();
    let run = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/runs/{run_id}"), &owner, Value::Null).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("interrupted"), "{run}");
    let _ = again.kill();
    let _ = again.wait();
}

#[tokio::test]
async fn sigterm_lets_running_flows_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    let (mut server, base, keys) = start(&db, true);
    assert_eq!(keys.len(), 2, "an operator key and the demo owner's key are printed once");
    let owner = &keys[1];
    let client = flowcredits_engine::http::client();
    deploy_slow(&client, &base, owner, 1_500).await;
    let started = call(&client, reqwest::Method::POST, format!("{base}/hooks/demo/slow?async=true"), owner, json!({"n": 1})).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();

    let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = wait_for_exit(&mut server, Duration::from_secs(30));
    assert!(status.success(), "the server exits cleanly after draining: {status}");

    // Started again on the same database: the run completed before the first server exited.
    let (mut again, base, keys) = start(&db, false);
    assert!(keys.is_empty(), "no new operator key once one exists");
    // A new client: the old one's pooled connections went with the old process.
    let client = flowcredits_engine::http::client();
    let run = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/runs/{run_id}"), owner, Value::Null).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({}), "{run}");
    let _ = again.kill();
    let _ = again.wait();
}

#[tokio::test]
async fn a_local_run_is_metered_against_the_servers_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base, keys) = start(&dir.path().join("flowcredits.db"), true);
    let owner = keys[1].clone();
    let flow = dir.path().join("double.yaml");
    std::fs::write(
        &flow,
        "name: double\nblocks:\n  - { id: start, kind: start }\n  - { id: twice, kind: evaluate, config: { code: \"return input * 2;\" } }\n  - { id: show, kind: display, config: { label: doubled } }\nedges:\n  - { from: start.input, to: twice.input }\n  - { from: twice.result, to: show.value }\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowcredits"));
        command.arg("run").arg(&flow).args(["--team", "demo", "--server", &base, "--key", &owner, "--input", "21", "--json"]).args(extra);
        command.output().unwrap()
    };
    // On the local canvas an evaluate block is free; with Cloud Run it costs 1.
    let local = run(&[]);
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let local: Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(local["total"], 0, "{local}");
    let cloud = run(&["--cloud-run"]);
    assert!(cloud.status.success(), "{}", String::from_utf8_lossy(&cloud.stderr));
    let cloud: Value = serde_json::from_slice(&cloud.stdout).unwrap();
    assert_eq!(cloud["total"], 1, "{cloud}");

    let client = flowcredits_engine::http::client();
    let usage = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/usage"), &owner, Value::Null).await;
    assert_eq!(usage["used"], 7, "the demo's 6 credits and the cloud run's 1: {usage}");
    let runs = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/runs?trigger=manual"), &owner, Value::Null).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 2, "{runs}");
    // The receipt names the run as the server knows it, and the server records it under the
    // flow's name, not the file's path.
    let run_id = cloud["run"].as_str().unwrap();
    assert!(run_id.starts_with("run_"), "{cloud}");
    assert_eq!(cloud["executions"][1]["id"], format!("{run_id}/twice"), "{cloud}");
    let recorded = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/runs/{run_id}"), &owner, Value::Null).await;
    assert_eq!((recorded["credits"].clone(), recorded["flow_id"].clone()), (json!(1), json!("double")), "{recorded}");
    // With what it was given and what it showed, as a server run's history has them.
    assert_eq!((recorded["status"].clone(), recorded["input"].clone(), recorded["output"].clone()), (json!("succeeded"), json!(21), json!({"doubled": 42})), "{recorded}");
    // A wrong key is refused before anything runs.
    let refused = Command::new(env!("CARGO_BIN_EXE_flowcredits")).arg("run").arg(&flow).args(["--team", "demo", "--server", &base, "--key", "fck_wrong"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not know --key"), "{}", String::from_utf8_lossy(&refused.stderr));
    // Arguments that cannot work are refused before anything is sent (exit 2), naming the flag.
    let run_with = |extra: &[&str]| Command::new(env!("CARGO_BIN_EXE_flowcredits")).arg("run").arg(&flow).args(["--team", "demo"]).args(extra).output().unwrap();
    for (extra, flag) in [
        (vec!["--server", base.trim_start_matches("http://"), "--key", owner.as_str()], "--server: `"),
        (vec!["--server", base.as_str(), "--key", owner.as_str(), "--run-id", "mine"], "--run-id is for runs without --server"),
        (vec!["--server", base.as_str(), "--key", "fcr_runner"], "--key is a private runner's token"),
        (vec!["--server", base.as_str()], "--key <KEY>"),
    ] {
        let refused = run_with(&extra);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(flag), "{extra:?}: {stderr}");
    }
    // A server that is not there: the cause, and what to check.
    let unreachable = run_with(&["--server", "http://127.0.0.1:9", "--key", owner.as_str()]);
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot reach the server at http://127.0.0.1:9") && stderr.contains("check that `flowcredits serve` is running there"), "{stderr}");
    // A key in the environment is for `--server` runs; others run as before.
    let here = Command::new(env!("CARGO_BIN_EXE_flowcredits")).arg("run").arg(&flow).args(["--team", "demo", "--json"]).env("FLOWCREDITS_KEY", "fck_for_servers").output().unwrap();
    assert!(here.status.success(), "{}", String::from_utf8_lossy(&here.stderr));
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn a_server_that_cannot_start_says_why_before_making_any_account() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base, _) = start(&dir.path().join("flowcredits.db"), false);
    let address = base.trim_start_matches("http://").to_owned();
    // The address is taken: nothing is created, no key is printed.
    let other = dir.path().join("other.db");
    let taken = Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(["serve", "--demo", "--listen", &address]).arg("--db").arg(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success() && stderr.contains(&format!("cannot listen on {address}")) && !stderr.contains("fck_"), "{stderr}");
    assert!(!other.exists(), "no database was made");
    // The database is served already: said plainly, not "internal error".
    let locked = Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(["serve", "--listen", "127.0.0.1:0"]).arg("--db").arg(dir.path().join("flowcredits.db")).output().unwrap();
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(!locked.status.success() && stderr.contains("locked") && !stderr.contains("internal error"), "{stderr}");
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn an_interrupted_local_run_is_cancelled_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base, keys) = start(&dir.path().join("flowcredits.db"), true);
    let owner = keys[1].clone();
    let flow = dir.path().join("long.yaml");
    std::fs::write(
        &flow,
        "name: long\nblocks:\n  - { id: start, kind: start }\n  - { id: wait, kind: delay, config: { ms: 60000 } }\n  - { id: show, kind: display }\nedges:\n  - { from: start.input, to: wait.value }\n  - { from: wait.value, to: show.value }\n",
    )
    .unwrap();
    let mut local = Command::new(env!("CARGO_BIN_EXE_flowcredits"))
        .arg("run")
        .arg(&flow)
        .args(["--team", "demo", "--server", &base, "--key", &owner])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = flowcredits_engine::http::client();
    let running = format!("{base}/v1/teams/demo/runs?trigger=manual&status=running");
    let mut run_id = None;
    for _ in 0..200 {
        let runs = call(&client, reqwest::Method::GET, running.clone(), &owner, Value::Null).await;
        if let Some(id) = runs["items"][0]["id"].as_str() {
            run_id = Some(id.to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = run_id.expect("the local run was admitted by the server");
    // SAFETY: sending a signal to a child process this test started.
    unsafe { libc::kill(local.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for_exit(&mut local, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(local.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("run {run_id} was cancelled on the server")), "{stderr}");
    let recorded = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/demo/runs/{run_id}"), &owner, Value::Null).await;
    assert_eq!(recorded["status"], "cancelled", "{recorded}");
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn an_open_request_does_not_keep_a_stopping_server_past_its_drain_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base, _) = start_with(&dir.path().join("flowcredits.db"), false, &["--drain-timeout-s", "1"]);
    // A client that sends half a body and waits: the server must not wait for it for ever.
    let mut slow = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    std::io::Write::write_all(&mut slow, b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    // Well past the drain time, far short of the client giving up.
    let status = wait_for_exit(&mut server, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "a stop that cut something off is not a clean exit: {status}");
    drop(slow);
}

fn days_from_now(days: i64) -> flowcredits_core::Timestamp {
    let (now, span) = (flowcredits_core::Timestamp::now(), Duration::from_secs(days.unsigned_abs() * 86_400));
    if days < 0 { now.checked_sub(span) } else { now.checked_add(span) }.unwrap()
}

/// Writes a scenario for team `sim` (Enterprise): run `old-run` 40 days ago (one HTTP request)
/// and, then, 30 credits bought to last a year; replays it into `db` with `simulate --db`.
fn simulate_last_months_run_and_a_purchase(db: &std::path::Path) {
    let days = |days: i64| days_from_now(days).to_string();
    let scenario = json!({
        "team": {"plan": "enterprise"},
        "steps": [
            {"at": days(-40), "op": "start_run", "run": "old-run", "trigger": "api", "cloud_run": false, "blocks": [{"type": "http_request"}]},
            {"at": days(-40), "op": "block", "run": "old-run", "type": "http_request"},
            {"at": days(-40), "op": "end_run", "run": "old-run"},
            {"at": days(-40), "op": "purchase", "credits": 30, "expires_at": days(365)},
        ],
    });
    let file = db.with_file_name("scenario.json");
    std::fs::write(&file, scenario.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(["simulate", "--team", "sim", "--db"]).arg(db).arg(&file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn flowcredits_ok(args: &[&str], db: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(args).arg("--db").arg(db).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `usage` of an ended period calls its unused allowance expired, not the purchased credits
/// still usable, and its `--json` is what the API answers for the same period.
#[tokio::test]
async fn usage_of_an_ended_period_tells_expired_allowance_from_usable_purchases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    simulate_last_months_run_and_a_purchase(&db);
    let label = days_from_now(-40).strftime("%Y-%m").to_string();

    let from_cli: Value = serde_json::from_str(&flowcredits_ok(&["usage", "--team", "sim", "--period", &label, "--json"], &db)).unwrap();
    let included_used = from_cli["included_used"].as_u64().unwrap();
    assert!(included_used > 0, "{from_cli}");
    assert_eq!((from_cli["remaining"].clone(), from_cli["purchased_remaining"].clone()), (json!(30), json!(30)), "the unused allowance expired: {from_cli}");
    let text = flowcredits_ok(&["usage", "--team", "sim", "--period", &label], &db);
    let expired = 500 - included_used;
    assert!(text.contains(&format!("; {expired} expired, 30 purchased still usable\n")), "{text}");

    let (mut server, base, keys) = start(&db, false);
    let client = flowcredits_engine::http::client();
    let from_api = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/sim/usage?period={label}"), &keys[0], Value::Null).await;
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(from_api, from_cli, "the API and usage --json agree on the same period");
}

/// A team replayed with `simulate --db` and then served: its simulated run is in the runs list
/// (in time order, under the server's kind of id, naming the ledger's run) and under the same
/// placeholder flow id in usage by flow, which names it; the list filtered by that id finds it.
#[tokio::test]
async fn simulated_runs_are_listed_and_counted_under_the_ledger_placeholder_flow() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    simulate_last_months_run_and_a_purchase(&db);
    let label = days_from_now(-40).strftime("%Y-%m").to_string();
    let (mut server, base, keys) = start(&db, false);
    let client = flowcredits_engine::http::client();
    let get = |path: String| call(&client, reqwest::Method::GET, format!("{base}{path}"), &keys[0], Value::Null);
    let runs = get("/v1/teams/sim/runs".into()).await;
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{runs}");
    let run = &items[0];
    assert!(run["id"].as_str().unwrap().starts_with("run_"), "{run}");
    assert!(run["error"].as_str().unwrap().contains("`old-run`"), "the ledger's name for it: {run}");
    let flow_id = run["flow_id"].as_str().unwrap().to_owned();
    assert_eq!(flow_id, "(ledger)", "{run}");
    let by_flow = get(format!("/v1/teams/sim/usage/flows?period={label}")).await;
    let flows = by_flow["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{by_flow}");
    assert_eq!((flows[0]["flow_id"].as_str(), flows[0]["runs"].as_u64(), flows[0]["credits"].clone()), (Some(flow_id.as_str()), Some(1), run["credits"].clone()), "{by_flow}");
    assert!(flows[0]["name"].as_str().is_some_and(|name| name.contains("ledger")), "{by_flow}");
    let filtered = get(format!("/v1/teams/sim/runs?flow_id={}", "%28ledger%29")).await;
    assert_eq!(filtered["items"][0]["id"], run["id"], "{filtered}");
    let one = get(format!("/v1/teams/sim/runs/{}", run["id"].as_str().unwrap())).await;
    assert_eq!(one["flow_id"], "(ledger)", "{one}");
    let _ = server.kill();
    let _ = server.wait();

    // Started again, the server finds the run recorded and records it no second time.
    let (mut again, base, _) = start(&db, false);
    let runs = call(&client, reqwest::Method::GET, format!("{base}/v1/teams/sim/runs"), &keys[0], Value::Null).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "{runs}");
    let _ = again.kill();
    let _ = again.wait();
}
