//! Executes runs on the server: admits them through the ledger, runs them with the engine,
//! meters every block execution into the durable ledger, records history, and answers the
//! caller who is waiting (a hook, the API, MCP).
//!
//! The engine admits a run by calling [`Meter::admit`]; [`StoreMeter`] forwards that to the
//! ledger and tells the waiting caller at once, so a paused run is answered immediately while
//! an admitted one keeps running. A paused run is executed later, with the same run id, when
//! [`Runner::dispatch_resumed`] finds the ledger resumed it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowcredits_core::{BlockUsage, Credits, RunContext, RunId, RunStatus, Timestamp};
use flowcredits_engine::{Admission, BlockCharge, ChargedAndEnded, Engine, EngineError, Flow, HttpTrigger, Meter, ResponseHook, RunOutcome, RunReport, RunRequest, Syntax};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};

use crate::catalog::{self, new_id};
use crate::error::ApiError;
use crate::history::{self, RunState};
use crate::history::BlockRecord;
use crate::history_log::{AdmittedRun, FinishedRun};
use crate::ledger::Ledger;
use crate::AppState;

/// A run still going after this long is stopped and recorded as timed out.
pub const RUN_DURATION_MAX: Duration = Duration::from_secs(60 * 60);

/// What a finished run tells whoever waits for it.
#[derive(Clone, Debug)]
pub struct RunReply {
    pub run_id: String,
    pub state: RunState,
    pub credits: Credits,
    /// The `response` block's answer, when the flow has one.
    pub response: Option<(u16, Value)>,
    /// What `display` blocks showed, by where they ran.
    pub output: Value,
    pub error: Option<String>,
}

/// A run that was started: admitted and running (with a reply to come), or paused.
pub struct Started {
    pub run_id: String,
    pub status: RunStatus,
    pub reply: Option<oneshot::Receiver<RunReply>>,
}

/// What to run.
pub struct StartRequest {
    pub team: String,
    pub flow_id: String,
    pub snapshot: Option<u32>,
    pub deployment_id: Option<String>,
    pub flow: Arc<Flow>,
    pub input: Value,
    pub context: RunContext,
    pub http: Option<HttpTrigger>,
    /// Answer the caller when the flow's `response` block runs (hooks, MCP), instead of when
    /// the run ends (runs started from the API, which answer with the run).
    pub answer_on_response: bool,
}

