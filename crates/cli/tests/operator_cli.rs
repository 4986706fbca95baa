//! What an operator of `flowcredits serve` relies on, against the real binary on loopback: a
//! health check that tells when the ledger can no longer write, `migrate` refusing a database a
//! server holds, and logs that are JSON throughout with `--log-json`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::wait_for_exit;

/// A `serve` process with every stderr line it wrote so far.
struct Server {
    child: Child,
    base: String,
    keys: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `serve --demo` on a port the system picks, with `env` added. `json_log` says how
    /// to read its stderr: JSON lines, or the plain text of the default.
    fn start(db: &Path, extra: &[&str], env: &[(&str, &std::ffi::OsStr)], json_log: bool) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowcredits"));
        command.args(["serve", "--demo", "--listen", "127.0.0.1:0"]).arg("--db").arg(db).args(extra).env("FLOWCREDITS_LOG", "warn");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut keys, mut base, mut seen) = (Vec::new(), None, Vec::new());
        while base.is_none() {
            let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the server did not say where it listens; it wrote:\n{}", seen.join("\n")));
            let text = if json_log { serde_json::from_str::<Value>(&line).map(|value| value["fields"]["message"].as_str().unwrap_or_default().to_owned()).unwrap_or_default() } else { line.clone() };
            if json_log {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    keys.extend(value["fields"]["api_key"].as_str().map(str::to_owned));
                }
            } else if let Some(key) = line.trim().strip_prefix("fck_") {
                keys.push(format!("fck_{key}"));
            }
            if let Some(rest) = text.strip_prefix("Listening on ") {
                base = rest.split_whitespace().next().map(str::to_owned);
            }
            seen.push(line);
        }
        let (sender, replay) = mpsc::channel();
        for line in seen {
            sender.send(line).unwrap();
        }
        std::thread::spawn(move || lines.iter().for_each(|line| drop(sender.send(line))));
        Server { child, base: base.unwrap(), keys, lines: replay }
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> (u16, String) {
        let response = client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn hook(&self, client: &reqwest::Client, path: &str) -> (u16, Value) {
        let response = client.post(format!("{}/hooks/demo/{path}", self.base)).bearer_auth(&self.keys[1]).json(&json!({"name": "Ada"})).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// SIGTERM, then every line it wrote.
    fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let status = wait_for_exit(&mut self.child, Duration::from_secs(30));
        // The reader threads end with the pipe; what they hold is all there is.
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        (status, lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

/// A library preloaded into `serve` whose `fdatasync` fails with EIO for one file once a marker
/// file exists: the disk failing under a running server. Built with the C compiler the bundled
/// SQLite needs anyway.
fn failing_fdatasync_library(dir: &Path) -> PathBuf {
    let source = dir.join("failing_fdatasync.c");
    std::fs::write(
        &source,
        r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *victim = getenv("FAIL_FDATASYNC_OF");
    const char *marker = getenv("FAIL_FDATASYNC_WHEN");
    if (victim && marker && access(marker, F_OK) == 0) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t length = readlink(link, target, sizeof target - 1);
        if (length > 0) {
            target[length] = 0;
            if (strcmp(target, victim) == 0) {
                errno = EIO;
                return -1;
            }
        }
    }
    return real(fd);
}
"#,
    )
    .unwrap();
    let library = dir.join("failing_fdatasync.so");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&compiler).args(["-shared", "-fPIC", "-o"]).arg(&library).arg(&source).arg("-ldl").status().unwrap_or_else(|err| panic!("cannot run the C compiler `{compiler}`: {err}"));
    assert!(built.success(), "building the fdatasync shim failed");
    library
}

