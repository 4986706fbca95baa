//! Jobs for private runners. A run of a `runs_on: private` deployment is admitted by the ledger
//! exactly like a cloud run (same pause and 402, same history row), with the private-runner
//! context; instead of executing here it becomes a job row in the catalog, so a restart loses
//! no queued job. The team's runners claim jobs oldest first (long polling), report each block
//! execution (charged through the server's own charge path) and the run's end; whoever waits
//! for the run (a hook, MCP, the API) is answered then.
//!
//! A claimed job is leased to its runner; charges and heartbeats renew the lease. A job whose
//! lease ran out (its runner died) goes out again: re-executing is safe because execution ids
//! are deterministic (`run/block`) and the ledger acknowledges a repeated id with the same
//! content without charging it again. After [`JOB_CLAIMS_MAX`] hand-outs, or once it is older
//! than the run duration limit, a job is given up and its run recorded as failed or timed out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowcredits_core::{BlockUsage, Credits, RunContext, RunStatus, Timestamp};
use flowcredits_engine::{Flow, HttpTrigger};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};

use crate::catalog::{self, RunsOn, ms_to_text, new_id, now_ms};
use crate::history::{self, NewRun, RunState};
use crate::routes_runs::{LocalCharges, charge_reported};
use crate::runner::{self, RunReply, StartRequest, Started, TeamFlows};
use crate::runners::{self, Bearer};
use crate::{ApiError, AppState, JsonBody, NoFields, Query};

/// How long a claimed job stays with its runner without a charge or heartbeat.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(60);
/// Longest a claim waits for a job before answering 204, in seconds (under common proxies'
/// idle timeouts; runners simply claim again).
pub const CLAIM_WAIT_S_MAX: u64 = 25;
/// A waiting claim looks again this often, to notice leases that ran out (nothing announces them).
const CLAIM_RECHECK: Duration = Duration::from_secs(1);
/// Times a job is handed out before it is given up (each hand-out after the first follows a
/// lease that ran out).
pub const JOB_CLAIMS_MAX: u32 = 5;
/// Most jobs one team may have queued (waiting or leased); a new run past it is refused, not
/// queued. Checked before admission, so concurrent starts may pass it by a few; resumed runs
/// are queued regardless (the ledger already runs them).
pub const QUEUED_JOBS_PER_TEAM_MAX: u32 = 1_000;
/// Longest error message a runner may report, in bytes.
pub const COMPLETION_ERROR_BYTES_MAX: usize = 64 * 1024;