#[derive(Clone)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    engine: Engine,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Cancellation senders of running runs.
    cancels: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Runner {
    pub fn new(engine: Engine) -> Runner {
        Runner { inner: Arc::new(RunnerInner { engine, in_flight: AtomicUsize::new(0), idle: Notify::new(), cancels: Mutex::new(HashMap::new()) }) }
    }

    /// Runs executing right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no run is executing (graceful shutdown), or `limit` passes.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.inner.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    /// Admits and (if admitted) starts a run. Returns once the ledger has decided.
    pub async fn start(&self, state: &AppState, request: StartRequest) -> Result<Started, ApiError> {
        let flow = request.flow;
        let run_id = new_id("run");
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Job {
            run_id: run_id.clone(),
            team: request.team,
            flow_id: request.flow_id,
            snapshot: request.snapshot,
            deployment_id: request.deployment_id,
            flow,
            input: request.input,
            context: request.context,
            http: request.http,
            answer_on_response: request.answer_on_response,
            resumed: false,
        };
        self.spawn(state.clone(), job, Some(admitted_tx), Some(reply_tx));
        match admitted_rx.await {
            Ok(Ok(status)) => Ok(Started { run_id, reply: (status == RunStatus::Running).then_some(reply_rx), status }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ApiError::internal(format!("run {run_id} ended before it was admitted"))),
        }
    }

    /// At start-up: runs that were executing when the server stopped cannot continue (their
    /// state was in memory). Each is ended in the ledger, keeping what it was charged, and
    /// recorded as failed. Returns how many.
    ///
    /// The ledger says which runs were still running; history (written behind the runs, so it
    /// may lack the last moments before a crash) adds runs the ledger had already ended and says
    /// which ledger-running runs were resumed but not yet dispatched (still `paused` there:
    /// [`Runner::dispatch_resumed`] runs them). Private-runner jobs live in the catalog, not in
    /// this process: they go on. First, runs the ledger knows and history lost get their rows
    /// back ([`restore_lost_history`]).
    pub async fn recover_interrupted(&self, state: &AppState) -> Result<usize, ApiError> {
        let mut interrupted = restore_lost_history(state, Timestamp::now()).await?;
        let mut runs: Vec<(String, String)> = state.ledger.running_runs().await?;
        for run in state.history.read(&state.catalog, |connection| history::running_runs(connection)).await? {
            if !runs.contains(&run) {
                runs.push(run);
            }
        }
        let runs = crate::jobs::without_jobs(state, runs).await?;
        for (team, run_id) in &runs {
            let id = run_id.clone();
            let recorded = state.catalog.call(move |connection| history::run_state(connection, &id)).await?;
            if recorded == Some(RunState::Paused) {
                continue;
            }
            // History may say running only because the run's end was lost with the history
            // queue: the ledger knows whether it ended, and when.
            let times = state.ledger.run_times(team, run_id).await?;
            let ledger_end_ms = times.and_then(|times| times.ended_at).map(|at| at.as_millisecond());
            let (ended_as, error, ended_ms) = match state.ledger.run_status(team, run_id).await? {
                Some(RunStatus::Paused) => continue,
                Some(RunStatus::Completed) => (RunState::Unknown, "the server stopped before this run's end was recorded in history: whether it succeeded, and its output, are unknown; its credits are the ledger's", ledger_end_ms),
                Some(RunStatus::Cancelled) => (RunState::Cancelled, "cancelled; the server stopped before history recorded it", ledger_end_ms),
                Some(RunStatus::Running) | None => {
                    if let Err(err) = state.ledger.end_run(team, run_id).await {
                        tracing::warn!(team = %team, run = %run_id, error = %err, "ending an interrupted run in the ledger failed");
                    }
                    interrupted += 1;
                    (RunState::Failed, "interrupted: the server stopped while the run was executing; it is shown ending at its last charge, the last moment known of it", None)
                }
            };
            match recorded {
                Some(RunState::Running) => {
                    let credits = state.ledger.run_credits(team, run_id).await.unwrap_or(Credits::ZERO);
                    let id = run_id.clone();
                    let started_ms = state.catalog.call(move |connection| history::started_ms(connection, &id)).await?;
                    let last_charge_ms = times.and_then(|times| times.last_charge_at).map(|at| at.as_millisecond());
                    let at_ms = ended_ms.or_else(|| last_known_ms(started_ms, last_charge_ms)).unwrap_or_else(catalog::now_ms);
                    state.history.finished_at(FinishedRun { id: run_id.clone(), state: ended_as, credits: credits.0, output: Value::Null, error: Some(error.to_owned()), response: None }, at_ms);
                }
                // Older than the window `restore_lost_history` looks at: not expected.
                None => tracing::warn!(team = %team, run = %run_id, "an interrupted run had no history; it was ended in the ledger with what it was charged"),
                Some(_) => {}
            }
        }
        Ok(interrupted)
    }

    /// Executes the team's paused runs that the ledger has since resumed, oldest first.
    pub async fn dispatch_resumed(&self, state: &AppState, team: &str) -> Result<usize, ApiError> {
        let team_name = team.to_owned();
        let paused = state.history.read(&state.catalog, move |connection| history::paused_runs(connection, &team_name)).await?;
        let mut dispatched = 0;
        for run_id in paused {
            if state.ledger.run_status(team, &run_id).await? != Some(RunStatus::Running) {
                continue;
            }
            // One run that cannot be resumed (its flow is gone, say) must not hold up the others,
            // nor stay running in the ledger with nothing executing it: it is ended as failed.
            match self.dispatch_one(state, team, &run_id).await {
                Ok(()) => {
                    tracing::info!(team, run = %run_id, "a paused run resumed: the team has credits again");
                    dispatched += 1;
                }
                Err(err) => {
                    tracing::warn!(team, run = %run_id, error = %err, "a resumed run could not be started; it is recorded as failed");
                    if let Err(err) = state.ledger.end_run(team, &run_id).await {
                        tracing::warn!(team, run = %run_id, error = %err, "ending a run that could not be resumed failed");
                    }
                    let error = format!("resumed when credits returned, but could not be started: {err}");
                    state.history.finished(FinishedRun { id: run_id, state: RunState::Failed, credits: 0, output: Value::Null, error: Some(error), response: None });
                    state.metrics.run_finished(RunState::Failed);
                }
            }
        }
        Ok(dispatched)
    }

    /// Starts one run the ledger resumed: here, or in its team's private-runner queue.
    async fn dispatch_one(&self, state: &AppState, team: &str, run_id: &str) -> Result<(), ApiError> {
        let (id, team_name) = (run_id.to_owned(), team.to_owned());
        let run = state.catalog.call(move |connection| history::run(connection, &team_name, &id)).await?;
        let (team_name, flow_id, snapshot) = (team.to_owned(), run.flow_id.clone(), run.snapshot);
        let definition = state.catalog.call(move |connection| catalog::definition(connection, &team_name, &flow_id, snapshot)).await?;
        let context = state.ledger.run_context(team, run_id).await?;
        // A private runner's run goes back in its team's job queue instead.
        if context.location() == flowcredits_core::Location::Private {
            return crate::jobs::enqueue_resumed(state, team, run_id).await;
        }
        let id = run_id.to_owned();
        let http = state.catalog.call(move |connection| history::paused_http(connection, &id)).await?;
        let job = Job { run_id: run_id.to_owned(), team: team.to_owned(), flow_id: run.flow_id, snapshot, deployment_id: run.deployment_id, flow: Arc::new(load_flow(&definition)?), input: run.input, context, http, answer_on_response: false, resumed: true };
        self.spawn(state.clone(), job, None, None);
        Ok(())
    }

    /// Stops a running run or cancels a paused one. A running run stops where it is: blocks
    /// already charged stay charged; blocks in flight, and executions whose charges the engine
    /// had not yet sent, are not charged (never billed twice, at worst billed less).
    ///
    /// Returns `Cancelled` when the run is cancelled now (a paused run), `Running` when a
    /// running run was told to stop and records its cancellation when it does.
    pub async fn cancel(&self, state: &AppState, team: &str, run_id: &str, reason: &str) -> Result<RunState, ApiError> {
        let (team_name, id) = (team.to_owned(), run_id.to_owned());
        let run = state.history.read(&state.catalog, move |connection| history::run(connection, &team_name, &id)).await?;
        if run.status.is_finished() {
            return Err(ApiError::Conflict(format!("run {run_id} is {}", run.status.as_str())));
        }
        let sender = self.inner.cancels.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(run_id);
        match sender {
            // The executing task records the cancellation when it stops.
            Some(sender) => {
                let _ = sender.send(());
                Ok(RunState::Running)
            }
            // Paused, or running elsewhere (a private runner, which learns it at its next call):
            // it ends now, keeping what it was charged.
            None => {
                state.ledger.cancel_run(team, run_id).await?;
                tracing::info!(team, run = run_id, reason, "a run that was not executing here was cancelled");
                let credits = state.ledger.run_credits(team, run_id).await?.0;
                state.history.finished(FinishedRun { id: run_id.to_owned(), state: RunState::Cancelled, credits, output: Value::Null, error: Some(reason.to_owned()), response: None });
                state.metrics.run_finished(RunState::Cancelled);
                Ok(RunState::Cancelled)
            }
        }
    }

    fn spawn(&self, state: AppState, job: Job, admitted: Option<oneshot::Sender<Result<RunStatus, ApiError>>>, reply: Option<oneshot::Sender<RunReply>>) {
        let runner = self.clone();
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        // Whoever answers first, the `response` block or the run's end, takes the sender.
        let reply = Arc::new(Mutex::new(reply));
        tokio::spawn(async move {
            let reply_value = runner.execute(&state, job, admitted, Arc::clone(&reply)).await;
            let sender = reply.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let (Some(sender), Some(value)) = (sender, reply_value) {
                let _ = sender.send(value);
            }
            if runner.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                runner.inner.idle.notify_waiters();
            }
        });
    }

    async fn execute(&self, state: &AppState, job: Job, admitted: Option<oneshot::Sender<Result<RunStatus, ApiError>>>, reply: ReplySlot) -> Option<RunReply> {
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.inner.cancels.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(job.run_id.clone(), cancel_tx);
        let meter = StoreMeter { state, job: &job, admitted: Mutex::new(admitted), refusal: Mutex::new(None) };
        let engine = self.inner.engine.with_resolver(Arc::new(TeamFlows { catalog: state.catalog.clone(), team: job.team.clone() }));
        let run_id = job.run_id.clone();
        let on_response = ResponseHook(Arc::new(move |response: &flowcredits_engine::Response| {
            if let Some(sender) = reply.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
                let early = RunReply { run_id: run_id.clone(), state: RunState::Running, credits: Credits::ZERO, response: Some((response.status, response.body.clone())), output: Value::Null, error: None };
                let _ = sender.send(early);
            }
        }));
        let request = RunRequest { run: RunId::new(job.run_id.clone()).ok()?, context: job.context, input: job.input.clone(), config: Map::new(), http: job.http.clone(), on_response: job.answer_on_response.then_some(on_response) };
        let outcome = tokio::select! {
            result = tokio::time::timeout(state.run_duration_max, engine.run(&job.flow, request, &meter)) => result.map_err(|_| "timed out"),
            _ = cancel_rx => Err("cancelled"),
        };
        self.inner.cancels.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&job.run_id);
        // A run refused before admission tells the waiting caller why.
        if let Some(sender) = meter.admitted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            let refusal = meter.refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            let error = refusal.unwrap_or_else(|| match &outcome {
                Ok(Err(err)) => engine_error(err),
                _ => ApiError::internal("the run stopped before admission"),
            });
            let _ = sender.send(Err(error));
            return None;
        }
        let reply = match outcome {
            Ok(Ok(report)) if report.outcome == RunOutcome::Paused => return None,
            Ok(Ok(report)) => reply_from_report(&job.run_id, report),
            Ok(Err(err)) => RunReply { run_id: job.run_id.clone(), state: RunState::Failed, credits: Credits::ZERO, response: None, output: Value::Null, error: Some(err.to_string()) },
            Err(reason) => {
                // Stopped from outside: the ledger closes the run so it is never charged again.
                let closed = if reason == "cancelled" { state.ledger.cancel_run(&job.team, &job.run_id).await } else { state.ledger.end_run(&job.team, &job.run_id).await };
                if let Err(err) = closed {
                    tracing::warn!(team = %job.team, run = %job.run_id, error = %err, "closing a stopped run in the ledger failed");
                }
                let run_state = if reason == "cancelled" { RunState::Cancelled } else { RunState::TimedOut };
                let credits = state.ledger.run_credits(&job.team, &job.run_id).await.unwrap_or(Credits::ZERO);
                RunReply { run_id: job.run_id.clone(), state: run_state, credits, response: None, output: Value::Null, error: Some(format!("run {reason}")) }
            }
        };
        record_finished(state, &job.team, &reply).await;
        Some(reply)
    }
}

