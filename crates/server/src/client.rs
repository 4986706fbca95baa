//! Clients of this server's HTTP API for flows that execute on another machine. They live
//! beside the server so both ends of each protocol change together, and so the server's own
//! tests drive a real runner.
//!
//! - [`ServerMeter`] meters a run executing elsewhere against the team's ledger here: a local
//!   run (`flowcredits run --server`: admitted with its input, charged, and ended with its
//!   output or error through `/local-runs`; [`ServerMeter::finish`] sends the end, once the
//!   engine's report says how the run went), or a
//!   private runner's job (already admitted by the server; charged through the job's endpoint).
//!   The server decides; this only forwards, each execution under its deterministic id.
//! - [`RunnerClient`] is a private runner's side of the job hand-out (`flowcredits runner`):
//!   claim a job, run it with the real engine metered through the server while heartbeats keep
//!   its lease, and report how it ended.
//!
//! Errors are the engine's ([`EngineError::Store`] with a message saying what to do): the meter
//! must return them, and the runner's errors are the same kind (the server refused, or could
//! not be reached).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowcredits_core::{BlockUsage, Credits, RunContext, RunId, Trigger};
use flowcredits_engine::{Admission, BlockCharge, Engine, EngineError, Flow, HttpTrigger, MapResolver, Meter, RunOutcome, RunReport, RunRequest, Syntax};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::history::RunState;
use crate::routes_runs::{LOCAL_CHARGES_MAX, LOCAL_RUN_VALUE_BYTES_MAX};
use crate::runner::{RunReply, reply_from_report};

/// Largest charges request sent, in bytes: under the server's 5 MiB body limit, with room.
pub const CHARGES_REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest block trace (its input and output as JSON) sent with a charge, in bytes; a larger
/// one goes without its values, so history says what was left out instead of the request failing.
pub const TRACE_BYTES_MAX: usize = 256 * 1024;
/// How long any request but a claim may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest time between a job's heartbeats: how long a run cancelled on the server may go on
/// on its runner.
const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// How much longer than its wait a claim may take (the server answers at the wait's end).
const CLAIM_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);

/// Where a metered run's reports go.
enum Target {
    /// A run on the caller's machine, admitted by the server as a local run.
    LocalRun(Box<LocalRun>),
    /// A private runner's job, which the server admitted before handing it out (same run id).
    Job { runner: String },
}

/// A local run's flow and input; the server's id for each local run id, and the runs the engine
/// ended whose end [`ServerMeter::finish`] has yet to send.
struct LocalRun {
    flow: String,
    input: Value,
    runs: Mutex<HashMap<RunId, String>>,
    refused: Mutex<Option<String>>,
    unsent_ends: Mutex<std::collections::HashSet<RunId>>,
}

pub struct ServerMeter {
    client: reqwest::Client,
    /// `https://host:port/v1/teams/TEAM`.
    team_url: String,
    key: String,
    target: Target,
}

impl ServerMeter {
    /// Meters a local run of `flow` with a member's API key, recording `input` in the server's
    /// history (a note of its size instead when it is larger than the server keeps); refuses a
    /// server address that is not an http(s) URL. The run's end is sent by [`ServerMeter::finish`].
    pub fn new(server: &str, team: &str, key: &str, flow: &str, input: &Value) -> Result<ServerMeter, String> {
        let target = Target::LocalRun(Box::new(LocalRun { flow: flow.to_owned(), input: kept_value(input), runs: Mutex::new(HashMap::new()), refused: Mutex::new(None), unsent_ends: Mutex::default() }));
        Ok(ServerMeter::with_target(&server_base(server)?, team, key, target))
    }

    /// Meters the jobs `runner` runs, with its runner token (`server` checked by
    /// [`RunnerClient::connect`]).
    pub fn for_job(server: &str, team: &str, token: &str, runner: &str) -> ServerMeter {
        ServerMeter::with_target(server, team, token, Target::Job { runner: runner.to_owned() })
    }

    fn with_target(server: &str, team: &str, key: &str, target: Target) -> ServerMeter {
        ServerMeter { client: flowcredits_engine::http::client(), team_url: format!("{server}/v1/teams/{team}"), key: key.to_owned(), target }
    }

    /// Why the server did not start a local run, as it said it (with what would bring the
    /// team's credits back on its plan).
    pub fn refusal(&self) -> Option<String> {
        match &self.target {
            Target::LocalRun(local) => local.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
            Target::Job { .. } => None,
        }
    }

