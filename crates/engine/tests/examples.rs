//! The flows in `examples/`, run against a small HTTP API on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use flowcredits_engine::{Flow, RunOutcome, RunReport, Syntax};
use serde_json::{Map, Value, json};

#[derive(Clone)]
struct Api {
    health_calls: Arc<AtomicUsize>,
    /// `/meet` answers only once two requests are waiting on it at the same time.
    meeting: Arc<tokio::sync::Barrier>,
}

/// The API the examples call. `/health` fails twice before it answers ok.
async fn serve() -> String {
    let state = Api { health_calls: Arc::new(AtomicUsize::new(0)), meeting: Arc::new(tokio::sync::Barrier::new(2)) };
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/orders/{id}", get(order))
        .route("/users/{id}", get(user))
        .route("/echo", post(echo))
        .route("/meet", get(meet))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

async fn meet(State(api): State<Api>) -> Json<Value> {
    api.meeting.wait().await;
    Json(json!("met"))
}

async fn health(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    if api.health_calls.fetch_add(1, Ordering::SeqCst) < 2 { (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting"}))) } else { (StatusCode::OK, Json(json!({"status": "ok"}))) }
}

async fn order(Path(id): Path<u64>) -> Json<Value> {
    Json(match id {
        1 => json!({"id": 1, "items": [{"sku": "a", "qty": 2, "price": 50}, {"sku": "b", "qty": 1, "price": 25}]}),
        2 => json!({"id": 2, "items": [{"sku": "c", "qty": 3, "price": 4.5}]}),
        _ => json!({"id": id, "items": [{"sku": "d", "qty": 0}]}),
    })
}

async fn user(Path(id): Path<u64>) -> Result<Json<Value>, StatusCode> {
    let names = ["ada", "grace", "edsger"];
    names.get(id.wrapping_sub(1) as usize).map(|name| Json(json!({"id": id, "name": name}))).ok_or(StatusCode::NOT_FOUND)
}

async fn echo(Query(query): Query<Map<String, Value>>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let header = headers.get("x-test").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    Json(json!({"query": query, "header": header, "body": body}))
}

fn example(name: &str) -> Flow {
    let path = format!("{}/../../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    Flow::load(&std::fs::read_to_string(&path).unwrap(), Syntax::Yaml).unwrap_or_else(|err| panic!("{err}"))
}

async fn run_example(name: &str, base_url: &str, input: Value) -> RunReport {
    let flow = example(name);
    let mut request = request("r1", cloud(), input);
    request.config.insert("base_url".into(), json!(base_url));
    let meter = meter(flowcredits_core::PlanId::Team);
    flowcredits_engine::Engine::default().run(&flow, request, &meter).await.unwrap_or_else(|err| panic!("{err}"))
}

fn shown_value(report: &RunReport, label: &str) -> Option<Value> {
    report.outputs.iter().find(|output| output.label.as_deref() == Some(label)).map(|output| output.value.clone())
}

#[tokio::test]
async fn health_check_retries_until_the_api_is_up() {
    let base = serve().await;
    let report = run_example("health-check", &base, Value::Null).await;
    assert_eq!(report.outcome, RunOutcome::Completed, "{:?}", report.outcome);
    assert_eq!(shown_value(&report, "attempts used"), Some(json!(3)));
    assert_eq!(shown_value(&report, "healthy"), Some(json!({"status": 200, "headers": report.outputs.iter().find(|o| o.at == "retry#2/up").unwrap().value["headers"], "body": {"status": "ok"}})));
    assert_eq!(report.logs.len(), 2, "two failed attempts are logged");
    // Cloud prices: 3 requests, and the `if` on the one 2xx answer, at 1 credit each.
    assert_eq!(report.total.0, 4);
    let pings: Vec<&str> = report.executions.iter().filter(|execution| execution.block() == "ping").map(|execution| execution.id.as_str()).collect();
    assert_eq!(pings, vec!["r1/retry#0/ping", "r1/retry#1/ping", "r1/retry#2/ping"]);
}

#[tokio::test]
async fn health_check_gives_up_after_its_attempts_when_nothing_listens() {
    let base = serve().await;
    let report = run_example("health-check", "http://127.0.0.1:9", Value::Null).await;
    let _ = base;
    assert_eq!(shown_value(&report, "attempts used"), Some(json!(3)));
    assert_eq!(shown_value(&report, "healthy"), None);
    assert!(report.logs[0].value["error"].as_str().unwrap().contains("could not connect"), "{:?}", report.logs[0]);
}

#[tokio::test]
async fn order_transform_validates_totals_and_classifies() {
    let base = serve().await;
    let large = run_example("order-transform", &base, json!({"id": 1})).await;
    assert_eq!(shown_value(&large, "summary"), Some(json!("order 1 is large: 125")));
    let small = run_example("order-transform", &base, json!({"id": 2})).await;
    assert_eq!(shown_value(&small, "summary"), Some(json!("order 2 is small: 13.5")));
    // http_request, validate, evaluate and condition: 1 credit each in the cloud.
    assert_eq!(small.total.0, 4);
    let invalid = run_example("order-transform", &base, json!({"id": 3})).await;
    assert_eq!(shown_value(&invalid, "summary"), None);
    let errors = shown_value(&invalid, "invalid order").unwrap();
    let errors: Vec<&str> = errors.as_array().unwrap().iter().map(|error| error.as_str().unwrap()).collect();
    assert!(errors.iter().any(|error| error.starts_with("/items/0") && error.contains("price")), "{errors:?}");
    assert!(errors.iter().any(|error| error.starts_with("/items/0/qty")), "{errors:?}");
}

#[tokio::test]
async fn user_names_loops_over_ids_calling_the_api() {
    let base = serve().await;
    let report = run_example("user-names", &base, json!({"ids": [1, 7, 3]})).await;
    assert_eq!(shown_value(&report, "names"), Some(json!(["ada", "edsger"])));
    assert_eq!(shown_value(&report, "not found"), Some(json!([7])));
    // One request per id, 1 credit each in the cloud.
    assert_eq!(report.total.0, 3);
}

#[tokio::test]
async fn http_request_sends_method_headers_query_and_json_body() {
    let base = serve().await;
    let flow = flow(r#"
name: post
config: { token: secret }
blocks:
  - { id: start, kind: start }
  - id: send
    kind: http_request
    config:
      method: post
      url: "{{config.base}}/echo"
      headers: { x-test: "{{config.token}}" }
      query: { page: "{{input.page}}", q: "a b&c" }
      body: { json: { fixed: true } }
  - { id: show, kind: display }
  - { id: code, kind: display, config: { label: status } }
edges:
  - { from: start.input, to: send.input }
  - { from: send.body, to: show.value }
  - { from: send.status, to: code.value }
"#);
    let mut request = request("r1", local(), json!({"page": 2}));
    request.config.insert("base".into(), json!(base));
    let report = flowcredits_engine::Engine::default().run(&flow, request, &meter(flowcredits_core::PlanId::Free)).await.unwrap();
    assert_eq!(shown_value(&report, "status"), Some(json!(200)));
    let echoed = report.outputs.iter().find(|output| output.at == "show").unwrap().value.clone();
    assert_eq!(echoed, json!({"query": {"page": "2", "q": "a b&c"}, "header": "secret", "body": {"fixed": true}}));
}

#[tokio::test]
async fn independent_branches_run_at_the_same_time() {
    // Each request is answered only while the other one is also in flight: run one after the
    // other, the first would time out and take its failure port.
    let base = serve().await;
    let flow = flow(r#"
name: parallel
blocks:
  - { id: left, kind: http_request, config: { url: "{{config.base}}/meet", timeout_ms: 10000 } }
  - { id: right, kind: http_request, config: { url: "{{config.base}}/meet", timeout_ms: 10000 } }
  - { id: both, kind: list, config: { inputs: [a, b] } }
  - { id: show, kind: display }
edges:
  - { from: left.body, to: both.a }
  - { from: right.body, to: both.b }
  - { from: both.list, to: show.value }
"#);
    let mut request = request("r1", local(), Value::Null);
    request.config.insert("base".into(), json!(base));
    let report = flowcredits_engine::Engine::default().run(&flow, request, &meter(flowcredits_core::PlanId::Free)).await.unwrap();
    assert_eq!(report.outputs[0].value, json!(["met", "met"]));
}