/// Records a finished run (history, the metric) and asks for an alert check: the server's own
/// runs and private-runner jobs alike.
pub(crate) async fn record_finished(state: &AppState, team: &str, reply: &RunReply) {
    let (run, status, credits) = (reply.run_id.as_str(), reply.state.as_str(), reply.credits.0);
    match &reply.error {
        // One line per run at `info` would flood a busy server's log: successes at `debug`.
        None => tracing::debug!(team, run, status, credits, "a run ended"),
        Some(error) => tracing::info!(team, run, status, credits, error = %error, "a run ended without succeeding"),
    }
    state.metrics.run_finished(reply.state);
    state.history.finished(FinishedRun { id: reply.run_id.clone(), state: reply.state, credits: reply.credits.0, output: reply.output.clone(), error: reply.error.clone(), response: reply.response.clone() });
    crate::scheduler::check_alerts(state, team).await;
}

/// How far before the newest run in history [`restore_lost_history`] looks for runs without
/// history: far more than history ever lags behind the ledger (milliseconds).
const LOST_HISTORY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Runs [`restore_lost_history`] compares at most (the newest ones).
const LOST_HISTORY_RUNS_MAX: usize = 100_000;

/// At start-up: runs the ledger admitted whose history a crash lost. History is written a few
/// milliseconds behind the runs, and a run's id may already have been handed out (a 202, a
/// 402, a synchronous answer), so each such run gets a row from the ledger's record (trigger,
/// place, status, credits; its flow, input and blocks are what was lost) instead of being a
/// run id that answers 404. A running one was cut off: it ends, keeping what it was charged. A
/// paused one can never run (its input was in the lost history): it is cancelled, so it does
/// not hold a place in its team's queue. Runs older than the history's retention (at `now`)
/// are left alone: their rows were pruned, not lost. Runs another process recorded in the ledger file
/// while the server was stopped (`flowcredits run --db`) have no history either, and are
/// recorded the same way. Returns how many were running.
async fn restore_lost_history(state: &AppState, now: Timestamp) -> Result<usize, ApiError> {
    let newest_ms = state.history.read(&state.catalog, |connection| history::newest_created_ms(connection)).await?;
    let since_ms = newest_ms.map_or(0, |ms| ms.saturating_sub(LOST_HISTORY_WINDOW.as_millis() as i64));
    // Runs older than the retention have no history because it was pruned, not lost.
    let since_ms = since_ms.max(state.history_cutoff_ms(now).unwrap_or(0));
    let since = Timestamp::from_millisecond(since_ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let runs = state.ledger.runs_since(since, LOST_HISTORY_RUNS_MAX).await?;
    let history_ids: Vec<String> = runs.iter().map(|run| history::ledger_run_history_id(run.team.as_str(), run.run.as_str(), run.created_at.as_millisecond())).collect();
    let ids = history_ids.clone();
    let missing: std::collections::HashSet<String> = state.catalog.call(move |connection| history::without_rows(connection, ids)).await?.into_iter().collect();
    let mut interrupted = 0;
    let mut rows = Vec::new();
    for (run, history_id) in runs.into_iter().zip(history_ids).filter(|(_, history_id)| missing.contains(history_id)) {
        let (team, id) = (run.team.to_string(), run.run.to_string());
        let mut ended_ms = run.ended_at.map(|at| at.as_millisecond());
        let (status, error) = match run.info.status {
            RunStatus::Running => {
                // It ends where the ledger last knew of it, not after the server's downtime.
                let last_charge_ms = state.ledger.run_times(&team, &id).await?.and_then(|times| times.last_charge_at).map(|at| at.as_millisecond());
                ended_ms = last_known_ms(Some(run.created_at.as_millisecond()), last_charge_ms);
                state.ledger.end_run(&team, &id).await?;
                interrupted += 1;
                (RunState::Failed, "interrupted: the server stopped while the run was executing, before its history was written; it is shown ending at its last charge, the last moment known of it")
            }
            RunStatus::Paused => {
                state.ledger.cancel_run(&team, &id).await?;
                (RunState::Cancelled, "this paused run's input is not recorded here (lost in a crash, or the run was started by another process), so it could never resume; it was cancelled and charged nothing")
            }
            // Whether it succeeded was in the lost history: `unknown`, not a failure it may not
            // have had; the error says why.
            RunStatus::Completed => (RunState::Unknown, "this run has no history here (lost in a crash, or the run was made by another process): its outcome, flow and blocks are unknown; its credits are the ledger's"),
            RunStatus::Cancelled => (RunState::Cancelled, "this run has no history here (lost in a crash, or the run was made by another process); its credits are the ledger's"),
        };
        tracing::debug!(team = %team, run = %id, status = status.as_str(), "a run's history was lost; it is recorded from the ledger");
        let ended_ms = ended_ms.unwrap_or_else(catalog::now_ms);
        // A run the server did not name is listed under an id of the server's: say which it is.
        let error = if history_id == id { error.to_owned() } else { format!("{error} (the ledger's run `{id}`)") };
        rows.push((team, history_id, run.info.context, run.info.credits.0, run.created_at.as_millisecond(), ended_ms, status, error));
    }
    if rows.is_empty() {
        return Ok(0);
    }
    tracing::warn!(runs = rows.len(), "runs the ledger admitted had no history (lost in a crash, or the catalog is older than the ledger); they were recorded from the ledger");
    state
        .catalog
        .call(move |connection| {
            let transaction = connection.transaction()?;
            let mut tally = history::FlowUsageTally::default();
            for (team, id, context, credits, created_ms, ended_ms, status, error) in &rows {
                let (trigger, location) = (context.trigger().as_str(), context.location().as_str());
                let row = history::NewRun { id, team, flow_id: history::LEDGER_FLOW_ID, snapshot: None, deployment_id: None, trigger, location, status: RunState::Running, input: &Value::Null, at_ms: *created_ms };
                let end = history::RunEnd { state: *status, at_ms: *ended_ms, credits: *credits, output: &Value::Null, error: Some(error.as_str()), response: None };
                history::insert_run_tallied(&transaction, &row, Some(&end), &mut tally)?;
            }
            tally.write(&transaction)?;
            Ok(transaction.commit()?)
        })
        .await?;
    Ok(interrupted)
}

/// The last moment known of a run a crash cut off: its last charge, or when it started if it
/// was never charged (what it did after that is unknown; the server's downtime is not its time).
fn last_known_ms(started_ms: Option<i64>, last_charge_ms: Option<i64>) -> Option<i64> {
    match (started_ms, last_charge_ms) {
        (Some(started), Some(charged)) => Some(started.max(charged)),
        (started, charged) => started.or(charged),
    }
}

/// Where the answer to a waiting caller goes, once.
type ReplySlot = Arc<Mutex<Option<oneshot::Sender<RunReply>>>>;

/// One run's work.
struct Job {
    run_id: String,
    team: String,
    flow_id: String,
    snapshot: Option<u32>,
    deployment_id: Option<String>,
    flow: Arc<Flow>,
    input: Value,
    context: RunContext,
    http: Option<HttpTrigger>,
    answer_on_response: bool,
    /// A paused run the ledger has resumed (its history row exists).
    resumed: bool,
}

/// What a finished run tells its caller; a private runner builds the same from its report.
pub fn reply_from_report(run_id: &str, report: RunReport) -> RunReply {
    let (state, error) = match report.outcome {
        RunOutcome::Failed { error } => (RunState::Failed, Some(error)),
        _ => (RunState::Succeeded, None),
    };
    RunReply { run_id: run_id.to_owned(), state, credits: report.total, response: report.response.map(|response| (response.status, response.body)), output: shown_by_label(report.outputs), error }
}

/// What `display` blocks showed, by label (or block): a label shown once maps to its value, one
/// shown more than once (a display in a loop, two displays with one label) to the list of its
/// values in the order shown, so nothing shown is lost.
pub(crate) fn shown_by_label(outputs: Vec<flowcredits_engine::Output>) -> Value {
    let mut shown: Map<String, Value> = Map::new();
    let mut repeated = std::collections::HashSet::new();
    for output in outputs {
        let label = output.label.unwrap_or(output.at);
        match shown.get_mut(&label) {
            None => {
                shown.insert(label, output.value);
            }
            Some(Value::Array(values)) if repeated.contains(&label) => values.push(output.value),
            Some(first) => {
                *first = Value::Array(vec![first.take(), output.value]);
                repeated.insert(label);
            }
        }
    }
    Value::Object(shown)
}

fn engine_error(err: &EngineError) -> ApiError {
    match err {
        EngineError::Invalid { .. } | EngineError::FlowNotFound { .. } | EngineError::FlowRecursion { .. } | EngineError::FlowTooDeep { .. } => ApiError::invalid("definition", err.to_string()),
        EngineError::Meter(core) => ApiError::invalid("definition", core.to_string()),
        _ => ApiError::internal(err),
    }
}

/// Meters a server-side run into the durable ledger and records its history.
struct StoreMeter<'j> {
    state: &'j AppState,
    job: &'j Job,
    admitted: Mutex<Option<oneshot::Sender<Result<RunStatus, ApiError>>>>,
    /// Why the ledger refused the admission, in the API's terms, for the waiting caller: the
    /// engine's error carries only its text.
    refusal: Mutex<Option<ApiError>>,
}

