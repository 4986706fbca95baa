//! `flowcredits bench server`: hook calls per second and their latency on loopback, for a
//! deployed flow of three priced blocks (admission, three charges, end, history), beside a
//! baseline of the same load on `/healthz` (routing, one database read) in the same run.
//! Server and load generator share this machine's cores, as they would with `wrk`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowcredits_core::Rules;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct BenchServerArgs {
    /// Seconds each load phase lasts.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One request every caller makes, and what a load phase measured.
struct Phase {
    requests: usize,
    failures: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    /// Processor time this process (server and load generator) spent in the phase, when the
    /// system reports it: less disturbed than throughput by other work on the machine.
    cpu: Option<Duration>,
    /// The same, by thread name (the tokio workers together, the ledger's writer, …).
    cpu_by_thread: Vec<(String, Duration)>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Processor microseconds per request (server and load generator together).
    fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.requests > 0).then(|| (cpu.as_secs_f64() * 1e6 / self.requests as f64 * 10.0).round() / 10.0)
    }

    /// Processor microseconds per request of each named thread, busiest first.
    fn cpu_us_per_request_by_thread(&self) -> Value {
        let per_request = |cpu: &Duration| (cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64 * 10.0).round() / 10.0;
        Value::Object(self.cpu_by_thread.iter().map(|(name, cpu)| (name.clone(), json!(per_request(cpu)))).collect())
    }

    fn percentile_ms(&self, percentile: usize) -> f64 {
        let index = (self.latencies_us.len() * percentile / 100).min(self.latencies_us.len().saturating_sub(1));
        self.latencies_us.get(index).map_or(0.0, |us| f64::from(*us) / 1000.0)
    }
}

/// Three priced blocks for an automated run: validate, if and condition (1 credit each).
fn three_priced_blocks() -> Value {
    json!({
        "name": "bench",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "check", "kind": "validate", "config": {"schema": {"type": "object"}}},
            {"id": "gate", "kind": "if", "config": {"test": {"path": "n", "op": "ge", "value": 0}}},
            {"id": "route", "kind": "condition", "config": {"branches": [{"name": "small", "test": {"path": "n", "op": "lt", "value": 10}}]}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [
            {"from": "request.body", "to": "check.value"},
            {"from": "check.pass", "to": "gate.value"},
            {"from": "gate.then", "to": "route.value"},
            {"from": "route.small", "to": "reply.body"}
        ]
    })
}

pub fn run(args: BenchServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.connections > 0 && args.connections <= 4096, "--connections must be from 1 to 4096");
    anyhow::ensure!(args.duration_s > 0 && args.duration_s <= 3600, "--duration-s must be from 1 to 3600");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(measure(args))
}

