//! `/mcp`: the Model Context Protocol over streamable HTTP, answering each JSON-RPC request
//! with one JSON response (the transport allows that instead of an event stream), and a batch
//! with a JSON array of its requests' answers. A team's
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

/// Protocol versions this server speaks, newest first: `initialize` answers the client's
/// when it is one of them, else the newest (the client then decides whether to go on).
const PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// Messages in one batch at most: each may start a run, and they are answered together.
const BATCH_MESSAGES_MAX: usize = 100;
/// Tools listed per `tools/list` page; `nextCursor` leads to the next.
const TOOLS_PER_PAGE: u32 = 200;
/// Longest tool name MCP clients accept (`^[A-Za-z0-9._-]{1,128}$`).
pub const TOOL_NAME_BYTES_MAX: usize = 128;

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

/// `Ok(None)` for a JSON-RPC response the client sends (to a request of the server's; this
/// server makes none): it is taken, as notifications are, with no answer.
fn parse_request(value: Value) -> Result<Option<RpcRequest>, Value> {
    let Value::Object(mut request) = value else {
        let what = if value.is_array() { "a batch inside a batch" } else { "not a request object" };
        return Err(rpc_error(Value::Null, -32600, format!("invalid request: {what}")));
    };
    if !request.contains_key("method") && (request.contains_key("result") || request.contains_key("error")) {
        return Ok(None);
    }
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
    Ok(Some(RpcRequest { id, method, params }))
}

fn rpc_error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

pub async fn reject_get() -> Response {
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, Json(json!({"error": {"code": "method_not_allowed", "message": "this MCP endpoint answers POSTed JSON-RPC with JSON; it opens no event stream"}}))).into_response();
    response.headers_mut().insert(axum::http::header::ALLOW, axum::http::HeaderValue::from_static("POST"));
    response
}

pub async fn handle(State(state): State<AppState>, caller: Caller, Query(query): Query<McpQuery>, headers: axum::http::HeaderMap, body: axum::body::Body) -> Result<Response, ApiError> {
    // Any member may list the tools; calling one starts a run, which takes the role that
    // starts runs everywhere else (owner, admin, editor).
    let role = caller.authorize(&state, &query.team, Action::Read).await?;
    // A tool call's arguments are a run's input: the plan's limit on request bodies applies.
    let body = crate::routes_runs::body_within_plan(&state, &query.team, body).await?;
    // After `initialize`, clients name the version they speak; one this server does not speak
    // is refused (the transport's rule) rather than misread.
    if let Some(version) = headers.get("mcp-protocol-version").map(|value| value.to_str().unwrap_or_default())
        && !PROTOCOL_VERSIONS.contains(&version)
    {
        return Err(ApiError::invalid("MCP-Protocol-Version", format!("`{version}` is not a version this server speaks ({})", PROTOCOL_VERSIONS.join(", "))));
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(err) => return Ok(Json(rpc_error(Value::Null, -32700, format!("parse error: {err}"))).into_response()),
    };
    // A batch (an array of messages, which 2025-03-26 clients may send) is answered with the
    // array of its requests' answers, in order; its notifications and responses get none.
    let Value::Array(batch) = message else {
        return Ok(match answer(&state, &query.team, role, message).await? {
            Some(answer) => Json(answer).into_response(),
            // A response or a notification (no id) gets no answer.
            None => StatusCode::ACCEPTED.into_response(),
        });
    };
    if batch.is_empty() || batch.len() > BATCH_MESSAGES_MAX {
        return Ok(Json(rpc_error(Value::Null, -32600, format!("invalid request: a batch holds 1 to {BATCH_MESSAGES_MAX} messages; this one holds {}", batch.len()))).into_response());
    }
    let answers = futures_util::future::join_all(batch.into_iter().map(|message| answer(&state, &query.team, role, message))).await;
    let answers: Vec<Value> = answers.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
    Ok(if answers.is_empty() { StatusCode::ACCEPTED.into_response() } else { Json(Value::Array(answers)).into_response() })
}

/// The answer to one JSON-RPC message: `None` for a notification or a response.
async fn answer(state: &AppState, team: &str, role: crate::auth::Role, message: Value) -> Result<Option<Value>, ApiError> {
    let request = match parse_request(message) {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(None),
        Err(refusal) => return Ok(Some(refusal)),
    };
    let Some(id) = request.id else { return Ok(None) };
    let answer = match request.method.as_str() {
        "initialize" => {
            let asked = request.params.get("protocolVersion").and_then(Value::as_str);
            let version = asked.filter(|asked| PROTOCOL_VERSIONS.contains(asked)).unwrap_or(PROTOCOL_VERSIONS[0]);
            json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "flowcredits", "version": env!("CARGO_PKG_VERSION")},
            }})
        }
        "ping" => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        "tools/list" => match request.params.get("cursor") {
            Some(cursor) if cursor.as_str().is_none_or(|cursor| catalog::check_id_cursor("dep", Some(cursor)).is_err()) => rpc_error(id, -32602, "params.cursor is not a nextCursor this server gave"),
            cursor => {
                let (tools, next) = tools(state, team, cursor.and_then(Value::as_str)).await?;
                // `nextCursor` is a string or absent (clients refuse null): absent on the last page.
                let mut result = json!({"tools": tools});
                if let Some(next) = next {
                    result["nextCursor"] = json!(next);
                }
                json!({"jsonrpc": "2.0", "id": id, "result": result})
            }
        },
        "tools/call" if !role.allows(Action::Build) => rpc_error(id, -32001, format!("your role in team {team} is {role}; it cannot {}", Action::Build.describe())),
        // A failure to start or finish the run is the call's error, in JSON-RPC with its id,
        // not an HTTP error the client cannot tie to the request.
        "tools/call" => match call_tool(state, team, id.clone(), &request.params).await {
            Ok(answer) => answer,
            Err(ApiError::Internal(detail)) => {
                tracing::error!(error = %detail, team = %team, "an MCP tool call failed");
                rpc_error(id, -32603, "internal error; the server's log has the details")
            }
            Err(err) => rpc_error(id, -32000, err.to_string()),
        },
        other => rpc_error(id, -32601, format!("method `{other}` is not supported (initialize, ping, tools/list, tools/call)")),
    };
    Ok(Some(answer))
}

