//! The OpenAPI document describes what the server answers: every GET operation it lists, and
//! most of the others, called on a real server over loopback, with each answer's status listed
//! for its operation and its body checked against the documented schema. The check is stricter
//! than the document: a field the schema does not list is refused, so a handler that starts
//! writing a new field fails here until the document says so. The teams' and invoices' page
//! cursors are checked here too, with the ledger of ended periods the invoices need.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use flowcredits_core::{Rules, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Checks `value` against `schema`, the subset of OpenAPI 3.0 schemas the document uses
/// (`$ref`, type, properties, required, items, additionalProperties, nullable, enum, minimum,
/// maximum, format date-time); returns every problem with its place (`$.items[0].id`).
fn problems(document: &Value, schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = target.strip_prefix('#').expect("local references only");
        let resolved = document.pointer(pointer).unwrap_or_else(|| panic!("{target} is not in the document"));
        return problems(document, resolved, value, at, found);
    }
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        // One alternative fits (the document's alternatives never overlap).
        let mut misfits = Vec::new();
        for alternative in alternatives {
            let mut problems_here = Vec::new();
            problems(document, alternative, value, at, &mut problems_here);
            if problems_here.is_empty() {
                return;
            }
            misfits.extend(problems_here);
        }
        found.push(format!("{at}: {value} fits none of the alternatives ({})", misfits.join("; ")));
        return;
    }
    if value.is_null() {
        // No type: any value. A typed schema takes null only when it says so.
        if schema.get("type").is_some() && schema.get("nullable") != Some(&json!(true)) {
            found.push(format!("{at}: null, but the schema is not nullable"));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        found.push(format!("{at}: {value} is not one of {}", Value::Array(allowed.clone())));
    }
    let Some(kind) = schema.get("type").and_then(Value::as_str) else { return };
    let fits = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => panic!("{at}: the schema's type `{other}` is not one this check knows"),
    };
    if !fits {
        found.push(format!("{at}: {value} is not {kind}"));
        return;
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
            && number < minimum
        {
            found.push(format!("{at}: {value} is below {minimum}"));
        }
        if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
            && number > maximum
        {
            found.push(format!("{at}: {value} is above {maximum}"));
        }
    }
    if schema.get("format") == Some(&json!("date-time")) && value.as_str().unwrap().parse::<Timestamp>().is_err() {
        found.push(format!("{at}: {value} is not an RFC 3339 instant"));
    }
    if let Some(items) = schema.get("items") {
        for (index, item) in value.as_array().unwrap().iter().enumerate() {
            problems(document, items, item, &format!("{at}[{index}]"), found);
        }
    }
    let Some(object) = value.as_object() else { return };
    for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if !object.contains_key(name.as_str().unwrap()) {
            found.push(format!("{at}: `{}` is missing", name.as_str().unwrap()));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, field) in object {
        match (properties.and_then(|properties| properties.get(name)), schema.get("additionalProperties")) {
            (Some(property), _) => problems(document, property, field, &format!("{at}.{name}"), found),
            (None, Some(other)) if other.is_object() => problems(document, other, field, &format!("{at}.{name}"), found),
            // An object schema that lists its properties lists all of them (stricter than the
            // document, which leaves objects open); one that lists none is free-form.
            (None, _) if properties.is_some() => found.push(format!("{at}: `{name}` is not in the schema")),
            (None, _) => {}
        }
    }
}

/// A server, its document, and the operations whose answers were checked.
struct Checked<'a> {
    server: &'a support::Server,
    document: Value,
    operations: BTreeSet<(String, String)>,
}