/// The disk stops confirming the ledger's writes: runs are refused, `/healthz` answers 503
/// saying what is wrong and what to do, `/metrics` shows the ledger unwritable, and it stays so
/// (what the file holds is unknown) until a restart, which is healthy again.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn healthz_fails_once_the_ledger_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = std::fs::canonicalize(dir.path()).unwrap();
    let db = dir_path.join("flowcredits.db");
    let library = failing_fdatasync_library(&dir_path);
    let marker = dir_path.join("disk-broken");
    let wal = dir_path.join("flowcredits.db-wal");
    let env = [("LD_PRELOAD", library.as_os_str()), ("FAIL_FDATASYNC_OF", wal.as_os_str()), ("FAIL_FDATASYNC_WHEN", marker.as_os_str())];
    let server = Server::start(&db, &[], &env, false);
    let client = flowcredits_engine::http::client();
    assert_eq!(server.get(&client, "/healthz").await.0, 200);
    assert_eq!(server.hook(&client, "hello").await.0, 200);
    let (_, metrics) = server.get(&client, "/metrics").await;
    assert_eq!(metric(&metrics, "flowcredits_ledger_writable").as_deref(), Some("1"), "{metrics}");

    std::fs::write(&marker, b"").unwrap();
    let (status, answer) = server.hook(&client, "hello").await;
    assert_eq!(status, 500, "a run whose admission the disk did not confirm is not answered as done: {answer}");
    let (status, health) = server.get(&client, "/healthz").await;
    assert_eq!(status, 503, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!((health["status"].as_str(), health["problem"].as_str()), (Some("failing"), Some("ledger_not_writable")), "{health}");
    assert!(health["message"].as_str().unwrap().contains("fdatasync"), "the cause is named: {health}");
    assert!(health["action"].as_str().unwrap().contains("restart the server"), "{health}");
    let (_, metrics) = server.get(&client, "/metrics").await;
    assert_eq!(metric(&metrics, "flowcredits_ledger_writable").as_deref(), Some("0"), "{metrics}");

    // The disk answers again, but the server cannot know what it kept: still refused.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(server.hook(&client, "hello").await.0, 500);
    assert_eq!(server.get(&client, "/healthz").await.0, 503);
    let keys = server.keys.clone();
    drop(server);

    // Restarted, it reads back what the disk holds and takes runs again.
    let mut server = Server::start(&db, &[], &env, false);
    server.keys = keys;
    let client = flowcredits_engine::http::client();
    assert_eq!(server.get(&client, "/healthz").await.0, 200);
    assert_eq!(server.hook(&client, "hello").await.0, 200);
}

/// `migrate` on the database a running server holds is refused (exit 2) naming the file and
/// saying to stop the server; with `--json` the error is JSON on stdout. Once the server is
/// stopped, it migrates.
#[tokio::test]
async fn migrate_refuses_a_database_a_server_is_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    let server = Server::start(&db, &[], &[], false);
    let migrate = |extra: &[&str]| Command::new(env!("CARGO_BIN_EXE_flowcredits")).arg("migrate").arg("--db").arg(&db).args(extra).output().unwrap();

    let refused = migrate(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()) && stderr.contains("stop the server first"), "{stderr}");

    let refused = migrate(&["--json"]);
    assert_eq!(refused.status.code(), Some(2));
    let error: Value = serde_json::from_slice(&refused.stdout).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&refused.stdout)));
    assert_eq!(error["exit_code"], 2, "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(message.contains(&db.display().to_string()) && message.contains("stop the server first"), "{error}");

    drop(server);
    let migrated = migrate(&["--json"]);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let migrated: Value = serde_json::from_slice(&migrated.stdout).unwrap();
    assert_eq!(migrated["migrations_applied"], 0, "the server had migrated it already: {migrated}");
}

/// With `--log-json`, every line `serve` writes to stderr is JSON, from the one-time keys to
/// the stop, and a run's lines carry its team and run as fields.
#[tokio::test]
async fn log_json_writes_only_json_and_names_each_runs_team_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowcredits.db");
    let filter = std::ffi::OsString::from("info,flowcredits_server=debug");
    let server = Server::start(&db, &["--log-json"], &[("FLOWCREDITS_LOG", &filter)], true);
    assert_eq!(server.keys.len(), 2, "the operator's and the demo owner's keys, as fields");
    let client = flowcredits_engine::http::client();
    let started: Value = client.post(format!("{}/hooks/demo/hello?async=true", server.base)).bearer_auth(&server.keys[1]).json(&json!({"name": "Ada"})).send().await.unwrap().json().await.unwrap();
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        let run: Value = client.get(format!("{}/v1/teams/demo/runs/{run_id}", server.base)).bearer_auth(&server.keys[1]).send().await.unwrap().json().await.unwrap();
        if run["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let (status, lines) = server.stop();
    assert!(status.success(), "{status}");
    let events: Vec<Value> = lines.iter().map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("a line on stderr is not JSON ({err}): {line}"))).collect();
    let messages: Vec<&str> = events.iter().filter_map(|event| event["fields"]["message"].as_str()).collect();
    assert!(messages.iter().any(|message| message.starts_with("Stopping:")), "{messages:?}");
    let of_run = |message: &str| events.iter().any(|event| event["fields"]["message"] == message && event["fields"]["team"] == "demo" && event["fields"]["run"] == run_id.as_str());
    assert!(of_run("a run was admitted") && of_run("a run ended"), "the run's admission and end name its team and run:\n{}", lines.join("\n"));
}
