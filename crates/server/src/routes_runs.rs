//! Runs: started from the API (cloud runs), by deployed hooks, or on a user's own machine and
//! metered here (local runs); their history; cancelling them.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use flowcredits_core::{BlockKind, BlockUsage, CloudRun, ExecutionId, RunContext, RunStatus, Trigger};
use flowcredits_engine::{BlockCharge, BlockTrace, HttpTrigger};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::{Action, Caller};
use crate::catalog;
use crate::history::{self, RunFilter, RunState};
use crate::runner::{RunReply, StartRequest, Started};
use crate::{ApiError, AppState, JsonBody, NoFields, Query};

/// How long a synchronous call waits for the run's answer before it gets 408 (the run goes on).
pub const SYNC_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Most block executions one local-run charge request may carry.
pub const LOCAL_CHARGES_MAX: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    flow_id: String,
    /// A snapshot number; the flow's working definition when absent.
    snapshot: Option<u32>,
    #[serde(default)]
    input: Value,
    /// Wait for the run to finish (up to 30 s) instead of answering at once.
    #[serde(default)]
    wait: bool,
}

/// A manual run started by a member from the API or the dashboard. It executes on the server,
/// which is the cloud: priced as a manual run with Cloud Run on.
pub async fn start_run(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<NewRun>) -> Result<Response, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    let (team_name, flow_id, snapshot) = (team.clone(), body.flow_id.clone(), body.snapshot);
    let definition = state.catalog.call(move |connection| catalog::definition(connection, &team_name, &flow_id, snapshot)).await?;
    let request = StartRequest {
        team: team.clone(),
        flow_id: body.flow_id,
        snapshot: body.snapshot,
        deployment_id: None,
        flow: std::sync::Arc::new(crate::runner::load_flow(&definition)?),
        input: body.input,
        context: RunContext::manual(CloudRun::On),
        http: None,
        answer_on_response: false,
    };
    let started = state.runner.start(&state, request).await?;
    Ok(answer_started(&state, started, &team, body.wait.then_some(state.sync_wait), Answer::Run).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRun {
    #[serde(default)]
    input: Value,
    /// Wait for the run to finish (up to 30 s) instead of answering at once.
    #[serde(default)]
    wait: bool,
}

/// An API run of a deployment: its snapshot, as an automated run (trigger api), executed where
/// the deployment says (this server, or the team's private runners).
pub async fn run_deployment(State(state): State<AppState>, caller: Caller, Path((team, deployment)): Path<(String, String)>, JsonBody(body): JsonBody<DeploymentRun>) -> Result<Response, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    let team_name = team.clone();
    let (deployment, definition) = state
        .catalog
        .call(move |connection| {
            let deployment = catalog::deployment(connection, &team_name, &deployment)?;
            let snapshot = catalog::snapshot(connection, &team_name, &deployment.flow_id, Some(deployment.snapshot))?;
            Ok((deployment, snapshot.definition))
        })
        .await?;
    let request = StartRequest {
        team: team.clone(),
        flow_id: deployment.flow_id,
        snapshot: Some(deployment.snapshot),
        deployment_id: Some(deployment.id),
        flow: std::sync::Arc::new(crate::runner::load_flow(&definition)?),
        input: body.input,
        context: RunContext::automated(Trigger::Api).expect("api is automated"),
        http: None,
        answer_on_response: false,
    };
    let started = crate::jobs::start_deployed(&state, deployment.runs_on, request).await?;
    Ok(answer_started(&state, started, &team, body.wait.then_some(state.sync_wait), Answer::Run).await)
}

/// The answer to whoever started a run: paused (with the run id and what to do), accepted, the
/// run's result, or 408 when it is still going after `wait`.
/// What a finished run answers: a hook speaks for the flow (its `response` block), the API
/// describes the run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Hook,
    Run,
}

