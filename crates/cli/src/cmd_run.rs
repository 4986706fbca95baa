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
/// bad argument, 3 when the run was paused because the team has no credits left, 130 when a run
/// metered by a server was interrupted (and cancelled there).
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
    /// With `--server`: an API key of a member of the team who may run flows (owner, admin or
    /// editor). Read from FLOWCREDITS_KEY when not given; runs without `--server` ignore it.
    #[arg(long, value_name = "KEY", env = "FLOWCREDITS_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Without `--db`: the plan of a fresh in-memory ledger that lives for this run only
    /// (default team).
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<String>,
    /// The run id (default: `local-` and the current time in milliseconds). Not with
    /// `--server`, which gives the run its id.
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
    let text = std::fs::read_to_string(path).map_err(|err| BadArgument(format!("cannot read the flow file {}: {err}", path.display())))?;
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
    let request = RunRequest { run: run_id.clone(), context, input, config, http: None, on_response: None };
    let engine = Engine::new(Providers::default(), resolver.clone());
    if args.server.is_none() {
        // Every unknown model at once, as `estimate` reports them (the server checks its own
        // price book for `--server` runs).
        flowcredits_engine::check_models_nested(&rules, flowcredits_core::Timestamp::now(), &flow, &*resolver).with_context(|| format!("in {}; fix these and try again", args.flow.display()))?;
    }
    let metered = meter(&args, rules, &flow, &request.input)?;
    let report = match &metered {
        Metered::Server(meter) => match block_on(run_or_interrupt(&engine, &flow, request, meter))? {
            Some(report) => report,
            None => return interrupted(&args, meter, &run_id),
        },
        Metered::Here(meter, _) => block_on(engine.run(&flow, request, &**meter))?,
    };
    // Metered by a server, the run is known there by the id the server gave it.
    let (shown_run, paused) = match &metered {
        Metered::Server(meter) => (meter.server_run_id(&report.run), meter.refusal()),
        Metered::Here(_, advice) => (None, Some(format!("the team has no credits left; run it again when they return ({advice})"))),
    };
    print_report(&args, &flow, &report, shown_run.as_deref(), paused.as_deref());
    Ok(match report.outcome {
        RunOutcome::Completed => ExitCode::SUCCESS,
        RunOutcome::Failed { .. } => ExitCode::FAILURE,
        RunOutcome::Paused => ExitCode::from(EXIT_PAUSED),
    })
}

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the flow metered by a server until it ends, or until this process is told to stop
/// (Ctrl-C, SIGTERM): then `None`, and the run is cancelled on the server by [`interrupted`].
/// A run that ended is ended on the server with its output, or the error that failed it.
async fn run_or_interrupt(engine: &Engine, flow: &Flow, request: RunRequest, meter: &ServerMeter) -> Result<Option<RunReport>, flowcredits_engine::EngineError> {
    let run = request.run.clone();
    let ran = tokio::select! {
        report = engine.run(flow, request, meter) => report,
        () = flowcredits_server::serve::stop_signal() => return Ok(None),
    };
    let finished = meter.finish(&run, ran.as_ref()).await;
    let report = ran?;
    finished?;
    Ok(Some(report))
}

