//! `/openapi.json`, built from one table of routes. Request schemas mirror the handlers' body
//! types (which refuse unknown fields), so clients and fuzzers generate what the server reads;
//! response schemas (`components/schemas`) describe what the handlers write, checked against
//! real answers by `tests/openapi_responses.rs`.

use axum::Json;
use flowcredits_core::{BlockKind, Location, PlanId, RunStatus, Trigger};
use serde_json::{Map, Value, json};

use crate::auth::Role;
use crate::catalog::RunsOn;
use crate::history::RunState;

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// Who may call it.
    access: &'static str,
    body: Option<fn() -> Value>,
    query: &'static [(&'static str, &'static str)],
    success: &'static str,
    /// What the success status carries.
    answer: Answer,
}

/// The body of a success response.
#[derive(Clone, Copy)]
enum Answer {
    /// JSON described by the schema of that name in `components/schemas`.
    Json(&'static str),
    /// Not JSON: a body of this media type.
    Media(&'static str),
    /// No body (204).
    Empty,
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
    Route { method: "get", path: "/openapi.json", summary: "This document", access: "anyone", body: None, query: &[], success: "200", answer: Answer::Json("OpenApi") },
    Route { method: "get", path: "/dashboard", summary: "The usage dashboard, a page for people: it signs in with an API key kept in the browser and reads this API", access: "anyone (the page asks for a key)", body: None, query: &[("team", "string")], success: "200", answer: Answer::Media("text/html") },
    Route { method: "get", path: "/healthz", summary: "Liveness and database check", access: "anyone", body: None, query: &[], success: "200", answer: Answer::Json("Health") },
    Route { method: "get", path: "/metrics", summary: "Prometheus metrics", access: "anyone", body: None, query: &[], success: "200", answer: Answer::Media("text/plain") },
    Route { method: "get", path: "/v1/me", summary: "The caller and their teams", access: "any key", body: None, query: &[], success: "200", answer: Answer::Json("Me") },
    Route { method: "post", path: "/v1/users", summary: "Create a user", access: "operator", body: Some(|| object(&["name"], json!({"name": string(), "operator": {"type": "boolean"}}))), query: &[], success: "201", answer: Answer::Json("User") },
    Route { method: "get", path: "/v1/users", summary: "Every user of the platform", access: "operator", body: None, query: PAGE, success: "200", answer: Answer::Json("UserPage") },
    Route { method: "post", path: "/v1/users/{user}/keys", summary: "Create an API key (shown once)", access: "operator, or the user", body: Some(|| object(&["label"], json!({"label": string()}))), query: &[], success: "201", answer: Answer::Json("NewApiKey") },
    Route { method: "get", path: "/v1/users/{user}/keys", summary: "A user's API keys, revoked ones included (never their tokens)", access: "operator, or the user", body: None, query: PAGE, success: "200", answer: Answer::Json("ApiKeyPage") },
    Route { method: "delete", path: "/v1/users/{user}/keys/{key}", summary: "Revoke an API key: it stops working at once on this server", access: "operator, or the user", body: None, query: &[], success: "200", answer: Answer::Json("ApiKey") },
    Route {
        method: "post",
        path: "/v1/teams",
        summary: "Create a team",
        access: "operator",
        body: Some(|| object(&["name", "plan"], json!({"name": string(), "plan": {"type": "string", "enum": ["free", "solo", "team", "enterprise"]}, "anchor_day": {"type": "integer", "minimum": 1, "maximum": 28}, "owner": string()}))),
        query: &[],
        success: "201", answer: Answer::Json("Team"),
    },
    Route { method: "get", path: "/v1/teams", summary: "Teams the caller can see", access: "any key", body: None, query: PAGE, success: "200", answer: Answer::Json("TeamPage") },
    Route { method: "get", path: "/v1/teams/{team}", summary: "A team and its plan", access: "member", body: None, query: &[], success: "200", answer: Answer::Json("Team") },
    Route { method: "put", path: "/v1/teams/{team}/plan", summary: "Change a team's plan", access: "operator", body: Some(|| object(&["plan"], json!({"plan": string()}))), query: &[], success: "200", answer: Answer::Json("Team") },
    Route { method: "get", path: "/v1/teams/{team}/members", summary: "Members and roles", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("MemberPage") },
    Route {
        method: "put",
        path: "/v1/teams/{team}/members/{user}",
        summary: "Add a member or change their role",
        access: "owner, admin",
        body: Some(|| object(&["role"], json!({"role": {"type": "string", "enum": ["owner", "admin", "billing", "editor", "viewer"]}}))),
        query: &[],
        success: "200", answer: Answer::Json("Members"),
    },
    Route { method: "delete", path: "/v1/teams/{team}/members/{user}", summary: "Remove a member", access: "owner, admin", body: None, query: &[], success: "204", answer: Answer::Empty },
    Route { method: "post", path: "/v1/teams/{team}/flows", summary: "Create a flow", access: "owner, admin, editor", body: Some(|| object(&["name", "definition"], json!({"name": string(), "definition": {"type": "object"}}))), query: &[], success: "201", answer: Answer::Json("Flow") },
    Route { method: "get", path: "/v1/teams/{team}/flows", summary: "List flows", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("FlowPage") },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}", summary: "A flow", access: "member", body: None, query: &[], success: "200", answer: Answer::Json("Flow") },
    Route { method: "put", path: "/v1/teams/{team}/flows/{flow}", summary: "Replace a flow's working definition", access: "owner, admin, editor", body: Some(|| object(&["definition"], json!({"definition": {"type": "object"}}))), query: &[], success: "200", answer: Answer::Json("Flow") },
    Route { method: "delete", path: "/v1/teams/{team}/flows/{flow}", summary: "Delete a flow and its snapshots (refused while deployed, or while a run of it is running or paused)", access: "owner, admin, editor", body: None, query: &[], success: "204", answer: Answer::Empty },
    Route { method: "post", path: "/v1/teams/{team}/flows/{flow}/snapshots", summary: "Snapshot the flow (numbered, immutable; Free keeps 10)", access: "owner, admin, editor", body: None, query: &[], success: "201", answer: Answer::Json("Snapshot") },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}/snapshots", summary: "List snapshots", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("SnapshotPage") },
    Route { method: "get", path: "/v1/teams/{team}/flows/{flow}/estimate", summary: "Estimate a run's credits", access: "member", body: None, query: &[("trigger", "string"), ("cloud_run", "boolean"), ("snapshot", "integer")], success: "200", answer: Answer::Json("Estimate") },
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
        success: "201", answer: Answer::Json("Deployment"),
    },
    Route { method: "get", path: "/v1/teams/{team}/deployments", summary: "List deployments", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("DeploymentPage") },
    Route {
        method: "patch",
        path: "/v1/teams/{team}/deployments/{deployment}",
        summary: "Serve another snapshot (the latest when none is named), or change the schedule (a change of schedule alone keeps the snapshot; null clears), at the same path and id",
        access: "owner, admin, editor",
        body: Some(|| object(&[], json!({"snapshot": {"type": "integer", "minimum": 1}, "schedule_every_s": {"type": "integer", "nullable": true, "minimum": 60}, "schedule_cron": {"type": "string", "nullable": true}}))),
        query: &[],
        success: "200", answer: Answer::Json("Deployment"),
    },
    Route { method: "delete", path: "/v1/teams/{team}/deployments/{deployment}", summary: "Remove a deployment", access: "owner, admin, editor", body: None, query: &[], success: "204", answer: Answer::Empty },
    Route {
        method: "post",
        path: "/v1/teams/{team}/deployments/{deployment}/runs",
        summary: "Start an API run of a deployment, where it runs (cloud, or the team's private runners)",
        access: "owner, admin, editor",
        body: Some(|| object(&[], json!({"input": {}, "wait": {"type": "boolean"}}))),
        query: &[],
        success: "202", answer: Answer::Json("RunAccepted"),
    },
    Route { method: "post", path: "/v1/teams/{team}/runners", summary: "Register a private runner (Enterprise); its token is shown once", access: "owner, admin", body: Some(|| object(&["name"], json!({"name": string()}))), query: &[], success: "201", answer: Answer::Json("NewRunner") },
    Route { method: "get", path: "/v1/teams/{team}/runners", summary: "Private runners: name, created, last seen, jobs running", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("RunnerPage") },
    Route { method: "get", path: "/v1/teams/{team}/runners/me", summary: "The runner a runner token belongs to, with its lease and claim wait", access: "runner token (fcr_…)", body: None, query: &[], success: "200", answer: Answer::Json("RunnerMe") },
    Route { method: "delete", path: "/v1/teams/{team}/runners/{runner}", summary: "Deregister a private runner (its token stops working; its jobs go to other runners)", access: "owner, admin", body: None, query: &[], success: "204", answer: Answer::Empty },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/claim", summary: "Take the oldest waiting job (long poll up to `wait_s`, at most 25 s; 204 when none)", access: RUNNER, body: None, query: &[("wait_s", "integer")], success: "200", answer: Answer::Json("Job") },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/charges", summary: "Charge block executions of a leased job (idempotent by execution id); renews the lease", access: RUNNER, body: Some(charges_body), query: &[], success: "200", answer: Answer::Json("Charged") },
    Route { method: "post", path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/heartbeat", summary: "Renew a leased job's lease", access: RUNNER, body: None, query: &[], success: "200", answer: Answer::Json("Lease") },
    Route {
        method: "post",
        path: "/v1/teams/{team}/runners/{runner}/jobs/{run}/complete",
        summary: "End a leased job's run and answer whoever waits for it",
        access: RUNNER,
        body: Some(|| object(&["state"], json!({"state": {"type": "string", "enum": ["succeeded", "failed"]}, "response": object(&["status"], json!({"status": {"type": "integer", "minimum": 100, "maximum": 599}, "body": {}})), "output": {}, "error": string()}))),
        query: &[],
        success: "200", answer: Answer::Json("RunEnded"),
    },
    Route {
        method: "post",
        path: "/v1/teams/{team}/runs",
        summary: "Start a manual run in the cloud",
        access: "owner, admin, editor",
        body: Some(|| object(&["flow_id"], json!({"flow_id": string(), "snapshot": {"type": "integer"}, "input": {}, "wait": {"type": "boolean"}}))),
        query: &[],
        success: "202", answer: Answer::Json("RunAccepted"),
    },
    Route {
        method: "get",
        path: "/v1/teams/{team}/runs",
        summary: "Run history, newest first",
        access: "member",
        body: None,
        query: &[("flow_id", "string"), ("status", "string"), ("trigger", "string"), ("since", "string"), ("until", "string"), ("after", "string"), ("limit", "integer")],
        success: "200", answer: Answer::Json("RunPage"),
    },
    Route { method: "get", path: "/v1/teams/{team}/runs/{run}", summary: "A run with each block's status, input, output, duration and credits", access: "member", body: None, query: &[], success: "200", answer: Answer::Json("Run") },
    Route { method: "post", path: "/v1/teams/{team}/runs/{run}/cancel", summary: "Cancel a run", access: "owner, admin, editor", body: None, query: &[], success: "200", answer: Answer::Json("RunCancel") },
    Route {
        method: "post",
        path: "/v1/teams/{team}/local-runs",
        summary: "Admit a run executing on the caller's machine (metered here)",
        access: "owner, admin, editor",
        body: Some(|| object(&["flow", "blocks"], json!({"flow": string(), "cloud_run": {"type": "boolean"}, "blocks": {"type": "array", "items": object(&["type"], json!({"type": string(), "model": string()}))}, "input": {"description": "The run's input, shown in its history (JSON, up to 1 MiB)"}}))),
        query: &[],
        success: "201", answer: Answer::Json("LocalRun"),
    },
    Route {
        method: "post",
        path: "/v1/teams/{team}/local-runs/{run}/charges",
        summary: "Charge block executions of a local run (idempotent by execution id)",
        access: "owner, admin, editor",
        body: Some(charges_body),
        query: &[],
        success: "200", answer: Answer::Json("Charged"),
    },
    Route {
        method: "post",
        path: "/v1/teams/{team}/local-runs/{run}/end",
        summary: "End a local run (failed when it names an error)",
        access: "owner, admin, editor",
        body: Some(|| object(&[], json!({"output": {"description": "What the run showed, for its history (JSON, up to 1 MiB)"}, "error": string()}))),
        query: &[],
        success: "200", answer: Answer::Json("RunEnded"),
    },
    Route { method: "get", path: "/v1/teams/{team}/usage", summary: "Credits used and remaining, by block kind and trigger", access: "member", body: None, query: &[("period", "string")], success: "200", answer: Answer::Json("Usage") },
    Route { method: "get", path: "/v1/teams/{team}/usage/flows", summary: "A period's runs and credits by flow (by the period each run started in; kept when run history is pruned)", access: "member", body: None, query: &[("period", "string")], success: "200", answer: Answer::Json("UsageByFlow") },
    Route { method: "get", path: "/v1/teams/{team}/billing", summary: "Billing settings", access: "member", body: None, query: &[], success: "200", answer: Answer::Json("Billing") },
    Route {
        method: "patch",
        path: "/v1/teams/{team}/billing",
        summary: "Change pay-as-you-go, its cap and alert amounts, and the alert webhook",
        access: "owner, admin, billing",
        body: Some(|| object(&[], json!({"payg_enabled": {"type": "boolean"}, "payg_cap_usd": {"type": "string", "nullable": true}, "payg_alerts_usd": {"type": "array", "items": string()}, "alert_webhook_url": {"type": "string", "nullable": true}}))),
        query: &[],
        success: "200", answer: Answer::Json("Billing"),
    },
    Route { method: "post", path: "/v1/teams/{team}/purchases", summary: "Buy credits (Enterprise); send an `Idempotency-Key` to make retries safe", access: "owner, admin, billing", body: Some(|| object(&["credits"], json!({"credits": {"type": "integer", "minimum": 1}, "expires_at": string()}))), query: &[], success: "201", answer: Answer::Json("Purchase") },
    Route { method: "get", path: "/v1/teams/{team}/purchases", summary: "Credits bought, oldest first, with what remains of each and when it expires", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("PurchasePage") },
    Route { method: "get", path: "/v1/teams/{team}/invoices", summary: "Invoices of closed periods", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("InvoicePage") },
    Route { method: "get", path: "/v1/teams/{team}/alerts", summary: "Usage alerts and their deliveries", access: "member", body: None, query: PAGE, success: "200", answer: Answer::Json("AlertPage") },
    Route { method: "post", path: "/hooks/{team}/{path}", summary: "Call a deployed flow (sync: 30 s then 408; `?async=true`: 202)", access: "owner, admin, editor", body: Some(|| json!({})), query: &[("async", "boolean")], success: "200", answer: Answer::Json("HookAnswer") },
    Route { method: "post", path: "/mcp", summary: "Model Context Protocol (streamable HTTP, JSON responses): the team's MCP deployments as tools", access: "member (calling a tool: owner, admin, editor); `?team=` names the team", body: Some(|| json!({"description": "a JSON-RPC message, or a batch of them (an array, as protocol version 2025-03-26 allows)", "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]})), query: &[("team", "string")], success: "200", answer: Answer::Json("JsonRpcAnswer") },
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
    parameters.extend(route.query.iter().map(|(name, kind)| {
        let mut parameter = json!({"name": name, "in": "query", "required": route.path == "/mcp" && *name == "team", "schema": {"type": kind}});
        if *name == "after" {
            parameter["description"] = json!("the `next` of the page before; a cursor this list could not have given is refused (400 naming `after`)");
        }
        parameter
    }));
    let success = match route.answer {
        Answer::Json(name) => json_answer("Success", name),
        Answer::Media(media) => json!({"description": "Success", "content": {media: {"schema": {"type": "string"}}}}),
        Answer::Empty => json!({"description": "Success, with no body"}),
    };
    let mut operation = json!({
        "summary": route.summary,
        "description": format!("Who may call: {}.", route.access),
        "parameters": parameters,
        "responses": {
            route.success: success,
            "4XX": json_answer("A client error: `{\"error\": {\"code\", \"message\", \"field\"?}}`", "Error"),
            "5XX": json_answer("A server error (`internal`; the server log has the details), same shape", "Error"),
        },
    });
    if STARTS_RUNS.contains(&route.path) && route.method == "post" {
        let responses = &mut operation["responses"];
        if route.path.starts_with("/hooks/") {
            responses["200"] = json_answer("The flow's `response` block's status and body; without one, the run (as `RunResult`)", "HookAnswer");
            responses["502"] = json_answer("The flow failed before its `response` block answered: the run, with its error", "RunResult");
        } else {
            responses["200"] = json_answer("With `wait`: the run finished, however it ended", "RunResult");
        }
        responses["202"] = json_answer("Accepted without waiting: `{run_id, status}`, running or paused", "RunAccepted");
        responses["402"] = json_answer("The team is out of credits: the run is paused (`run_id`) and runs when credits return", "RunPaused");
        responses["408"] = json_answer("Still running after 30 s: `run_id` and where to read the result", "RunStillGoing");
        let limited = format!("No run was made (`limit_reached`): the team already has the most runs waiting for credits ({}), or the most jobs queued for its private runners", flowcredits_core::ledger::PAUSED_RUNS_MAX);
        responses["422"] = json_answer(&limited, "Error");
    }
    if route.path.ends_with("/jobs/claim") {
        operation["responses"]["204"] = json!({"description": "No job waited within `wait_s`"});
    }
    if route.path == "/v1/teams/{team}/purchases" && route.method == "post" {
        operation["parameters"].as_array_mut().expect("parameters are a list").push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Makes a retry safe (after a timeout, say): the team's first purchase with this key is answered again to the same key with the same body (same grant, nothing bought again, `Idempotent-Replayed: true`), also after a restart, since the ledger keeps the key with the grant it bought; the same key with another body is refused with 409 naming the header. 1 to 255 visible ASCII characters, such as a UUID; anything else is refused with 400 naming the header.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        }));
        operation["responses"]["201"]["headers"] = json!({
            "Idempotent-Replayed": {"description": "`true` when this answer repeats an earlier purchase made with the same `Idempotency-Key` (nothing was bought); absent otherwise", "schema": {"type": "string", "enum": ["true"]}},
        });
        operation["responses"]["409"] = json_answer("The `Idempotency-Key` was used by the team for a purchase with another body (`field`: `Idempotency-Key`)", "Error");
    }
    if route.path == "/healthz" {
        operation["responses"]["503"] = json_answer("The ledger can no longer write (the disk did not confirm a commit): what is wrong and what to do", "Unhealthy");
    }
    if route.path == "/mcp" {
        operation["responses"]["202"] = json!({"description": "A notification or a response was taken; JSON-RPC answers it with nothing"});
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
    // A hook is called with GET, POST, PUT, PATCH or DELETE (its flow reads `request.method`);
    // the others are documented as POST is, a body being optional. Any other method (HEAD,
    // OPTIONS) starts no run and is answered 405 (`routes_runs::HOOK_METHODS`).
    if let Some(hook) = paths.get_mut("/hooks/{team}/{path}") {
        hook["post"]["responses"]["405"] = json_answer("HEAD, OPTIONS or another method that does not call a hook: no run started; `Allow` lists the methods that do", "Error");
        let mut post = hook["post"].clone();
        post["requestBody"]["required"] = json!(false);
        for method in crate::routes_runs::HOOK_METHODS.iter().filter(|method| **method != axum::http::Method::POST) {
            hook[method.as_str().to_ascii_lowercase()] = post.clone();
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
            "schemas": schemas(),
        },
    })
}

fn json_answer(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference(schema)}}})
}