/// A paused run answers 402 to a caller that waits for the result (it will not come until credits
/// return) and 202, like any run accepted for later, to one that does not.
async fn answer_started(state: &AppState, started: Started, team: &str, wait: Option<Duration>, answer: Answer) -> Response {
    let run_id = started.run_id.clone();
    if started.status == RunStatus::Paused {
        let paused_status = if wait.is_some() { StatusCode::PAYMENT_REQUIRED } else { StatusCode::ACCEPTED };
        let advice = advice_for(state, team).await;
        let body = json!({
            "run_id": run_id,
            "status": "paused",
            "error": {"code": "out_of_credits", "message": format!("the team has used its credits; the run is paused and will run when credits return ({advice})")},
        });
        return (paused_status, Json(body)).into_response();
    }
    let (Some(reply), Some(wait)) = (started.reply, wait) else {
        return (StatusCode::ACCEPTED, Json(json!({"run_id": run_id, "status": "running"}))).into_response();
    };
    match tokio::time::timeout(wait, reply).await {
        Ok(Ok(reply)) => reply_response(reply, answer),
        Ok(Err(_)) => ApiError::internal(format!("run {run_id} stopped without a result")).into_response(),
        Err(_) => {
            // A private run no runner has claimed is waiting, not going: say what it waits for.
            let (team_name, id) = (team.to_owned(), run_id.clone());
            let run = state.history.read(&state.catalog, move |connection| history::run(connection, &team_name, &id)).await;
            let waiting = run.ok().and_then(|run| run.runner).is_some_and(|runner| runner.waiting_for_runner);
            let message = if !waiting {
                format!("the run is still going; read its result from /v1/teams/{team}/runs/{run_id}")
            } else {
                format!("the run is waiting for a private runner of team {team} to take it (start one: flowcredits runner --server URL --team {team} --token TOKEN); read its result from /v1/teams/{team}/runs/{run_id}")
            };
            (StatusCode::REQUEST_TIMEOUT, Json(json!({"run_id": run_id, "status": "running", "message": message}))).into_response()
        }
    }
}

/// What brings credits back for `team`, as its plan and settings allow now.
pub(crate) async fn advice_for(state: &AppState, team: &str) -> String {
    match state.ledger.team(team).await {
        Ok(info) => state.rules.plans.get(info.plan).ways_to_more_credits(info.payg_enabled, info.payg_cap.is_some()),
        Err(_) => "wait for the next billing period".to_owned(),
    }
}

/// A finished run as an HTTP answer: for a hook, the `response` block's status and body when
/// the flow has one; otherwise the run, with its outputs.
fn reply_response(reply: RunReply, answer: Answer) -> Response {
    if let (Answer::Hook, Some((status, body))) = (answer, &reply.response) {
        let (status, body) = (*status, body.clone());
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        // RFC 9110: a 204, 205 or 304 answer has no content (nor a length for one).
        let mut response = if matches!(status, StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED) { status.into_response() } else { (status, Json(body)).into_response() };
        response.headers_mut().insert("x-flowcredits-run", reply.run_id.parse().expect("run ids are header-safe"));
        return response;
    }
    // The API describes the run, whatever its end, so the request itself succeeded; a hook
    // stands for the flow, and a flow that failed before answering is a failed upstream.
    let status = match (answer, reply.state) {
        (Answer::Run, _) | (Answer::Hook, RunState::Succeeded) => StatusCode::OK,
        (Answer::Hook, _) => StatusCode::BAD_GATEWAY,
    };
    let response = reply.response.map(|(status, body)| json!({"status": status, "body": body}));
    (status, Json(json!({"run_id": reply.run_id, "status": reply.state, "credits": reply.credits.0, "output": reply.output, "response": response, "error": reply.error}))).into_response()
}

/// A deployment answering hooks, with its snapshot parsed (snapshots never change).
#[derive(Clone)]
pub struct HookTarget {
    deployment: catalog::Deployment,
    flow: std::sync::Arc<flowcredits_engine::Flow>,
}