impl StoreMeter<'_> {
    fn ledger(&self) -> &Ledger {
        &self.state.ledger
    }

    async fn admit_inner(&self, run: &RunId, context: RunContext, planned: &[BlockUsage]) -> Result<Admission, EngineError> {
        let needs_credits = self.state.rules.run_needs_credits(Timestamp::now(), context, planned)?;
        let status = match admit(self.state, &self.job.team, run.as_str(), context, needs_credits).await {
            Ok(status) => status,
            Err(refused) => {
                let message = refused.to_string();
                *self.refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(refused);
                return Err(EngineError::Store(message));
            }
        };
        let job = self.job;
        self.state.history.admitted(AdmittedRun {
            id: job.run_id.clone(),
            team: job.team.clone(),
            flow_id: job.flow_id.clone(),
            snapshot: job.snapshot,
            deployment_id: job.deployment_id.clone(),
            trigger: context.trigger().as_str(),
            location: context.location().as_str(),
            status: if status == RunStatus::Running { RunState::Running } else { RunState::Paused },
            input: job.input.clone(),
            paused_http: if status == RunStatus::Paused { job.http.as_ref().map(crate::jobs::http_json) } else { None },
            resumed: job.resumed,
        });
        if let Some(sender) = self.admitted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            let _ = sender.send(Ok(status));
        }
        Ok(if status == RunStatus::Running { Admission::Running } else { Admission::Paused })
    }

    async fn charge_inner(&self, run: &RunId, charges: &mut [BlockCharge]) -> Result<Vec<Credits>, EngineError> {
        // The ledger's message says what it refused (an execution seen with other content, a run
        // that is no longer running); it is passed on as it is.
        charge_run(self.state, &self.job.team, run.as_str(), charges).await.map_err(|err| meter_error(&self.job.team, run, err))
    }

    async fn charge_and_end_inner(&self, run: &RunId, charges: &mut [BlockCharge]) -> ChargedAndEnded {
        match self.ledger().charge_and_end(&self.job.team, run.as_str(), charges).await {
            Ok((charged, ended)) => {
                if let Ok(credits) = &charged {
                    record_charged(self.state, run.as_str(), charges, credits);
                }
                (charged.map_err(|err| meter_error(&self.job.team, run, err)), ended.map_err(|err| meter_error(&self.job.team, run, err)))
            }
            // Neither was sent (the run or team could not be named): both failed alike.
            Err(err) => (Err(EngineError::Store(err.to_string())), Err(meter_error(&self.job.team, run, err))),
        }
    }
}