/// Cancels an interrupted run on the server, so that it does not stay `running` there with the
/// team's credits, and says where its charges can be read.
fn interrupted(args: &RunArgs, meter: &ServerMeter, run: &RunId) -> anyhow::Result<ExitCode> {
    let Some(server_run) = meter.server_run_id(run) else {
        eprintln!("interrupted before the server admitted the run: nothing was charged");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    match block_on(meter.cancel(run)) {
        Ok(()) => eprintln!("interrupted: run {server_run} was cancelled on the server; what it was charged so far: GET /v1/teams/{}/runs/{server_run}", args.team),
        Err(err) => eprintln!("interrupted, but run {server_run} could not be cancelled on the server ({err}); cancel it with POST /v1/teams/{}/runs/{server_run}/cancel", args.team),
    }
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

/// What meters a run: the team's ledger on a server, or a ledger on this machine (with what
/// would bring the team's credits back on its plan, for a paused run).
enum Metered {
    Server(ServerMeter),
    Here(Box<dyn Meter>, String),
}

/// The team's ledger on a server with `--server`, the durable ledger with `--db`; otherwise a
/// ledger that lives for this one run.
fn meter(args: &RunArgs, rules: Rules, flow: &Flow, input: &Value) -> anyhow::Result<Metered> {
    if let Some(server) = &args.server {
        let key = args.key.as_deref().ok_or_else(|| BadArgument("--server needs --key (or FLOWCREDITS_KEY): an API key of a member who may run flows".into()))?;
        if args.plan.is_some() {
            return Err(BadArgument("--plan is for runs without --server; the team's plan is on the server".into()).into());
        }
        if args.run_id.is_some() {
            return Err(BadArgument("--run-id is for runs without --server; the server gives the run its id".into()).into());
        }
        if key.starts_with(flowcredits_server::runners::RUNNER_TOKEN_PREFIX) {
            return Err(BadArgument("--key is a private runner's token; `run --server` takes a member's API key (fck_…)".into()).into());
        }
        return Ok(Metered::Server(ServerMeter::new(server, &args.team, key, &flow.name, input).map_err(|problem| BadArgument(format!("--server: {problem}")))?));
    }
    let Some(db) = &args.db else {
        let plan: PlanId = args.plan.as_deref().unwrap_or("team").parse().context(BadArgument("--plan".into()))?;
        let advice = rules.plans.get(plan).ways_to_more_credits(false, false);
        return Ok(Metered::Here(Box::new(LedgerMeter::new(rules, TeamLedger::new(TeamSettings::new(plan)))), advice));
    };
    if args.plan.is_some() {
        return Err(BadArgument("--plan is for runs without --db; the team's plan is in the ledger (change it there)".into()).into());
    }
    // The team must be in it already, so a mistyped path makes no empty ledger.
    let store = crate::cmd_store::DbArgs { db: db.clone() }.open_existing(rules.clone())?;
    let team = TeamName::new(args.team.clone()).context(BadArgument("--team".into()))?;
    let settings = store.team(&team).map_err(|err| match err {
        StoreError::UnknownTeam { .. } => BadArgument(format!("--team: `{}` is not in the ledger {}; create it first: flowcredits teams create {} --plan free|solo|team|enterprise --db {}", args.team, db.display(), args.team, db.display())).into(),
        other => anyhow::Error::new(other).context(format!("cannot read team `{}` from {}", args.team, db.display())),
    })?.settings;
    let advice = rules.plans.get(settings.plan).ways_to_more_credits(settings.payg_enabled, settings.payg_cap.is_some());
    Ok(Metered::Here(Box::new(StoreMeter::new(store, team, rules)), advice))
}

/// Runs a future to completion on a small runtime (the engine needs tokio's timers and its
/// blocking pool for scripts).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime starts").block_on(future)
}

fn parse_input(input: Option<&str>) -> anyhow::Result<Value> {
    let Some(input) = input else { return Ok(Value::Null) };
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|err| BadArgument(format!("cannot read the --input file {path}: {err}")))?,
        None => input.to_owned(),
    };
    serde_json::from_str(&text).map_err(|err| {
        let problem = if err.to_string().starts_with("recursion limit exceeded") { "--input is nested more than 128 levels deep".to_owned() } else { format!("--input is not JSON (quote text as \"...\", or pass @FILE): {err}") };
        BadArgument(problem).into()
    })
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

/// `shown_run` is the run's id where it was metered, when that is not this process's id;
/// `paused` what to say of a run that did not start for lack of credits.
fn print_report(args: &RunArgs, flow: &Flow, report: &RunReport, shown_run: Option<&str>, paused: Option<&str>) {
    let run = shown_run.unwrap_or(report.run.as_str());
    if args.json {
        println!("{}", report_json(&args.team, flow, report, run, paused));
        return;
    }
    let outcome = match &report.outcome {
        RunOutcome::Completed => "completed".to_owned(),
        RunOutcome::Paused => format!("paused: {}", paused.unwrap_or("the team has no credits left; run it again when they return")),
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

fn report_json(team: &str, flow: &Flow, report: &RunReport, run: &str, paused: Option<&str>) -> Value {
    let (outcome, error) = match &report.outcome {
        RunOutcome::Completed => ("completed", None),
        RunOutcome::Paused => ("paused", paused.map(str::to_owned)),
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
