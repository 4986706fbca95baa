//! `/openapi.json`, built from one table of routes. Request schemas mirror the handlers' body
//! types (which refuse unknown fields), so clients and fuzzers generate what the server reads.

use axum::Json;
use serde_json::{Map, Value, json};

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// Who may call it.
    access: &'static str,
    body: Option<fn() -> Value>,
    query: &'static [(&'static str, &'static str)],
    success: &'static str,
}

fn string() -> Value {
    json!({"type": "string"})
}

fn object(required: &[&str], properties: Value) -> Value {
    let mut schema = json!({"type": "object", "properties": properties, "additionalProperties": false});
    // OpenAPI 3.0 (JSON Schema draft 5) wants `required` absent rather than empty.
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

const PAGE: &[(&str, &str)] = &[("after", "string"), ("limit", "integer")];

/// Who may call the job endpoints: the runner itself, by its token.
const RUNNER: &str = "runner token of that runner (fcr_…)";

/// Block executions reported by the machine that ran them (local runs, private-runner jobs).
fn charges_body() -> Value {
    let trace = object(&["started_at", "duration_us"], json!({"input": {}, "output": {}, "error": string(), "started_at": string(), "duration_us": {"type": "integer", "minimum": 0}}));
    let charge = object(
        &["execution_id", "type"],
        json!({"execution_id": string(), "type": string(), "model": string(), "external_mcp_tools": {"type": "array", "items": string()}, "internal_mcp_tools": {"type": "array", "items": string()}, "trace": trace}),
    );
    object(&["charges"], json!({"charges": {"type": "array", "items": charge}}))
}

const ROUTES: &[Route] = &[
    Route { method: "get", path: "/healthz", summary: "Liveness and database check", access: "anyone", body: None, query: &[], success: "200" },
    Route { method: "get", path: "/metrics", summary: "Prometheus metrics", access: "anyone", body: None, query: &[], success: "200" },
    Route { method: "get", path: "/v1/me", summary: "The caller and their teams", access: "any key", body: None, query: &[], success: "200" },
    Route { method: "post", path: "/v1/users", summary: "Create a user", access: "operator", body: Some(|| object(&["name"], json!({"name": string(), "operator": {"type": "boolean"}}))), query: &[], success: "201" },
    Route { method: "get", path: "/v1/users", summary: "Every user of the platform", access: "operator", body: None, query: PAGE, success: "200" },
    Route { method: "post", path: "/v1/users/{user}/keys", summary: "Create an API key (shown once)", access: "operator, or the user", body: Some(|| object(&["label"], json!({"label": string()}))), query: &[], success: "201" },
    Route { method: "get", path: "/v1/users/{user}/keys", summary: "A user's API keys, revoked ones included (never their tokens)", access: "operator, or the user", body: None, query: PAGE, success: "200" },
    Route { method: "delete", path: "/v1/users/{user}/keys/{key}", summary: "Revoke an API key: it stops working at once on this server", access: "operator, or the user", body: None, query: &[], success: "200" },
    Route {
        method: "post",
        path: "/v1/teams",
        summary: "Create a team",
        access: "operator",
        body: Some(|| object(&["name", "plan"], json!({"name": string(), "plan": {"type": "string", "enum": ["free", "solo", "team", "enterprise"]}, "anchor_day": {"type": "integer", "minimum": 1, "maximum": 28}, "owner": string()}))),
        query: &[],
        success: "201",
    },
    Route { method: "get", path: "/v1/teams", summary: "Teams the caller can see", access: "any key", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}", summary: "A team and its plan", access: "member", body: None, query: &[], success: "200" },
    Route { method: "put", path: "/v1/teams/{team}/plan", summary: "Change a team's plan", access: "operator", body: Some(|| object(&["plan"], json!({"plan": string()}))), query: &[], success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/members", summary: "Members and roles", access: "member", body: None, query: PAGE, success: "200" },
    Route {
        method: "put",
        path: "/v1/teams/{team}/members/{user}",
        summary: "Add a member or change their role",
        access: "owner, admin",
        body: Some(|| object(&["role"], json!({"role": {"type": "string", "enum": ["owner", "admin", "billing", "editor", "viewer"]}}))),
        query: &[],
        success: "200",
    },
    Route { method: "delete", path: "/v1/teams/{team}/members/{user}", summary: "Remove a member", access: "owner, admin", body: None, query: &[], success: "204" },
    Route { method: "post", path: "/v1/teams/{team}/flows", summary: "Create a flow", access: "owner, admin, editor", body: Some(|| object(&["name", "definition"], json!({"name": string(), "definition": {"type": "object"}}))), query: &[], success: "201" },
    Route { method: "get", path: "/v1/teams/{team}/flows", summary: "List flows", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}", summary: "A flow", access: "member", body: None, query: &[], success: "200" },
    Route { method: "put", path: "/v1/teams/{team}/flows/{flow}", summary: "Replace a flow's working definition", access: "owner, admin, editor", body: Some(|| object(&["definition"], json!({"definition": {"type": "object"}}))), query: &[], success: "200" },
    Route { method: "delete", path: "/v1/teams/{team}/flows/{flow}", summary: "Delete a flow and its snapshots (refused while deployed, or while a run of it is running or paused)", access: "owner, admin, editor", body: None, query: &[], success: "204" },
    Route { method: "post", path: "/v1/teams/{team}/flows/{flow}/snapshots", summary: "Snapshot the flow (numbered, immutable; Free keeps 10)", access: "owner, admin, editor", body: None, query: &[], success: "201" },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}/snapshots", summary: "List snapshots", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}/estimate", summary: "Estimate a run's credits", access: "member", body: None, query: &[("trigger", "string"), ("cloud_run", "boolean"), ("snapshot", "integer")], success: "200" },
    Route {
        method: "post",
        path: "/v1/teams/{team}/deployments",
        summary: "Deploy a snapshot to /hooks/{team}/{path} or as an MCP tool, optionally on a schedule (every N seconds, or a cron expression in UTC)",
        access: "owner, admin, editor",
        body: Some(|| {
            object(
                &["flow_id", "path"],
                json!({"flow_id": string(), "snapshot": {"type": "integer", "minimum": 1}, "path": string(), "trigger": {"type": "string", "enum": ["api", "mcp"]}, "schedule_every_s": {"type": "integer", "minimum": 60}, "schedule_cron": {"type": "string", "description": "five fields, UTC, e.g. `0 9 * * 1-5`"}, "runs_on": {"type": "string", "enum": ["cloud", "private"]}}),
            )
        }),
        query: &[],
        success: "201",
    },
    Route { method: "get", path: "/v1/teams/{team}/deployments", summary: "List deployments", access: "member", body: None, query: PAGE, success: "200" },
    Route {
        method: "patch",
        path: "/v1/teams/{team}/deployments/{deployment}",
        summary: "Serve another snapshot (the latest when none is named), or change the schedule (a change of schedule alone keeps the snapshot; null clears), at the same path and id",
        access: "owner, admin, editor",
        body: Some(|| object(&[], json!({"snapshot": {"type": "integer", "minimum": 1}, "schedule_every_s": {"type": "integer", "nullable": true, "minimum": 60}, "schedule_cron": {"type": "string", "nullable": true}}))),
        query: &[],
        success: "200",
    },
    Route { method: "delete", path: "/v1/teams/{team}/deployments/{deployment}", summary: "Remove a deployment", access: "owner, admin, editor", body: None, query: &[], success: "204" },
    Route {
        method: "post",
        path: "/v1/teams/{team}/deployments/{deployment}/runs",
        summary: "Start an API run of a deployment, where it runs (cloud, or the team's private runners)",
        access: "owner, admin, editor",
        body: Some(|| object(&[], json!({"input": {}, "wait": {"type": "boolean"}}))),
        query: &[],
        success: "202",
    },
    Route { method: "post", path: "/v1/teams/{team}/runners", summary: "Register a private runner (Enterprise); its token is shown once", access: "owner, admin", body: Some(|| object(&["name"], json!({"name": string()}))), query: &[], success: "201" },
    Route { method: "get", path: "/v1/teams/{team}/runners", summary: "Private runners: name, created, last seen, jobs running", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/runners/me", summary: "The runner a runner token belongs to, with its lease and claim wait", access: "runner token (fcr_…)", body: None, query: &[], success: "200" },
    Route { method: "delete", path: "/v1/teams/{team}/runners/{runner}", summary: "Deregister a private runner (its token stops working; its jobs go to other runners)", access: "owner, admin", body: None, query: &[], success: "204" },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/claim", summary: "Take the oldest waiting job (long poll up to `wait_s`, at most 25 s; 204 when none)", access: RUNNER, body: None, query: &[("wait_s", "integer")], success: "200" },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/charges", summary: "Charge block executions of a leased job (idempotent by execution id); renews the lease", access: RUNNER, body: Some(charges_body), query: &[], success: "200" },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/heartbeat", summary: "Renew a leased job's lease", access: RUNNER, body: None, query: &[], success: "200" },
    Route {
        method: "post",
        path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/complete",
        summary: "End a leased job's run and answer whoever waits for it",
        access: RUNNER,
        body: Some(|| object(&["state"], json!({"state": {"type": "string", "enum": ["succeeded", "failed"]}, "response": object(&["status"], json!({"status": {"type": "integer", "minimum": 100, "maximum": 599}, "body": {}})), "output": {}, "error": string()}))),
        query: &[],
        success: "200",
    },
    Route {
        method: "post",
        path: "/v1/teams/{team}/runs",
        summary: "Start a manual run in the cloud",
        access: "owner, admin, editor",
        body: Some(|| object(&["flow_id"], json!({"flow_id": string(), "snapshot": {"type": "integer"}, "input": {}, "wait": {"type": "boolean"}}))),
        query: &[],
        success: "202",
    },
    Route {
        method: "get",
        path: "/v1/teams/{team}/runs",
        summary: "Run history, newest first",
        access: "member",
        body: None,
        query: &[("flow_id", "string"), ("status", "string"), ("trigger", "string"), ("since", "string"), ("until", "string"), ("after", "string"), ("limit", "integer")],
        success: "200",
    },
    Route { method: "get", path: "/v1/teams/{team}/runs/{run}", summary: "A run with each block's status, input, output, duration and credits", access: "member", body: None, query: &[], success: "200" },
    Route { method: "post", path: "/v1/teams/{team}/runs/{run}/cancel", summary: "Cancel a run", access: "owner, admin, editor", body: None, query: &[], success: "200" },
    Route {
        method: "post",
        path: "/v1/teams/{team}/local-runs",
        summary: "Admit a run executing on the caller's machine (metered here)",
        access: "owner, admin, editor",
        body: Some(|| object(&["flow", "blocks"], json!({"flow": string(), "cloud_run": {"type": "boolean"}, "blocks": {"type": "array", "items": object(&["type"], json!({"type": string(), "model": string()}))}}))),
        query: &[],
        success: "201",
    },
    Route {
        method: "post",
        path: "/v1/teams/{team}/local-runs/{run}/charges",
        summary: "Charge block executions of a local run (idempotent by execution id)",
        access: "owner, admin, editor",
        body: Some(charges_body),
        query: &[],
        success: "200",
    },
    Route { method: "post", path: "/v1/teams/{team}/local-runs/{run}/end", summary: "End a local run", access: "owner, admin, editor", body: None, query: &[], success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/usage", summary: "Credits used and remaining, by block kind and trigger", access: "member", body: None, query: &[("period", "string")], success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/usage/flows", summary: "A period's runs and credits by flow (from run history, by the period each run started in)", access: "member", body: None, query: &[("period", "string")], success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/billing", summary: "Billing settings", access: "member", body: None, query: &[], success: "200" },
    Route {
        method: "patch",
        path: "/v1/teams/{team}/billing",
        summary: "Change pay-as-you-go, its cap and alert amounts, and the alert webhook",
        access: "owner, admin, billing",
        body: Some(|| object(&[], json!({"payg_enabled": {"type": "boolean"}, "payg_cap_usd": {"type": "string", "nullable": true}, "payg_alerts_usd": {"type": "array", "items": string()}, "alert_webhook_url": {"type": "string", "nullable": true}}))),
        query: &[],
        success: "200",
    },
    Route { method: "post", path: "/v1/teams/{team}/purchases", summary: "Buy credits (Enterprise)", access: "owner, admin, billing", body: Some(|| object(&["credits"], json!({"credits": {"type": "integer", "minimum": 1}, "expires_at": string()}))), query: &[], success: "201" },
    Route { method: "get", path: "/v1/teams/{team}/purchases", summary: "Credits bought, oldest first, with what remains of each and when it expires", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/invoices", summary: "Invoices of closed periods", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "get", path: "/v1/teams/{team}/alerts", summary: "Usage alerts and their deliveries", access: "member", body: None, query: PAGE, success: "200" },
    Route { method: "post", path: "/hooks/{team}/{path}", summary: "Call a deployed flow (sync: 30 s then 408; `?async=true`: 202)", access: "owner, admin, editor", body: Some(|| json!({})), query: &[("async", "boolean")], success: "200" },
    Route { method: "post", path: "/mcp", summary: "Model Context Protocol (streamable HTTP, JSON responses): the team's MCP deployments as tools", access: "member (calling a tool: owner, admin, editor); `?team=` names the team", body: Some(|| json!({"type": "object"})), query: &[("team", "string")], success: "200" },
];

/// The routes that start a run, and so answer as a run's start does (`routes_runs::answer_started`).
const STARTS_RUNS: [&str; 3] = ["/hooks/{team}/{path}", "/v1/teams/{team}/runs", "/v1/teams/{team}/deployments/{deployment}/runs"];

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|segment| segment.strip_suffix('}')))
        // A hook's path may have segments of its own (`orders/new`).
        .map(|name| {
            let pattern = if name == "path" { "^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$" } else { "^[A-Za-z0-9_.-]+$" };
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": pattern}})
        })
        .collect();
    // `/mcp` needs its team; every other query parameter is optional.
    parameters.extend(route.query.iter().map(|(name, kind)| json!({"name": name, "in": "query", "required": route.path == "/mcp" && *name == "team", "schema": {"type": kind}})));
    let mut operation = json!({
        "summary": route.summary,
        "description": format!("Who may call: {}.", route.access),
        "parameters": parameters,
        "responses": {
            route.success: {"description": "Success", "content": {"application/json": {}}},
            "4XX": {"description": "A client error: `{\"error\": {\"code\", \"message\", \"field\"?}}`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    });
    if STARTS_RUNS.contains(&route.path) && route.method == "post" {
        let responses = &mut operation["responses"];
        responses["200"] = json!({"description": "The run finished (a hook: the flow's `response` block's status and body)", "content": {"application/json": {}}});
        responses["202"] = json!({"description": "Accepted without waiting: `{run_id, status}`, running or paused", "content": {"application/json": {}}});
        responses["402"] = json!({"description": "The team is out of credits: the run is paused (`run_id`) and runs when credits return", "content": {"application/json": {}}});
        responses["408"] = json!({"description": "Still running after 30 s: `run_id` and where to read the result", "content": {"application/json": {}}});
        if route.path.starts_with("/hooks/") {
            responses["502"] = json!({"description": "The flow failed before its `response` block answered: the run, with its error", "content": {"application/json": {}}});
        }
    }
    if route.path.ends_with("/jobs/claim") {
        operation["responses"]["204"] = json!({"description": "No job waited within `wait_s`"});
    }
    if route.access.starts_with("runner token") {
        operation["security"] = json!([{"runnerToken": []}]);
    } else if route.access != "anyone" {
        operation["security"] = json!([{"apiKey": []}]);
    }
    if let Some(body) = route.body {
        // A body of optional fields may be left out (it reads as `{}`).
        let schema = body();
        let required = schema.get("required").is_some();
        operation["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": schema}}});
    }
    operation
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths.entry(route.path).or_insert_with(|| json!({}));
        entry[route.method] = operation(route);
    }
    // A hook answers every method (its flow reads `request.method`); the others are
    // documented as POST is, a body being optional.
    if let Some(hook) = paths.get_mut("/hooks/{team}/{path}") {
        let mut post = hook["post"].clone();
        post["requestBody"]["required"] = json!(false);
        for method in ["get", "put", "patch", "delete"] {
            hook[method] = post.clone();
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "flowcredits", "version": env!("CARGO_PKG_VERSION"), "description": "Runs flows for teams and meters, limits and bills the credits they consume."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (fck_…) acting for one user"},
                "runnerToken": {"type": "http", "scheme": "bearer", "description": "A private runner's token (fcr_…), shown once when the runner is registered; it works only on that runner's job endpoints"},
            },
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": string(), "message": string(), "field": string()}}}}},
        },
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