fn meter_error(team: &str, run: &RunId, err: ApiError) -> EngineError {
    // The run's history shows the public message; the operator's log gets the cause (a full
    // disk, a database error) here, where it is still known.
    if let ApiError::Internal(detail) = &err {
        tracing::error!(team, run = run.as_str(), detail = %detail, "metering a run failed");
    }
    EngineError::Store(err.to_string())
}

impl Meter for StoreMeter<'_> {
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>> {
        Box::pin(self.admit_inner(run, context, planned))
    }

    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>> {
        Box::pin(self.charge_inner(run, charges))
    }

    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move { self.ledger().end_run(&self.job.team, run.as_str()).await.map_err(|err| meter_error(&self.job.team, run, err)) })
    }

    fn charge_and_end<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, ChargedAndEnded> {
        Box::pin(self.charge_and_end_inner(run, charges))
    }
}

/// Charges block executions of a running run in the ledger and lists each in the run's
/// history: the server's own runs (through `StoreMeter`), local runs and private-runner jobs
/// (whose executions are reported over HTTP). An execution reported again (a retry, a job
/// handed out again) is acknowledged by the ledger with its first credits and listed once.
pub(crate) async fn charge_run(state: &AppState, team: &str, run_id: &str, charges: &mut [BlockCharge]) -> Result<Vec<Credits>, ApiError> {
    let outcomes = state.ledger.charge(team, run_id, charges).await?;
    let credits: Vec<Credits> = outcomes.iter().map(|(credits, _)| *credits).collect();
    if outcomes.iter().all(|(_, replayed)| !replayed) {
        record_charged(state, run_id, charges, &credits);
        return Ok(credits);
    }
    // A retried execution was recorded when first charged: history gets only the new ones.
    let (mut fresh, mut fresh_credits) = (Vec::new(), Vec::new());
    for (charge, (credits, replayed)) in charges.iter_mut().zip(&outcomes) {
        if !replayed {
            fresh.push(BlockCharge { trace: charge.trace.take(), ..BlockCharge::new(charge.execution.clone(), charge.usage.clone()) });
            fresh_credits.push(*credits);
        }
    }
    record_charged(state, run_id, &mut fresh, &fresh_credits);
    Ok(credits)
}

