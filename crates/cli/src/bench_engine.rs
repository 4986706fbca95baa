//! `flowcredits bench engine`: what the executor costs per block. Two workloads, each run
//! metered through the in-memory ledger exactly as `flowcredits run` does:
//! - a chain of 10,000 `select` blocks, each passing the previous one's value on;
//! - a `for` loop of 100,000 iterations over a `select` block picking a field of each item.
//!
//! The baseline does the same data work (the path lookup and the value copy of every block)
//! in a plain Rust loop, in the same process, so the ratio shows the engine's overhead.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use flowcredits_core::{CloudRun, PlanId, RunContext, RunId, Rules, TeamLedger, TeamSettings};
use flowcredits_engine::{Engine, Flow, FlowFile, LedgerMeter, RunOutcome, RunRequest};
use serde_json::{Map, Value, json};

use crate::cmd_run::block_on;

/// Blocks in the chain workload.
const CHAIN_BLOCKS: usize = 10_000;
/// Iterations of the loop workload.
const LOOP_ITERATIONS: usize = 100_000;
/// Timed repetitions of each workload; the median is reported.
const REPETITIONS: usize = 7;

#[derive(clap::Args)]
pub struct BenchEngineArgs {
    /// Keep a trace of every block execution (its inputs, outputs and timing), as the server
    /// does for run history.
    #[arg(long)]
    pub traces: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

struct Workload {
    name: &'static str,
    flow: Flow,
    input: Value,
    /// Block executions one run performs.
    executions: usize,
    baseline: fn(&Value) -> usize,
}

pub fn run(args: BenchEngineArgs) -> anyhow::Result<ExitCode> {
    let engine = if args.traces { Engine::default().with_block_traces() } else { Engine::default() };
    let workloads = [chain()?, looped()?];
    let mut rows = Vec::new();
    for workload in &workloads {
        let engine_time = median((0..REPETITIONS).map(|round| time_engine(&engine, workload, round)).collect::<anyhow::Result<Vec<_>>>()?);
        let baseline_time = median((0..REPETITIONS).map(|_| time_baseline(workload)).collect());
        rows.push((workload, engine_time, baseline_time));
    }
    let executions: usize = rows.iter().map(|(workload, _, _)| workload.executions).sum();
    let engine_total: Duration = rows.iter().map(|(_, time, _)| *time).sum();
    let baseline_total: Duration = rows.iter().map(|(_, _, time)| *time).sum();
    let per_s = |count: usize, time: Duration| (count as f64 / time.as_secs_f64()).round() as u64;
    let blocks_per_s = per_s(executions, engine_total);
    let baseline_blocks_per_s = per_s(executions, baseline_total);
    if args.json {
        let workloads: Vec<Value> = rows.iter().map(|(workload, engine_time, baseline_time)| json!({
            "name": workload.name,
            "executions": workload.executions,
            "median_ms": engine_time.as_secs_f64() * 1e3,
            "baseline_median_ms": baseline_time.as_secs_f64() * 1e3,
            "blocks_per_s": per_s(workload.executions, *engine_time),
            "baseline_blocks_per_s": per_s(workload.executions, *baseline_time),
        })).collect();
        println!("{}", json!({
            "blocks_per_s": blocks_per_s,
            "baseline_blocks_per_s": baseline_blocks_per_s,
            "engine_vs_baseline": blocks_per_s as f64 / baseline_blocks_per_s as f64,
            "repetitions": REPETITIONS,
            "metered": true,
            "traces": args.traces,
            "workloads": workloads,
        }));
    } else {
        println!("{:<34} {:>12} {:>14} {:>16} {:>18}", "workload (metered, median)", "executions", "engine ms", "engine blocks/s", "baseline blocks/s");
        for (workload, engine_time, baseline_time) in &rows {
            println!("{:<34} {:>12} {:>14.2} {:>16} {:>18}", workload.name, workload.executions, engine_time.as_secs_f64() * 1e3, per_s(workload.executions, *engine_time), per_s(workload.executions, *baseline_time));
        }
        println!("{:<34} {:>12} {:>14.2} {:>16} {:>18}", "both", executions, engine_total.as_secs_f64() * 1e3, blocks_per_s, baseline_blocks_per_s);
    }
    Ok(ExitCode::SUCCESS)
}

fn time_engine(engine: &Engine, workload: &Workload, round: usize) -> anyhow::Result<Duration> {
    let meter = LedgerMeter::new(Rules::shipped(), TeamLedger::new(TeamSettings::new(PlanId::Team)));
    let request = RunRequest { run: RunId::new(format!("bench-{}-{round}", workload.name))?, context: RunContext::manual(CloudRun::Off), input: workload.input.clone(), config: Map::new(), http: None, on_response: None };
    let started = Instant::now();
    let report = block_on(engine.run(&workload.flow, request, &meter))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report.outcome == RunOutcome::Completed, "bench run did not complete: {:?}", report.outcome);
    anyhow::ensure!(report.executions.len() == workload.executions, "bench run executed {} blocks, expected {}", report.executions.len(), workload.executions);
    Ok(elapsed)
}

fn time_baseline(workload: &Workload) -> Duration {
    let started = Instant::now();
    black_box((workload.baseline)(black_box(&workload.input)));
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn load(file: Value) -> anyhow::Result<Flow> {
    let file: FlowFile = serde_json::from_value(file)?;
    Ok(Flow::from_file(file)?)
}

/// `start` and then 10,000 blocks, each selecting the whole value it receives.
fn chain() -> anyhow::Result<Workload> {
    let mut blocks = vec![json!({"id": "start", "kind": "start"})];
    let mut edges = Vec::new();
    let mut previous = "start.input".to_owned();
    for index in 1..CHAIN_BLOCKS {
        let id = format!("s{index}");
        blocks.push(json!({"id": id, "kind": "select", "config": {"path": "$"}}));
        edges.push(json!({"from": previous, "to": format!("{id}.value")}));
        previous = format!("{id}.value");
    }
    let flow = load(json!({"name": "bench-chain", "blocks": blocks, "edges": edges}))?;
    Ok(Workload { name: "chain of 10,000 select blocks", flow, input: json!({"id": 1, "name": "ada"}), executions: CHAIN_BLOCKS, baseline: baseline_chain })
}

fn baseline_chain(input: &Value) -> usize {
    let mut value = input.clone();
    for _ in 1..CHAIN_BLOCKS {
        value = black_box(value.pointer("").cloned().expect("root exists"));
    }
    black_box(value);
    CHAIN_BLOCKS
}

/// `start`, a `for` over 100,000 items and a `select` of each item's id.
fn looped() -> anyhow::Result<Workload> {
    let flow = load(json!({
        "name": "bench-loop",
        "blocks": [
            {"id": "start", "kind": "start"},
            {"id": "each", "kind": "for"},
            {"id": "pick", "kind": "select", "config": {"path": "id"}},
        ],
        "edges": [
            {"from": "start.input", "to": "each.list"},
            {"from": "each.item", "to": "pick.value"},
        ],
    }))?;
    let input = Value::Array((0..LOOP_ITERATIONS).map(|id| json!({"id": id, "name": "ada"})).collect());
    Ok(Workload { name: "for loop of 100,000 over select", flow, input, executions: LOOP_ITERATIONS + 2, baseline: baseline_loop })
}

fn baseline_loop(input: &Value) -> usize {
    let items = input.as_array().expect("a list").clone();
    let mut picked = 0;
    for item in items {
        black_box(item.get("id").cloned());
        picked += 1;
    }
    picked + 2
}