/// A deployment's tool name: its path with `/` as `_` (kept unique in a team when deployed).
pub fn tool_name(path: &str) -> String {
    path.replace('/', "_")
}

/// One page of the team's tools after the cursor (a deployment id), and the next page's cursor.
async fn tools(state: &AppState, team: &str, cursor: Option<&str>) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let (team, page) = (team.to_owned(), PageRequest { after: cursor.map(str::to_owned), limit: TOOLS_PER_PAGE });
    state
        .catalog
        .call(move |connection| {
            let page = catalog::mcp_deployments(connection, &team, &page)?;
            let mut tools = Vec::with_capacity(page.items.len());
            for deployment in page.items {
                let definition = catalog::snapshot(connection, &team, &deployment.flow_id, Some(deployment.snapshot))?.definition;
                let Some((schema, description)) = crate::runner::mcp_tool_schema(&definition) else { continue };
                // MCP tools take an object of arguments; a schema from before deployments were
                // checked for that is listed as "any object" (the call still checks it).
                let schema = if crate::runner::is_object_schema(&schema) { schema } else { json!({"type": "object"}) };
                tools.push(json!({"name": tool_name(&deployment.path), "description": description, "inputSchema": schema}));
            }
            Ok((tools, page.next))
        })
        .await
}

async fn call_tool(state: &AppState, team: &str, id: Value, params: &Value) -> Result<Value, ApiError> {
    let name = match params.get("name") {
        Some(Value::String(name)) => name.as_str(),
        None | Some(Value::Null) => return Ok(rpc_error(id, -32602, "params.name is missing: give the name of a tool from tools/list")),
        Some(other) => return Ok(rpc_error(id, -32602, format!("params.name must be a string (a tool's name from tools/list), not {other}"))),
    };
    let (team_name, tool) = (team.to_owned(), name.to_owned());
    let found = state
        .catalog
        .call(move |connection| {
            let Some(deployment) = catalog::mcp_deployment_by_tool(connection, &team_name, &tool)? else { return Ok(None) };
            let definition = catalog::snapshot(connection, &team_name, &deployment.flow_id, Some(deployment.snapshot))?.definition;
            Ok(Some((deployment, definition)))
        })
        .await?;
    let Some((deployment, definition)) = found else {
        return Ok(rpc_error(id, -32602, format!("no tool named `{name}`")));
    };
    // Arguments left out, or null, are none: `{}`.
    let arguments = params.get("arguments").filter(|arguments| !arguments.is_null()).cloned().unwrap_or_else(|| json!({}));
    let flow = crate::runner::load_flow(&definition)?;
    // Arguments the tool's schema refuses start no run (and so pause none).
    if let Err(problem) = flow.check_tool_arguments(&arguments) {
        return Ok(rpc_error(id, -32602, format!("the arguments of `{name}` do not match its input schema: {problem}")));
    }
    let request = StartRequest {
        team: team.to_owned(),
        flow_id: deployment.flow_id.clone(),
        snapshot: Some(deployment.snapshot),
        deployment_id: Some(deployment.id.clone()),
        flow: std::sync::Arc::new(flow),
        input: arguments,
        context: RunContext::automated(Trigger::Mcp).expect("mcp is automated"),
        http: None,
        answer_on_response: true,
    };
    let started = crate::jobs::start_deployed(state, deployment.runs_on, request).await?;
    let text_result = |text: String, is_error: bool| json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}], "isError": is_error}});
    if started.status == RunStatus::Paused {
        let advice = crate::routes_runs::advice_for(state, team).await;
        return Ok(text_result(format!("run {} is paused: the team has used its credits; it will run when credits return ({advice})", started.run_id), true));
    }
    let reply = started.reply.ok_or_else(|| ApiError::internal("an admitted run has a reply"))?;
    match tokio::time::timeout(state.sync_wait, reply).await {
        Ok(Ok(reply)) => {
            // A `response` block answering an error status is the tool's error too.
            let failed = reply.error.is_some() || reply.response.as_ref().is_some_and(|(status, _)| *status >= 400);
            let body = reply.response.map(|(_, body)| body).unwrap_or(reply.output);
            let text = match body {
                Value::String(text) => text,
                other => other.to_string(),
            };
            Ok(text_result(reply.error.unwrap_or(text), failed))
        }
        Ok(Err(_)) => Err(ApiError::internal("a run stopped without a result")),
        Err(_) => Ok(text_result(format!("run {run} is still going after {:?}; read its result from /v1/teams/{team}/runs/{run}", state.sync_wait, run = started.run_id), true)),
    }
}