    /// The server's id of a local run (once admitted); a job's run id is the server's.
    pub fn server_run_id(&self, run: &RunId) -> Option<String> {
        match &self.target {
            Target::LocalRun(local) => local.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(run).cloned(),
            Target::Job { .. } => Some(run.to_string()),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, EngineError> {
        post(&self.client, &format!("{}{path}", self.team_url), &self.key, body, REQUEST_TIMEOUT).await.map_err(|refusal| match (&self.target, refusal) {
            (Target::LocalRun(_), Refusal::Answered(StatusCode::UNAUTHORIZED, _)) => {
                EngineError::Store("the server does not know --key (or FLOWCREDITS_KEY), or it was revoked; an operator creates a key with POST /v1/users/{user}/keys".into())
            }
            (_, refusal) => refusal.into_engine(),
        })
    }

    /// Cancels a local run on the server (when this process is interrupted mid-run), so that it
    /// does not stay `running` there.
    pub async fn cancel(&self, run: &RunId) -> Result<(), EngineError> {
        let server_run = self.server_run(run)?;
        self.post(&format!("/runs/{server_run}/cancel"), Value::Null).await.map(drop)
    }

    fn server_run(&self, run: &RunId) -> Result<String, EngineError> {
        self.server_run_id(run).ok_or_else(|| EngineError::Store(format!("run {run} was not admitted by the server")))
    }

    async fn admit_inner(&self, run: &RunId, context: RunContext, planned: &[BlockUsage]) -> Result<Admission, EngineError> {
        let Target::LocalRun(local) = &self.target else {
            // The server admitted the job's run before handing it out.
            return Ok(Admission::Running);
        };
        let blocks: Vec<Value> = planned.iter().map(|usage| json!({"type": usage.kind.as_str(), "model": usage.model})).collect();
        let cloud_run = context.location() != flowcredits_core::Location::Local;
        let answer = self.post("/local-runs", json!({"flow": local.flow, "blocks": blocks, "cloud_run": cloud_run, "input": local.input})).await?;
        let server_run = answer["run_id"].as_str().ok_or_else(|| EngineError::Store("the server's admission has no run_id".into()))?;
        local.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(run.clone(), server_run.to_owned());
        if answer["status"] == "running" {
            return Ok(Admission::Running);
        }
        *local.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = answer["message"].as_str().map(str::to_owned);
        Ok(Admission::Paused)
    }

    async fn charge_inner(&self, run: &RunId, charges: &[BlockCharge]) -> Result<Vec<Credits>, EngineError> {
        let server_run = self.server_run(run)?;
        let path = match &self.target {
            Target::LocalRun(_) => format!("/local-runs/{server_run}/charges"),
            Target::Job { runner } => format!("/runners/{runner}/jobs/{server_run}/charges"),
        };
        // The server names each execution after its own run id: send the part after ours.
        let prefix = format!("{run}/");
        let mut credits = Vec::with_capacity(charges.len());
        for chunk in chunks(charges.iter().map(|charge| charge_json(charge, &prefix)).collect()) {
            let sent = chunk.len();
            let answer = self.post(&path, json!({"charges": chunk})).await?;
            let answered = answer["credits"].as_array().filter(|answered| answered.len() == sent).ok_or_else(|| EngineError::Store("the server's charge answer does not list each execution's credits".into()))?;
            credits.extend(answered.iter().map(|credits| Credits(credits.as_u64().unwrap_or(0))));
        }
        Ok(credits)
    }

    async fn end_inner(&self, run: &RunId) -> Result<(), EngineError> {
        match &self.target {
            // Sent by `finish` with the run's output, which the engine reports after this.
            Target::LocalRun(local) => {
                self.server_run(run)?;
                local.unsent_ends.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(run.clone());
                Ok(())
            }
            // A job's end is reported with its result (`RunnerClient::run`).
            Target::Job { .. } => Ok(()),
        }
    }

    /// Ends a local run on the server once the engine has returned, with what the server's
    /// history shows of it: what its `display` blocks showed (as a server run's `output`), or
    /// why it failed (`ran` is the engine's answer). Nothing is sent for a run the engine did
    /// not end (paused, never admitted) or for a job.
    pub async fn finish(&self, run: &RunId, ran: Result<&RunReport, &EngineError>) -> Result<(), EngineError> {
        let Target::LocalRun(local) = &self.target else { return Ok(()) };
        if !local.unsent_ends.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(run) {
            return Ok(());
        }
        let (output, error) = match ran {
            Ok(report) => (crate::runner::shown_by_label(report.outputs.clone()), if let RunOutcome::Failed { error } = &report.outcome { Some(error.clone()) } else { None }),
            Err(err) => (Value::Null, Some(err.to_string())),
        };
        let mut body = json!({"output": kept_value(&output)});
        if let Some(error) = error {
            body["error"] = json!(crate::jobs::error_within_limit(error));
        }
        let server_run = self.server_run(run)?;
        self.post(&format!("/local-runs/{server_run}/end"), body).await.map(drop)
    }
}

impl Meter for ServerMeter {
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>> {
        Box::pin(self.admit_inner(run, context, planned))
    }

    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>> {
        Box::pin(self.charge_inner(run, charges))
    }

    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.end_inner(run))
    }
}

