//! Starting the real `flowcredits serve` binary on a loopback port, and a small client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the server and returns it with the keys it printed (operator, then demo owner).
pub fn start(db: &std::path::Path, port: u16, demo: bool) -> (Child, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowcredits"));
    command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]).arg("--db").arg(db).env("FLOWCREDITS_LOG", "warn");
    if demo {
        command.arg("--demo");
    }
    let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut keys = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(key) = line.trim().strip_prefix("fck_") {
            keys.push(format!("fck_{key}"));
        }
        if line.starts_with("Listening on") {
            break;
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, keys)
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
