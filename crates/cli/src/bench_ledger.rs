//! `flowcredits bench ledger`: ingestion rate beside a plain-INSERT baseline, admission decision
//! latency, durable start latency under 64 concurrent starters, and the usage query, each on a
//! fresh temporary database. Progress goes to stderr; results to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowcredits_core::{BlockKind, BlockUsage, PlanId, RunContext, RunId, Rules, TeamSettings, Timestamp, Trigger};
use flowcredits_store::baseline::{self, InsertStyle};
use flowcredits_store::{Actor, Durability, ExecutionIds, LedgerStore, NewTeam, SqliteOptions, SqliteStore, StartRun, TeamName, UsageEvent, limits};
use serde_json::{Value, json};

/// Concurrent callers for the batch-1 ingestion and the durable-start figures.
const CONCURRENT_CALLERS: usize = 64;
/// Finished runs in the admitted team's history before its decisions are timed.
const HISTORY_RUNS: usize = 10_000;
/// Admission decisions timed.
const DECISIONS: usize = 2_000;
/// Durable starts timed per concurrent starter.
const STARTS_PER_CALLER: usize = 50;
/// Teams the durable starters spread over.
const START_TEAMS: usize = 256;
/// Batch-1 ingestion is one request per event: it is measured on at most this many events.
const SINGLE_EVENT_EVENTS_MAX: usize = 100_000;
/// The plain-INSERT baseline at batch 1 commits (and fsyncs) every row: at most this many rows.
const SINGLE_ROW_BASELINE_EVENTS_MAX: usize = 2_000;
/// Usage queries timed.
const USAGE_QUERIES: usize = 101;