/// `value` if the server keeps values of its size in a local run's history, else a note of its
/// size (the run goes on; its history says what was left out).
fn kept_value(value: &Value) -> Value {
    let bytes = value.to_string().len();
    if bytes <= LOCAL_RUN_VALUE_BYTES_MAX {
        return value.clone();
    }
    json!({"omitted": format!("{bytes} bytes of JSON, more than the server keeps ({LOCAL_RUN_VALUE_BYTES_MAX})")})
}

/// One execution as the charges endpoints read it, with its trace when the engine kept one.
fn charge_json(charge: &BlockCharge, run_prefix: &str) -> Value {
    let usage = &charge.usage;
    let mut body = json!({
        "execution_id": charge.execution.as_str().strip_prefix(run_prefix).unwrap_or(charge.execution.as_str()),
        "type": usage.kind.as_str(),
        "model": usage.model,
        "external_mcp_tools": usage.external_mcp_tools,
        "internal_mcp_tools": usage.internal_mcp_tools,
    });
    if let Some(trace) = &charge.trace {
        let size = trace.input.get().len() + trace.output.get().len();
        let (input, output) = if size <= TRACE_BYTES_MAX {
            (json!(trace.input), json!(trace.output))
        } else {
            let omitted = json!({"omitted": format!("{size} bytes of values, more than a runner sends ({TRACE_BYTES_MAX})")});
            (omitted.clone(), omitted)
        };
        body["trace"] = json!({"input": input, "output": output, "error": trace.error, "started_at": trace.started_at.to_string(), "duration_us": trace.duration_us});
    }
    body
}

/// Splits charges into requests the server accepts: at most its count limit and
/// [`CHARGES_REQUEST_BYTES_MAX`] bytes each (a charge is at most a trace's worth).
fn chunks(charges: Vec<Value>) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    let mut bytes = 0;
    for charge in charges {
        let size = charge.to_string().len();
        let full = out.last().is_none_or(|last| last.len() >= LOCAL_CHARGES_MAX || bytes + size > CHARGES_REQUEST_BYTES_MAX);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("a chunk was just pushed").push(charge);
    }
    out
}

/// Why a request to the server did not succeed.
#[derive(Debug)]
pub enum Refusal {
    /// The server answered with an error status and message.
    Answered(StatusCode, String),
    /// No answer (the server is down, unreachable, or too slow).
    Unreachable(String),
}

impl Refusal {
    fn into_engine(self) -> EngineError {
        EngineError::Store(self.to_string())
    }

    /// The server refused the request itself (a bad token, a deregistered runner, a team that
    /// is gone): asking again will not help. No answer, or a server error, may pass.
    pub fn is_final(&self) -> bool {
        matches!(self, Refusal::Answered(status, _) if status.is_client_error())
    }
}

impl std::error::Error for Refusal {}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Answered(status, message) => write!(f, "the server refused ({status}): {message}"),
            Refusal::Unreachable(message) => f.write_str(message),
        }
    }
}

