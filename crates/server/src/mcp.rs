//! `/mcp`: the Model Context Protocol over streamable HTTP, answering each JSON-RPC request
//! with one JSON response (the transport allows that instead of an event stream). A team's
//! deployments with the `mcp` trigger are its tools; calling one runs the flow (trigger mcp).
//!
//! Hand-written rather than through an SDK: the server side needs four methods, and this keeps
//! one auth and error path for the whole API.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowcredits_core::{RunContext, RunStatus, Trigger};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Action, Caller};
use crate::catalog::{self, PageRequest};
use crate::runner::StartRequest;
use crate::{ApiError, AppState, Query};

const PROTOCOL_VERSION: &str = "2025-06-18";
/// Most tools listed for one team.
const TOOLS_MAX: u32 = 200;

#[derive(Deserialize)]
pub struct McpQuery {
    team: String,
}

/// A JSON-RPC request, or why it is not one: the codes of JSON-RPC 2.0 (-32700 for text that
/// is not JSON, -32600 for JSON that is not a request, with the request's id when it has a
/// usable one). A request without an id is a notification.
struct RpcRequest {
    id: Option<Value>,
    method: String,
    params: Value,
}

fn parse_request(body: &[u8]) -> Result<RpcRequest, Value> {
    let value: Value = serde_json::from_slice(body).map_err(|err| rpc_error(Value::Null, -32700, format!("parse error: {err}")))?;
    let Value::Object(mut request) = value else {
        let what = if value.is_array() { "a batch; this server answers one request at a time" } else { "not a request object" };
        return Err(rpc_error(Value::Null, -32600, format!("invalid request: {what}")));
    };
    // MCP ids are strings or integers; `null` is no id at all.
    let id = match request.remove("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => Some(Value::Number(number)),
        Some(other) => return Err(rpc_error(Value::Null, -32600, format!("invalid request: id {other} is not a string or an integer"))),
    };
    let invalid = |problem: &str| rpc_error(id.clone().unwrap_or(Value::Null), -32600, format!("invalid request: {problem}"));
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("jsonrpc must be \"2.0\""));
    }
    let Some(Value::String(method)) = request.remove("method") else { return Err(invalid("method must be a string")) };
    let params = request.remove("params").unwrap_or(Value::Null);
    Ok(RpcRequest { id, method, params })
}

fn rpc_error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

pub async fn reject_get() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({"error": {"code": "method_not_allowed", "message": "this MCP endpoint answers POSTed JSON-RPC with JSON; it opens no event stream"}}))).into_response()
}

pub async fn handle(State(state): State<AppState>, caller: Caller, Query(query): Query<McpQuery>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    // Any member may list the tools; calling one starts a run, which takes the role that
    // starts runs everywhere else (owner, admin, editor).
    let role = caller.authorize(&state, &query.team, Action::Read).await?;
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(refusal) => return Ok(Json(refusal).into_response()),
    };
    // A notification (no id) gets no answer.
    let Some(id) = request.id else { return Ok(StatusCode::ACCEPTED.into_response()) };
    let answer = match request.method.as_str() {
        "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "flowcredits", "version": env!("CARGO_PKG_VERSION")},
        }}),
        "ping" => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools(&state, &query.team).await?}}),
        "tools/call" if !role.allows(Action::Build) => rpc_error(id, -32001, format!("your role in team {} is {role}; it cannot {}", query.team, Action::Build.describe())),
        "tools/call" => call_tool(&state, &query.team, id, &request.params).await?,
        other => rpc_error(id, -32601, format!("method `{other}` is not supported (initialize, ping, tools/list, tools/call)")),
    };
    Ok(Json(answer).into_response())
}

async fn mcp_deployments(state: &AppState, team: &str) -> Result<Vec<(catalog::Deployment, Value)>, ApiError> {
    let team = team.to_owned();
    state
        .catalog
        .call(move |connection| {
            let page = catalog::deployments(connection, &team, &PageRequest { after: None, limit: TOOLS_MAX })?;
            let mut out = Vec::new();
            for deployment in page.items.into_iter().filter(|deployment| deployment.trigger == "mcp") {
                let snapshot = catalog::snapshot(connection, &team, &deployment.flow_id, Some(deployment.snapshot))?;
                out.push((deployment, snapshot.definition));
            }
            Ok(out)
        })
        .await
}

/// A deployment's tool name: its path with `/` as `_`.
fn tool_name(path: &str) -> String {
    path.replace('/', "_")
}

async fn tools(state: &AppState, team: &str) -> Result<Vec<Value>, ApiError> {
    Ok(mcp_deployments(state, team)
        .await?
        .into_iter()
        .filter_map(|(deployment, definition)| {
            let (schema, description) = crate::runner::mcp_tool_schema(&definition)?;
            Some(json!({"name": tool_name(&deployment.path), "description": description, "inputSchema": schema}))
        })
        .collect())
}

async fn call_tool(state: &AppState, team: &str, id: Value, params: &Value) -> Result<Value, ApiError> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Ok(rpc_error(id, -32602, "params.name is missing"));
    };
    let Some((deployment, definition)) = mcp_deployments(state, team).await?.into_iter().find(|(deployment, _)| tool_name(&deployment.path) == name) else {
        return Ok(rpc_error(id, -32602, format!("no tool named `{name}`")));
    };
    let request = StartRequest {
        team: team.to_owned(),
        flow_id: deployment.flow_id.clone(),
        snapshot: Some(deployment.snapshot),
        deployment_id: Some(deployment.id.clone()),
        flow: std::sync::Arc::new(crate::runner::load_flow(&definition)?),
        input: params.get("arguments").cloned().unwrap_or_else(|| json!({})),
        context: RunContext::automated(Trigger::Mcp).expect("mcp is automated"),
        http: None,
        answer_on_response: true,
    };
    let started = crate::jobs::start_deployed(state, deployment.runs_on, request).await?;
    let text_result = |text: String, is_error: bool| json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}], "isError": is_error}});
    if started.status == RunStatus::Paused {
        return Ok(text_result(format!("run {} is paused: the team is out of credits; it will run when credits return", started.run_id), true));
    }
    let reply = started.reply.ok_or_else(|| ApiError::internal("an admitted run has a reply"))?;
    match tokio::time::timeout(state.sync_wait, reply).await {
        Ok(Ok(reply)) => {
            let failed = reply.error.is_some();
            let body = reply.response.map(|(_, body)| body).unwrap_or(reply.output);
            let text = match body {
                Value::String(text) => text,
                other => other.to_string(),
            };
            Ok(text_result(reply.error.unwrap_or(text), failed))
        }
        Ok(Err(_)) => Err(ApiError::internal("a run stopped without a result")),
        Err(_) => Ok(text_result(format!("run {} is still going after 30 s; its result will be in the run history", started.run_id), true)),
    }
}