/// Counts charged credits and queues the blocks' history rows.
fn record_charged(state: &AppState, run_id: &str, charges: &mut [BlockCharge], credits: &[Credits]) {
    if charges.is_empty() {
        return;
    }
    state.metrics.charged(credits.iter().copied().sum());
    let prefix = format!("{run_id}/");
    let blocks = charges
        .iter_mut()
        .zip(credits)
        .map(|(charge, credits)| {
            // The trace is taken, not copied: nothing reads it after the charge.
            let trace = charge.trace.take().map(|trace| *trace);
            let (started_ms, duration_us) = trace.as_ref().map_or_else(|| (catalog::now_ms(), 0), |trace| (trace.started_at.as_millisecond(), trace.duration_us.min(i64::MAX as u64) as i64));
            let null = || serde_json::value::RawValue::NULL.to_owned();
            let (input, output, error) = trace.map_or_else(|| (null(), null(), None), |trace| (trace.input, trace.output, trace.error));
            BlockRecord {
                block_id: charge.execution.as_str().strip_prefix(&prefix).unwrap_or(charge.execution.as_str()).to_owned(),
                kind: charge.usage.kind.as_str(),
                failed: error.is_some(),
                input,
                output,
                started_ms,
                duration_us,
                credits: credits.0,
                error,
            }
        })
        .collect();
    state.history.blocks(run_id.to_owned(), blocks);
}

