//! `flowcredits run FLOW`: runs a flow on the local canvas (trigger manual), metered, and
//! prints its outputs and a receipt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use flowcredits_core::{CloudRun, PlanId, RunContext, RunId, Rules, TeamLedger, TeamSettings};
use flowcredits_engine::{DirResolver, Engine, Flow, LedgerMeter, Meter, Providers, RunOutcome, RunReport, RunRequest, Syntax};
use flowcredits_store::{LedgerStore, StoreError, TeamName};
use serde_json::{Map, Value, json};

use flowcredits_server::client::ServerMeter;

use crate::BadArgument;
use crate::meter_store::StoreMeter;
use crate::rules::RulesArgs;

/// Exit status of a run that was paused for lack of credits.
pub const EXIT_PAUSED: u8 = 3;

/// Runs a flow on this machine, as a manual run, and prints its outputs and credit receipt.
///
/// Exit status: 0 when the run completed, 1 when a block failed or the flow is invalid, 2 for a
/// bad argument, 3 when the run was paused because the team has no credits left.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The flow file (YAML or JSON; `.json` is read as JSON).
    pub flow: PathBuf,
    /// The team the run is metered for.
    #[arg(long, value_name = "TEAM")]
    pub team: String,
    /// What the flow's trigger block emits: JSON text (a negative number too: `--input -1`), or
    /// `@FILE` to read it from a file.
    #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
    pub input: Option<String>,
    /// Run in the cloud (Cloud Run on): cloud prices apply.
    #[arg(long)]
    pub cloud_run: bool,
    /// Override a value of the flow's `config` (the value is JSON, or else text). Repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Where flows run by `flow` blocks are found (default: the flow file's directory).
    #[arg(long, value_name = "DIR")]
    pub flows: Option<PathBuf>,
    /// The team's durable ledger (SQLite): the run is admitted and charged there. The team
    /// must exist (`flowcredits teams create TEAM --plan PLAN --db PATH`).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Meter against the team's ledger on a flowcredits server (e.g. http://127.0.0.1:8080);
    /// the flow still runs here, on the local canvas. Needs `--key`.
    #[arg(long, value_name = "URL", conflicts_with = "db", requires = "key")]
    pub server: Option<String>,
    /// An API key of a member of the team who may run flows (owner, admin or editor).
    #[arg(long, value_name = "KEY", env = "FLOWCREDITS_KEY", requires = "server")]
    pub key: Option<String>,
    /// Without `--db`: the plan of a fresh in-memory ledger that lives for this run only
    /// (default team).
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<String>,
    /// The run id (default: `local-` and the current time in milliseconds).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rules: RulesArgs,
}

/// Reads and checks a flow file, and the resolver for the flows it runs.
pub fn load_flow(path: &Path, flows: Option<&Path>) -> anyhow::Result<(Flow, Arc<DirResolver>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read flow file {}", path.display()))?;
    let flow = Flow::load(&text, Syntax::of_path(path)).with_context(|| format!("in {}; fix these and try again", path.display()))?;
    let dir = flows.map(Path::to_path_buf).unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok((flow, Arc::new(DirResolver::new(dir))))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rules = args.rules.load()?;
    let (flow, resolver) = load_flow(&args.flow, args.flows.as_deref())?;
    let input = parse_input(args.input.as_deref())?;
    let config = parse_config(&args.config)?;
    let run_id = RunId::new(args.run_id.clone().unwrap_or_else(|| format!("local-{}", flowcredits_core::Timestamp::now().as_millisecond()))).context(BadArgument("--run-id".into()))?;
    let context = RunContext::manual(CloudRun::from(args.cloud_run));
    let request = RunRequest { run: run_id, context, input, config, http: None, on_response: None };
    let engine = Engine::new(Providers::default(), resolver);
    let metered = meter(&args, rules, &flow)?;
    let report = block_on(engine.run(&flow, request, metered.meter()))?;
    // Metered by a server, the run is known there by the id the server gave it.
    let shown_run = match &metered {
        Metered::Server(meter) => meter.server_run_id(&report.run),
        Metered::Here(_) => None,
    };
    print_report(&args, &flow, &report, shown_run.as_deref());
    Ok(match report.outcome {
        RunOutcome::Completed => ExitCode::SUCCESS,
        RunOutcome::Failed { .. } => ExitCode::FAILURE,
        RunOutcome::Paused => ExitCode::from(EXIT_PAUSED),
    })
}

/// What meters a run: the team's ledger on a server, or a ledger on this machine.
enum Metered {
    Server(ServerMeter),
    Here(Box<dyn Meter>),
}

impl Metered {
    fn meter(&self) -> &dyn Meter {
        match self {
            Metered::Server(meter) => meter,
            Metered::Here(meter) => &**meter,
        }
    }
}