pub async fn document() -> Json<Value> {
    Json(build())
}

// ---------------------------------------------------------------- response schemas
//
// One function per shape the handlers answer with, named in `components/schemas`. Enumerations
// are read from the types that serialise them (`Role::ALL`, `RunState::ALL`, …). Every field a
// handler writes is listed and every field it always writes is required; `nullable` marks the
// `Option`s serialised as `null`. The objects stay open to new fields (clients should ignore
// fields they do not know), but `tests/openapi_responses.rs` calls every GET operation and many
// others on a real server and refuses any answer with a field, a type or a value this document
// does not describe, so the two cannot drift apart unnoticed.

fn count() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn flag() -> Value {
    json!({"type": "boolean"})
}

/// An instant, RFC 3339 in UTC.
fn instant() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

fn list(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    json!({"type": "string", "enum": values.into_iter().collect::<Vec<_>>()})
}

/// Any JSON value a flow or its caller chose (`null` included).
fn anything(description: &str) -> Value {
    json!({"description": description})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An object as the server writes it: every property always present but those in `optional`.
fn record(properties: Value, optional: &[&str]) -> Value {
    let required: Vec<&String> = properties.as_object().expect("properties are an object").keys().filter(|name| !optional.contains(&name.as_str())).collect();
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// A page of a list (`catalog::Page`).
fn page(item: &str) -> Value {
    record(json!({"items": list(reference(item)), "next": nullable(json!({"type": "string", "description": "pass as `after` for the next page; null on the last"}))}), &[])
}

fn run_states() -> Value {
    one_of(RunState::ALL.iter().map(|state| state.as_str()))
}

/// `schema` with a description.
fn described(mut schema: Value, description: &str) -> Value {
    schema["description"] = json!(description);
    schema
}

fn plan_ids() -> Value {
    one_of(PlanId::ALL.iter().map(|plan| plan.as_str()))
}

fn roles() -> Value {
    one_of(Role::ALL.iter().map(|role| role.as_str()))
}

fn triggers() -> Value {
    one_of(Trigger::ALL.iter().map(|trigger| trigger.as_str()))
}

fn locations() -> Value {
    one_of([Location::Local, Location::Cloud, Location::Private].map(Location::as_str))
}

/// `{status, body}` of a flow's `response` block.
fn flow_response() -> Value {
    record(json!({"status": {"type": "integer", "minimum": 100, "maximum": 599}, "body": anything("the body the flow answered")}), &[])
}

fn period() -> Value {
    record(json!({"start": instant(), "end": instant(), "label": {"type": "string", "description": "`YYYY-MM` of the start"}}), &[])
}

fn error_body() -> Value {
    record(json!({"code": {"type": "string", "description": "stable: match on it"}, "message": {"type": "string", "description": "safe to show"}, "field": {"type": "string", "description": "the field, parameter or header at fault (400, and 409 for a reused `Idempotency-Key`)"}}), &["field"])
}

/// Every named response schema.
fn schemas() -> Value {
    let user = record(json!({"id": string(), "name": string(), "is_operator": flag(), "created_at": instant()}), &[]);
    let api_key = record(json!({"id": string(), "user_id": string(), "label": string(), "created_at": instant(), "revoked_at": nullable(instant()), "last_used_at": nullable(instant())}), &[]);
    let entitlements = record(
        json!({
            "included_credits": count(), "payg_flows_credits": flag(), "payg_ai_credits": flag(), "rbac": flag(), "private_runner": flag(),
            "snapshots_per_flow": nullable(count()), "can_purchase_credits": flag(), "request_body_bytes_max": count(),
        }),
        &[],
    );
    let team = record(
        json!({"name": string(), "plan": plan_ids(), "anchor_day": {"type": "integer", "minimum": 1, "maximum": 28}, "payg_enabled": flag(), "created_at": instant(), "entitlements": entitlements, "your_role": roles()}),
        &["your_role"],
    );
    let member = record(json!({"user_id": string(), "name": string(), "role": roles()}), &[]);
    let flow = record(json!({"id": string(), "team": string(), "name": string(), "definition": {"type": "object"}, "latest_snapshot": nullable(count()), "created_at": instant(), "updated_at": instant()}), &[]);
    let snapshot = record(json!({"flow_id": string(), "number": {"type": "integer", "minimum": 1}, "latest": flag(), "definition": {"type": "object"}, "created_at": instant()}), &[]);
    let estimate = record(
        json!({
            "flow": string(), "trigger": triggers(), "location": locations(), "needs_credits": flag(), "exact": nullable(count()), "minimum": count(), "maximum": nullable(count()),
            "per_iteration": list(record(json!({"loop": string(), "credits": count()}), &[])), "notes": list(string()),
        }),
        &[],
    );
    let deployment = record(
        json!({
            "id": string(), "team": string(), "path": string(), "flow_id": string(), "snapshot": {"type": "integer", "minimum": 1}, "trigger": one_of(["api", "mcp"]),
            "schedule_every_s": nullable(count()), "schedule_cron": nullable(string()), "runs_on": one_of([RunsOn::Cloud, RunsOn::Private].map(RunsOn::as_str)), "created_at": instant(),
        }),
        &[],
    );
    let block = record(
        json!({"seq": count(), "block_id": string(), "kind": string(), "status": string(), "input": anything("what the block received"), "output": anything("what the block gave"), "started_at": instant(), "duration_us": count(), "credits": count(), "error": nullable(string())}),
        &[],
    );
    let run = record(
        json!({
            "id": string(), "team": string(), "flow_id": string(), "snapshot": nullable(count()), "deployment_id": nullable(string()), "trigger": string(), "location": locations(), "status": run_states(),
            "created_at": instant(), "started_at": nullable(instant()), "ended_at": nullable(instant()), "duration_ms": nullable(count()), "credits": count(), "error": nullable(string()),
            "input": anything("the run's input"), "output": anything("the run's output"), "response": nullable(flow_response()),
            "blocks": list(reference("Block")), "blocks_omitted": count(),
            "runner": record(json!({"id": nullable(string()), "waiting_for_runner": flag(), "claims": count()}), &[]),
            "waiting_for_credits": {"type": "string", "description": "a paused run: why it waits and what brings the team's credits back"},
        }),
        &["blocks", "blocks_omitted", "runner", "waiting_for_credits"],
    );
    let runner = record(json!({"id": string(), "team": string(), "name": string(), "created_at": instant(), "last_seen_at": nullable(instant()), "jobs_running": count()}), &[]);
    let job = record(
        json!({
            "run_id": string(), "team": string(), "flow_id": string(), "deployment_id": nullable(string()), "flow": {"type": "object"}, "flows": {"type": "object", "additionalProperties": {"type": "object"}, "description": "the definitions of the flows its `flow` blocks run, by name"},
            "input": anything("the run's input"), "trigger": string(), "context": record(json!({"trigger": string(), "location": string()}), &[]),
            "http": nullable(record(json!({"method": string(), "path": string(), "headers": {"type": "object", "additionalProperties": {}}, "query": {"type": "object", "additionalProperties": {}}}), &[])),
            "attempt": {"type": "integer", "minimum": 1}, "lease_s": count(), "lease_expires_at": instant(),
        }),
        &[],
    );
    let usage = record(
        json!({
            "team": string(), "period": period(), "included": count(), "used": count(), "remaining": count(), "included_used": count(), "purchased_used": count(), "purchased_remaining": count(),
            "payg_credits": count(), "payg_amount_usd": string(), "unbilled_credits": count(),
            "breakdown": list(record(json!({"block": one_of(BlockKind::ALL.iter().map(|kind| kind.as_str())), "trigger": triggers(), "executions": count(), "credits": count()}), &[])),
        }),
        &[],
    );
    let billing = record(
        json!({
            "plan": plan_ids(), "payg_available": flag(), "payg_enabled": flag(), "payg_cap_usd": nullable(string()), "payg_alerts_usd": list(string()), "can_purchase_credits": flag(),
            "alert_webhook_set": json!({"type": "boolean", "description": "whether alerts are delivered to a webhook (for every member)"}),
            "alert_webhook_url": nullable(json!({"type": "string", "description": "only for owner, admin and billing (every member on plans without roles); null for the others, and when none is set"})),
            "alert_signing_secret": nullable(json!({"type": "string", "description": "only for owner, admin and billing (every member on plans without roles)"})),
        }),
        &[],
    );
    let purchase = record(
        json!({"id": count(), "credits": count(), "remaining": count(), "bought_at": instant(), "expires_at": instant(), "expired": flag(), "runs_resumed": json!({"type": "integer", "minimum": 0, "description": "paused runs the purchase resumed (its own answer only)"})}),
        &["runs_resumed"],
    );
    let invoice = record(
        json!({
            "period": period(), "included": count(), "included_used": count(), "included_expired": count(), "purchased_used": count(), "payg_credits": count(), "unbilled_credits": count(), "amount_due_usd": string(), "issued_at": instant(),
            "plan": described(plan_ids(), "the plan when the period ended; `included` is its allowance"),
            "plan_changes": json!({"type": "array", "description": "plan changes during the period, oldest first; each gave the rest of the period the new plan's allowance (after a downgrade `included_used` may exceed `included`)", "items": record(json!({"at": instant(), "from": plan_ids(), "to": plan_ids()}), &[])}),
        }),
        &[],
    );
    let alert_name = json!({"type": "string", "description": "`included_<percent>_of_<included credits>` (75 or 100 percent of that allowance; after a plan change to another allowance its thresholds are new alerts) or `payg_<dollars>` (a pay-as-you-go amount the team set)"});
    let alert = record(json!({"id": string(), "alert": alert_name, "period_start": instant(), "created_at": instant(), "delivered_at": nullable(instant()), "attempts": count(), "last_error": nullable(string())}), &[]);
    let named: Vec<(&str, Value)> = vec![
        ("Error", record(json!({"error": error_body()}), &[])),
        ("HookAnswer", anything("what the flow's `response` block answered, whatever its shape")),
        ("Health", record(json!({"status": one_of(["ok"]), "runs_in_flight": count()}), &[])),
        ("Unhealthy", record(json!({"status": one_of(["failing"]), "problem": one_of(["ledger_not_writable"]), "message": string(), "action": string(), "runs_in_flight": count()}), &[])),
        ("Me", record(json!({"user": reference("User"), "teams": list(string())}), &[])),
        ("User", user),
        ("UserPage", page("User")),
        ("ApiKey", api_key),
        ("ApiKeyPage", page("ApiKey")),
        ("NewApiKey", record(json!({"key": reference("ApiKey"), "token": json!({"type": "string", "description": "the key (fck_…), shown only here"}), "note": string()}), &[])),
        ("Team", team),
        ("TeamPage", page("Team")),
        ("Member", member),
        ("MemberPage", page("Member")),
        ("Members", record(json!({"items": list(reference("Member"))}), &[])),
        ("Flow", flow),
        ("FlowPage", page("Flow")),
        ("Snapshot", snapshot),
        ("SnapshotPage", page("Snapshot")),
        ("Estimate", estimate),
        ("Deployment", deployment),
        ("DeploymentPage", page("Deployment")),
        ("Block", block),
        ("Run", run),
        ("RunPage", page("Run")),
        ("RunAccepted", record(json!({"run_id": string(), "status": one_of(["running", "paused"]), "error": error_body()}), &["error"])),
        ("RunResult", record(json!({"run_id": string(), "status": run_states(), "credits": count(), "output": anything("the run's output"), "response": nullable(flow_response()), "error": nullable(string())}), &[])),
        ("RunPaused", record(json!({"run_id": string(), "status": one_of(["paused"]), "error": error_body()}), &[])),
        ("RunStillGoing", record(json!({"run_id": string(), "status": one_of(["running"]), "message": string()}), &[])),
        ("RunCancel", record(json!({"run_id": string(), "status": one_of(["cancelled", "cancelling"])}), &[])),
        ("RunEnded", record(json!({"run_id": string(), "status": run_states(), "credits": count()}), &[])),
        ("LocalRun", record(
            json!({"run_id": string(), "status": one_of([RunStatus::Running, RunStatus::Paused].map(RunStatus::as_str)), "needs_credits": flag(), "message": json!({"type": "string", "description": "why a paused local run is not kept, and what brings credits back"})}),
            &["message"],
        )),
        ("Charged", record(json!({"credits": list(count()), "run_credits": count()}), &[])),
        ("Runner", runner),
        ("RunnerPage", page("Runner")),
        ("NewRunner", record(json!({"runner": reference("Runner"), "token": json!({"type": "string", "description": "the runner's token (fcr_…), shown only here"}), "note": string()}), &[])),
        ("RunnerMe", record(json!({"runner": reference("Runner"), "lease_s": count(), "claim_wait_s_max": count()}), &[])),
        ("Job", job),
        ("Lease", record(json!({"run_id": string(), "lease_expires_at": instant()}), &[])),
        ("Usage", usage),
        ("UsageByFlow", record(json!({"period": period(), "flows": list(record(json!({"flow_id": {"type": "string", "description": "the flow's id; `(ledger)` for runs known only from the ledger (made by `simulate --db` or `run --db`), whose flow is unknown"}, "name": nullable(string()), "runs": count(), "credits": count()}), &[]))}), &[])),
        ("Billing", billing),
        ("Purchase", purchase),
        ("PurchasePage", page("Purchase")),
        ("Invoice", invoice),
        ("InvoicePage", page("Invoice")),
        ("Alert", alert),
        ("AlertPage", page("Alert")),
        ("JsonRpcResponse", record(
            json!({"jsonrpc": one_of(["2.0"]), "id": anything("the request's id"), "result": {"type": "object"}, "error": record(json!({"code": {"type": "integer"}, "message": string()}), &[])}),
            &["result", "error"],
        )),
        ("JsonRpcAnswer", json!({
            "description": "a request's answer; for a batch, the answers of its requests in order (its notifications and responses get none)",
            "oneOf": [{"$ref": "#/components/schemas/JsonRpcResponse"}, {"type": "array", "items": {"$ref": "#/components/schemas/JsonRpcResponse"}}],
        })),
        ("OpenApi", record(json!({"openapi": string(), "info": {"type": "object"}, "paths": {"type": "object", "additionalProperties": {"type": "object"}}, "components": {"type": "object"}}), &[])),
    ];
    Value::Object(named.into_iter().map(|(name, schema)| (name.to_owned(), schema)).collect())
}
