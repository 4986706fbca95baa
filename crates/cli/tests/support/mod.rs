//! Starting the real `flowcredits serve` binary on a loopback port, and a small client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts the server on a port the system picks (a port picked here and passed on could be
/// taken by a parallel test in between) and returns it with its base URL and the keys it
/// printed (operator, then demo owner).
pub fn start(db: &std::path::Path, demo: bool) -> (Child, String, Vec<String>) {
    start_with(db, demo, &[])
}

/// [`start`] with more `serve` arguments.
pub fn start_with(db: &std::path::Path, demo: bool, extra: &[&str]) -> (Child, String, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowcredits"));
    command.args(["serve", "--listen", "127.0.0.1:0"]).arg("--db").arg(db).args(extra).env("FLOWCREDITS_LOG", "warn");
    if demo {
        command.arg("--demo");
    }
    let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let (mut keys, mut base) = (Vec::new(), None);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(key) = line.trim().strip_prefix("fck_") {
            keys.push(format!("fck_{key}"));
        }
        // "Listening on http://127.0.0.1:PORT (API under /v1, …)"
        if let Some(rest) = line.strip_prefix("Listening on ") {
            base = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let base = base.expect("the server printed where it listens");
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, base, keys)
}

pub async fn call(client: &reqwest::Client, method: reqwest::Method, url: String, key: &str, body: Value) -> Value {
    let response = client.request(method, url).bearer_auth(key).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

pub fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
