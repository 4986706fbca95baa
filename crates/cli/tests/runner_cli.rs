//! `flowcredits runner` as a team runs it: the real server and the real runner binaries on a
//! loopback port. A hook call to a private deployment is answered by the runner, and the
//! server's ledger holds the run's credits.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{call, start, wait_for_exit};

#[tokio::test]
async fn a_private_runner_answers_a_hook_call_and_the_server_meters_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base, keys) = start(&dir.path().join("flowcredits.db"), true);
    let (operator, owner) = (keys[0].clone(), keys[1].clone());
    let client = flowcredits_engine::http::client();
    // Private runners are an Enterprise feature; the demo team starts on Team.
    call(&client, Method::PUT, format!("{base}/v1/teams/demo/plan"), &operator, json!({"plan": "enterprise"})).await;
    let before = call(&client, Method::GET, format!("{base}/v1/teams/demo/usage"), &owner, Value::Null).await;
    let registered = call(&client, Method::POST, format!("{base}/v1/teams/demo/runners"), &owner, json!({"name": "laptop"})).await;
    let token = registered["token"].as_str().unwrap().to_owned();
    let flows = call(&client, Method::GET, format!("{base}/v1/teams/demo/flows"), &owner, Value::Null).await;
    let flow_id = flows["items"][0]["id"].as_str().unwrap();
    call(&client, Method::POST, format!("{base}/v1/teams/demo/deployments"), &owner, json!({"flow_id": flow_id, "path": "hello-private", "runs_on": "private"})).await;

    // A wrong token is refused before anything runs, saying what to do.
    let refused = Command::new(env!("CARGO_BIN_EXE_flowcredits")).args(["runner", "--server", &base, "--team", "demo", "--token", "fcr_wrong", "--once"]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused the runner token") && stderr.contains("POST /v1/teams/demo/runners"), "{stderr}");

    let mut runner = Command::new(env!("CARGO_BIN_EXE_flowcredits"))
        .args(["runner", "--server", &base, "--team", "demo", "--token", &token, "--once", "--json", "--wait-s", "25"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<Value>();
    let stdout = runner.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(serde_json::from_str(&line).unwrap_or(Value::String(line)));
        }
    });
    let started = lines_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(started["event"], "started", "{started}");

    let answer = call(&client, Method::POST, format!("{base}/hooks/demo/hello-private"), &owner, json!({"name": "Ada"})).await;
    assert_eq!(answer, json!({"greeting": "Hello, Ada!"}), "the runner's engine ran the flow and its response answered the call");
    let status = wait_for_exit(&mut runner, Duration::from_secs(30));
    let events = lines_until_closed(&lines_rx, Duration::from_secs(30));
    assert!(status.success(), "{status}: {events:?} {}", std::io::read_to_string(runner.stderr.take().unwrap()).unwrap_or_default());
    let finished = events.iter().find(|event| event["event"] == "finished").expect("the runner logs the finished job");
    assert_eq!((finished["state"].clone(), finished["credits"].clone()), (json!("succeeded"), json!(2)), "{events:?}");
    assert!(events.iter().any(|event| event["event"] == "claimed" && event["flow"] == "hello"), "{events:?}");

    // The ledger charged the run at private-runner prices (evaluate and validate, 1 each).
    let after = call(&client, Method::GET, format!("{base}/v1/teams/demo/usage"), &owner, Value::Null).await;
    assert_eq!(after["used"].as_u64().unwrap(), before["used"].as_u64().unwrap() + 2, "{after}");
    let runs = call(&client, Method::GET, format!("{base}/v1/teams/demo/runs?limit=1"), &owner, Value::Null).await;
    assert_eq!((runs["items"][0]["location"].clone(), runs["items"][0]["status"].clone()), (json!("private"), json!("succeeded")), "{runs}");
    let _ = server.kill();
    let _ = server.wait();
}

/// Every line the reader thread passes on until the runner's stdout closes (the thread drops
/// its sender at end of file). The runner having exited does not mean the thread has read its
/// last lines yet: taking only what the channel holds at that moment can miss them.
fn lines_until_closed(lines: &Receiver<Value>, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => out.push(line),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => panic!("the runner's stdout did not close within {limit:?} of its exit; read so far: {out:?}"),
        }
    }
}