impl Checked<'_> {
    /// Calls `method path` (an instance of `template`) and checks the answer: its status is
    /// listed for the operation (or its class, `4XX`), and its body is what that response
    /// documents. Returns the status and body.
    async fn call(&mut self, method: Method, template: &str, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.server.client.request(method.clone(), format!("{}{path}", self.server.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let media = response.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
        let text = response.text().await.unwrap();
        let name = method.as_str().to_lowercase();
        let operation = self.document["paths"][template][&name].clone();
        assert!(operation.is_object(), "{method} {template} is not in the document");
        let code = status.as_str();
        let class = format!("{}XX", &code[..1]);
        let described = operation["responses"].get(code).or_else(|| operation["responses"].get(&class)).unwrap_or_else(|| panic!("{method} {path} answered {status}, which the document does not list: {text}"));
        let body = match described.get("content").and_then(Value::as_object) {
            None => {
                assert!(text.is_empty(), "{method} {path} answered {status} with a body the document does not describe: {text}");
                Value::Null
            }
            Some(content) => {
                let documented = media.split(';').next().unwrap().trim();
                let entry = content.get(documented).unwrap_or_else(|| panic!("{method} {path} answered {status} as `{media}`; the document lists {:?}", content.keys().collect::<Vec<_>>()));
                if documented != "application/json" {
                    Value::String(text)
                } else {
                    let body: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{method} {path} answered {status} with text that is not JSON ({err}): {text}"));
                    let schema = entry.get("schema").unwrap_or_else(|| panic!("{method} {template} {status} has no schema"));
                    let mut found = Vec::new();
                    problems(&self.document, schema, &body, "$", &mut found);
                    assert!(found.is_empty(), "{method} {path} answered {status} with what the document does not describe:\n  {}\n{body:#}", found.join("\n  "));
                    body
                }
            }
        };
        if status.is_success() {
            self.operations.insert((name, template.to_owned()));
        }
        (status, body)
    }

    async fn get(&mut self, template: &str, path: &str, key: &str) -> Value {
        let (status, body) = self.call(Method::GET, template, path, key, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// A call expected to answer `expected`.
    async fn expect(&mut self, expected: StatusCode, method: Method, template: &str, path: &str, key: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method.clone(), template, path, key, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        answer
    }
}

fn slow_flow() -> Value {
    json!({
        "name": "slow",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "wait", "kind": "delay", "config": {"ms": 30_000}}, {"id": "reply", "kind": "response", "config": {"status": 200}}],
        "edges": [{"from": "request.body", "to": "wait.value"}, {"from": "wait.value", "to": "reply.body"}]
    })
}

fn echo_flow() -> Value {
    json!({
        "name": "echo",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "reply", "kind": "response", "config": {"status": 200}}],
        "edges": [{"from": "request.body", "to": "reply.body"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_what_the_document_describes() {
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = support::ledger_with_invoices(ledger_dir.path());
    let server = support::start_with(Rules::shipped(), move |state| state.ledger = ledger).await;
    let operator = server.operator.clone();
    let document = server.get("/openapi.json", "").await.1;
    let mut checked = Checked { server: &server, document, operations: BTreeSet::new() };
    let c = &mut checked;

    // The server itself.
    c.get("/healthz", "/healthz", "").await;
    c.get("/metrics", "/metrics", "").await;
    c.get("/openapi.json", "/openapi.json", "").await;
    let page = c.get("/dashboard", "/dashboard?team=acme", "").await;
    assert!(page.as_str().unwrap().contains("<html"), "the dashboard is a page");

    // Users and keys.
    let user = c.expect(StatusCode::CREATED, Method::POST, "/v1/users", "/v1/users", &operator, Some(json!({"name": "ada"}))).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let key = c.expect(StatusCode::CREATED, Method::POST, "/v1/users/{user}/keys", &format!("/v1/users/{user_id}/keys"), &operator, Some(json!({"label": "laptop"}))).await;
    let (key_id, ada) = (key["key"]["id"].as_str().unwrap().to_owned(), key["token"].as_str().unwrap().to_owned());
    let spare = c.expect(StatusCode::CREATED, Method::POST, "/v1/users/{user}/keys", &format!("/v1/users/{user_id}/keys"), &operator, Some(json!({"label": "spare"}))).await;
    let spare_id = spare["key"]["id"].as_str().unwrap().to_owned();
    c.get("/v1/users", "/v1/users?limit=1", &operator).await;
    c.expect(StatusCode::OK, Method::DELETE, "/v1/users/{user}/keys/{key}", &format!("/v1/users/{user_id}/keys/{spare_id}"), &ada, None).await;
    let keys = c.get("/v1/users/{user}/keys", &format!("/v1/users/{user_id}/keys"), &ada).await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 2, "{keys}");
    assert!(keys["items"].as_array().unwrap().iter().any(|listed| listed["id"] == key_id));

    // Teams and members.
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams", "/v1/teams", &operator, Some(json!({"name": "acme", "plan": "enterprise", "owner": user_id}))).await;
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams", "/v1/teams", &operator, Some(json!({"name": "small", "plan": "solo", "anchor_day": 3, "owner": user_id}))).await;
    c.expect(StatusCode::OK, Method::PUT, "/v1/teams/{team}/plan", "/v1/teams/small/plan", &operator, Some(json!({"plan": "free"}))).await;
    let me = c.get("/v1/me", "/v1/me", &ada).await;
    assert_eq!(me["teams"], json!(["acme", "small"]));
    c.get("/v1/teams", "/v1/teams?limit=1", &operator).await;
    let team = c.get("/v1/teams/{team}", "/v1/teams/acme", &ada).await;
    assert_eq!(team["your_role"], "owner");
    let (grace_id, _) = server.user("grace").await;
    c.expect(StatusCode::OK, Method::PUT, "/v1/teams/{team}/members/{user}", &format!("/v1/teams/acme/members/{grace_id}"), &ada, Some(json!({"role": "editor"}))).await;
    c.get("/v1/teams/{team}/members", "/v1/teams/acme/members", &ada).await;
    c.expect(StatusCode::NO_CONTENT, Method::DELETE, "/v1/teams/{team}/members/{user}", &format!("/v1/teams/acme/members/{grace_id}"), &ada, None).await;

    // Flows, snapshots, estimates and deployments.
    let flow = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows", "/v1/teams/acme/flows", &ada, Some(json!({"name": "work", "definition": support::flow_costing_25()}))).await;
    let flow_id = flow["id"].as_str().unwrap().to_owned();
    let flow_path = format!("/v1/teams/acme/flows/{flow_id}");
    c.expect(StatusCode::OK, Method::PUT, "/v1/teams/{team}/flows/{flow}", &flow_path, &ada, Some(json!({"definition": support::flow_costing_25()}))).await;
    c.get("/v1/teams/{team}/flows/{flow}", &flow_path, &ada).await;
    c.get("/v1/teams/{team}/flows", "/v1/teams/acme/flows", &ada).await;
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows/{flow}/snapshots", &format!("{flow_path}/snapshots"), &ada, None).await;
    c.get("/v1/teams/{team}/flows/{flow}/snapshots", &format!("{flow_path}/snapshots"), &ada).await;
    c.get("/v1/teams/{team}/flows/{flow}/estimate", &format!("{flow_path}/estimate?trigger=manual&cloud_run=true"), &ada).await;
    let deployment = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/deployments", "/v1/teams/acme/deployments", &ada, Some(json!({"flow_id": flow_id, "path": "work"}))).await;
    let deployment_id = deployment["id"].as_str().unwrap().to_owned();
    let deployment_path = format!("/v1/teams/acme/deployments/{deployment_id}");
    c.expect(StatusCode::OK, Method::PATCH, "/v1/teams/{team}/deployments/{deployment}", &deployment_path, &ada, Some(json!({"schedule_cron": "0 9 * * 1-5"}))).await;
    c.expect(StatusCode::OK, Method::PATCH, "/v1/teams/{team}/deployments/{deployment}", &deployment_path, &ada, Some(json!({"schedule_cron": null}))).await;
    c.get("/v1/teams/{team}/deployments", "/v1/teams/acme/deployments", &ada).await;

    // Runs: through the API, a hook and MCP, waited for and not; history; cancelling.
    let runs = "/v1/teams/{team}/deployments/{deployment}/runs";
    let done = c.expect(StatusCode::OK, Method::POST, runs, &format!("{deployment_path}/runs"), &ada, Some(json!({"input": 3, "wait": true}))).await;
    assert_eq!((done["status"].clone(), done["credits"].clone()), (json!("succeeded"), json!(25)), "{done}");
    let accepted = c.expect(StatusCode::ACCEPTED, Method::POST, runs, &format!("{deployment_path}/runs"), &ada, None).await;
    server.finished_run("acme", &ada, accepted["run_id"].as_str().unwrap()).await;
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runs", "/v1/teams/acme/runs", &ada, Some(json!({"flow_id": flow_id, "wait": true}))).await;
    let hooked = c.expect(StatusCode::ACCEPTED, Method::POST, "/hooks/{team}/{path}", "/hooks/acme/work?async=true", &ada, Some(json!({}))).await;
    let hooked_run = hooked["run_id"].as_str().unwrap().to_owned();
    server.finished_run("acme", &ada, &hooked_run).await;
    c.expect(StatusCode::OK, Method::POST, "/hooks/{team}/{path}", "/hooks/acme/work", &ada, Some(json!({}))).await;
    c.expect(StatusCode::OK, Method::GET, "/hooks/{team}/{path}", "/hooks/acme/work", &ada, None).await;
    let ping = c.expect(StatusCode::OK, Method::POST, "/mcp", "/mcp?team=acme", &ada, Some(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))).await;
    assert_eq!(ping["result"], json!({}));
    let batch = c.expect(StatusCode::OK, Method::POST, "/mcp", "/mcp?team=acme", &ada, Some(json!([{"jsonrpc": "2.0", "id": 3, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/initialized"}]))).await;
    assert_eq!(batch, json!([{"jsonrpc": "2.0", "id": 3, "result": {}}]));
    c.expect(StatusCode::OK, Method::POST, "/mcp", "/mcp?team=acme", &ada, Some(json!({"jsonrpc": "2.0", "id": 2, "method": "nonsense"}))).await;
    let listed = c.get("/v1/teams/{team}/runs", "/v1/teams/acme/runs?limit=2", &ada).await;
    assert!(listed["next"].is_string(), "{listed}");
    let run = c.get("/v1/teams/{team}/runs/{run}", &format!("/v1/teams/acme/runs/{hooked_run}"), &ada).await;
    assert!(!run["blocks"].as_array().unwrap().is_empty(), "{run}");
    let slow = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows", "/v1/teams/acme/flows", &ada, Some(json!({"name": "slow", "definition": slow_flow()}))).await;
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows/{flow}/snapshots", &format!("/v1/teams/acme/flows/{slow_id}/snapshots"), &ada, None).await;
    let going = c.expect(StatusCode::ACCEPTED, Method::POST, "/v1/teams/{team}/runs", "/v1/teams/acme/runs", &ada, Some(json!({"flow_id": slow_id}))).await;
    let going = going["run_id"].as_str().unwrap().to_owned();
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runs/{run}/cancel", &format!("/v1/teams/acme/runs/{going}/cancel"), &ada, None).await;
    server.finished_run("acme", &ada, &going).await;
    c.expect(StatusCode::CONFLICT, Method::POST, "/v1/teams/{team}/runs/{run}/cancel", &format!("/v1/teams/acme/runs/{going}/cancel"), &ada, None).await;

    // Local runs.
    let local = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/local-runs", "/v1/teams/acme/local-runs", &ada, Some(json!({"flow": "work", "blocks": [{"type": "integration"}]}))).await;
    let local_run = local["run_id"].as_str().unwrap().to_owned();
    let charge = json!({"charges": [{"execution_id": "run/connector", "type": "integration", "trace": {"input": 1, "output": 2, "started_at": "2026-03-02T10:00:00Z", "duration_us": 5}}]});
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/local-runs/{run}/charges", &format!("/v1/teams/acme/local-runs/{local_run}/charges"), &ada, Some(charge)).await;
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/local-runs/{run}/end", &format!("/v1/teams/acme/local-runs/{local_run}/end"), &ada, None).await;

    // Private runners and their jobs.
    let registered = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/runners", "/v1/teams/acme/runners", &ada, Some(json!({"name": "rack-1"}))).await;
    let (runner_id, token) = (registered["runner"]["id"].as_str().unwrap().to_owned(), registered["token"].as_str().unwrap().to_owned());
    c.get("/v1/teams/{team}/runners/me", "/v1/teams/acme/runners/me", &token).await;
    let jobs = format!("/v1/teams/acme/runners/{runner_id}/jobs");
    c.expect(StatusCode::NO_CONTENT, Method::POST, "/v1/teams/{team}/runners/{runner}/jobs/claim", &format!("{jobs}/claim?wait_s=0"), &token, None).await;
    let echo = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows", "/v1/teams/acme/flows", &ada, Some(json!({"name": "echo", "definition": echo_flow()}))).await;
    let echo_id = echo["id"].as_str().unwrap().to_owned();
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/flows/{flow}/snapshots", &format!("/v1/teams/acme/flows/{echo_id}/snapshots"), &ada, None).await;
    let private = c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/deployments", "/v1/teams/acme/deployments", &ada, Some(json!({"flow_id": echo_id, "path": "echo", "runs_on": "private"}))).await;
    let queued = c.expect(StatusCode::ACCEPTED, Method::POST, "/hooks/{team}/{path}", "/hooks/acme/echo?async=true", &ada, Some(json!({"ping": 1}))).await;
    let job_run = queued["run_id"].as_str().unwrap().to_owned();
    let waiting = c.get("/v1/teams/{team}/runs/{run}", &format!("/v1/teams/acme/runs/{job_run}"), &ada).await;
    assert_eq!(waiting["runner"]["waiting_for_runner"], true, "{waiting}");
    let job = c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runners/{runner}/jobs/claim", &format!("{jobs}/claim?wait_s=5"), &token, None).await;
    assert_eq!(job["run_id"], json!(job_run), "{job}");
    c.get("/v1/teams/{team}/runners", "/v1/teams/acme/runners", &ada).await;
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runners/{runner}/jobs/{run}/heartbeat", &format!("{jobs}/{job_run}/heartbeat"), &token, None).await;
    let charge = json!({"charges": [{"execution_id": "reply", "type": "response"}]});
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runners/{runner}/jobs/{run}/charges", &format!("{jobs}/{job_run}/charges"), &token, Some(charge)).await;
    let completion = json!({"state": "succeeded", "response": {"status": 200, "body": {"ping": 1}}, "output": {"ping": 1}});
    c.expect(StatusCode::OK, Method::POST, "/v1/teams/{team}/runners/{runner}/jobs/{run}/complete", &format!("{jobs}/{job_run}/complete"), &token, Some(completion)).await;
    c.expect(StatusCode::NO_CONTENT, Method::DELETE, "/v1/teams/{team}/runners/{runner}", &format!("/v1/teams/acme/runners/{runner_id}"), &ada, None).await;
    let private_path = format!("/v1/teams/acme/deployments/{}", private["id"].as_str().unwrap());
    c.expect(StatusCode::NO_CONTENT, Method::DELETE, "/v1/teams/{team}/deployments/{deployment}", &private_path, &ada, None).await;
    c.expect(StatusCode::NO_CONTENT, Method::DELETE, "/v1/teams/{team}/flows/{flow}", &format!("/v1/teams/acme/flows/{echo_id}"), &ada, None).await;

    // Usage, billing and purchases.
    c.get("/v1/teams/{team}/usage", "/v1/teams/acme/usage", &ada).await;
    let by_flow = c.get("/v1/teams/{team}/usage/flows", "/v1/teams/acme/usage/flows", &ada).await;
    assert!(!by_flow["flows"].as_array().unwrap().is_empty(), "{by_flow}");
    c.get("/v1/teams/{team}/billing", "/v1/teams/acme/billing", &ada).await;
    c.expect(StatusCode::OK, Method::PATCH, "/v1/teams/{team}/billing", "/v1/teams/acme/billing", &ada, Some(json!({"payg_enabled": true, "payg_cap_usd": "25.000", "payg_alerts_usd": ["10.000"], "alert_webhook_url": "http://127.0.0.1:9/alerts"}))).await;
    c.expect(StatusCode::CREATED, Method::POST, "/v1/teams/{team}/purchases", "/v1/teams/acme/purchases", &ada, Some(json!({"credits": 100}))).await;
    c.get("/v1/teams/{team}/purchases", "/v1/teams/acme/purchases", &ada).await;

    // A free team: its 25 credits used, alerts fire, and the next waited-for run pauses (402).
    let small_flow = server.deploy("small", &ada, "work", support::flow_costing_25()).await;
    c.expect(StatusCode::OK, Method::POST, "/hooks/{team}/{path}", "/hooks/small/work", &ada, Some(json!({}))).await;
    let paused = c.expect(StatusCode::PAYMENT_REQUIRED, Method::POST, "/v1/teams/{team}/runs", "/v1/teams/small/runs", &ada, Some(json!({"flow_id": small_flow, "wait": true}))).await;
    assert_eq!(paused["status"], "paused", "{paused}");
    c.expect(StatusCode::ACCEPTED, Method::POST, "/hooks/{team}/{path}", "/hooks/small/work?async=true", &ada, Some(json!({}))).await;
    let mut alerts = Value::Null;
    for _ in 0..200 {
        alerts = c.get("/v1/teams/{team}/alerts", "/v1/teams/small/alerts", &ada).await;
        if !alerts["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!alerts["items"].as_array().unwrap().is_empty(), "using every included credit fires alerts");

    // Invoices of ended periods.
    let invoices = c.get("/v1/teams/{team}/invoices", "/v1/teams/past/invoices?limit=1", &operator).await;
    assert!(invoices["next"].is_string(), "{invoices}");

    // Errors have one shape.
    c.expect(StatusCode::NOT_FOUND, Method::GET, "/v1/teams/{team}", "/v1/teams/nobody", &ada, None).await;
    c.expect(StatusCode::UNAUTHORIZED, Method::GET, "/v1/me", "/v1/me", "fck_not_a_key", None).await;
    c.expect(StatusCode::BAD_REQUEST, Method::POST, "/v1/users", "/v1/users", &operator, Some(json!({"name": ""}))).await;

    // Every GET operation the document lists was called, and most of the others.
    let mut listed_gets = BTreeSet::new();
    let mut listed = 0;
    for (template, operations) in checked.document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            listed += 1;
            if method == "get" {
                listed_gets.insert((method.clone(), template.clone()));
            }
        }
    }
    let missing: Vec<_> = listed_gets.difference(&checked.operations).collect();
    assert!(missing.is_empty(), "GET operations never answered successfully here: {missing:?}");
    // The hook's PUT, PATCH and DELETE are its POST under other methods.
    assert!(checked.operations.len() + 3 >= listed, "only {} of {listed} operations were checked: {:?}", checked.operations.len(), checked.operations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_the_dashboard_and_itself() {
    let server = support::start().await;
    let (_, document) = server.get("/openapi.json", "").await;
    assert!(document["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]["text/html"].is_object(), "{:#}", document["paths"]["/dashboard"]);
    assert_eq!(document["paths"]["/openapi.json"]["get"]["responses"]["200"]["content"]["application/json"]["schema"], json!({"$ref": "#/components/schemas/OpenApi"}));
    // Every reference names a schema the document has.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = &reference[..reference.find('"').unwrap()];
        assert!(document.pointer(target.strip_prefix('#').unwrap()).is_some(), "{target} is not in the document");
    }
}

/// `after` on the teams and invoices lists takes what their `next` gave (and the same instant
/// written another way, for invoices); anything else is refused naming `after`, instead of
/// being compared as text and starting the page somewhere arbitrary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_and_invoice_cursors_are_ones_the_lists_gave() {
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = support::ledger_with_invoices(ledger_dir.path());
    let server = support::start_with(Rules::shipped(), move |state| state.ledger = ledger).await;
    let operator = server.operator.clone();
    for name in ["b-team", "a.team"] {
        let (status, team) = server.post("/v1/teams", &operator, json!({"name": name, "plan": "free"})).await;
        assert_eq!(status, StatusCode::CREATED, "{team}");
    }
    // Pages by `next`, one item at a time; returns the `key` of every item.
    async fn walk(server: &support::Server, key: &str, list: &str, field: &str) -> Vec<String> {
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let path = format!("{list}?limit=1{}", after.map(|after| format!("&after={after}")).unwrap_or_default());
            let (status, page) = server.get(&path, key).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            seen.push(page["items"][0].pointer(field).unwrap().as_str().unwrap().to_owned());
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return seen,
            }
        }
    }
    assert_eq!(walk(&server, &operator, "/v1/teams", "/name").await, ["a.team", "b-team", "past"]);
    let starts = walk(&server, &operator, "/v1/teams/past/invoices", "/period/start").await;
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {starts:?}");
    // The same instant with another offset notation is the same cursor.
    let offset = starts[0].replace('Z', "%2B00:00");
    let (status, page) = server.get(&format!("/v1/teams/past/invoices?limit=1&after={offset}"), &operator).await;
    assert_eq!((status, page["items"][0]["period"]["start"].as_str()), (StatusCode::OK, Some(starts[1].as_str())), "{page}");

    let long = "x".repeat(65);
    for (list, bad, says) in [
        ("/v1/teams", "", "team name"),
        ("/v1/teams", "two%20words", "team name"),
        ("/v1/teams", "caf%C3%A9", "team name"),
        ("/v1/teams", "..", "team name"),
        ("/v1/teams", long.as_str(), "team name"),
        ("/v1/teams/past/invoices", "yesterday", "period"),
        ("/v1/teams/past/invoices", "2026-03", "period"),
        ("/v1/teams/past/invoices", "past", "period"),
    ] {
        let (status, refused) = server.get(&format!("{list}?after={bad}"), &operator).await;
        assert_eq!((status, refused["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("after")), "{list}?after={bad}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains("is not a cursor this list gave") && message.contains(says), "{list}?after={bad}: {message}");
    }
}