async fn hook_target(state: &AppState, team: &str, path: &str) -> Result<HookTarget, ApiError> {
    let key = (team.to_owned(), path.to_owned());
    if let Some(target) = state.hooks.get(&key) {
        return Ok(target);
    }
    let (team_name, hook_path) = key.clone();
    let (deployment, definition) = state
        .catalog
        .call(move |connection| {
            let Some(deployment) = catalog::deployment_by_path(connection, &team_name, &hook_path)? else {
                return Ok(None);
            };
            // An MCP tool is deployed at a path too, but it is called over MCP, not as a hook.
            if deployment.trigger != "api" {
                let tool = crate::mcp::tool_name(&deployment.path);
                return Err(ApiError::NotFoundBecause(format!(
                    "no hook at /hooks/{team_name}/{hook_path}: deployment {} there has trigger {}; call it as MCP tool `{tool}` (tools/call at /mcp?team={team_name})",
                    deployment.id, deployment.trigger
                )));
            }
            let snapshot = catalog::snapshot(connection, &team_name, &deployment.flow_id, Some(deployment.snapshot))?;
            Ok(Some((deployment, snapshot.definition)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("deployment at /hooks/{team}/{path}")))?;
    let target = HookTarget { deployment, flow: std::sync::Arc::new(crate::runner::load_flow(&definition)?) };
    state.hooks.insert(key, target.clone());
    Ok(target)
}

/// A request body that starts a team's run, within the team's plan's limit (1 MB on Free, 5 MB
/// on paid plans). `read_request_body` already read it whole, up to the largest limit.
pub(crate) async fn body_within_plan(state: &AppState, team: &str, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let plan = state.ledger.team(team).await?.plan;
    let limit = state.rules.plans.get(plan).request_body_bytes_max;
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| ApiError::invalid("body", "the request body could not be read"))?;
    if bytes.len() as u64 > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(bytes)
}

/// A hook's query as its flow reads it: each name to its value, or to the list of its values
/// in order when the name is given more than once (`?tag=a&tag=b`).
fn hook_query(query: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = Value::String(value.into_owned());
        match map.get_mut(name.as_ref()) {
            None => {
                map.insert(name.into_owned(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
        }
    }
    map
}

/// A hook's headers as its flow reads them (not `authorization`): a header sent more than once
/// is its values joined with ", ", as RFC 9110 combines field lines.
fn hook_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for name in headers.keys().filter(|name| **name != axum::http::header::AUTHORIZATION) {
        let values: Vec<&str> = headers.get_all(name).iter().filter_map(|value| value.to_str().ok()).collect();
        if !values.is_empty() {
            map.insert(name.to_string(), Value::String(values.join(", ")));
        }
    }
    map
}

/// The methods that call a hook (its flow reads `request.method`). HEAD and OPTIONS are asked
/// by monitors, crawlers and browsers' preflights that expect nothing to happen, so they never
/// start a run (which would spend credits); nor do TRACE, CONNECT or made-up methods.
pub const HOOK_METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// 405 naming the methods that call a hook, in the `Allow` header as HTTP asks and in the message.
fn hook_method_refused(method: &Method) -> Response {
    let allowed = HOOK_METHODS.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let message = format!("{method} does not call a hook, so no run started; call it with {allowed}");
    let mut response = ApiError::MethodNotAllowedFor(message).into_response();
    if let Ok(allow) = axum::http::HeaderValue::from_str(&allowed) {
        response.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    response
}

/// `POST|GET|… /hooks/{team}/{path}`: calls a deployed flow. An automated run (trigger api).
/// `?async=true` or `Prefer: respond-async` answers 202 with the run id at once.
pub async fn call_hook(State(state): State<AppState>, caller: Caller, Path((team, path)): Path<(String, String)>, method: Method, headers: HeaderMap, uri: axum::http::Uri, body: Body) -> Result<Response, ApiError> {
    if !HOOK_METHODS.contains(&method) {
        return Ok(hook_method_refused(&method));
    }
    // A call starts a run, which spends credits: the roles that start runs from the API.
    caller.authorize(&state, &team, Action::Build).await?;
    let bytes = body_within_plan(&state, &team, body).await?;
    let mut query = hook_query(uri.query().unwrap_or(""));
    // A bare `?async` asks for it too; the words in any case.
    let asynchronous = match query.remove("async") {
        None => false,
        Some(Value::String(text)) if text.is_empty() || text == "1" || text.eq_ignore_ascii_case("true") => true,
        Some(Value::String(text)) if text == "0" || text.eq_ignore_ascii_case("false") => false,
        Some(other) => return Err(ApiError::invalid("async", format!("{other} is not true, false, 1 or 0"))),
    } || headers.get("prefer").and_then(|value| value.to_str().ok()).is_some_and(|value| value.contains("respond-async"));
    let HookTarget { deployment, flow } = hook_target(&state, &team, &path).await?;
    let input = hook_input(&headers, &bytes)?;
    let header_map = hook_headers(&headers);
    let http = HttpTrigger { method: method.to_string(), path: format!("/{path}"), headers: header_map, query };
    let request = StartRequest {
        team: team.clone(),
        flow_id: deployment.flow_id,
        snapshot: Some(deployment.snapshot),
        deployment_id: Some(deployment.id),
        flow,
        input,
        context: RunContext::automated(Trigger::Api).expect("api is automated"),
        http: Some(http),
        answer_on_response: true,
    };
    let started = crate::jobs::start_deployed(&state, deployment.runs_on, request).await?;
    Ok(answer_started(&state, started, &team, (!asynchronous).then_some(state.sync_wait), Answer::Hook).await)
}

/// What a hook's flow gets as `request.body`: JSON when the body parses as JSON (it must, when
/// the caller says it is JSON), otherwise the body as text; no body is null.
fn hook_input(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let says_json = headers.get(axum::http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| value.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json") || media.trim().ends_with("+json")));
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(err) if says_json => Err(ApiError::invalid("body", format!("the content type is JSON but the body is not: {err}"))),
        Err(_) => Ok(Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunListQuery {
    flow_id: Option<String>,
    status: Option<String>,
    trigger: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

pub async fn list_runs(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(query): Query<RunListQuery>) -> Result<Json<catalog::Page<history::RunView>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let instant = |field: &str, text: &Option<String>| -> Result<Option<i64>, ApiError> {
        text.as_deref().map(|text| text.parse::<jiff::Timestamp>().map(|at| at.as_millisecond()).map_err(|err| ApiError::invalid(field, format!("`{text}` is not an RFC 3339 time: {err}")))).transpose()
    };
    let status = query.status.as_deref().map(|text| RunState::parse(text).ok_or_else(|| ApiError::invalid("status", "must be paused, running, succeeded, failed, timed_out, cancelled or unknown"))).transpose()?;
    if let Some(trigger) = &query.trigger {
        trigger.parse::<Trigger>().map_err(|err| ApiError::invalid("trigger", err.to_string()))?;
    }
    let filter = RunFilter { flow_id: query.flow_id.clone(), status, trigger: query.trigger.clone(), since_ms: instant("since", &query.since)?, until_ms: instant("until", &query.until)? };
    let page = crate::PageQuery { after: query.after, limit: query.limit }.request_by_id("run")?;
    let team_name = team.clone();
    let mut runs = state.history.read(&state.catalog, move |connection| history::runs(connection, &team_name, &filter, &page)).await?;
    if runs.items.iter().any(|run| run.status == RunState::Paused) {
        let advice = advice_for(&state, &team).await;
        runs.items.iter_mut().for_each(|run| run.explain_pause(&advice));
    }
    Ok(Json(runs))
}

pub async fn get_run(State(state): State<AppState>, caller: Caller, Path((team, run)): Path<(String, String)>) -> Result<Json<history::RunView>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let team_name = team.clone();
    let mut view = state.history.read(&state.catalog, move |connection| history::run(connection, &team_name, &run)).await?;
    if view.status == RunState::Paused {
        view.explain_pause(&advice_for(&state, &team).await);
    }
    Ok(Json(view))
}

pub async fn cancel_run(State(state): State<AppState>, caller: Caller, Path((team, run)): Path<(String, String)>, JsonBody(NoFields {}): JsonBody<NoFields>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    // A paused run is cancelled at once; a running one stops at its next step.
    let status = match state.runner.cancel(&state, &team, &run, "cancelled").await? {
        RunState::Cancelled => "cancelled",
        _ => "cancelling",
    };
    Ok(Json(json!({"run_id": run, "status": status})))
}

// ---------------------------------------------------------------- local runs metered here

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedBlock {
    #[serde(rename = "type")]
    kind: String,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRun {
    /// The flow's name, for the history.
    flow: String,
    /// Every block the run may execute, to decide whether it needs credits.
    blocks: Vec<PlannedBlock>,
    /// Whether the run executes with Cloud Run on (it is still executed by the caller).
    #[serde(default)]
    cloud_run: bool,
    /// What the flow's trigger block emits, for the run's history (optional: older clients
    /// do not send it). At most [`LOCAL_RUN_VALUE_BYTES_MAX`] bytes of JSON.
    #[serde(default)]
    input: Value,
}

/// How a local run ended, as its machine reports it (every field optional: older clients send
/// no body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRunEnd {
    /// What the run's `display` blocks showed, by label, as a server run's `output`. At most
    /// [`LOCAL_RUN_VALUE_BYTES_MAX`] bytes of JSON.
    #[serde(default)]
    output: Value,
    /// Why the run failed; absent when it succeeded. At most
    /// [`crate::jobs::COMPLETION_ERROR_BYTES_MAX`] bytes.
    error: Option<String>,
}

/// Largest `input` or `output` of a local run that history keeps, in bytes of JSON; a client
/// with a larger value sends a note of its size instead (`client::ServerMeter`).
pub const LOCAL_RUN_VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Refuses a local run's value larger than history keeps, naming its field.
fn check_value_size(field: &str, value: &Value) -> Result<(), ApiError> {
    let bytes = value.to_string().len();
    if bytes > LOCAL_RUN_VALUE_BYTES_MAX {
        return Err(ApiError::invalid(field, format!("is {bytes} bytes of JSON, more than the {LOCAL_RUN_VALUE_BYTES_MAX} a local run's history keeps; send a smaller value, or a note of what it was")));
    }
    Ok(())
}

fn block_kind(field: &str, text: &str) -> Result<BlockKind, ApiError> {
    text.parse().map_err(|err: flowcredits_core::CoreError| ApiError::invalid(field, err.to_string()))
}

/// Admits a run that executes on the caller's machine (the local canvas): the server only meters it.
pub async fn admit_local_run(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<LocalRun>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    check_value_size("input", &body.input)?;
    if body.blocks.len() > LOCAL_RUN_BLOCKS_MAX {
        return Err(ApiError::invalid("blocks", format!("{} blocks is more than the limit of {LOCAL_RUN_BLOCKS_MAX}", body.blocks.len())));
    }
    let mut planned = Vec::with_capacity(body.blocks.len());
    for (index, block) in body.blocks.iter().enumerate() {
        let kind = block_kind(&format!("blocks[{index}].type"), &block.kind)?;
        planned.push(BlockUsage { model: block.model.clone(), ..BlockUsage::of_kind(kind) });
    }
    let context = RunContext::manual(CloudRun::from(body.cloud_run));
    let needs_credits = state.rules.run_needs_credits(jiff::Timestamp::now(), context, &planned).map_err(|err| ApiError::invalid("blocks", err.to_string()))?;
    let run_id = catalog::new_id("run");
    let status = crate::runner::admit(&state, &team, &run_id, context, needs_credits).await?;
    // The run executes on the caller's machine, which stops when it is paused: the server could
    // never resume it, so it is not kept waiting (where it would resume with nothing to run it).
    let not_kept = status == RunStatus::Paused;
    if not_kept {
        state.ledger.cancel_run(&team, &run_id).await?;
    }
    let (id, team_name) = (run_id.clone(), team.clone());
    // Each kind (and model) once: what the charges are checked against.
    let kinds: std::collections::BTreeSet<(&str, Option<&str>)> = body.blocks.iter().map(|block| (block.kind.as_str(), block.model.as_deref())).collect();
    let declared = Value::Array(kinds.into_iter().map(|(kind, model)| json!({"type": kind, "model": model})).collect());
    state
        .catalog
        .call(move |connection| {
            // A run of a flow the team has saved is shown under that flow (usage by flow, history
            // filters); any other local flow under the name it was given.
            let flow_id = match catalog::flow_by_name(connection, &team_name, &body.flow) {
                Ok(flow) => flow.id,
                Err(ApiError::NotFound(_)) => body.flow.clone(),
                Err(err) => return Err(err),
            };
            let at_ms = catalog::now_ms();
            let run = history::NewRun { id: &id, team: &team_name, flow_id: &flow_id, snapshot: None, deployment_id: None, trigger: "manual", location: context.location().as_str(), status: RunState::Running, input: &body.input, at_ms };
            let ended = not_kept.then(|| history::RunEnd { state: RunState::Cancelled, at_ms, credits: 0, output: &Value::Null, error: Some(LOCAL_RUN_NOT_KEPT), response: None });
            history::insert_run(connection, &run, ended.as_ref())?;
            history::keep_declared(connection, &id, &declared)
        })
        .await?;
    let mut answer = json!({"run_id": run_id, "status": status.as_str(), "needs_credits": needs_credits});
    if not_kept {
        answer["message"] = json!(format!("{LOCAL_RUN_NOT_KEPT} ({})", advice_for(&state, &team).await));
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Most blocks a local run may declare (a flow's and those of the flows it nests, together).
pub const LOCAL_RUN_BLOCKS_MAX: usize = flowcredits_engine::FLOW_BLOCKS_MAX;

const LOCAL_RUN_NOT_KEPT: &str = "the team has no credits left, so the run did not start; a run on your machine is not kept waiting for credits: run it again when they return";

/// Refuses charges of a local run for blocks it did not declare at admission: what it declared
/// decided whether it needed credits, so an undeclared block could spend credits the team may
/// not have had.
/// The blocks a local run declared when it was admitted. Only local runs declare blocks, so a
/// run of the server's or a private runner's (which the server meters itself) is not found:
/// the local-run routes can neither charge nor end it.
async fn local_run_declared(state: &AppState, team: &str, run: &str) -> Result<Value, ApiError> {
    let (team_name, id) = (team.to_owned(), run.to_owned());
    let not_local = || ApiError::NotFound(format!("local run {run}"));
    match state.catalog.call(move |connection| history::declared(connection, &team_name, &id)).await {
        Ok(Some(declared)) => Ok(declared),
        Ok(None) | Err(ApiError::NotFound(_)) => Err(not_local()),
        Err(other) => Err(other),
    }
}

async fn check_declared(state: &AppState, team: &str, run: &str, charges: &[LocalCharge]) -> Result<(), ApiError> {
    let declared = local_run_declared(state, team, run).await?;
    let declared = declared.as_array().map(Vec::as_slice).unwrap_or_default();
    for (index, charge) in charges.iter().enumerate() {
        let listed = declared.iter().any(|block| block["type"] == charge.kind.as_str() && (block["model"].is_null() || block["model"].as_str() == charge.model.as_deref()));
        if !listed {
            let what = charge.model.as_deref().map_or_else(|| format!("`{}`", charge.kind), |model| format!("`{}` with model `{model}`", charge.kind));
            return Err(ApiError::invalid(format!("charges[{index}].type"), format!("run {run} declared no {what} block when it was admitted; declare every block a run may execute in `blocks`")));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCharge {
    execution_id: String,
    #[serde(rename = "type")]
    kind: String,
    model: Option<String>,
    #[serde(default)]
    external_mcp_tools: Vec<String>,
    #[serde(default)]
    internal_mcp_tools: Vec<String>,
    /// What the execution did, for the run's history (a private runner sends it).
    trace: Option<ChargeTrace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeTrace {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    output: Value,
    error: Option<String>,
    /// RFC 3339.
    started_at: String,
    duration_us: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCharges {
    charges: Vec<LocalCharge>,
}

/// Block executions reported by the machine that ran them (the user's for a local run, a
/// private runner for a job): checked whole, then charged to `run` through the server's own
/// charge path, and the run's credits in history brought up to date.
pub(crate) async fn charge_reported(state: &AppState, team: &str, run: &str, body: LocalCharges) -> Result<Json<Value>, ApiError> {
    if body.charges.len() > LOCAL_CHARGES_MAX {
        return Err(ApiError::invalid("charges", format!("{} charges is more than the limit of {LOCAL_CHARGES_MAX} per request", body.charges.len())));
    }
    let mut charges = Vec::with_capacity(body.charges.len());
    for (index, charge) in body.charges.into_iter().enumerate() {
        let kind = block_kind(&format!("charges[{index}].type"), &charge.kind)?;
        let execution = ExecutionId::new(format!("{run}/{}", charge.execution_id)).map_err(|err| ApiError::invalid(format!("charges[{index}].execution_id"), err.to_string()))?;
        let trace = charge
            .trace
            .map(|trace| {
                let started_at = trace.started_at.parse::<jiff::Timestamp>().map_err(|err| ApiError::invalid(format!("charges[{index}].trace.started_at"), format!("`{}` is not an RFC 3339 time: {err}", trace.started_at)))?;
                let text = |value: &Value| serde_json::value::to_raw_value(value).map_err(ApiError::internal);
                Ok::<_, ApiError>(Box::new(BlockTrace { input: text(&trace.input)?, output: text(&trace.output)?, error: trace.error, started_at, duration_us: trace.duration_us }))
            })
            .transpose()?;
        let usage = BlockUsage { kind, model: charge.model, external_mcp_tools: charge.external_mcp_tools, internal_mcp_tools: charge.internal_mcp_tools };
        if let Some((field, position)) = usage.blank_tool() {
            return Err(ApiError::invalid(format!("charges[{index}].{field}[{position}]"), "is empty; a tool is named"));
        }
        charges.push(BlockCharge { trace, ..BlockCharge::new(execution, usage) });
    }
    // History adds the new charges to the run's row as it records them.
    let credits = crate::runner::charge_run(state, team, run, &mut charges).await?;
    let run_total = state.ledger.run_credits(team, run).await?;
    crate::scheduler::check_alerts(state, team).await;
    Ok(Json(json!({"credits": credits.iter().map(|credits| credits.0).collect::<Vec<_>>(), "run_credits": run_total.0})))
}

/// Charges block executions of a local run, each with its idempotent execution id.
pub async fn charge_local_run(State(state): State<AppState>, caller: Caller, Path((team, run)): Path<(String, String)>, JsonBody(body): JsonBody<LocalCharges>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    check_declared(&state, &team, &run, &body.charges).await?;
    charge_reported(&state, &team, &run, body).await
}

/// Ends a local run, recording what its machine reports of it: its output, and its error if
/// it failed.
pub async fn end_local_run(State(state): State<AppState>, caller: Caller, Path((team, run)): Path<(String, String)>, JsonBody(body): JsonBody<LocalRunEnd>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    check_value_size("output", &body.output)?;
    crate::jobs::check_completion_error(body.error.as_deref())?;
    local_run_declared(&state, &team, &run).await?;
    state.ledger.end_run(&team, &run).await?;
    let credits = state.ledger.run_credits(&team, &run).await?;
    let run_state = if body.error.is_some() { RunState::Failed } else { RunState::Succeeded };
    let id = run.clone();
    state
        .catalog
        .call(move |connection| {
            let end = history::RunEnd { state: run_state, at_ms: catalog::now_ms(), credits: credits.0, output: &body.output, error: body.error.as_deref(), response: None };
            history::finish_run(connection, &id, &end)
        })
        .await?;
    Ok(Json(json!({"run_id": run, "status": run_state.as_str(), "credits": credits.0})))
}