/// Admits a run in the team's ledger, timed for the admission metric: every admission, from
/// the server's own runs or from runs metered for the user's machine, goes through here.
pub async fn admit(state: &AppState, team: &str, run: &str, context: RunContext, needs_credits: bool) -> Result<RunStatus, ApiError> {
    let decided = Instant::now();
    let status = state.ledger.start_run(team, run, context, needs_credits).await?;
    state.metrics.admission(status, decided.elapsed());
    match status {
        RunStatus::Paused => tracing::info!(team, run, "a run was paused at admission: the team is out of credits"),
        // One line per run at `info` would flood a busy server's log: admissions at `debug`.
        _ => tracing::debug!(team, run, location = context.location().as_str(), "a run was admitted"),
    }
    Ok(status)
}

/// Parses and validates a flow definition (all problems at once).
pub fn load_flow(definition: &Value) -> Result<Flow, ApiError> {
    Flow::load(&definition.to_string(), Syntax::Json).map_err(|err| ApiError::invalid("definition", err.to_string()))
}

/// Checks a flow before it is saved: its file, and the models its AI blocks name.
pub fn validate_flow(rules: &flowcredits_core::Rules, definition: &Value) -> Result<(), ApiError> {
    let flow = load_flow(definition)?;
    flowcredits_engine::check_models(rules, Timestamp::now(), &flow).map_err(|err| ApiError::invalid("definition", err.to_string()))
}

/// The credit estimate of a flow for a run context.
pub fn estimate(rules: &flowcredits_core::Rules, definition: &Value, context: RunContext, flows: &TeamFlows) -> Result<Value, ApiError> {
    let flow = load_flow(definition)?;
    let estimate = flowcredits_engine::estimate(rules, Timestamp::now(), context, &flow, flows).map_err(|err| ApiError::invalid("definition", err.to_string()))?;
    Ok(estimate.to_json(&flow, context))
}

/// Finds the flows that `flow` blocks run among the team's own: the latest snapshot of the flow
/// with that name. Another team's flows are never found.
pub struct TeamFlows {
    pub catalog: catalog::Catalog,
    pub team: String,
}

impl flowcredits_engine::FlowResolver for TeamFlows {
    fn resolve(&self, name: &str) -> Result<Arc<Flow>, EngineError> {
        let not_found = |message: String| EngineError::FlowNotFound { name: name.to_owned(), message };
        let definition = self
            .catalog
            .call_here(|connection| {
                let flow = match catalog::flow_by_name(connection, &self.team, name) {
                    Err(ApiError::NotFound(_)) => return Ok(Err("the team has no flow by that name; create it and take a snapshot")),
                    other => other?,
                };
                match catalog::snapshot(connection, &self.team, &flow.id, None) {
                    Err(ApiError::NotFound(_)) => Ok(Err("the team's flow by that name has no snapshot yet; take one")),
                    other => Ok(Ok(other?.definition)),
                }
            })
            .map_err(|err| not_found(err.to_string()))?
            .map_err(|problem| not_found(problem.to_owned()))?;
        load_flow(&definition).map(Arc::new).map_err(|err| not_found(err.to_string()))
    }
}