/// The team's ledger on a server with `--server`, the durable ledger with `--db`; otherwise a
/// ledger that lives for this one run.
fn meter(args: &RunArgs, rules: Rules, flow: &Flow) -> anyhow::Result<Metered> {
    if let (Some(server), Some(key)) = (&args.server, &args.key) {
        if args.plan.is_some() {
            return Err(BadArgument("--plan is for runs without --server; the team's plan is on the server".into()).into());
        }
        return Ok(Metered::Server(ServerMeter::new(server, &args.team, key, &flow.name)));
    }
    let Some(db) = &args.db else {
        let plan: PlanId = args.plan.as_deref().unwrap_or("team").parse().context(BadArgument("--plan".into()))?;
        return Ok(Metered::Here(Box::new(LedgerMeter::new(rules, TeamLedger::new(TeamSettings::new(plan))))));
    };
    if args.plan.is_some() {
        return Err(BadArgument("--plan is for runs without --db; the team's plan is in the ledger (change it there)".into()).into());
    }
    // The team must be in it already, so a mistyped path makes no empty ledger.
    let store = crate::cmd_store::DbArgs { db: db.clone() }.open_existing(rules.clone())?;
    let team = TeamName::new(args.team.clone()).context(BadArgument("--team".into()))?;
    store.team(&team).map_err(|err| match err {
        StoreError::UnknownTeam { .. } => anyhow::anyhow!("team `{}` is not in the ledger {}; create it first: flowcredits teams create {} --plan free|solo|team|enterprise --db {}", args.team, db.display(), args.team, db.display()),
        other => anyhow::Error::new(other).context(format!("cannot read team `{}` from {}", args.team, db.display())),
    })?;
    Ok(Metered::Here(Box::new(StoreMeter::new(store, team, rules))))
}

/// Runs a future to completion on a small runtime (the engine needs tokio's timers and its
/// blocking pool for scripts).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime starts").block_on(future)
}

fn parse_input(input: Option<&str>) -> anyhow::Result<Value> {
    let Some(input) = input else { return Ok(Value::Null) };
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read --input file {path}"))?,
        None => input.to_owned(),
    };
    serde_json::from_str(&text).context(BadArgument("--input is not JSON (quote text as \"...\", or pass @FILE)".into()))
}

fn parse_config(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut config = Map::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').with_context(|| BadArgument(format!("--config `{pair}` is not KEY=VALUE")))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        config.insert(key.to_owned(), value);
    }
    Ok(config)
}

/// An execution's id as the ledger that metered it knows it: under `run` (the server's id for
/// the run) instead of this process's.
fn execution_label(report: &RunReport, run: &str, execution: &flowcredits_engine::Execution) -> String {
    match execution.id.as_str().strip_prefix(report.run.as_str()) {
        Some(rest) => format!("{run}{rest}"),
        None => execution.id.as_str().to_owned(),
    }
}

/// `shown_run` is the run's id where it was metered, when that is not this process's id.
fn print_report(args: &RunArgs, flow: &Flow, report: &RunReport, shown_run: Option<&str>) {
    let run = shown_run.unwrap_or(report.run.as_str());
    if args.json {
        println!("{}", report_json(&args.team, flow, report, run));
        return;
    }
    let outcome = match &report.outcome {
        RunOutcome::Completed => "completed".to_owned(),
        RunOutcome::Paused => "paused: the team has no credits left; they return with the next billing period, or sooner where its plan allows (pay-as-you-go, or buying credits on Enterprise)".to_owned(),
        RunOutcome::Failed { error } => format!("failed: {error}"),
    };
    println!("run {run} of flow `{}` for team {}: {outcome}", flow.name, args.team);
    for (title, lines) in [("outputs", &report.outputs), ("log", &report.logs)] {
        if !lines.is_empty() {
            println!("\n{title}:");
        }
        for output in lines {
            // Where it was shown (`each#2/show`), after its label when it has one.
            match output.label.as_deref() {
                Some(label) => println!("  {label} ({}): {}", output.at, output.value),
                None => println!("  {}: {}", output.at, output.value),
            }
        }
    }
    if let Some(response) = &report.response {
        println!("\nresponse {}: {}", response.status, response.body);
    }
    println!("\nreceipt:");
    let labels: Vec<String> = report.executions.iter().map(|execution| execution_label(report, run, execution)).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    for (execution, label) in report.executions.iter().zip(&labels) {
        let failed = if execution.ok { "" } else { "  (failed)" };
        println!("  {label:width$}  {:<22} {:>6}{failed}", execution.kind.as_str(), execution.credits.0);
    }
    println!("  {:width$}  {:<22} {:>6} credits", "total", "", report.total.0);
}

fn report_json(team: &str, flow: &Flow, report: &RunReport, run: &str) -> Value {
    let (outcome, error) = match &report.outcome {
        RunOutcome::Completed => ("completed", None),
        RunOutcome::Paused => ("paused", None),
        RunOutcome::Failed { error } => ("failed", Some(error.clone())),
    };
    let outputs = |lines: &[flowcredits_engine::Output]| lines.iter().map(|output| json!({"at": output.at, "label": output.label, "value": output.value})).collect::<Vec<_>>();
    json!({
        "run": run,
        "team": team,
        "flow": flow.name,
        "outcome": outcome,
        "error": error,
        "outputs": outputs(&report.outputs),
        "logs": outputs(&report.logs),
        "response": report.response.as_ref().map(|response| json!({"status": response.status, "body": response.body})),
        "executions": report.executions.iter().map(|execution| json!({"id": execution_label(report, run, execution), "block": execution.block(), "kind": execution.kind.as_str(), "credits": execution.credits.0, "ok": execution.ok})).collect::<Vec<_>>(),
        "total": report.total.0,
    })
}