/// Refuses a reported run error longer than [`COMPLETION_ERROR_BYTES_MAX`], naming `error`.
pub(crate) fn check_completion_error(error: Option<&str>) -> Result<(), ApiError> {
    if error.is_some_and(|error| error.len() > COMPLETION_ERROR_BYTES_MAX) {
        return Err(ApiError::invalid("error", format!("is longer than {COMPLETION_ERROR_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// A run error cut to [`COMPLETION_ERROR_BYTES_MAX`] bytes (on a character boundary), as a
/// client reports it so that the server takes it.
pub(crate) fn error_within_limit(mut text: String) -> String {
    if text.len() > COMPLETION_ERROR_BYTES_MAX {
        let mut end = COMPLETION_ERROR_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
/// Most jobs one sweep gives up (the rest wait for the next sweep).
const SWEEP_JOBS_MAX: u32 = 100;

/// Wakes waiting claims and holds the answers that synchronous callers wait for.
#[derive(Clone)]
pub struct JobHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    lease: Duration,
    posted: Notify,
    /// Run id to the caller waiting for its end (hooks, MCP, API runs with `wait`). In memory:
    /// one server node answers the callers it holds.
    waiters: Mutex<HashMap<String, oneshot::Sender<RunReply>>>,
}

impl Default for JobHub {
    fn default() -> JobHub {
        JobHub::new(LEASE_DEFAULT)
    }
}

impl JobHub {
    /// A hub whose leases last `lease` (tests shorten it).
    pub fn new(lease: Duration) -> JobHub {
        JobHub { inner: Arc::new(HubInner { lease, posted: Notify::new(), waiters: Mutex::new(HashMap::new()) }) }
    }

    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Tells waiting claims to look again (a job was queued or released).
    pub fn wake(&self) {
        self.inner.posted.notify_waiters();
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<RunReply>>> {
        self.inner.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_for(&self, run_id: &str) -> oneshot::Receiver<RunReply> {
        let (sender, receiver) = oneshot::channel();
        self.waiters().insert(run_id.to_owned(), sender);
        receiver
    }

    fn forget(&self, run_id: &str) {
        self.waiters().remove(run_id);
    }

    fn answer(&self, reply: RunReply) {
        if let Some(sender) = self.waiters().remove(&reply.run_id) {
            let _ = sender.send(reply);
        }
    }

    /// Drops the places of callers who stopped waiting (their answer would go nowhere).
    fn prune(&self) {
        self.waiters().retain(|_, sender| !sender.is_closed());
    }
}

// ---------------------------------------------------------------- starting runs

/// Starts a run of a deployment where it runs: on this server, or queued for the team's
/// private runners. `request.context` is the cloud context of its trigger.
pub async fn start_deployed(state: &AppState, runs_on: RunsOn, request: StartRequest) -> Result<Started, ApiError> {
    match runs_on {
        RunsOn::Cloud => state.runner.start(state, request).await,
        RunsOn::Private => start_private(state, request).await,
    }
}

async fn start_private(state: &AppState, request: StartRequest) -> Result<Started, ApiError> {
    // The plan may have changed since the deployment was made.
    runners::require_entitlement(state, &request.team).await?;
    let context = RunContext::private_runner(request.context.trigger()).map_err(|err| ApiError::invalid("trigger", err.to_string()))?;
    let team = request.team.clone();
    let queued = state.catalog.call(move |connection| jobs_of_team(connection, &team)).await?;
    if queued >= QUEUED_JOBS_PER_TEAM_MAX {
        return Err(ApiError::LimitReached(format!(
            "team {} has {queued} jobs queued for its private runners, the most it may queue ({QUEUED_JOBS_PER_TEAM_MAX}); start a runner (`flowcredits runner`) or deploy to the cloud",
            request.team
        )));
    }
    let planned = planned_usage(state, &request.team, Arc::clone(&request.flow)).await?;
    let needs_credits = state.rules.run_needs_credits(Timestamp::now(), context, &planned).map_err(|err| ApiError::invalid("definition", err.to_string()))?;
    let run_id = new_id("run");
    let reply = state.jobs.wait_for(&run_id);
    let status = match runner::admit(state, &request.team, &run_id, context, needs_credits).await {
        Ok(status) => status,
        Err(err) => {
            state.jobs.forget(&run_id);
            return Err(err);
        }
    };
    let running = status == RunStatus::Running;
    let http = request.http.as_ref().map(http_json);
    let (id, team) = (run_id.clone(), request.team.clone());
    let recorded = state
        .catalog
        .call(move |connection| {
            let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let run = NewRun {
                id: &id,
                team: &team,
                flow_id: &request.flow_id,
                snapshot: request.snapshot,
                deployment_id: request.deployment_id.as_deref(),
                trigger: context.trigger().as_str(),
                location: context.location().as_str(),
                status: if running { RunState::Running } else { RunState::Paused },
                input: &request.input,
                at_ms: now_ms(),
            };
            history::insert_run(&tx, &run, None)?;
            if running {
                tx.execute("INSERT INTO runner_jobs (run_id, team, http, created_ms) VALUES (?1, ?2, ?3, ?4)", params![id, team, http.map(|http| http.to_string()), now_ms()])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await;
    if let Err(err) = recorded {
        // Nothing is left half written: the run the ledger admitted (or paused) is closed.
        state.jobs.forget(&run_id);
        if let Err(closing) = state.ledger.cancel_run(&request.team, &run_id).await {
            tracing::error!(team = %request.team, run = %run_id, error = %closing, "closing a run whose job could not be recorded failed");
        }
        return Err(err);
    }
    if !running {
        state.jobs.forget(&run_id);
        return Ok(Started { run_id, status, reply: None });
    }
    state.metrics.job_queued();
    state.jobs.wake();
    Ok(Started { run_id, status, reply: Some(reply) })
}

/// The usage every block of the run may have (nested flows included), to decide whether it
/// needs credits. Resolving reads the catalog, so it stays off the async workers.
async fn planned_usage(state: &AppState, team: &str, flow: Arc<Flow>) -> Result<Vec<BlockUsage>, ApiError> {
    let flows = TeamFlows { catalog: state.catalog.clone(), team: team.to_owned() };
    tokio::task::spawn_blocking(move || {
        let nested = flowcredits_engine::resolve_all(&flow, &flows).map_err(|err| ApiError::invalid("definition", err.to_string()))?;
        Ok(flowcredits_engine::planned_usage(&flow, &nested))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Queues a paused private run that the ledger has resumed (it runs now; nobody waits for it).
pub(crate) async fn enqueue_resumed(state: &AppState, team: &str, run_id: &str) -> Result<(), ApiError> {
    let (team, id) = (team.to_owned(), run_id.to_owned());
    let added = state
        .catalog
        .call(move |connection| {
            let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let added = tx.execute("INSERT OR IGNORE INTO runner_jobs (run_id, team, created_ms) VALUES (?1, ?2, ?3)", params![id, team, now_ms()])?;
            history::mark_started(&tx, &id, now_ms())?;
            tx.commit()?;
            Ok(added)
        })
        .await?;
    if added > 0 {
        state.metrics.job_queued();
        state.jobs.wake();
    }
    Ok(())
}

/// `runs` (team, run id) without those that are private-runner jobs.
pub(crate) async fn without_jobs(state: &AppState, runs: Vec<(String, String)>) -> Result<Vec<(String, String)>, ApiError> {
    let jobs: HashSet<String> = state
        .catalog
        .call(|connection| {
            let mut statement = connection.prepare("SELECT run_id FROM runner_jobs")?;
            Ok(statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?)
        })
        .await?;
    Ok(runs.into_iter().filter(|(_, run)| !jobs.contains(run)).collect())
}

/// A team's queue: its jobs waiting and leased.
fn jobs_of_team(connection: &Connection, team: &str) -> Result<u32, ApiError> {
    Ok(connection.query_row("SELECT COUNT(*) FROM runner_jobs WHERE team = ?1", [team], |row| row.get(0))?)
}

/// Jobs waiting for a runner and jobs leased to one, across teams (for `/metrics`).
pub(crate) fn job_counts(connection: &Connection) -> Result<(u64, u64), ApiError> {
    Ok(connection.query_row(
        "SELECT COUNT(*) FILTER (WHERE runner_id IS NULL OR lease_until_ms < ?1), COUNT(*) FILTER (WHERE lease_until_ms >= ?1) FROM runner_jobs",
        [now_ms()],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
    )?)
}

/// The HTTP request that triggered a hook, as a job carries it.
pub fn http_json(http: &HttpTrigger) -> Value {
    json!({"method": http.method, "path": http.path, "headers": http.headers, "query": http.query})
}

/// The HTTP request of a job, as the engine takes it.
pub fn http_from_json(value: &Value) -> Option<HttpTrigger> {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let map = |name: &str| value.get(name).and_then(Value::as_object).cloned().unwrap_or_default();
    Some(HttpTrigger { method: text("method")?, path: text("path")?, headers: map("headers"), query: map("query") })
}

/// What a runner reports when a job's run ends (the body of `…/complete`).
pub fn completion_json(reply: &RunReply) -> Value {
    json!({
        "state": reply.state.as_str(),
        "response": reply.response.as_ref().map(|(status, body)| json!({"status": status, "body": body})),
        "output": reply.output,
        // Cut to what the server takes: a longer one would refuse the whole completion.
        "error": reply.error.clone().map(error_within_limit),
    })
}

// ---------------------------------------------------------------- hand-out

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClaimQuery {
    /// Seconds to wait for a job; capped at [`CLAIM_WAIT_S_MAX`].
    wait_s: Option<u64>,
}

/// `POST …/runners/{runner}/jobs/claim`: the team's oldest waiting job, leased to this runner,
/// or 204 when none came within the wait.
pub async fn claim(State(state): State<AppState>, bearer: Bearer, Path((team, runner)): Path<(String, String)>, Query(query): Query<ClaimQuery>, JsonBody(NoFields {}): JsonBody<NoFields>) -> Result<Response, ApiError> {
    let runner = bearer.runner(&state, &team, Some(&runner)).await?;
    let wait = Duration::from_secs(query.wait_s.unwrap_or(CLAIM_WAIT_S_MAX).min(CLAIM_WAIT_S_MAX));
    let deadline = tokio::time::Instant::now() + wait;
    sweep(&state, Some(&team)).await?;
    loop {
        // Registered before looking, so a job queued in between still wakes this claim.
        let posted = state.jobs.inner.posted.notified();
        if let Some(job) = take_job(&state, &team, &runner.id).await? {
            state.metrics.job_claimed();
            return Ok(Json(job).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let _ = tokio::time::timeout((deadline - now).min(CLAIM_RECHECK), posted).await;
    }
}

/// A job taken from the queue, before its nested flows are added.
struct Taken {
    run: history::RunView,
    definition: Value,
    http: Option<String>,
    attempt: u32,
    lease_until_ms: i64,
}

fn take_oldest(connection: &mut Connection, team: &str, runner: &str, lease_ms: i64) -> Result<Option<Taken>, ApiError> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_ms();
    // Jobs of runs that ended meanwhile (cancelled while waiting) have nothing left to do.
    tx.execute(
        "DELETE FROM runner_jobs WHERE team = ?1 AND run_id IN (SELECT j.run_id FROM runner_jobs j JOIN run_history h ON h.id = j.run_id WHERE j.team = ?1 AND h.status <> 'running')",
        [team],
    )?;
    let next: Option<(String, Option<String>, u32)> = tx
        .query_row(
            "SELECT run_id, http, claims FROM runner_jobs WHERE team = ?1 AND (runner_id IS NULL OR lease_until_ms < ?2) AND claims < ?3 ORDER BY run_id LIMIT 1",
            params![team, now, JOB_CLAIMS_MAX],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((run_id, http, claims)) = next else {
        tx.commit()?;
        return Ok(None);
    };
    let lease_until_ms = now + lease_ms;
    tx.execute("UPDATE runner_jobs SET runner_id = ?2, lease_until_ms = ?3, claims = claims + 1 WHERE run_id = ?1", params![run_id, runner, lease_until_ms])?;
    let run = history::run(&tx, team, &run_id)?;
    let definition = catalog::definition(&tx, team, &run.flow_id, run.snapshot)?;
    tx.commit()?;
    Ok(Some(Taken { run, definition, http, attempt: claims + 1, lease_until_ms }))
}

async fn take_job(state: &AppState, team: &str, runner: &str) -> Result<Option<Value>, ApiError> {
    let (team_name, runner_id) = (team.to_owned(), runner.to_owned());
    let lease_ms = i64::try_from(state.jobs.lease().as_millis()).unwrap_or(i64::MAX / 2);
    let Some(taken) = state.catalog.call(move |connection| take_oldest(connection, &team_name, &runner_id, lease_ms)).await? else {
        return Ok(None);
    };
    tracing::info!(team = %team, run = %taken.run.id, runner = %runner, attempt = taken.attempt, "a private runner claimed a job");
    let flows = nested_definitions(state, team, &taken.definition).await;
    Ok(Some(json!({
        "run_id": taken.run.id,
        "team": team,
        "flow_id": taken.run.flow_id,
        "deployment_id": taken.run.deployment_id,
        "flow": taken.definition,
        "flows": flows,
        "input": taken.run.input,
        "trigger": taken.run.trigger,
        "context": {"trigger": taken.run.trigger, "location": taken.run.location},
        "http": taken.http.and_then(|text| serde_json::from_str::<Value>(&text).ok()),
        "attempt": taken.attempt,
        "lease_s": state.jobs.lease().as_secs(),
        "lease_expires_at": ms_to_text(taken.lease_until_ms),
    })))
}

/// The definitions of the flows a job's `flow` blocks run (the team's latest snapshots, as on
/// the server). A flow that cannot be resolved is left out: the runner's engine then fails
/// the run with the reason, as the server's would.
async fn nested_definitions(state: &AppState, team: &str, definition: &Value) -> Map<String, Value> {
    let (flows, definition) = (TeamFlows { catalog: state.catalog.clone(), team: team.to_owned() }, definition.clone());
    let names = tokio::task::spawn_blocking(move || {
        let flow = runner::load_flow(&definition).ok()?;
        flowcredits_engine::resolve_all(&flow, &flows).ok().map(|nested| nested.into_keys().collect::<Vec<_>>())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    if names.is_empty() {
        return Map::new();
    }
    let team = team.to_owned();
    let found = state
        .catalog
        .call(move |connection| {
            let mut out = Map::new();
            for name in names {
                let flow = catalog::flow_by_name(connection, &team, &name)?;
                out.insert(name, catalog::snapshot(connection, &team, &flow.id, None)?.definition);
            }
            Ok(out)
        })
        .await;
    found.unwrap_or_default()
}

// ---------------------------------------------------------------- reports from the runner

/// Renews the lease of `run`, which must be leased to `runner` and still running.
fn renew(connection: &Connection, team: &str, run: &str, runner: &str, lease_ms: i64) -> Result<i64, ApiError> {
    let until = now_ms() + lease_ms;
    let renewed = connection.execute("UPDATE runner_jobs SET lease_until_ms = ?4 WHERE run_id = ?1 AND team = ?2 AND runner_id = ?3", params![run, team, runner, until])?;
    let status: Option<String> = connection.query_row("SELECT status FROM run_history WHERE id = ?1 AND team = ?2", params![run, team], |row| row.get(0)).optional()?;
    match (renewed, status.as_deref()) {
        (1, Some("running")) => Ok(until),
        (_, Some("running")) if job_exists(connection, run)? => {
            Err(ApiError::Conflict(format!("job {run} is no longer this runner's: its lease ran out and it was handed out again; stop working on it")))
        }
        (_, Some(status)) if status != "running" && status != "paused" => {
            connection.execute("DELETE FROM runner_jobs WHERE run_id = ?1", [run])?;
            Err(ApiError::Conflict(format!("run {run} has ended ({status}); stop working on it")))
        }
        _ => Err(ApiError::NotFound(format!("job {run}"))),
    }
}

fn job_exists(connection: &Connection, run: &str) -> Result<bool, ApiError> {
    Ok(connection.query_row("SELECT EXISTS (SELECT 1 FROM runner_jobs WHERE run_id = ?1)", [run], |row| row.get(0))?)
}

async fn renew_lease(state: &AppState, team: &str, run: &str, runner: &str) -> Result<i64, ApiError> {
    let (team, run, runner) = (team.to_owned(), run.to_owned(), runner.to_owned());
    let lease_ms = i64::try_from(state.jobs.lease().as_millis()).unwrap_or(i64::MAX / 2);
    state.catalog.call(move |connection| renew(connection, &team, &run, &runner, lease_ms)).await
}

/// `POST …/jobs/{run}/charges`: block executions of a leased job, charged and listed in
/// history like the server's own runs; renews the lease.
pub async fn charge(State(state): State<AppState>, bearer: Bearer, Path((team, runner, run)): Path<(String, String, String)>, JsonBody(body): JsonBody<LocalCharges>) -> Result<Json<Value>, ApiError> {
    let runner = bearer.runner(&state, &team, Some(&runner)).await?;
    renew_lease(&state, &team, &run, &runner.id).await?;
    charge_reported(&state, &team, &run, body).await
}

/// `POST …/jobs/{run}/heartbeat`: the runner is still on it; renews the lease.
pub async fn heartbeat(State(state): State<AppState>, bearer: Bearer, Path((team, runner, run)): Path<(String, String, String)>, JsonBody(NoFields {}): JsonBody<NoFields>) -> Result<Json<Value>, ApiError> {
    let runner = bearer.runner(&state, &team, Some(&runner)).await?;
    let until = renew_lease(&state, &team, &run, &runner.id).await?;
    Ok(Json(json!({"run_id": run, "lease_expires_at": ms_to_text(until)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// `succeeded` or `failed`.
    state: String,
    /// The flow's `response` block's answer, when it has one.
    response: Option<CompletionResponse>,
    #[serde(default)]
    output: Value,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionResponse {
    status: u16,
    #[serde(default)]
    body: Value,
}

/// `POST …/jobs/{run}/complete`: the run ended on the runner. The ledger ends it, history
/// records it, and a waiting caller gets its answer.
pub async fn complete(State(state): State<AppState>, bearer: Bearer, Path((team, runner, run)): Path<(String, String, String)>, JsonBody(body): JsonBody<Completion>) -> Result<Json<Value>, ApiError> {
    let runner = bearer.runner(&state, &team, Some(&runner)).await?;
    let run_state = match body.state.as_str() {
        "succeeded" => RunState::Succeeded,
        "failed" => RunState::Failed,
        other => return Err(ApiError::invalid("state", format!("`{other}` is not succeeded or failed"))),
    };
    if let Some(response) = body.response.as_ref().filter(|response| !(100..=599).contains(&response.status)) {
        return Err(ApiError::invalid("response.status", format!("{} is not an HTTP status (100 to 599)", response.status)));
    }
    check_completion_error(body.error.as_deref())?;
    renew_lease(&state, &team, &run, &runner.id).await?;
    state.ledger.end_run(&team, &run).await?;
    let credits = state.ledger.run_credits(&team, &run).await?;
    let reply = RunReply { run_id: run.clone(), state: run_state, credits, response: body.response.map(|response| (response.status, response.body)), output: body.output, error: body.error };
    tracing::info!(team = %team, run = %run, runner = %runner.id, state = run_state.as_str(), credits = credits.0, "a private runner finished a job");
    finish_job(&state, &team, reply).await;
    Ok(Json(json!({"run_id": run, "status": run_state, "credits": credits.0})))
}

/// Records a job's run as finished, removes the job and answers whoever waits.
async fn finish_job(state: &AppState, team: &str, reply: RunReply) {
    runner::record_finished(state, team, &reply).await;
    let id = reply.run_id.clone();
    if let Err(err) = state.catalog.call(move |connection| Ok(connection.execute("DELETE FROM runner_jobs WHERE run_id = ?1", [&id])?)).await {
        tracing::error!(team, run = %reply.run_id, error = %err, "removing a finished job failed");
    }
    state.jobs.answer(reply);
}

/// Gives up jobs that no runner will finish: handed out [`JOB_CLAIMS_MAX`] times with the last
/// lease run out (failed), or older than the run duration limit (timed out). Their charges
/// stay; the ledger ends the run. Of one team, or of all teams (the scheduler's minute tick).
pub async fn sweep(state: &AppState, team: Option<&str>) -> Result<usize, ApiError> {
    state.jobs.prune();
    let team = team.map(str::to_owned);
    let oldest_ms = now_ms() - i64::try_from(state.run_duration_max.as_millis()).unwrap_or(i64::MAX / 2);
    let doomed: Vec<(String, String, u32, bool)> = state
        .catalog
        .call(move |connection| {
            let mut statement = connection.prepare(
                "SELECT j.team, j.run_id, j.claims, j.created_ms < ?4 FROM runner_jobs j JOIN run_history h ON h.id = j.run_id
                 WHERE (?1 IS NULL OR j.team = ?1) AND h.status = 'running'
                   AND ((j.claims >= ?2 AND (j.runner_id IS NULL OR j.lease_until_ms < ?3)) OR j.created_ms < ?4)
                 ORDER BY j.run_id LIMIT ?5",
            )?;
            let rows = statement.query_map(params![team, JOB_CLAIMS_MAX, now_ms(), oldest_ms, SWEEP_JOBS_MAX], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    for (team, run, claims, too_old) in &doomed {
        let (run_state, error) = if *too_old {
            (RunState::TimedOut, format!("run timed out: no private runner finished it within {} minutes", state.run_duration_max.as_secs() / 60))
        } else {
            (RunState::Failed, format!("given up: handed to private runners {claims} times and each lease ran out before the run ended; check the runners' logs"))
        };
        if let Err(err) = state.ledger.end_run(team, run).await {
            tracing::warn!(team = %team, run = %run, error = %err, "ending a given-up job's run in the ledger failed");
        }
        let credits = state.ledger.run_credits(team, run).await.unwrap_or(Credits::ZERO);
        tracing::warn!(team = %team, run = %run, reason = %error, "a private-runner job was given up");
        finish_job(state, team, RunReply { run_id: run.clone(), state: run_state, credits, response: None, output: Value::Null, error: Some(error) }).await;
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner reports a run's error however long it was, cut to what the server takes (on a
    /// character boundary), so that the completion is not refused for it.
    #[test]
    fn a_completion_carries_an_error_the_server_takes() {
        let error = format!("{}é", "x".repeat(COMPLETION_ERROR_BYTES_MAX - 1));
        let reply = RunReply { run_id: "run_1".into(), state: RunState::Failed, credits: flowcredits_core::Credits(3), response: None, output: Value::Null, error: Some(error) };
        let sent = completion_json(&reply);
        let sent_error = sent["error"].as_str().unwrap();
        assert_eq!(sent_error.len(), COMPLETION_ERROR_BYTES_MAX - 1, "the two-byte character that would cross the limit is left out");
        assert!(check_completion_error(Some(sent_error)).is_ok());
        let short = RunReply { error: Some("boom".into()), ..reply };
        assert_eq!(completion_json(&short)["error"], "boom");
    }
}
