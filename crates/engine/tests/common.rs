//! Helpers shared by the engine's tests.
#![allow(dead_code)]

use flowcredits_core::{CloudRun, PlanId, RunContext, RunId, Rules, TeamLedger, TeamSettings};
use flowcredits_engine::{Engine, Flow, LedgerMeter, RunReport, RunRequest, Syntax};
use serde_json::{Map, Value};

pub fn flow(yaml: &str) -> Flow {
    Flow::load(yaml, Syntax::Yaml).unwrap_or_else(|err| panic!("{err}"))
}

pub fn meter(plan: PlanId) -> LedgerMeter {
    LedgerMeter::new(Rules::shipped(), TeamLedger::new(TeamSettings::new(plan)))
}

pub fn request(run: &str, context: RunContext, input: Value) -> RunRequest {
    RunRequest { run: RunId::new(run).unwrap(), context, input, config: Map::new(), http: None, on_response: None }
}

pub fn local() -> RunContext {
    RunContext::manual(CloudRun::Off)
}

pub fn cloud() -> RunContext {
    RunContext::manual(CloudRun::On)
}

/// Runs a flow on a fresh Team ledger.
pub async fn run(yaml: &str, context: RunContext, input: Value) -> RunReport {
    let flow = flow(yaml);
    let meter = meter(PlanId::Team);
    Engine::default().run(&flow, request("r1", context, input), &meter).await.unwrap_or_else(|err| panic!("{err}"))
}

/// Displayed values by label (or block id).
pub fn shown(report: &RunReport) -> Vec<(String, Value)> {
    report.outputs.iter().map(|output| (output.label.clone().unwrap_or_else(|| output.at.clone()), output.value.clone())).collect()
}

/// `(execution id without the run, credits)` of every execution, sorted.
pub fn receipt(report: &RunReport) -> Vec<(String, u64)> {
    let mut lines: Vec<(String, u64)> = report.executions.iter().map(|execution| (execution.id.as_str().split_once('/').unwrap().1.to_owned(), execution.credits.0)).collect();
    lines.sort();
    lines
}