/// The base of a flowcredits server's URLs (`http://host:port`, no trailing slash), or what is
/// wrong with `server`.
pub fn server_base(server: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(server).map_err(|err| format!("`{server}` is not a URL ({err}); give one such as http://127.0.0.1:8080"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{server}` is not an http:// or https:// URL with a host; give one such as http://127.0.0.1:8080"));
    }
    Ok(server.trim_end_matches('/').to_owned())
}

/// POSTs (or GETs, with no body) and returns the JSON answer (`null` for 204).
async fn send(request: reqwest::RequestBuilder, url: &str, timeout: Duration) -> Result<Value, Refusal> {
    let response = request.timeout(timeout).send().await.map_err(|err| Refusal::Unreachable(unreachable(url, &err)))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no error message").to_owned();
        return Err(Refusal::Answered(status, message));
    }
    Ok(answer)
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: Value, timeout: Duration) -> Result<Value, Refusal> {
    let request = client.post(url).bearer_auth(key);
    // `null` sends no body, for the action endpoints that take none.
    send(if body.is_null() { request } else { request.json(&body) }, url, timeout).await
}

/// Why a request got no answer, with its causes (reqwest's own message hides them: "error
/// sending request"), and what to check.
fn unreachable(url: &str, err: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let why = if err.is_timeout() { "it did not answer in time".to_owned() } else if causes.is_empty() { err.to_string() } else { causes.join(": ") };
    format!("cannot reach the server at {url}: {why}; check that `flowcredits serve` is running there and that the URL is right")
}

// ---------------------------------------------------------------- the private runner

/// A job as a runner gets it.
#[derive(Clone, Debug)]
pub struct Job {
    pub run_id: String,
    /// The deployed flow's name.
    pub flow: String,
    /// 1 the first time it is handed out; more after leases ran out.
    pub attempt: u64,
    definition: Value,
    flows: Map<String, Value>,
    input: Value,
    trigger: Trigger,
    http: Option<HttpTrigger>,
}

/// How a job ended, as the server recorded it.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub run_id: String,
    pub state: RunState,
    pub credits: u64,
    pub error: Option<String>,
}

/// A registered private runner talking to its server.
pub struct RunnerClient {
    http: reqwest::Client,
    server: String,
    team: String,
    token: String,
    pub runner_id: String,
    pub runner_name: String,
    /// How long a claimed job stays ours without a charge or heartbeat.
    pub lease: Duration,
    engine: Engine,
}

impl RunnerClient {
    /// Checks the token with the server and learns which runner it is.
    pub async fn connect(server: &str, team: &str, token: &str) -> Result<RunnerClient, EngineError> {
        let server = server_base(server).map_err(|problem| EngineError::Store(format!("--server: {problem}")))?;
        let http = flowcredits_engine::http::client();
        let url = format!("{server}/v1/teams/{team}/runners/me");
        let me = send(http.get(&url).bearer_auth(token), &url, REQUEST_TIMEOUT).await.map_err(|refusal| match refusal {
            Refusal::Answered(StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND, _) => {
                EngineError::Store(format!("the server refused the runner token for team {team}: it is not the token of a runner of that team (check --team), or the runner was deregistered; an owner or admin of the team registers one with POST /v1/teams/{team}/runners and passes the token it shows"))
            }
            other => other.into_engine(),
        })?;
        let text = |pointer: &str| me.pointer(pointer).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| EngineError::Store(format!("the server's answer at {url} has no {pointer}")));
        Ok(RunnerClient {
            runner_id: text("/runner/id")?,
            runner_name: text("/runner/name")?,
            lease: Duration::from_secs(me["lease_s"].as_u64().unwrap_or(60).max(1)),
            http,
            server,
            team: team.to_owned(),
            token: token.to_owned(),
            // History shows each block's inputs, outputs and timing, as for the server's runs.
            engine: Engine::default().with_block_traces(),
        })
    }

    fn job_url(&self, tail: &str) -> String {
        format!("{}/v1/teams/{}/runners/{}/jobs{tail}", self.server, self.team, self.runner_id)
    }

    async fn post(&self, url: &str, body: Value, timeout: Duration) -> Result<Value, Refusal> {
        post(&self.http, url, &self.token, body, timeout).await
    }

    /// Takes the team's oldest waiting job, waiting up to `wait_s` seconds for one.
    pub async fn claim(&self, wait_s: u64) -> Result<Option<Job>, Refusal> {
        let url = self.job_url(&format!("/claim?wait_s={wait_s}"));
        let answer = self.post(&url, json!({}), Duration::from_secs(wait_s) + CLAIM_TIMEOUT_MARGIN).await.map_err(|refusal| match refusal {
            Refusal::Answered(StatusCode::UNAUTHORIZED, _) => {
                Refusal::Answered(StatusCode::UNAUTHORIZED, format!("the server refused the runner token (was the runner deregistered?); register a runner with POST /v1/teams/{}/runners", self.team))
            }
            other => other,
        })?;
        if answer.is_null() {
            return Ok(None);
        }
        let field = |name: &str| answer.get(name).cloned().unwrap_or(Value::Null);
        let unreadable = |problem: String| Refusal::Unreachable(format!("the server's job at {url} is not readable: {problem}"));
        let run_id = answer["run_id"].as_str().ok_or_else(|| unreadable("no run_id".into()))?.to_owned();
        let trigger = answer["trigger"].as_str().unwrap_or("api").parse().map_err(|err: flowcredits_core::CoreError| unreadable(err.to_string()))?;
        Ok(Some(Job {
            flow: answer["flow"]["name"].as_str().unwrap_or("?").to_owned(),
            attempt: answer["attempt"].as_u64().unwrap_or(1),
            definition: field("flow"),
            flows: answer["flows"].as_object().cloned().unwrap_or_default(),
            input: field("input"),
            http: answer.get("http").and_then(crate::jobs::http_from_json),
            trigger,
            run_id,
        }))
    }

    /// Runs a claimed job to its end and reports the result. Heartbeats keep the lease while
    /// it runs; if the server says the job is no longer ours (its lease ran out and another
    /// runner took it, or the run was cancelled), work stops and that is the error.
    pub async fn run(&self, job: &Job) -> Result<JobResult, EngineError> {
        let reply = tokio::select! {
            reply = self.execute(job) => reply,
            lost = self.heartbeats(&job.run_id) => return Err(lost),
        };
        let answer = self.post(&self.job_url(&format!("/{}/complete", job.run_id)), crate::jobs::completion_json(&reply), REQUEST_TIMEOUT).await.map_err(Refusal::into_engine)?;
        Ok(JobResult { run_id: job.run_id.clone(), state: reply.state, credits: answer["credits"].as_u64().unwrap_or(reply.credits.0), error: reply.error })
    }

    /// The run's reply: what the engine reported, or why it could not run.
    async fn execute(&self, job: &Job) -> RunReply {
        let failed = |error: String| RunReply { run_id: job.run_id.clone(), state: RunState::Failed, credits: Credits::ZERO, response: None, output: Value::Null, error: Some(error) };
        let prepared = (|| {
            let load = |definition: &Value| Flow::load(&definition.to_string(), Syntax::Json).map(Arc::new);
            let flows = job.flows.iter().map(|(name, definition)| Ok((name.clone(), load(definition)?))).collect::<Result<BTreeMap<_, _>, EngineError>>()?;
            Ok::<_, EngineError>((load(&job.definition)?, flows, RunId::new(job.run_id.clone())?, RunContext::private_runner(job.trigger)?))
        })();
        let (flow, flows, run, context) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => return failed(format!("the job could not start on runner {}: {err}", self.runner_name)),
        };
        let engine = self.engine.with_resolver(Arc::new(MapResolver(flows)));
        let meter = ServerMeter::for_job(&self.server, &self.team, &self.token, &self.runner_id);
        let request = RunRequest { run, context, input: job.input.clone(), config: Map::new(), http: job.http.clone(), on_response: None };
        match engine.run(&flow, request, &meter).await {
            Ok(report) => reply_from_report(&job.run_id, report),
            Err(err) => failed(err.to_string()),
        }
    }

    /// Renews the job's lease every third of it, and at least every [`HEARTBEAT_INTERVAL_MAX`]
    /// so that a run cancelled on the server stops here within that long rather than at its next
    /// charge (after the block in hand, with its side effects, has run). Returns only when the
    /// server says the job is no longer this runner's (cancelled, or its lease ran out and it
    /// went elsewhere). A heartbeat that gets no answer is retried at the next beat: the lease
    /// outlasts two missed beats.
    async fn heartbeats(&self, run_id: &str) -> EngineError {
        let url = self.job_url(&format!("/{run_id}/heartbeat"));
        let interval = (self.lease / 3).min(HEARTBEAT_INTERVAL_MAX);
        loop {
            tokio::time::sleep(interval).await;
            match self.post(&url, json!({}), interval).await {
                Ok(_) | Err(Refusal::Unreachable(_)) => {}
                Err(Refusal::Answered(status, message)) if status.is_client_error() => return EngineError::Store(format!("job {run_id} stopped on this runner: {message}")),
                Err(Refusal::Answered(..)) => {}
            }
        }
    }
}