#[derive(clap::Args)]
pub struct BenchLedgerArgs {
    /// Events ingested per batch size (batch 1: at most 100,000).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Only this batch size (default: 1, 100 and 10,000).
    #[arg(long)]
    batch: Option<usize>,
    /// Executions in the period of the team whose usage is queried (the target is stated for
    /// 5,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    usage_executions: usize,
    /// Runs of each ingestion figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Directory for the temporary databases (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// `full` fsyncs every commit (an acknowledged write survives power loss); `normal` leaves
    /// the fsync to checkpoints (survives a process crash, not a power cut).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Full)]
    durability: DurabilityArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DurabilityArg {
    Full,
    Normal,
}

impl BenchLedgerArgs {
    fn options(&self) -> SqliteOptions {
        let durability = match self.durability {
            DurabilityArg::Full => Durability::Full,
            DurabilityArg::Normal => Durability::Normal,
        };
        SqliteOptions { durability, ..SqliteOptions::new(Rules::shipped()) }
    }
}

pub fn run(args: BenchLedgerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.events > 0 && args.repeats > 0, "--events and --repeats must be above 0");
    if let Some(batch) = args.batch {
        anyhow::ensure!((1..=limits::BATCH_EVENTS_MAX).contains(&batch), "--batch must be 1 to {}", limits::BATCH_EVENTS_MAX);
    }
    let scratch = Scratch::new(args.dir.clone())?;
    let batches = args.batch.map_or_else(|| vec![1, 100, 10_000], |batch| vec![batch]);
    let mut ingestion = Vec::new();
    for &batch in &batches {
        ingestion.push(ingestion_figure(&scratch, &args, batch)?);
    }
    let (admission_p50_us, admission_p99_us) = admission_figure(&scratch, &args)?;
    let (durable_start_p50_us, durable_start_p99_us) = durable_start_figure(&scratch, &args)?;
    let usage_query_ms = usage_query_figure(&scratch, &args)?;
    let headline = ingestion.last().expect("at least one batch size").clone();
    let report = json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "durability": format!("{:?}", args.durability).to_lowercase(),
        "ingestion": ingestion,
        "batch": headline["batch"],
        "events_per_s": headline["events_per_s"],
        "baseline_events_per_s": headline["baseline_events_per_s"],
        "ratio_to_baseline": headline["ratio_to_baseline"],
        "multi_row_baseline_events_per_s": headline["multi_row_baseline_events_per_s"],
        "ratio_to_multi_row_baseline": headline["ratio_to_multi_row_baseline"],
        "admission_p50_us": admission_p50_us,
        "admission_p99_us": admission_p99_us,
        "durable_start_p50_us": durable_start_p50_us,
        "durable_start_p99_us": durable_start_p99_us,
        "usage_query_ms": usage_query_ms,
        "usage_query_executions": args.usage_executions,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value always serializes"));
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(report: &Value) {
    println!("{:>7} {:>10} {:>8} {:>12} {:>12} {:>6} {:>14} {:>6}", "batch", "events", "callers", "events/s", "baseline/s", "ratio", "multi-row b./s", "ratio");
    for figure in report["ingestion"].as_array().into_iter().flatten() {
        let columns = ["batch", "events", "callers", "events_per_s", "baseline_events_per_s", "ratio_to_baseline", "multi_row_baseline_events_per_s", "ratio_to_multi_row_baseline"].map(|name| figure[name].to_string());
        println!("{:>7} {:>10} {:>8} {:>12} {:>12} {:>6} {:>14} {:>6}", columns[0], columns[1], columns[2], columns[3], columns[4], columns[5], columns[6], columns[7]);
    }
    println!("admission decision    p50 {} µs, p99 {} µs ({HISTORY_RUNS} runs in history)", report["admission_p50_us"], report["admission_p99_us"]);
    println!("durable start         p50 {} µs, p99 {} µs ({CONCURRENT_CALLERS} concurrent starters)", report["durable_start_p50_us"], report["durable_start_p99_us"]);
    println!("usage query           {} ms ({} executions in the period)", report["usage_query_ms"], report["usage_query_executions"]);
}

/// Temporary databases, removed when the benchmark ends.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(parent: Option<PathBuf>) -> anyhow::Result<Scratch> {
        let dir = parent.unwrap_or_else(std::env::temp_dir).join(format!("flowcredits-bench-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    /// A fresh database path (any earlier file of that name is removed).
    fn db(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.db"));
        for suffix in ["", "-wal", "-shm", "-writer.lock"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn progress(message: &str) {
    eprintln!("bench ledger: {message}");
}

fn at_base() -> Timestamp {
    "2026-03-02T00:00:00Z".parse().expect("a valid instant")
}

/// A store with one Enterprise team, pay-as-you-go on and no cap, so every charge is accepted.
fn open_team(path: &Path, options: SqliteOptions, team: &TeamName) -> anyhow::Result<SqliteStore> {
    let store = SqliteStore::open_with(path, options)?;
    let settings = TeamSettings { payg_enabled: true, ..TeamSettings::new(PlanId::Enterprise) };
    store.create_team(NewTeam { name: team.clone(), settings, actor: Actor::new("bench")?, at: at_base() })?;
    Ok(store)
}

fn api() -> RunContext {
    RunContext::automated(Trigger::Api).expect("api is automated")
}

/// `count` integration-block events (2 credits each) of run `run`, with time-ordered ids.
fn events(ids: &ExecutionIds, run: &RunId, first: usize, count: usize) -> Vec<UsageEvent> {
    (first..first + count)
        .map(|n| {
            let at = at_base() + Duration::from_millis(n as u64);
            UsageEvent { execution: ids.next(at), run: run.clone(), usage: BlockUsage::of_kind(BlockKind::Integration), at }
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile_us(sorted_ns: &[u64], percent: usize) -> f64 {
    let index = (sorted_ns.len() * percent / 100).min(sorted_ns.len() - 1);
    (sorted_ns[index] as f64 / 100.0).round() / 10.0
}

fn ingestion_figure(scratch: &Scratch, args: &BenchLedgerArgs, batch: usize) -> anyhow::Result<Value> {
    let events = if batch == 1 { args.events.min(SINGLE_EVENT_EVENTS_MAX) } else { args.events };
    let callers = if batch == 1 { CONCURRENT_CALLERS } else { 1 };
    let (mut rates, mut plain, mut multi_row) = (Vec::new(), Vec::new(), Vec::new());
    for repeat in 0..args.repeats {
        progress(&format!("ingesting {events} events in batches of {batch} from {callers} caller(s), run {} of {}", repeat + 1, args.repeats));
        rates.push(events as f64 / ingest(scratch, args, events, batch, callers)?.as_secs_f64());
        let baseline_events = if batch == 1 { events.min(SINGLE_ROW_BASELINE_EVENTS_MAX) } else { events };
        let rows = events_for_baseline(baseline_events);
        for (style, rates) in [(InsertStyle::RowAtATime, &mut plain), (InsertStyle::MultiRow, &mut multi_row)] {
            progress(&format!("baseline: INSERT of {baseline_events} rows in transactions of {batch}, {style:?}"));
            let spent = baseline::plain_insert(&scratch.db("baseline"), &rows, batch, args.options().durability, style)?;
            rates.push(baseline_events as f64 / spent.as_secs_f64());
        }
    }
    let (rate, plain, multi_row) = (median(rates), median(plain), median(multi_row));
    let ratio = |baseline: f64| (rate / baseline * 100.0).round() / 100.0;
    Ok(json!({
        "batch": batch,
        "events": events,
        "callers": callers,
        "events_per_s": rate.round(),
        "baseline_events_per_s": plain.round(),
        "ratio_to_baseline": ratio(plain),
        "multi_row_baseline_events_per_s": multi_row.round(),
        "ratio_to_multi_row_baseline": ratio(multi_row),
    }))
}

fn events_for_baseline(count: usize) -> Vec<UsageEvent> {
    events(&ExecutionIds::new(), &RunId::new("bench-run").expect("a short id"), 0, count)
}

/// Ingests `total` events in batches of `batch` from `callers` threads; returns the time spent
/// in the store's calls (building the events is not counted).
fn ingest(scratch: &Scratch, args: &BenchLedgerArgs, total: usize, batch: usize, callers: usize) -> anyhow::Result<Duration> {
    let team = TeamName::new("ingest")?;
    let store = open_team(&scratch.db("ingest"), args.options(), &team)?;
    let run = RunId::new("bench-run")?;
    store.start_run(&team, StartRun { run: run.clone(), context: api(), needs_credits: true, at: at_base() })?;
    let ids = Arc::new(ExecutionIds::new());
    let per_caller = total / callers;
    let started = Instant::now();
    let in_store = std::thread::scope(|scope| -> anyhow::Result<Duration> {
        let workers: Vec<_> = (0..callers)
            .map(|caller| {
                let (store, team, run, ids) = (store.clone(), team.clone(), run.clone(), Arc::clone(&ids));
                scope.spawn(move || -> anyhow::Result<Duration> {
                    let mut spent = Duration::ZERO;
                    for first in (caller * per_caller..(caller + 1) * per_caller).step_by(batch) {
                        let chunk = events(&ids, &run, first, batch.min((caller + 1) * per_caller - first));
                        let call = Instant::now();
                        store.charge(&team, chunk)?;
                        spent += call.elapsed();
                    }
                    Ok(spent)
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("an ingesting thread panicked")).sum()
    })?;
    // One caller: its time inside the store (building events is not the store's work). Many
    // callers: the wall clock, as their calls overlap.
    Ok(if callers == 1 { in_store } else { started.elapsed() })
}

/// Admission decisions for a team with [`HISTORY_RUNS`] finished runs, timed inside the writer.
fn admission_figure(scratch: &Scratch, args: &BenchLedgerArgs) -> anyhow::Result<(f64, f64)> {
    progress(&format!("admission: building a team with {HISTORY_RUNS} runs in its history"));
    let team = TeamName::new("history")?;
    let options = SqliteOptions { record_decision_times: true, ..args.options() };
    let store = open_team(&scratch.db("admission"), options, &team)?;
    run_in_parallel(CONCURRENT_CALLERS, HISTORY_RUNS, |n| {
        let run = RunId::new(format!("history-{n}"))?;
        store.start_run(&team, StartRun { run: run.clone(), context: api(), needs_credits: true, at: at_base() })?;
        store.end_run(&team, &run, at_base())?;
        Ok(())
    })?;
    store.take_decision_times_ns();
    progress(&format!("admission: timing {DECISIONS} decisions"));
    for n in 0..DECISIONS {
        store.start_run(&team, StartRun { run: RunId::new(format!("timed-{n}"))?, context: api(), needs_credits: true, at: at_base() })?;
    }
    let mut times: Vec<u64> = store.take_decision_times_ns().into_iter().map(u64::from).collect();
    times.sort_unstable();
    Ok((percentile_us(&times, 50), percentile_us(&times, 99)))
}

/// Starts from [`CONCURRENT_CALLERS`] threads over [`START_TEAMS`] teams, timed by the caller
/// until the run is committed.
fn durable_start_figure(scratch: &Scratch, args: &BenchLedgerArgs) -> anyhow::Result<(f64, f64)> {
    progress(&format!("durable start: {CONCURRENT_CALLERS} concurrent starters over {START_TEAMS} teams"));
    let store = SqliteStore::open_with(scratch.db("starts"), args.options())?;
    let teams: Vec<TeamName> = (0..START_TEAMS).map(|n| TeamName::new(format!("team-{n}"))).collect::<Result<_, _>>()?;
    for team in &teams {
        store.create_team(NewTeam { name: team.clone(), settings: TeamSettings::new(PlanId::Team), actor: Actor::new("bench")?, at: at_base() })?;
    }
    let latencies = std::sync::Mutex::new(Vec::with_capacity(CONCURRENT_CALLERS * STARTS_PER_CALLER));
    run_in_parallel(CONCURRENT_CALLERS, CONCURRENT_CALLERS * STARTS_PER_CALLER, |n| {
        let start = StartRun { run: RunId::new(format!("start-{n}"))?, context: api(), needs_credits: true, at: at_base() };
        let call = Instant::now();
        store.start_run(&teams[n % START_TEAMS], start)?;
        latencies.lock().expect("latency lock").push(call.elapsed().as_nanos() as u64);
        Ok(())
    })?;
    let mut latencies = latencies.into_inner().expect("latency lock");
    latencies.sort_unstable();
    Ok((percentile_us(&latencies, 50), percentile_us(&latencies, 99)))
}

/// Runs `job(n)` for `n` in `0..count` over `threads` threads.
fn run_in_parallel(threads: usize, count: usize, job: impl Fn(usize) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|thread| {
            let job = &job;
            scope.spawn(move || (thread..count).step_by(threads).try_for_each(job))
        }).collect();
        workers.into_iter().try_for_each(|worker| worker.join().expect("a benchmark thread panicked"))
    })
}

/// The usage query of a team with `executions` executions in its period (median of
/// [`USAGE_QUERIES`] queries).
fn usage_query_figure(scratch: &Scratch, args: &BenchLedgerArgs) -> anyhow::Result<f64> {
    let executions = args.usage_executions;
    progress(&format!("usage query: ingesting {executions} executions into one period"));
    let team = TeamName::new("usage")?;
    let store = open_team(&scratch.db("usage"), args.options(), &team)?;
    let run = RunId::new("usage-run")?;
    store.start_run(&team, StartRun { run: run.clone(), context: api(), needs_credits: true, at: at_base() })?;
    let ids = ExecutionIds::new();
    for first in (0..executions).step_by(limits::BATCH_EVENTS_MAX) {
        store.charge(&team, events(&ids, &run, first, limits::BATCH_EVENTS_MAX.min(executions - first)))?;
    }
    progress(&format!("usage query: timing {USAGE_QUERIES} queries"));
    let mut times = Vec::with_capacity(USAGE_QUERIES);
    for _ in 0..USAGE_QUERIES {
        let started = Instant::now();
        let usage = store.usage(&team, None, at_base())?;
        times.push(started.elapsed().as_secs_f64() * 1_000.0);
        anyhow::ensure!(usage.breakdown.iter().map(|line| line.executions).sum::<u64>() == executions as u64, "the usage report does not count every execution");
    }
    Ok((median(times) * 1_000.0).round() / 1_000.0)
}
