//! Prometheus metrics, hand-written: a few counters and two histograms do not need a metrics
//! framework. Labels are low-cardinality on purpose (never a team or run id).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flowcredits_core::{Credits, RunStatus};

use crate::AppState;
use crate::history::RunState;

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 12] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000, 10_000_000];

struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), count: AtomicU64::new(0), sum_us: AtomicU64::new(0) }
    }

    fn observe(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(bucket) = LATENCY_BUCKETS_US.iter().position(|bound| micros <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
    }
}

pub struct Metrics {
    runs_admitted: AtomicU64,
    runs_paused: AtomicU64,
    runs_finished: [AtomicU64; RunState::ALL.len()],
    credits_charged: AtomicU64,
    jobs_queued: AtomicU64,
    jobs_claimed: AtomicU64,
    http_responses: [AtomicU64; 5],
    admission_latency: Histogram,
    http_latency: Histogram,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            runs_admitted: AtomicU64::new(0),
            runs_paused: AtomicU64::new(0),
            runs_finished: std::array::from_fn(|_| AtomicU64::new(0)),
            credits_charged: AtomicU64::new(0),
            jobs_queued: AtomicU64::new(0),
            jobs_claimed: AtomicU64::new(0),
            http_responses: std::array::from_fn(|_| AtomicU64::new(0)),
            admission_latency: Histogram::new(),
            http_latency: Histogram::new(),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    pub fn admission(&self, status: RunStatus, elapsed: Duration) {
        let counter = if status == RunStatus::Paused { &self.runs_paused } else { &self.runs_admitted };
        counter.fetch_add(1, Ordering::Relaxed);
        self.admission_latency.observe(elapsed);
    }

    pub fn charged(&self, credits: Credits) {
        self.credits_charged.fetch_add(credits.0, Ordering::Relaxed);
    }

    /// A run was queued for private runners.
    pub fn job_queued(&self) {
        self.jobs_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A private runner took a job (again, after a lease ran out, counts again).
    pub fn job_claimed(&self) {
        self.jobs_claimed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn run_finished(&self, state: RunState) {
        let index = RunState::ALL.iter().position(|candidate| *candidate == state).expect("every state is listed");
        self.runs_finished[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(&mut out, "flowcredits_runs_admitted_total", "Runs admitted and started.", self.runs_admitted.load(Ordering::Relaxed));
        counter(&mut out, "flowcredits_runs_paused_total", "Runs paused at admission for lack of credits.", self.runs_paused.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP flowcredits_runs_finished_total Runs that ended, by status.\n# TYPE flowcredits_runs_finished_total counter");
        for (state, value) in RunState::ALL.iter().zip(&self.runs_finished).filter(|(state, _)| state.is_finished()) {
            let _ = writeln!(out, "flowcredits_runs_finished_total{{status=\"{}\"}} {}", state.as_str(), value.load(Ordering::Relaxed));
        }
        counter(&mut out, "flowcredits_credits_charged_total", "Credits charged for block executions.", self.credits_charged.load(Ordering::Relaxed));
        counter(&mut out, "flowcredits_runner_jobs_queued_total", "Runs queued as jobs for private runners.", self.jobs_queued.load(Ordering::Relaxed));
        counter(&mut out, "flowcredits_runner_jobs_claimed_total", "Jobs handed to private runners.", self.jobs_claimed.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP flowcredits_http_responses_total HTTP responses by status class.\n# TYPE flowcredits_http_responses_total counter");
        for (class, value) in self.http_responses.iter().enumerate() {
            let _ = writeln!(out, "flowcredits_http_responses_total{{class=\"{}xx\"}} {}", class + 1, value.load(Ordering::Relaxed));
        }
        self.admission_latency.render(&mut out, "flowcredits_admission_seconds", "Time to decide and record a run's admission.");
        self.http_latency.render(&mut out, "flowcredits_http_request_seconds", "Time to answer HTTP requests.");
        let _ = writeln!(out, "# HELP flowcredits_uptime_seconds Seconds since the server started.\n# TYPE flowcredits_uptime_seconds gauge\nflowcredits_uptime_seconds {}", self.started.elapsed().as_secs());
        out
    }
}

pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render_text();
    render_backends(&mut text, &state.ledger.writer_stats(), state.history.backlog());
    let writable = u8::from(state.ledger.write_failure().is_none());
    let _ = writeln!(text, "# HELP flowcredits_ledger_writable 1 while the ledger takes writes; 0 once the disk failed to confirm a commit and every write is refused until a restart (see /healthz).\n# TYPE flowcredits_ledger_writable gauge\nflowcredits_ledger_writable {writable}");
    // Jobs are rows of the catalog, shared by every node: counted there, not in this process.
    if let Ok((waiting, leased)) = state.catalog.call(|connection| crate::jobs::job_counts(connection)).await {
        let _ = writeln!(text, "# HELP flowcredits_runner_jobs Private-runner jobs now, waiting for a runner or leased to one.\n# TYPE flowcredits_runner_jobs gauge");
        let _ = writeln!(text, "flowcredits_runner_jobs{{state=\"waiting\"}} {waiting}\nflowcredits_runner_jobs{{state=\"leased\"}} {leased}");
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The ledger writer's and the history writer's work: requests per commit and the time commits
/// and syncs take say whether the disk or the processor holds the ledger back.
fn render_backends(out: &mut String, ledger: &flowcredits_store::WriterStats, history_backlog: usize) {
    let counters = [
        ("flowcredits_ledger_commits_total", "Ledger transactions, each carrying a group of requests.", ledger.commits.to_string()),
        ("flowcredits_ledger_requests_total", "Ledger write requests decided (refusals included).", ledger.requests.to_string()),
        ("flowcredits_ledger_commit_seconds_total", "Time the ledger writer spent deciding and committing groups.", (ledger.commit_ns as f64 / 1e9).to_string()),
        ("flowcredits_ledger_syncs_total", "Syncs of the ledger's committed groups to disk.", ledger.syncs.to_string()),
        ("flowcredits_ledger_sync_seconds_total", "Time spent syncing the ledger to disk.", (ledger.sync_ns as f64 / 1e9).to_string()),
        ("flowcredits_ledger_wal_rewinds_total", "Times the ledger writer copied the rest of a long WAL into the database between two groups, so that the WAL started over.", ledger.wal_rewinds.to_string()),
        ("flowcredits_ledger_wal_rewind_seconds_total", "Time those copies took (ledger writes waited meanwhile).", (ledger.wal_rewind_ns as f64 / 1e9).to_string()),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(out, "# HELP flowcredits_ledger_wal_bytes The ledger's WAL file now; it stays near 64 MiB under steady load (it starts over past that), so steady growth means a reader holds an old snapshot.\n# TYPE flowcredits_ledger_wal_bytes gauge\nflowcredits_ledger_wal_bytes {}", ledger.wal_bytes);
    let _ = writeln!(out, "# HELP flowcredits_history_queue_entries Run history entries waiting to be written.\n# TYPE flowcredits_history_queue_entries gauge\nflowcredits_history_queue_entries {history_backlog}");
}

/// Counts and times every response.
pub async fn track_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, not the path: ids and team names stay out of logs' cardinality.
    // Copied only when the line is logged: this runs on every request.
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| (request.method().clone(), request.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned()));
    let response = next.run(request).await;
    if let Some((method, route)) = logged {
        tracing::debug!(method = %method, route = %route, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered a request");
    }
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.metrics.http_responses[class].fetch_add(1, Ordering::Relaxed);
    state.metrics.http_latency.observe(started.elapsed());
    response
}