/// The schedule a flow with a `schedule` trigger block asks for: every so many seconds, or a cron expression.
pub fn flow_schedule(definition: &Value) -> Option<FlowSchedule> {
    let block = definition.get("blocks")?.as_array()?.iter().find(|block| block.get("kind").or_else(|| block.get("type")).and_then(Value::as_str) == Some("schedule"))?;
    let config = block.get("config")?;
    if let Some(cron) = config.get("cron").and_then(Value::as_str) {
        return Some(FlowSchedule::Cron(cron.to_owned()));
    }
    let minutes = config.get("every_minutes")?.as_u64()?;
    u32::try_from(minutes.checked_mul(60)?).ok().map(FlowSchedule::EverySeconds)
}

/// The schedule a flow's `schedule` block asks for (validated when the flow was loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowSchedule {
    EverySeconds(u32),
    Cron(String),
}

/// The input schema of a flow's `mcp` trigger block, if it has one, and the flow's description.
/// Whether a tool's input schema describes an object, as MCP requires (`"type": "object"`).
pub fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// The tool a snapshot deploys as: its `mcp` block's schema, which must describe an object of
/// arguments (`field` names the request field to blame when there is no such block or schema).
pub fn mcp_tool(definition: &Value, field: &'static str) -> Result<(Value, String), ApiError> {
    let (schema, description) = mcp_tool_schema(definition).ok_or_else(|| ApiError::invalid(field, "an mcp deployment needs a flow with an `mcp` trigger block"))?;
    if !is_object_schema(&schema) {
        return Err(ApiError::invalid(field, "the `mcp` block's input_schema must describe an object (`\"type\": \"object\"`): MCP tools take an object of named arguments"));
    }
    Ok((schema, description))
}

pub fn mcp_tool_schema(definition: &Value) -> Option<(Value, String)> {
    let block = definition.get("blocks")?.as_array()?.iter().find(|block| block.get("kind").or_else(|| block.get("type")).and_then(Value::as_str) == Some("mcp"))?;
    let config = block.get("config");
    let schema = config.and_then(|config| config.get("input_schema")).cloned().unwrap_or_else(|| json!({"type": "object"}));
    let description = definition.get("description").and_then(Value::as_str).unwrap_or("").to_owned();
    Some((schema, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_shown_is_kept_under_its_label() {
        let shown = |at: &str, label: Option<&str>, value: Value| flowcredits_engine::Output { at: at.into(), label: label.map(str::to_owned), value };
        let outputs = vec![
            shown("each#0/show", Some("each"), json!(0)),
            shown("total", None, json!(3)),
            shown("each#1/show", Some("each"), json!(1)),
            shown("each#2/show", Some("each"), json!(2)),
            shown("a", Some("same"), json!("first")),
            shown("b", Some("same"), json!("second")),
        ];
        assert_eq!(shown_by_label(outputs), json!({"each": [0, 1, 2], "total": 3, "same": ["first", "second"]}));
        // A label shown once keeps its value as it is, even a list.
        assert_eq!(shown_by_label(vec![shown("x", Some("list"), json!([1, 2]))]), json!({"list": [1, 2]}));
    }

    /// A run the ledger holds and history lacks is restored, unless it is older than the
    /// history's retention: then its row was pruned on purpose.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_past_the_retention_are_not_mistaken_for_lost_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = crate::serve::open_state(&dir.path().join("db"), flowcredits_core::Rules::shipped()).unwrap();
        state.history_retention = Some(Duration::from_secs(90 * 24 * 3600));
        state.ledger.create_team("acme", flowcredits_core::PlanId::Team, flowcredits_core::AnchorDay::FIRST, "test").await.unwrap();
        let context = RunContext::automated(flowcredits_core::Trigger::Api).unwrap();
        state.ledger.start_run("acme", "run_old", context, true).await.unwrap();
        state.ledger.end_run("acme", "run_old").await.unwrap();
        let restored_rows = |state: AppState| async move { state.catalog.call(|connection| Ok(connection.query_row("SELECT COUNT(*) FROM run_history", [], |row| row.get::<_, i64>(0))?)).await.unwrap() };

        // A hundred days on, the run is past the 90-day retention: nothing is restored.
        let later = Timestamp::now().checked_add(jiff::SignedDuration::from_hours(100 * 24)).unwrap();
        restore_lost_history(&state, later).await.unwrap();
        assert_eq!(restored_rows(state.clone()).await, 0);
        // Today it is within it: its row is restored from the ledger.
        restore_lost_history(&state, Timestamp::now()).await.unwrap();
        assert_eq!(restored_rows(state.clone()).await, 1);
    }
}