async fn measure(args: BenchServerArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let state = flowcredits_server::serve::open_state(&dir.path().join("bench.db"), Rules::shipped()).map_err(|err| anyhow::anyhow!("{err}"))?;
    let operator = flowcredits_server::serve::bootstrap_operator(&state).await.map_err(|err| anyhow::anyhow!("{err}"))?.context("a fresh database has an operator to create")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, flowcredits_server::app(state.clone())).into_future());
    let client = flowcredits_engine::http::client();
    let key = set_up(&client, &base, &operator).await?;

    eprintln!("warming up…");
    load(&base, "/hooks/bench/work", &key, Some(json!({"n": 1})), args.connections, Duration::from_secs(1)).await;
    eprintln!("baseline: GET /healthz with {} connections for {} s…", args.connections, args.duration_s);
    let baseline = load(&base, "/healthz", &key, None, args.connections, Duration::from_secs(args.duration_s)).await;
    eprintln!("hook calls: POST /hooks/bench/work with {} connections for {} s…", args.connections, args.duration_s);
    let writer_before = state.ledger.writer_stats();
    let hooks = load(&base, "/hooks/bench/work", &key, Some(json!({"n": 1})), args.connections, Duration::from_secs(args.duration_s)).await;
    let ledger = ledger_work_per_call(writer_before, state.ledger.writer_stats(), hooks.requests);

    let report = json!({
        "connections": args.connections,
        "duration_s": args.duration_s,
        "hook_requests_per_s": hooks.per_second().round(),
        "hook_p50_ms": hooks.percentile_ms(50),
        "hook_p99_ms": hooks.percentile_ms(99),
        "hook_failures": hooks.failures,
        "baseline_requests_per_s": baseline.per_second().round(),
        "baseline_p50_ms": baseline.percentile_ms(50),
        "baseline_p99_ms": baseline.percentile_ms(99),
        "hook_to_baseline_ratio": (hooks.per_second() / baseline.per_second() * 1000.0).round() / 1000.0,
        "hook_cpu_us_per_request": hooks.cpu_us_per_request(),
        "baseline_cpu_us_per_request": baseline.cpu_us_per_request(),
        "hook_cpu_us_per_request_by_thread": hooks.cpu_us_per_request_by_thread(),
        "hook_ledger_work": ledger,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("load: {} connections, {} s per phase, loopback, server and client on this machine", args.connections, args.duration_s);
        println!("{:<34} {:>12} {:>10} {:>10} {:>12}", "", "requests/s", "p50 ms", "p99 ms", "cpu µs/req");
        for (name, phase) in [("baseline GET /healthz", &baseline), ("hook call (3 priced blocks)", &hooks)] {
            let cpu = phase.cpu_us_per_request().map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
            println!("{name:<34} {:>12.0} {:>10.3} {:>10.3} {cpu:>12}", phase.per_second(), phase.percentile_ms(50), phase.percentile_ms(99));
        }
        println!("hook calls are {:.1}% of the baseline rate; {} failed", hooks.per_second() / baseline.per_second() * 100.0, hooks.failures);
        if !hooks.cpu_by_thread.is_empty() {
            println!("cpu µs per hook call by thread: {}", hooks.cpu_us_per_request_by_thread());
        }
        println!("ledger work in the hook phase: {ledger}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the ledger's writer did for the hook calls: how many requests each commit carried, how
/// many commits and syncs each call cost (group commit shares both among calls), how long a
/// commit and a sync took on average, and the WAL's rewinds (each a pause of the writer).
fn ledger_work_per_call(before: flowcredits_store::WriterStats, after: flowcredits_store::WriterStats, calls: usize) -> Value {
    let (commits, requests, syncs, rewinds) = (after.commits - before.commits, after.requests - before.requests, after.syncs - before.syncs, after.wal_rewinds - before.wal_rewinds);
    let ratio = |count: u64, per: u64| (count as f64 / per.max(1) as f64 * 1000.0).round() / 1000.0;
    json!({
        "requests_per_call": ratio(requests, calls as u64),
        "requests_per_commit": ratio(requests, commits),
        "commits_per_call": ratio(commits, calls as u64),
        "syncs_per_call": ratio(syncs, calls as u64),
        "commit_ms_mean": ratio(after.commit_ns - before.commit_ns, commits * 1_000_000),
        "sync_ms_mean": ratio(after.sync_ns - before.sync_ns, syncs * 1_000_000),
        "wal_rewinds": rewinds,
        "wal_rewind_ms_mean": ratio(after.wal_rewind_ns - before.wal_rewind_ns, rewinds * 1_000_000),
    })
}

/// An Enterprise team with pay-as-you-go on (so no call pauses), the flow deployed at `work`.
async fn set_up(client: &reqwest::Client, base: &str, operator: &str) -> anyhow::Result<String> {
    let post = |path: String, key: String, body: Value| {
        let request = client.post(format!("{base}{path}")).bearer_auth(key).json(&body);
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            anyhow::ensure!(status.is_success(), "setting up the benchmark failed: {status} {body}");
            Ok::<Value, anyhow::Error>(body)
        }
    };
    let user = post("/v1/users".into(), operator.into(), json!({"name": "bench"})).await?;
    let user_id = user["id"].as_str().context("user id")?.to_owned();
    let key = post(format!("/v1/users/{user_id}/keys"), operator.into(), json!({"label": "bench"})).await?["token"].as_str().context("key")?.to_owned();
    post("/v1/teams".into(), operator.into(), json!({"name": "bench", "plan": "enterprise", "owner": user_id})).await?;
    let response = client.patch(format!("{base}/v1/teams/bench/billing")).bearer_auth(&key).json(&json!({"payg_enabled": true})).send().await?;
    anyhow::ensure!(response.status().is_success(), "turning on pay-as-you-go failed: {}", response.status());
    let flow = post("/v1/teams/bench/flows".into(), key.clone(), json!({"name": "work", "definition": three_priced_blocks()})).await?;
    let flow_id = flow["id"].as_str().context("flow id")?.to_owned();
    post(format!("/v1/teams/bench/flows/{flow_id}/snapshots"), key.clone(), Value::Null).await?;
    post("/v1/teams/bench/deployments".into(), key.clone(), json!({"flow_id": flow_id, "path": "work"})).await?;
    Ok(key)
}

/// `connections` callers each send requests one after another on a kept-alive connection
/// until `duration` passes. The caller is a minimal HTTP/1.1 client (as `wrk` is), so that the
/// load generator takes as little as it can of the cores it shares with the server; every
/// answer is still read whole and checked (status 2xx, `Content-Length` body).
async fn load(base: &str, path: &str, key: &str, body: Option<Value>, connections: usize, duration: Duration) -> Phase {
    let address = base.trim_start_matches("http://").to_owned();
    let request = Arc::new(raw_request(&address, path, key, body.as_ref()));
    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let threads_before = thread_cpu_times();
    let deadline = started + duration;
    let mut callers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (address, request) = (address.clone(), Arc::clone(&request));
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut connection: Option<RawConnection> = None;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if connection.is_none() {
                    connection = RawConnection::open(&address).await.ok();
                }
                let Some(open) = connection.as_mut() else {
                    failures += 1;
                    continue;
                };
                match open.exchange(&request).await {
                    Ok(status) if (200..300).contains(&status) => latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Ok(_) => failures += 1,
                    Err(_) => {
                        failures += 1;
                        connection = None;
                    }
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut failures = 0;
    for caller in callers {
        if let Ok((latencies, failed)) = caller.await {
            latencies_us.extend(latencies);
            failures += failed;
        }
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let mut cpu_by_thread: Vec<(String, Duration)> = thread_cpu_times()
        .into_iter()
        .map(|(name, after)| {
            let before = threads_before.iter().find(|(earlier, _)| *earlier == name).map_or(Duration::ZERO, |(_, cpu)| *cpu);
            (name, after.saturating_sub(before))
        })
        .filter(|(_, cpu)| !cpu.is_zero())
        .collect();
    cpu_by_thread.sort_by_key(|(_, cpu)| std::cmp::Reverse(*cpu));
    latencies_us.sort_unstable();
    Phase { requests: latencies_us.len(), failures, elapsed, latencies_us, cpu, cpu_by_thread }
}

/// The bytes of one request, built once and sent again and again.
fn raw_request(host: &str, path: &str, key: &str, body: Option<&Value>) -> Vec<u8> {
    let mut request = match body {
        Some(body) => {
            let body = body.to_string();
            format!("POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        }
        None => format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n\r\n"),
    };
    request.shrink_to_fit();
    request.into_bytes()
}

/// A kept-alive HTTP/1.1 connection and the bytes read past the last answer.
struct RawConnection {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    async fn open(address: &str) -> std::io::Result<RawConnection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(RawConnection { stream, buffer: Vec::with_capacity(8192) })
    }

    /// Sends `request` and reads its whole answer; returns the status code.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use tokio::io::AsyncWriteExt;
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        self.stream.write_all(request).await?;
        loop {
            if let Some(head_end) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..head_end]).map_err(|_| invalid("the answer's head is not text"))?;
                let status: u16 = head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| invalid("the answer has no status code"))?;
                let length: usize = head
                    .lines()
                    .find_map(|line| line.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")).and_then(|(_, value)| value.trim().parse().ok()))
                    .ok_or_else(|| invalid("the answer has no content-length"))?;
                let total = head_end + 4 + length;
                while self.buffer.len() < total {
                    self.read_more().await?;
                }
                self.buffer.drain(..total);
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

/// User plus system time of this process so far, from `/proc/self/stat` (Linux; `None`
/// elsewhere).
fn process_cpu_time() -> Option<Duration> {
    stat_cpu_time(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// User plus system time so far of this process's threads, summed by thread name (Linux;
/// empty elsewhere). Threads that ended are not counted.
fn thread_cpu_times() -> Vec<(String, Duration)> {
    let mut by_name: Vec<(String, Duration)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(name), Some(cpu)) = (stat.split_once('(').and_then(|(_, rest)| rest.rsplit_once(')')).map(|(name, _)| name.to_owned()), stat_cpu_time(&stat)) else { continue };
        match by_name.iter_mut().find(|(known, _)| *known == name) {
            Some((_, total)) => *total += cpu,
            None => by_name.push((name, cpu)),
        }
    }
    by_name
}

/// utime + stime of a `/proc/…/stat` line. Clock ticks are 100 per second on every Linux this
/// runs on.
fn stat_cpu_time(stat: &str) -> Option<Duration> {
    // Fields after the command name (which may contain spaces) start after its closing paren.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
