//! Generated requests from the served OpenAPI document: for every operation, bodies that match
//! its schema, bodies that break it (wrong types, missing and unknown fields, huge and odd
//! strings), and odd path parameters, from members and outsiders. The server must never answer
//! 5xx and never stop answering.

mod support;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// Generated requests per operation.
const CASES_PER_OPERATION: usize = 40;

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,12}",
        Just(String::new()),
        Just("x".repeat(70_000)),
        Just("../../etc/passwd".to_owned()),
        Just("ü🦀\u{0}\u{202e}".to_owned()),
        Just("-1".to_owned()),
        Just("1e309".to_owned()),
        Just("free".to_owned()),
        Just("0.001".to_owned()),
        Just("2026-03-01T00:00:00Z".to_owned()),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(-0.5)),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A value for `schema`: usually fitting it, sometimes anything at all.
fn value_for(schema: &Value) -> BoxedStrategy<Value> {
    let fitting: BoxedStrategy<Value> = match schema.get("type").and_then(Value::as_str) {
        Some("string") => match schema.get("enum").and_then(Value::as_array) {
            Some(options) => proptest::sample::select(options.clone()).boxed(),
            None => odd_string().prop_map(Value::String).boxed(),
        },
        Some("integer") => prop_oneof![0i64..200, any::<i64>()].prop_map(|n| json!(n)).boxed(),
        Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            proptest::collection::vec(value_for(&items), 0..3).prop_map(Value::Array).boxed()
        }
        Some("object") => object_for(schema),
        _ => any_json().boxed(),
    };
    prop_oneof![4 => fitting, 1 => any_json()].boxed()
}

fn object_for(schema: &Value) -> BoxedStrategy<Value> {
    let properties: Vec<(String, Value)> = schema.get("properties").and_then(Value::as_object).map(|map| map.iter().map(|(name, schema)| (name.clone(), schema.clone())).collect()).unwrap_or_default();
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = properties
        .into_iter()
        .map(|(name, schema)| proptest::option::weighted(0.8, value_for(&schema)).prop_map(move |value| value.map(|value| (name.clone(), value))).boxed())
        .collect();
    (fields, proptest::option::weighted(0.1, ("[a-z]{3,8}", any_json())))
        .prop_map(|(fields, unknown)| {
            let mut map: Map<String, Value> = fields.into_iter().flatten().collect();
            if let Some((name, value)) = unknown {
                map.insert(name, value);
            }
            Value::Object(map)
        })
        .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_generated_request_gets_a_server_error() {
    let server = support::start().await;
    let owner = server.team("acme", "enterprise").await;
    let outsider = server.team("other", "free").await;
    let flow_id = server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (_, run) = server.post("/hooks/acme/work?async=true", &owner, json!({})).await;
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let (_, document) = server.get("/openapi.json", &owner).await;
    let keys = [owner.as_str(), outsider.as_str(), server.operator.as_str(), "fck_not_a_key"];

    let mut runner = TestRunner::new(Config { cases: CASES_PER_OPERATION as u32, ..Config::default() });
    let mut sent = 0;
    let mut succeeded = 0;
    for (template, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let body_schema = operation.pointer("/requestBody/content/application~1json/schema").cloned();
            let path_param = prop_oneof![
                Just("acme".to_owned()),
                Just(flow_id.clone()),
                Just(run_id.clone()),
                Just("work".to_owned()),
                odd_string().prop_map(|text| text.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(300).collect::<String>()).prop_filter("a path segment", |text| !text.is_empty()),
            ];
            let body_strategy: BoxedStrategy<Option<Value>> = match body_schema {
                Some(schema) => value_for(&schema).prop_map(Some).boxed(),
                None => Just(None).boxed(),
            };
            let strategy = (proptest::collection::vec(path_param, 7), body_strategy, 0..keys.len());
            for _ in 0..CASES_PER_OPERATION {
                let (params, body, key) = strategy.new_tree(&mut runner).unwrap().current();
                let mut path = template.clone();
                for (index, name) in ["{team}", "{flow}", "{run}", "{deployment}", "{user}", "{path}", "{runner}"].iter().enumerate() {
                    path = path.replace(name, &params[index]);
                }
                if template == "/mcp" {
                    path.push_str("?team=acme");
                }
                let method: Method = method.to_uppercase().parse().unwrap();
                let (status, answer) = server.call(method.clone(), &path, keys[key], body.clone()).await;
                assert!(status.as_u16() < 500, "{method} {path} with {} answered {status}: {answer}", body.map(|body| body.to_string().chars().take(300).collect::<String>()).unwrap_or_default());
                sent += 1;
                succeeded += usize::from(status.is_success());
            }
        }
    }
    assert!(sent >= 30 * CASES_PER_OPERATION, "only {sent} requests were generated");
    // Generated requests reach the handlers, not only the validation in front of them.
    assert!(succeeded >= sent / 20, "only {succeeded} of {sent} generated requests succeeded");
    let (status, _) = server.get("/healthz", "").await;
    assert_eq!(status, StatusCode::OK, "the server still answers");
}
