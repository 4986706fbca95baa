//! The API's promises one at a time, over a real socket.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_teams_keep_ten_snapshots_per_flow_and_lose_none() {
    let server = support::start().await;
    let owner = server.team("tiny", "free").await;
    let (_, flow) = server.post("/v1/teams/tiny/flows", &owner, json!({"name": "f", "definition": support::flow_costing_25()})).await;
    let flow_id = flow["id"].as_str().unwrap();
    // Taking a snapshot has no fields: one sent is refused by name, not ignored, and takes none.
    let (status, refused) = server.post(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots"), &owner, json!({"label": "v1"})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("label")), "{refused}");
    let (_, refused) = server.post(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots"), &owner, json!("v1")).await;
    assert!(refused["error"]["message"].as_str().unwrap().contains("an object with no fields"), "no internal type names: {refused}");
    for number in 1..=10 {
        let (status, snapshot) = server.post(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
        assert_eq!((status, snapshot["number"].clone(), snapshot["latest"].clone()), (StatusCode::CREATED, json!(number), json!(true)));
    }
    let (status, refused) = server.post(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("limit_reached")), "{refused}");
    let (_, list) = server.get(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots"), &owner).await;
    let numbers: Vec<u64> = list["items"].as_array().unwrap().iter().map(|snapshot| snapshot["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    let latest: Vec<bool> = list["items"].as_array().unwrap().iter().map(|snapshot| snapshot["latest"].as_bool().unwrap()).collect();
    assert_eq!(latest.iter().filter(|latest| **latest).count(), 1, "only the newest is tagged latest");
    assert!(latest[9]);
    // Lists paginate: pages of 4 follow `next` to the end.
    let (mut seen, mut after) = (Vec::new(), String::new());
    loop {
        let (_, page) = server.get(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots?limit=4{after}"), &owner).await;
        seen.extend(page["items"].as_array().unwrap().iter().map(|snapshot| snapshot["number"].as_u64().unwrap()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    // `after` may be a number as written; anything else is refused rather than read as "past the end".
    let (_, page) = server.get(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots?after=8"), &owner).await;
    assert_eq!(page["items"].as_array().unwrap().iter().map(|snapshot| snapshot["number"].as_u64().unwrap()).collect::<Vec<_>>(), [9, 10], "{page}");
    let (status, refused) = server.get(&format!("/v1/teams/tiny/flows/{flow_id}/snapshots?after=latest"), &owner).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("after")), "{refused}");
    // Paid plans keep more.
    let paid = server.team("paid", "solo").await;
    let (_, flow) = server.post("/v1/teams/paid/flows", &paid, json!({"name": "f", "definition": support::flow_costing_25()})).await;
    for _ in 0..11 {
        let (status, _) = server.post(&format!("/v1/teams/paid/flows/{}/snapshots", flow["id"].as_str().unwrap()), &paid, json!(null)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_bodies_are_limited_by_plan() {
    let server = support::start().await;
    let free = server.team("tiny", "free").await;
    let paid = server.team("paid", "team").await;
    server.deploy("tiny", &free, "work", support::flow_costing_25()).await;
    server.deploy("paid", &paid, "work", support::flow_costing_25()).await;
    let big = json!({"blob": "x".repeat(1_100_000)});
    let (status, answer) = server.post("/hooks/tiny/work", &free, big.clone()).await;
    assert_eq!((status, answer["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large")), "{answer}");
    let (_, runs) = server.get("/v1/teams/tiny/runs", &free).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 0, "a refused call starts no run");
    let (status, _) = server.post("/hooks/paid/work", &paid, big).await;
    assert_eq!(status, StatusCode::OK, "5 MB is allowed on paid plans");
    let (status, _) = server.post("/hooks/paid/work", &paid, json!({"blob": "x".repeat(5_300_000)})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_options_on_a_hook_start_no_run_and_say_which_methods_do() {
    let server = support::start().await;
    let owner = server.team("probe", "team").await;
    server.deploy("probe", &owner, "work", support::flow_costing_25()).await;
    let client = reqwest::Client::new();
    for method in [Method::HEAD, Method::OPTIONS, Method::TRACE] {
        let response = client.request(method.clone(), format!("{}/hooks/probe/work", server.base)).bearer_auth(&owner).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let allow = response.headers().get("allow").map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(allow.as_deref(), Some("GET, POST, PUT, PATCH, DELETE"), "{method}");
        if method != Method::HEAD {
            let answer: Value = response.json().await.unwrap();
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(method.as_str()) && message.contains("no run started"), "{answer}");
        }
    }
    let (_, runs) = server.get("/v1/teams/probe/runs", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 0, "no probe started a run: {runs}");
    let (_, usage) = server.get("/v1/teams/probe/usage", &owner).await;
    assert_eq!(usage["used"], 0, "{usage}");
    // The methods that call a hook still do.
    for method in [Method::GET, Method::DELETE] {
        let response = client.request(method.clone(), format!("{}/hooks/probe/work", server.base)).bearer_auth(&owner).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
    }
    let (_, runs) = server.get("/v1/teams/probe/runs", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 2, "{runs}");
}

fn slow_flow(delay_ms: u64) -> Value {
    json!({
        "name": "slow",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "wait", "kind": "delay", "config": {"ms": delay_ms}},
            {"id": "reply", "kind": "response", "config": {"status": 201}}
        ],
        "edges": [{"from": "request.body", "to": "wait.value"}, {"from": "wait.value", "to": "reply.body"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_get_202_and_slow_sync_calls_get_408_while_the_run_goes_on() {
    let mut server = support::start().await;
    server.state.sync_wait = Duration::from_millis(300);
    // The router holds its own copy of the state: restart it with the shorter wait.
    let server = support::restart_with(server).await;
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "slow", slow_flow(1_000)).await;
    let (status, accepted) = server.post("/hooks/acme/slow?async=true", &owner, json!({"n": 1})).await;
    assert_eq!((status, accepted["status"].clone()), (StatusCode::ACCEPTED, json!("running")), "{accepted}");
    let (status, timed_out) = server.post("/hooks/acme/slow", &owner, json!({"n": 2})).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{timed_out}");
    let where_to_read = format!("/v1/teams/acme/runs/{}", timed_out["run_id"].as_str().unwrap());
    assert!(timed_out["message"].as_str().unwrap().ends_with(&where_to_read), "the answer says where the result will be: {timed_out}");
    let run = server.finished_run("acme", &owner, timed_out["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "the run finished after its caller stopped waiting: {run}");
    assert_eq!(run["response"], json!({"status": 201, "body": {"n": 2}}), "the answer the caller missed is kept with the run: {run}");
    let run = server.finished_run("acme", &owner, accepted["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded");
    // A fast flow answers with its response block's status and body.
    server.deploy("acme", &owner, "fast", slow_flow(0)).await;
    let (status, body) = server.post("/hooks/acme/fast", &owner, json!({"echo": true})).await;
    assert_eq!((status, body), (StatusCode::CREATED, json!({"echo": true})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_lists_deployed_tools_and_calling_one_runs_the_flow() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let tool = json!({
        "name": "greet",
        "description": "Greets someone",
        "blocks": [
            {"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
            {"id": "greet", "kind": "template", "config": {"template": "Hello, {{input.name}}!"}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "args.arguments", "to": "greet.input"}, {"from": "greet.text", "to": "reply.body"}]
    });
    let (status, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "greet", "definition": tool})).await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    let (status, deployment) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "tools/greet", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let rpc = |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let (_, init) = server.post("/mcp?team=acme", &owner, rpc(1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}))).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "flowcredits");
    let (_, listed) = server.post("/mcp?team=acme", &owner, rpc(2, "tools/list", json!({}))).await;
    assert_eq!(listed["result"]["tools"], json!([{"name": "tools_greet", "description": "Greets someone", "inputSchema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}]));
    let (_, called) = server.post("/mcp?team=acme", &owner, rpc(3, "tools/call", json!({"name": "tools_greet", "arguments": {"name": "Ada"}}))).await;
    assert_eq!(called["result"], json!({"content": [{"type": "text", "text": "Hello, Ada!"}], "isError": false}), "{called}");
    let (_, runs) = server.get("/v1/teams/acme/runs?trigger=mcp", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "the call ran the flow with trigger mcp");
    let (_, unknown) = server.post("/mcp?team=acme", &owner, rpc(4, "tools/call", json!({"name": "nope"}))).await;
    assert_eq!(unknown["error"]["code"], -32602);
    let (_, numbered) = server.post("/mcp?team=acme", &owner, rpc(4, "tools/call", json!({"name": 5}))).await;
    assert!(numbered["error"]["message"].as_str().is_some_and(|message| message.contains("params.name must be a string")), "{numbered}");
    // Arguments given as null are none (`{}`): the schema's own complaint, not one about null.
    let (_, no_arguments) = server.post("/mcp?team=acme", &owner, rpc(4, "tools/call", json!({"name": "tools_greet", "arguments": null}))).await;
    let message = no_arguments["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("input schema") && !message.contains("null"), "{no_arguments}");
    // A viewer sees the tools but may not run one.
    let viewer = server.member("acme", &owner, "viewer").await;
    let (_, listed) = server.post("/mcp?team=acme", &viewer, rpc(5, "tools/list", json!({}))).await;
    assert_eq!(listed["result"]["tools"].as_array().map(Vec::len), Some(1), "{listed}");
    let (_, refused) = server.post("/mcp?team=acme", &viewer, rpc(6, "tools/call", json!({"name": "tools_greet", "arguments": {"name": "Ada"}}))).await;
    assert!(refused["error"]["message"].as_str().is_some_and(|message| message.contains("viewer")), "{refused}");
    let (_, runs) = server.get("/v1/teams/acme/runs?trigger=mcp", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "the refused call ran nothing");
    // Requests that are not JSON-RPC requests get the protocol's codes, with their id when usable.
    let client = reqwest::Client::new();
    for (body, code, id) in [
        ("{oops", -32700, Value::Null),
        (r#"{"jsonrpc": "2.0", "id": 7}"#, -32600, json!(7)),
        (r#"{"id": "a", "method": "ping"}"#, -32600, json!("a")),
        (r#"[]"#, -32600, Value::Null),
        (r#"{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}"#, -32600, Value::Null),
        (r#"{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}"#, -32600, Value::Null),
    ] {
        let answer: Value = client.post(format!("{}/mcp?team=acme", server.base)).bearer_auth(&owner).body(body).send().await.unwrap().json().await.unwrap();
        assert_eq!((answer["error"]["code"].clone(), answer["id"].clone()), (json!(code), id), "{body}: {answer}");
    }
    let (_, pong) = server.post("/mcp?team=acme", &owner, rpc(8, "ping", Value::Null)).await;
    assert_eq!(pong, json!({"jsonrpc": "2.0", "id": 8, "result": {}}));
    // Only flows with an mcp trigger can be deployed as tools.
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": server.deploy("acme", &owner, "plain", support::flow_costing_25()).await, "path": "x", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");

    // Arguments the schema refuses start no run: the call is refused with -32602.
    let (_, refused) = server.post("/mcp?team=acme", &owner, rpc(9, "tools/call", json!({"name": "tools_greet", "arguments": {"name": 5}}))).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("input schema"), "{refused}");
    let (_, runs) = server.get("/v1/teams/acme/runs?trigger=mcp", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "the refused call ran nothing");
    // A tool's name is its path with `/` as `_`: a second deployment of the same name is refused.
    let (status, clash) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "tools_greet", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{clash}");
    // An mcp block whose schema is not an object's cannot be deployed as a tool.
    let mut stringly = tool.clone();
    stringly["blocks"][0]["config"]["input_schema"] = json!({"type": "string"});
    let (_, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "stringly", "definition": stringly})).await;
    let stringly_id = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/acme/flows/{stringly_id}/snapshots"), &owner, json!(null)).await;
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": stringly_id, "path": "s", "trigger": "mcp"})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("trigger")), "{refused}");
    // The client's protocol version is answered when spoken; a client's response gets 202.
    let (_, old) = server.post("/mcp?team=acme", &owner, rpc(10, "initialize", json!({"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}))).await;
    assert_eq!(old["result"]["protocolVersion"], "2024-11-05", "{old}");
    let (status, _) = server.post("/mcp?team=acme", &owner, json!({"jsonrpc": "2.0", "id": 1, "result": {}})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let unsupported = client.post(format!("{}/mcp?team=acme", server.base)).bearer_auth(&owner).header("mcp-protocol-version", "1999-01-01").json(&rpc(11, "ping", Value::Null)).send().await.unwrap();
    assert_eq!(unsupported.status(), StatusCode::BAD_REQUEST);
    let anonymous = client.post(format!("{}/mcp?team=acme", server.base)).json(&rpc(12, "ping", Value::Null)).send().await.unwrap();
    assert_eq!((anonymous.status(), anonymous.headers().get("www-authenticate").map(|value| value.to_str().unwrap().to_owned())), (StatusCode::UNAUTHORIZED, Some("Bearer".to_owned())));
}

/// Protocol version 2025-03-26, which the server answers as asked, has clients send batches (a
/// JSON array of requests and notifications); they were refused as invalid requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_batch_is_answered_with_its_requests_answers_in_order() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let tool = json!({
        "name": "greet",
        "blocks": [
            {"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
            {"id": "greet", "kind": "template", "config": {"template": "Hello, {{input.name}}!"}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "args.arguments", "to": "greet.input"}, {"from": "greet.text", "to": "reply.body"}]
    });
    let (_, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "greet", "definition": tool})).await;
    let flow_id = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    let (status, _) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "greet", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, answers) = server
        .post(
            "/mcp?team=acme",
            &owner,
            json!([
                {"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "greet", "arguments": {"name": "Ada"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "greet", "arguments": {"name": 5}}},
                {"jsonrpc": "2.0", "id": 3, "method": "ping"},
                "not a message"
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answers}");
    let answers = answers.as_array().unwrap_or_else(|| panic!("a batch is answered with an array: {answers}"));
    assert_eq!(answers.len(), 4, "one answer per request, none for the notification: {answers:?}");
    assert_eq!(answers[0], json!({"jsonrpc": "2.0", "id": "a", "result": {"content": [{"type": "text", "text": "Hello, Ada!"}], "isError": false}}));
    assert_eq!((answers[1]["id"].clone(), answers[1]["error"]["code"].clone()), (json!(2), json!(-32602)), "{answers:?}");
    assert_eq!(answers[2], json!({"jsonrpc": "2.0", "id": 3, "result": {}}));
    assert_eq!((answers[3]["id"].clone(), answers[3]["error"]["code"].clone()), (Value::Null, json!(-32600)), "{answers:?}");
    // A batch of notifications only is taken with 202 and no body, as a single one is.
    let (status, _) = server.post("/mcp?team=acme", &owner, json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

/// A tool call that cannot answer now says what to do next, as a hook's answer does: a paused
/// run names what brings credits back, a slow one where its result will be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_that_pauses_or_outlasts_the_wait_says_what_to_do_next() {
    let mut server = support::start().await;
    server.state.sync_wait = Duration::from_millis(300);
    let server = support::restart_with(server).await;
    let owner = server.team("acme", "team").await;
    let tool = |name: &str, body: Value, edges: Value| json!({"name": name, "blocks": body, "edges": edges});
    let costly = tool(
        "costly",
        json!([
            {"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object"}}},
            {"id": "loop", "kind": "repeat", "config": {"times": 60}},
            {"id": "work", "kind": "evaluate", "config": {"code": "return input;"}},
            {"id": "reply", "kind": "response"}
        ]),
        json!([{"from": "args.arguments", "to": "loop.after"}, {"from": "loop.index", "to": "work.input"}, {"from": "loop.done", "to": "reply.body"}]),
    );
    let slow = tool(
        "slow",
        json!([
            {"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object"}}},
            {"id": "wait", "kind": "delay", "config": {"ms": 1500}},
            {"id": "reply", "kind": "response"}
        ]),
        json!([{"from": "args.arguments", "to": "wait.value"}, {"from": "wait.value", "to": "reply.body"}]),
    );
    for (name, definition) in [("costly", costly), ("slow", slow)] {
        let (status, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": name, "definition": definition})).await;
        assert_eq!(status, StatusCode::CREATED, "{flow}");
        let flow_id = flow["id"].as_str().unwrap();
        server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
        let (status, deployed) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": name, "trigger": "mcp"})).await;
        assert_eq!(status, StatusCode::CREATED, "{deployed}");
    }
    let call = |id: u64, name: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}});
    let (_, slow) = server.post("/mcp?team=acme", &owner, call(1, "slow")).await;
    let text = slow["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{slow}"));
    assert!(slow["result"]["isError"] == true && text.contains("/v1/teams/acme/runs/run_"), "the answer says where the result will be: {slow}");
    // The team's 100 credits go in two calls; the third pauses.
    for id in 2..4 {
        let (_, spent) = server.post("/mcp?team=acme", &owner, call(id, "costly")).await;
        assert_eq!(spent["result"]["isError"], false, "{spent}");
    }
    let (_, paused) = server.post("/mcp?team=acme", &owner, call(4, "costly")).await;
    let text = paused["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{paused}"));
    assert!(paused["result"]["isError"] == true && text.contains("paused") && text.contains("run_"), "{paused}");
    assert!(text.contains("turn on pay-as-you-go"), "the answer says what brings credits back: {paused}");
}

/// A hook call to the path of an MCP tool said only "deployment not found", though a deployment
/// is there: the answer says it is a tool and how to call it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_call_to_an_mcp_tools_path_says_how_to_call_the_tool() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let tool = json!({
        "name": "echo",
        "blocks": [{"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object"}}}, {"id": "reply", "kind": "response"}],
        "edges": [{"from": "args.arguments", "to": "reply.body"}]
    });
    let (_, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "echo", "definition": tool})).await;
    let flow_id = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    let (status, deployed) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "tools/echo", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    let (status, refused) = server.post("/hooks/acme/tools/echo", &owner, json!({"a": 1})).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("MCP tool `tools_echo`") && message.contains("/mcp?team=acme") && message.contains(deployed["id"].as_str().unwrap()), "{refused}");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    assert_eq!(runs["items"], json!([]), "the refused call ran nothing: {runs}");
    // A path with nothing deployed is still plainly not found.
    let (status, missing) = server.post("/hooks/acme/tools/nothing", &owner, json!({})).await;
    assert_eq!((status, missing["error"]["message"].clone()), (StatusCode::NOT_FOUND, json!("deployment at /hooks/acme/tools/nothing not found")), "{missing}");
}

/// Deploying a flow with no snapshot, or a snapshot it does not have, said "snapshot of flow …
/// (it has none yet: …) not found" or only "snapshot 7 of flow … not found": the answer now says
/// what the flow has and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_a_missing_snapshot_says_what_the_flow_has() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let (status, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "work", "definition": support::flow_costing_25()})).await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "work"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(refused["error"]["message"], format!("flow {flow_id} has no snapshot yet: take one with POST /v1/teams/acme/flows/{flow_id}/snapshots"), "{refused}");
    server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    // A snapshot the body names and the flow lacks is that field's problem, on POST as on PATCH.
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "work", "snapshot": 7})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("snapshot")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains(&format!("flow {flow_id} has no snapshot 7; its latest is 1")), "{refused}");
    let (status, deployed) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "work"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    let (status, refused) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{}", deployed["id"].as_str().unwrap()), &owner, Some(json!({"snapshot": 7}))).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("snapshot")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("has no snapshot 7; its latest is 1"), "{refused}");
}

/// A scheduled run of an MCP tool gives it `{"scheduled_at": …}` as arguments. A tool whose
/// schema refuses them was deployed on a schedule all the same, and every run failed; such a
/// schedule is refused by name, on POST and PATCH alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_whose_runs_an_mcp_tools_schema_refuses_is_refused() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let tool = |name: &str, schema: Value| {
        json!({
            "name": name,
            "blocks": [{"id": "args", "kind": "mcp", "config": {"input_schema": schema}}, {"id": "reply", "kind": "response"}],
            "edges": [{"from": "args.arguments", "to": "reply.body"}]
        })
    };
    let mut flows = Vec::new();
    for (name, schema) in [("strict", json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})), ("open", json!({"type": "object"}))] {
        let (_, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": name, "definition": tool(name, schema)})).await;
        let flow_id = flow["id"].as_str().unwrap().to_owned();
        server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
        flows.push(flow_id);
    }
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flows[0], "path": "strict", "trigger": "mcp", "schedule_every_s": 60})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_every_s")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("scheduled_at") && message.contains("\"name\" is a required property") && message.contains("trigger api"), "{refused}");
    let (status, open) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flows[1], "path": "open", "trigger": "mcp", "schedule_every_s": 60})).await;
    assert_eq!(status, StatusCode::CREATED, "a schema that takes the scheduled arguments may be scheduled: {open}");
    // Unscheduled, the strict tool deploys; a schedule added later is refused and changes nothing.
    let (status, strict) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flows[0], "path": "strict", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CREATED, "{strict}");
    let id = strict["id"].as_str().unwrap();
    let (status, refused) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{id}"), &owner, Some(json!({"schedule_cron": "* * * * *"}))).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_cron")), "{refused}");
    let (_, listed) = server.get("/v1/teams/acme/deployments", &owner).await;
    let stored = listed["items"].as_array().unwrap().iter().find(|deployment| deployment["id"] == id).unwrap().clone();
    assert_eq!(stored, strict, "{listed}");
}

/// Every mcp deployment is a tool, however many other deployments the team has: tools/list
/// pages with `nextCursor`, and a call finds its tool by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mcp_deployment_is_listed_and_callable() {
    let server = support::start().await;
    let owner = server.team("many", "team").await;
    let plain = server.deploy("many", &owner, "plain0", support::flow_costing_25()).await;
    for n in 1..=205 {
        let (status, answer) = server.post("/v1/teams/many/deployments", &owner, json!({"flow_id": plain, "path": format!("plain{n}")})).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let tool = json!({"name": "echo", "blocks": [{"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object"}}}, {"id": "reply", "kind": "response"}], "edges": [{"from": "args.arguments", "to": "reply.body"}]});
    let (_, flow) = server.post("/v1/teams/many/flows", &owner, json!({"name": "echo", "definition": tool})).await;
    let echo = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/many/flows/{echo}/snapshots"), &owner, json!(null)).await;
    let (status, deployed) = server.post("/v1/teams/many/deployments", &owner, json!({"flow_id": echo, "path": "echo", "trigger": "mcp"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    let rpc = |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let (_, listed) = server.post("/mcp?team=many", &owner, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(listed["result"]["tools"].as_array().map(|tools| tools.iter().map(|tool| tool["name"].clone()).collect::<Vec<_>>()), Some(vec![json!("echo")]), "{listed}");
    assert!(listed["result"].get("nextCursor").is_none(), "the last page has no nextCursor (clients refuse null): {listed}");
    let (_, refused) = server.post("/mcp?team=many", &owner, rpc(4, "tools/list", json!({"cursor": "zzz"}))).await;
    assert_eq!(refused["error"]["code"], -32602, "a cursor this server did not give: {refused}");
    let (_, called) = server.post("/mcp?team=many", &owner, rpc(2, "tools/call", json!({"name": "echo", "arguments": {"x": 1}}))).await;
    assert_eq!(called["result"]["isError"], false, "{called}");
    // A call's arguments are a run's input: the plan's body limit (5 MB on Team) applies, in JSON.
    let big = rpc(3, "tools/call", json!({"name": "echo", "arguments": {"x": "a".repeat(5 * 1024 * 1024)}}));
    let (status, refused) = server.post("/mcp?team=many", &owner, big).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large")), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runs_are_metered_here_once_per_execution_id() {
    let server = support::start().await;
    let owner = server.team("acme", "free").await;
    // A flow of HTTP requests and logic on the local canvas needs no credits.
    let (status, free_run) = server.post("/v1/teams/acme/local-runs", &owner, json!({"flow": "f", "blocks": [{"type": "http_request"}, {"type": "if"}]})).await;
    assert_eq!((status, free_run["needs_credits"].clone()), (StatusCode::CREATED, json!(false)));
    let (_, admitted) = server.post("/v1/teams/acme/local-runs", &owner, json!({"flow": "g", "blocks": [{"type": "integration"}, {"type": "if"}, {"type": "evaluate"}]})).await;
    let run = admitted["run_id"].as_str().unwrap();
    let charge = json!({"charges": [{"execution_id": "run/connector", "type": "integration"}, {"execution_id": "run/check", "type": "if"}]});
    let (status, first) = server.post(&format!("/v1/teams/acme/local-runs/{run}/charges"), &owner, charge.clone()).await;
    assert_eq!((status, first["credits"].clone(), first["run_credits"].clone()), (StatusCode::OK, json!([2, 0]), json!(2)), "{first}");
    // A retry of the same executions is acknowledged without a second charge.
    let (_, retried) = server.post(&format!("/v1/teams/acme/local-runs/{run}/charges"), &owner, charge).await;
    assert_eq!(retried["run_credits"], 2);
    let (_, shown) = server.get(&format!("/v1/teams/acme/runs/{run}"), &owner).await;
    assert_eq!((shown["status"].clone(), shown["credits"].clone()), (json!("running"), json!(2)), "history counts the retry once too: {shown}");
    // The same execution id with other content is refused and writes nothing.
    let conflicting = json!({"charges": [{"execution_id": "run/new", "type": "integration"}, {"execution_id": "run/connector", "type": "evaluate"}]});
    let (status, refused) = server.post(&format!("/v1/teams/acme/local-runs/{run}/charges"), &owner, conflicting).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let bad = json!({"charges": [{"execution_id": "run/x", "type": "warp_drive"}]});
    let (status, refused) = server.post(&format!("/v1/teams/acme/local-runs/{run}/charges"), &owner, bad).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("charges[0].type")), "{refused}");
    let (_, ended) = server.post(&format!("/v1/teams/acme/local-runs/{run}/end"), &owner, json!(null)).await;
    assert_eq!((ended["credits"].clone(), ended["status"].clone()), (json!(2), json!("succeeded")), "the status is the one history shows: {ended}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 2, "{usage}");
    let (status, _) = server.post(&format!("/v1/teams/acme/local-runs/{run}/charges"), &owner, json!({"charges": [{"execution_id": "late", "type": "integration"}]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an ended run is not charged");
    let (_, metrics) = server.get("/metrics", "").await;
    assert!(metrics.as_str().unwrap().contains("flowcredits_runs_admitted_total 2"), "local runs count as admissions: {metrics}");

    // What a run declared decided whether it needed credits: it is charged for nothing else.
    let free_run = free_run["run_id"].as_str().unwrap();
    for (index, undeclared) in [json!({"execution_id": "run/pay", "type": "integration"}), json!({"execution_id": "run/img", "type": "ai_media", "model": "gpt-image-1"})].into_iter().enumerate() {
        let charges = json!({"charges": [{"execution_id": "run/get", "type": "http_request"}, undeclared]});
        let (status, refused) = server.post(&format!("/v1/teams/acme/local-runs/{free_run}/charges"), &owner, charges).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("charges[1].type")), "{index}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("declared no"), "{refused}");
    }
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 2, "nothing undeclared was charged: {usage}");

    // The local-run routes reach local runs only: a run the server meters itself (a hook's)
    // can be neither charged nor ended through them, so its blocks are never left unbilled.
    server.deploy("acme", &owner, "slow", slow_flow(300)).await;
    let (_, accepted) = server.post("/hooks/acme/slow?async=true", &owner, json!({"n": 1})).await;
    let hook_run = accepted["run_id"].as_str().unwrap();
    for (route, body) in [("end", json!(null)), ("charges", json!({"charges": [{"execution_id": "x", "type": "if"}]}))] {
        let (status, refused) = server.post(&format!("/v1/teams/acme/local-runs/{hook_run}/{route}"), &owner, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{route}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("local run"), "{route}: {refused}");
    }
    let finished = server.finished_run("acme", &owner, hook_run).await;
    assert_eq!(finished["status"], "succeeded", "the hook's run went on to its own end: {finished}");
}

/// A run on the user's machine (`flowcredits run --server`) shows in the server's history what
/// it was given and what it showed, as a server run does, through the real client; one that
/// failed says so and why. Values larger than history keeps are refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_run_shows_its_input_and_output_in_history() {
    use flowcredits_engine::{Engine, Flow, RunRequest, Syntax};
    use flowcredits_server::client::ServerMeter;
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let definition = |code: &str| {
        json!({"name": "double", "blocks": [{"id": "start", "kind": "start"}, {"id": "twice", "kind": "evaluate", "config": {"code": code}}, {"id": "show", "kind": "display", "config": {"label": "doubled"}}],
               "edges": [{"from": "start.input", "to": "twice.input"}, {"from": "twice.result", "to": "show.value"}]})
        .to_string()
    };
    let local_run = |code: &'static str, n: i64| {
        let (base, owner) = (server.base.clone(), owner.clone());
        let flow = Flow::load(&definition(code), Syntax::Json).unwrap();
        async move {
            let input = json!({"n": n});
            let meter = ServerMeter::new(&base, "acme", &owner, &flow.name, &input).unwrap();
            let run = flowcredits_core::RunId::new(format!("local-{n}")).unwrap();
            let context = flowcredits_core::RunContext::manual(flowcredits_core::CloudRun::Off);
            let request = RunRequest { run: run.clone(), context, input, config: serde_json::Map::new(), http: None, on_response: None };
            let ran = Engine::default().run(&flow, request, &meter).await;
            meter.finish(&run, ran.as_ref()).await.unwrap();
            meter.server_run_id(&run).unwrap()
        }
    };
    let succeeded = local_run("return input.n * 2;", 21).await;
    let (_, shown) = server.get(&format!("/v1/teams/acme/runs/{succeeded}"), &owner).await;
    assert_eq!((shown["status"].clone(), shown["input"].clone(), shown["output"].clone(), shown["location"].clone()), (json!("succeeded"), json!({"n": 21}), json!({"doubled": 42}), json!("local")), "{shown}");
    let failed = local_run("throw new Error('no doubling today');", 1).await;
    let (_, shown) = server.get(&format!("/v1/teams/acme/runs/{failed}"), &owner).await;
    assert_eq!((shown["status"].clone(), shown["input"].clone()), (json!("failed"), json!({"n": 1})), "{shown}");
    assert!(shown["error"].as_str().unwrap().contains("no doubling today"), "{shown}");

    // Too large to keep: refused by field, and nothing is admitted or ended.
    let big = json!({"text": "a".repeat(1024 * 1024)});
    let (status, refused) = server.post("/v1/teams/acme/local-runs", &owner, json!({"flow": "f", "blocks": [{"type": "if"}], "input": big})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("input")), "{refused}");
    let (_, admitted) = server.post("/v1/teams/acme/local-runs", &owner, json!({"flow": "f", "blocks": [{"type": "if"}], "input": [1, 2]})).await;
    let run = admitted["run_id"].as_str().unwrap();
    for (field, body) in [("output", json!({"output": big})), ("error", json!({"error": "e".repeat(64 * 1024 + 1)}))] {
        let (status, refused) = server.post(&format!("/v1/teams/acme/local-runs/{run}/end"), &owner, body).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!(field)), "{refused}");
    }
    let (_, shown) = server.get(&format!("/v1/teams/acme/runs/{run}"), &owner).await;
    assert_eq!((shown["status"].clone(), shown["input"].clone()), (json!("running"), json!([1, 2])), "{shown}");
    let (status, ended) = server.post(&format!("/v1/teams/acme/local-runs/{run}/end"), &owner, json!({"output": {"ok": true}})).await;
    assert_eq!((status, ended["status"].clone()), (StatusCode::OK, json!("succeeded")), "{ended}");
    let (_, shown) = server.get(&format!("/v1/teams/acme/runs/{run}"), &owner).await;
    assert_eq!(shown["output"], json!({"ok": true}), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_run_that_cannot_start_is_not_kept_waiting() {
    let server = support::start().await;
    let owner = server.team("solo", "solo").await;
    server.deploy("solo", &owner, "work", support::flow_costing_25()).await;
    for _ in 0..2 {
        assert_eq!(server.call_hook("solo", "work", &owner, json!({})).await.0, StatusCode::OK, "Solo's 50 credits");
    }
    // Out of credits: a run on the user's machine stops there, so the server does not keep it.
    let (status, local) = server.post("/v1/teams/solo/local-runs", &owner, json!({"flow": "mine", "blocks": [{"type": "integration"}]})).await;
    assert_eq!((status, local["status"].clone()), (StatusCode::CREATED, json!("paused")), "{local}");
    assert!(local["message"].as_str().unwrap().contains("run it again"), "{local}");
    assert!(local["message"].as_str().unwrap().ends_with("(turn on pay-as-you-go, or wait for the next billing period)"), "Solo has pay-as-you-go: {local}");
    let local = local["run_id"].as_str().unwrap().to_owned();
    let (_, run) = server.get(&format!("/v1/teams/solo/runs/{local}"), &owner).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    // A hook run waits, and pay-as-you-go resumes it alone.
    let (status, paused) = server.call_hook("solo", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(paused["error"]["message"].as_str().unwrap().ends_with("(turn on pay-as-you-go, or wait for the next billing period)"), "{paused}");
    let (status, billing) = server.call(Method::PATCH, "/v1/teams/solo/billing", &owner, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "{billing}");
    let resumed = server.finished_run("solo", &owner, paused["run_id"].as_str().unwrap()).await;
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_that_cannot_start_is_failed_and_the_others_still_run() {
    let server = support::start().await;
    let owner = server.team("mixed", "solo").await;
    server.deploy("mixed", &owner, "work", support::flow_costing_25()).await;
    let gone = server.deploy("mixed", &owner, "gone", json!({"name": "gone", "blocks": [
        {"id": "request", "kind": "request"}, {"id": "check", "kind": "validate", "config": {"schema": {}}}
    ], "edges": [{"from": "request.body", "to": "check.value"}]})).await;
    for _ in 0..2 {
        assert_eq!(server.call_hook("mixed", "work", &owner, json!({})).await.0, StatusCode::OK);
    }
    let (_, first) = server.call_hook("mixed", "gone", &owner, json!({})).await;
    let (_, second) = server.call_hook("mixed", "work", &owner, json!({})).await;
    let (first, second) = (first["run_id"].as_str().unwrap().to_owned(), second["run_id"].as_str().unwrap().to_owned());
    // The first paused run's flow disappears from under it (as if its rows were lost).
    server.state.catalog.call(move |connection| {
        connection.execute_batch(&format!("PRAGMA foreign_keys = OFF; DELETE FROM snapshots WHERE flow_id = '{gone}'; PRAGMA foreign_keys = ON;"))?;
        Ok(())
    }).await.unwrap();
    let (status, billing) = server.call(Method::PATCH, "/v1/teams/mixed/billing", &owner, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "one run that cannot start does not fail the change: {billing}");
    let failed = server.finished_run("mixed", &owner, &first).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("could not be started"), "{failed}");
    assert_eq!(server.finished_run("mixed", &owner, &second).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_alerts_fire_once_per_period_and_reach_the_webhook() {
    // The receiver keeps each delivery's body as sent and its signature header.
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = Arc::clone(&received);
    let hook = axum::Router::new().route("/alerts", axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
        let sink = Arc::clone(&sink);
        async move {
            let signature = headers.get("x-flowcredits-signature").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
            sink.lock().unwrap().push((body, signature));
            StatusCode::NO_CONTENT
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, hook).into_future());

    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let (status, billing) = server.call(Method::PATCH, "/v1/teams/acme/billing", &owner, Some(json!({"alert_webhook_url": hook_url, "payg_enabled": true, "payg_alerts_usd": ["0.020"]}))).await;
    assert_eq!(status, StatusCode::OK);
    let secret = billing["alert_signing_secret"].as_str().expect("setting a webhook makes its signing secret").to_owned();
    // Only those who manage billing see the webhook and its secret; others see that one is set.
    let viewer = server.member("acme", &owner, "viewer").await;
    let (_, seen) = server.get("/v1/teams/acme/billing", &viewer).await;
    assert_eq!((seen["alert_webhook_set"].clone(), seen["alert_webhook_url"].clone(), seen["alert_signing_secret"].clone()), (json!(true), Value::Null, Value::Null), "{seen}");
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    for _ in 0..5 {
        let (status, _) = server.call_hook("acme", "work", &owner, json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    // 125 credits: 75% and 100% of the included 100, and $0.025 of pay-as-you-go past $0.020.
    let mut kinds = Vec::new();
    // Bounded so a broken build cannot hang; a loaded machine still has ample time.
    for _ in 0..800 {
        kinds = received.lock().unwrap().iter().map(|(body, _)| serde_json::from_str::<Value>(body).unwrap()["alert"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
        if kinds.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    kinds.sort();
    assert_eq!(kinds, ["included_100_of_100", "included_75_of_100", "payg_0.020"]);
    // Each delivery is signed: HMAC-SHA256 of "<t>.<body>" under the team's secret.
    for (body, signature) in received.lock().unwrap().iter() {
        let (t, v1) = signature.strip_prefix("t=").and_then(|rest| rest.split_once(",v1=")).unwrap_or_else(|| panic!("unsigned: {signature:?}"));
        assert_eq!(v1, flowcredits_server::auth::hmac_sha256_hex(secret.as_bytes(), format!("{t}.{body}").as_bytes()), "{body}");
    }
    let (_, alerts) = server.get("/v1/teams/acme/alerts", &owner).await;
    let listed = alerts["items"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "each threshold once: {alerts}");
    assert!(listed.iter().all(|alert| alert["attempts"].as_u64() >= Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_the_openapi_document() {
    let server = support::start().await;
    let (status, health) = server.get("/healthz", "").await;
    assert_eq!((status, health["status"].clone()), (StatusCode::OK, json!("ok")));
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    server.call_hook("acme", "work", &owner, json!({})).await;
    let (_, metrics) = server.get("/metrics", "").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in ["flowcredits_runs_admitted_total 1", "flowcredits_credits_charged_total 25", "flowcredits_runs_finished_total{status=\"succeeded\"} 1", "flowcredits_admission_seconds_count 1"] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    // The ledger's writer: the team, the run's admission, and its charges with its end, each
    // committed and synced.
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("missing {name} in\n{metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let (commits, requests, syncs) = (value("flowcredits_ledger_commits_total"), value("flowcredits_ledger_requests_total"), value("flowcredits_ledger_syncs_total"));
    assert!(requests >= 3.0 && commits >= 1.0 && commits <= requests && syncs >= 1.0 && syncs <= commits, "{metrics}");
    assert!(value("flowcredits_ledger_sync_seconds_total") > 0.0 && value("flowcredits_ledger_commit_seconds_total") > 0.0, "{metrics}");
    // Those commits are in the WAL, which this little load never rewinds.
    assert!(value("flowcredits_ledger_wal_bytes") > 0.0 && value("flowcredits_ledger_wal_rewinds_total") == 0.0, "{metrics}");
    assert_eq!(value("flowcredits_history_queue_entries"), 0.0, "the run's history was read, so it was written");
    let (_, document) = server.get("/openapi.json", "").await;
    assert_eq!(document["openapi"], "3.0.3");
    assert!(document["paths"]["/v1/teams/{team}/billing"]["patch"]["requestBody"].is_object());
    let (status, missing) = server.get("/v2/nothing", "").await;
    assert_eq!((status, missing["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_team_has_a_deployed_flow_and_usage() {
    let server = support::start().await;
    let key = flowcredits_server::serve::create_demo(&server.state).await.unwrap();
    let (_, usage) = server.get("/v1/teams/demo/usage", &key).await;
    assert_eq!(usage["used"], 6, "three greetings of 2 credits: {usage}");
    let (status, body) = server.call_hook("demo", "hello", &key, json!({"name": "Linus"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"greeting": "Hello, Linus!"})));
    assert!(flowcredits_server::serve::create_demo(&server.state).await.is_err(), "a second demo is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_block_is_shown_failed_with_its_error_and_still_charged() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let failing = json!({
        "name": "boom",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "explode", "kind": "evaluate", "config": {"code": "throw new Error('boom');"}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "request.body", "to": "explode.input"}, {"from": "explode.result", "to": "reply.body"}]
    });
    server.deploy("acme", &owner, "boom", failing).await;
    let (status, answer) = server.post("/hooks/acme/boom", &owner, json!({"x": 1})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    let run = server.finished_run("acme", &owner, answer["run_id"].as_str().unwrap()).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("failed"), json!(1)), "a block that started is charged: {run}");
    assert!(run["error"].as_str().unwrap().contains("boom"), "{run}");
    let explode = run["blocks"].as_array().unwrap().iter().find(|block| block["block_id"] == "explode").unwrap().clone();
    assert_eq!((explode["status"].clone(), explode["input"].clone(), explode["credits"].clone()), (json!("failed"), json!({"input": {"x": 1}}), json!(1)), "{explode}");
    assert!(explode["error"].as_str().unwrap().contains("boom"), "{explode}");
    // Started from the API and waited for, the same failure is a run described: 200, status failed.
    let (_, flows) = server.get("/v1/teams/acme/flows", &owner).await;
    let (status, described) = server.post("/v1/teams/acme/runs", &owner, json!({"flow_id": flows["items"][0]["id"], "wait": true})).await;
    assert_eq!((status, described["status"].clone()), (StatusCode::OK, json!("failed")), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_with_a_schedule_block_is_scheduled_when_deployed() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let ticking = json!({
        "name": "tick",
        "blocks": [{"id": "every", "kind": "schedule", "config": {"every_minutes": 5}}, {"id": "show", "kind": "display"}],
        "edges": [{"from": "every.time", "to": "show.value"}]
    });
    server.deploy("acme", &owner, "tick", ticking).await;
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    assert_eq!(deployments["items"][0]["schedule_every_s"], 300, "{deployments}");
    // A schedule more often than every minute is refused.
    let (_, flows) = server.get("/v1/teams/acme/flows", &owner).await;
    let flow_id = flows["items"][0]["id"].as_str().unwrap();
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "fast", "schedule_every_s": 30})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_every_s")), "{refused}");
    // A cron expression instead: weekdays at 09:00 UTC, in place of the flow's own interval.
    let (status, deployed) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "weekdays", "schedule_cron": "0 9 * * 1-5"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    assert_eq!((deployed["schedule_cron"].clone(), deployed["schedule_every_s"].clone()), (json!("0 9 * * 1-5"), Value::Null), "{deployed}");
    for (cron, problem) in [("0 25 * * *", "hour field `25`"), ("0 9 * *", "has 4 fields"), ("0 0 31 2 *", "a schedule runs at least once a year")] {
        let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "bad", "schedule_cron": cron})).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_cron")), "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains(problem), "{cron}: {refused}");
    }
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "both", "schedule_cron": "* * * * *", "schedule_every_s": 60})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_cron")), "{refused}");
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    assert_eq!(deployments["items"].as_array().unwrap().len(), 2, "refused deployments were not created: {deployments}");
    // The schedule changes in place: same id and path, same snapshot, the new schedule whole.
    let id = deployed["id"].as_str().unwrap();
    let (status, changed) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{id}"), &owner, Some(json!({"schedule_every_s": 3600}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!((changed["id"].clone(), changed["snapshot"].clone(), changed["schedule_every_s"].clone(), changed["schedule_cron"].clone()), (json!(id), deployed["snapshot"].clone(), json!(3600), Value::Null), "{changed}");
    // A bad schedule is refused by name and changes nothing.
    let (status, refused) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{id}"), &owner, Some(json!({"schedule_cron": "61 * * * *"}))).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("schedule_cron")), "{refused}");
    let (status, unscheduled) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{id}"), &owner, Some(json!({"schedule_every_s": null}))).await;
    assert_eq!((status, unscheduled["schedule_every_s"].clone(), unscheduled["schedule_cron"].clone()), (StatusCode::OK, Value::Null, Value::Null), "{unscheduled}");
    let (_, listed) = server.get("/v1/teams/acme/deployments", &owner).await;
    let stored = listed["items"].as_array().unwrap().iter().find(|deployment| deployment["id"] == id).unwrap().clone();
    assert_eq!(stored, unscheduled, "{listed}");
    // A schedule block may carry the cron expression itself; a bad one is refused with the flow.
    let nightly = json!({
        "name": "nightly",
        "blocks": [{"id": "every", "kind": "schedule", "config": {"cron": "30 2 * * *"}}, {"id": "show", "kind": "display"}],
        "edges": [{"from": "every.time", "to": "show.value"}]
    });
    server.deploy("acme", &owner, "nightly", nightly.clone()).await;
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let deployed = deployments["items"].as_array().unwrap().iter().find(|deployment| deployment["path"] == "nightly").unwrap().clone();
    assert_eq!((deployed["schedule_cron"].clone(), deployed["schedule_every_s"].clone()), (json!("30 2 * * *"), Value::Null), "{deployed}");
    let mut broken = nightly;
    broken["name"] = json!("broken");
    broken["blocks"][0]["config"] = json!({"cron": "30 2 * *"});
    let (status, refused) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "broken", "definition": broken})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("config.cron") && refused.to_string().contains("has 4 fields"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_a_snapshot_follows_its_schedule_block_unless_the_deployment_set_one() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let every = |minutes: u64| json!({
        "name": "tick",
        "blocks": [{"id": "every", "kind": "schedule", "config": {"every_minutes": minutes}}, {"id": "show", "kind": "display"}],
        "edges": [{"from": "every.time", "to": "show.value"}]
    });
    let flow_id = server.deploy("acme", &owner, "tick", every(1)).await;
    // A second deployment of the same flow sets its own schedule.
    let (status, own) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "own", "schedule_cron": "0 9 * * *"})).await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let inherited = deployments["items"].as_array().unwrap().iter().find(|deployment| deployment["path"] == "tick").unwrap().clone();
    assert_eq!(inherited["schedule_every_s"], 60, "{inherited}");
    // The flow now asks for hourly runs; its new snapshot goes live at both paths.
    let (status, _) = server.call(Method::PUT, &format!("/v1/teams/acme/flows/{flow_id}"), &owner, Some(json!({"definition": every(60)}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, redeployed) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{}", inherited["id"].as_str().unwrap()), &owner, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{redeployed}");
    // It used to keep running every minute, 60 times what the served flow asks for.
    assert_eq!((redeployed["snapshot"].clone(), redeployed["schedule_every_s"].clone(), redeployed["schedule_cron"].clone()), (json!(2), json!(3600), Value::Null), "{redeployed}");
    let (status, kept) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{}", own["id"].as_str().unwrap()), &owner, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!((kept["snapshot"].clone(), kept["schedule_every_s"].clone(), kept["schedule_cron"].clone()), (json!(2), Value::Null, json!("0 9 * * *")), "{kept}");
    // A schedule given with the new snapshot wins over the block's.
    let (status, _) = server.call(Method::PUT, &format!("/v1/teams/acme/flows/{flow_id}"), &owner, Some(json!({"definition": every(5)}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, given) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{}", inherited["id"].as_str().unwrap()), &owner, Some(json!({"snapshot": 3, "schedule_every_s": 120}))).await;
    assert_eq!((status, given["snapshot"].clone(), given["schedule_every_s"].clone()), (StatusCode::OK, json!(3), json!(120)), "{given}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_call_is_answered_by_the_response_block_while_the_flow_goes_on() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let reply_then_work = json!({
        "name": "early",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "reply", "kind": "response", "config": {"status": 202}},
            {"id": "later", "kind": "delay", "config": {"ms": 5000}},
            {"id": "done", "kind": "display", "config": {"label": "done"}}
        ],
        "edges": [
            {"from": "request.body", "to": "reply.body"},
            {"from": "request.body", "to": "later.value"},
            {"from": "later.value", "to": "done.value"}
        ]
    });
    server.deploy("acme", &owner, "early", reply_then_work).await;
    let response = server.client.post(format!("{}/hooks/acme/early", server.base)).bearer_auth(&owner).json(&json!({"ok": 1})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let run_id = response.headers()["x-flowcredits-run"].to_str().unwrap().to_owned();
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ok": 1}));
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &owner).await;
    assert_eq!(run["status"], "running", "the answer came before the flow's delay ended: {run}");
    let run = server.finished_run("acme", &owner, &run_id).await;
    assert_eq!((run["status"].clone(), run["output"]["done"].clone()), (json!("succeeded"), json!({"ok": 1})), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_and_paused_runs_can_be_cancelled_and_finished_ones_cannot() {
    let server = support::start().await;
    let owner = server.team("acme", "free").await;
    server.deploy("acme", &owner, "slow", slow_flow(60_000)).await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (_, running) = server.post("/hooks/acme/slow?async=true", &owner, json!({})).await;
    let running = running["run_id"].as_str().unwrap().to_owned();
    // Free's 25 credits are used up; the next paid call pauses.
    let (status, _) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, paused) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    // Free has no pay-as-you-go and buys no credits: the answer says the one way left.
    assert!(paused["error"]["message"].as_str().unwrap().ends_with("(wait for the next billing period)"), "{paused}");
    let paused = paused["run_id"].as_str().unwrap().to_owned();

    // A running run is told to stop; a paused one is cancelled there and then.
    for (run, answered) in [(&running, "cancelling"), (&paused, "cancelled")] {
        let (status, answer) = server.post(&format!("/v1/teams/acme/runs/{run}/cancel"), &owner, json!(null)).await;
        assert_eq!((status, answer["status"].clone()), (StatusCode::OK, json!(answered)), "{answer}");
        let finished = server.finished_run("acme", &owner, run).await;
        assert_eq!(finished["status"], "cancelled", "{finished}");
    }
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flowcredits_runs_finished_total{status=\"cancelled\"} 2"), "both cancellations are counted:\n{metrics}");
    assert!(!metrics.contains("flowcredits_runs_finished_total{status=\"paused\"}"), "paused is not an end:\n{metrics}");

    // Deleting a deployment cancels the runs it left paused.
    let (status, paused_again) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let left = paused_again["run_id"].as_str().unwrap().to_owned();
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let work = deployments["items"].as_array().unwrap().iter().find(|deployment| deployment["path"] == "work").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, _) = server.call(Method::DELETE, &format!("/v1/teams/acme/deployments/{work}"), &owner, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{left}"), &owner).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let (status, refused) = server.post(&format!("/v1/teams/acme/runs/{paused}/cancel"), &owner, json!(null)).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::CONFLICT, json!("conflict")), "{refused}");
    // The cancelled paused run never ran and was never charged.
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 25, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starts_a_cloud_run_from_the_api_and_gets_the_run_back() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let flow_id = server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (status, run) = server.post("/v1/teams/acme/runs", &owner, json!({"flow_id": flow_id, "wait": true})).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!((run["status"].clone(), run["credits"].clone(), run["response"].clone()), (json!("succeeded"), json!(25), json!({"status": 200, "body": 24})), "{run}");
    let (_, listed) = server.get(&format!("/v1/teams/acme/runs/{}", run["run_id"].as_str().unwrap()), &owner).await;
    assert_eq!((listed["trigger"].clone(), listed["location"].clone()), (json!("manual"), json!("cloud")), "a manual run on the server is a cloud run: {listed}");
    let viewer = server.member("acme", &owner, "viewer").await;
    let (status, _) = server.post("/v1/teams/acme/runs", &viewer, json!({"flow_id": flow_id})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewers read, they do not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_block_runs_the_latest_snapshot_of_the_teams_own_flow() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let double = json!({
        "name": "double",
        "blocks": [
            {"id": "start", "kind": "start"},
            {"id": "twice", "kind": "evaluate", "config": {"code": "return input * 2;"}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "start.input", "to": "twice.input"}, {"from": "twice.result", "to": "reply.body"}]
    });
    let outer = json!({
        "name": "outer",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "sub", "kind": "flow", "config": {"flow": "double"}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "request.body", "to": "sub.input"}, {"from": "sub.result", "to": "reply.body"}]
    });
    server.deploy("acme", &owner, "double", double.clone()).await;
    let outer_id = server.deploy("acme", &owner, "outer", outer.clone()).await;
    let (status, answer) = server.call_hook("acme", "outer", &owner, json!(21)).await;
    assert_eq!((status, answer), (StatusCode::OK, json!(42)));
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 1, "the nested evaluate block is charged in the calling run: {usage}");
    let (_, estimate) = server.get(&format!("/v1/teams/acme/flows/{outer_id}/estimate?trigger=api"), &owner).await;
    assert_eq!(estimate["exact"], 1, "{estimate}");

    // Another team with only `outer` cannot reach acme's `double`.
    let other = server.team("other", "team").await;
    server.deploy("other", &other, "outer", outer).await;
    let (status, failed) = server.post("/hooks/other/outer", &other, json!(21)).await;
    assert!(status.is_client_error() || status.is_server_error(), "{status} {failed}");
    assert!(failed.to_string().contains("double"), "the error names the missing flow: {failed}");
    assert!(failed.to_string().contains("no flow by that name"), "{failed}");
    // A flow of that name with no snapshot yet is said so.
    let (status, saved) = server.post("/v1/teams/other/flows", &other, json!({"name": "double", "definition": double})).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    let (_, failed) = server.post("/hooks/other/outer", &other, json!(21)).await;
    assert!(failed.to_string().contains("has no snapshot yet"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_time_limit_is_stopped_and_recorded_as_timed_out() {
    let mut server = support::start().await;
    server.state.run_duration_max = Duration::from_millis(500);
    let server = support::restart_with(server).await;
    let owner = server.team("acme", "team").await;
    let charged_then_slow = json!({
        "name": "stuck",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "check", "kind": "validate", "config": {"schema": {}}},
            {"id": "wait", "kind": "delay", "config": {"ms": 60000}}
        ],
        "edges": [{"from": "request.body", "to": "check.value"}, {"from": "check.pass", "to": "wait.value"}]
    });
    server.deploy("acme", &owner, "stuck", charged_then_slow).await;
    let (_, started) = server.post("/hooks/acme/stuck?async=true", &owner, json!({})).await;
    let run = server.finished_run("acme", &owner, started["run_id"].as_str().unwrap()).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("timed_out"), json!(1)), "what ran before the stop stays charged: {run}");
    // The ledger closed the run, and nothing more was counted.
    let run_id = started["run_id"].as_str().unwrap();
    let status = server.state.ledger.run_status("acme", run_id).await.unwrap();
    assert!(status.is_some_and(|status| status.is_finished()), "{status:?}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 1, "{usage}");
}

/// Run history is written behind the runs, so a crash can leave a run the ledger admitted with
/// no history row yet. At start-up the ledger's own list of running runs is what gets closed:
/// such a run is ended with what it was charged, and a run resumed but not yet dispatched
/// (paused in history) is left for the dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_ends_runs_the_ledger_holds_as_running_even_without_history() {
    use flowcredits_core::{AnchorDay, PlanId, RunContext, RunStatus, Trigger};
    let server = support::start().await;
    let state = &server.state;
    state.ledger.create_team("crashy", PlanId::Enterprise, AnchorDay::FIRST, "usr_test").await.unwrap();
    let context = RunContext::automated(Trigger::Api).unwrap();
    let status = state.ledger.start_run("crashy", "run_without_history", context, true).await.unwrap();
    assert_eq!(status, RunStatus::Running);
    assert_eq!(state.ledger.running_runs().await.unwrap(), vec![("crashy".to_owned(), "run_without_history".to_owned())]);

    let ended = state.runner.recover_interrupted(state).await.unwrap();
    assert_eq!(ended, 1, "the run the ledger held as running was closed");
    assert_eq!(state.ledger.run_status("crashy", "run_without_history").await.unwrap(), Some(RunStatus::Completed));
    assert!(state.ledger.running_runs().await.unwrap().is_empty());
    assert_eq!(state.runner.recover_interrupted(state).await.unwrap(), 0, "nothing is left to close");
    // Its id now answers with what the ledger knows, instead of 404.
    let history = state.catalog.call(|connection| flowcredits_server::history::run(connection, "crashy", "run_without_history")).await.unwrap();
    assert_eq!((history.status, history.trigger.as_str(), history.credits), (flowcredits_server::history::RunState::Failed, "api", 0));
    assert!(history.error.as_deref().unwrap().starts_with("interrupted"), "{history:?}");
}

/// A crash can lose the history of runs whose ids were already handed out: a finished run
/// (answered synchronously) and a paused one (answered 402). At start-up each gets a row from
/// the ledger's record; the paused one, whose input was lost, is cancelled instead of waiting
/// forever for credits it could not use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_restores_runs_whose_history_a_crash_lost() {
    use flowcredits_core::RunStatus;
    let server = support::start().await;
    let owner = server.team("acme", "free").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let response = server.client.post(format!("{}/hooks/acme/work", server.base)).bearer_auth(&owner).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let finished = response.headers()["x-flowcredits-run"].to_str().unwrap().to_owned();
    server.finished_run("acme", &owner, &finished).await;
    let (status, paused) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let paused = paused["run_id"].as_str().unwrap().to_owned();
    let kept = server.call_hook("acme", "work", &owner, json!({})).await.1["run_id"].as_str().unwrap().to_owned();
    // A run that finished (the ledger ended it) whose end history lost: still `running` there.
    let owner_team = server.team("other", "team").await;
    server.deploy("other", &owner_team, "work", support::flow_costing_25()).await;
    let (status, _) = server.call_hook("other", "work", &owner_team, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, runs) = server.get("/v1/teams/other/runs", &owner_team).await;
    let unended = runs["items"][0]["id"].as_str().unwrap().to_owned();
    // What a crash before the history writer's commit leaves: the ledger's records, no rows
    // (or a row that never heard of the end).
    server.state.history.flush().await;
    let (lost, stale) = ([finished.clone(), paused.clone()], unended.clone());
    server
        .state
        .catalog
        .call(move |connection| {
            for run in &lost {
                connection.execute("DELETE FROM run_history_batches WHERE run_id = ?1", [run])?;
                connection.execute("DELETE FROM run_history WHERE id = ?1", [run])?;
            }
            connection.execute("UPDATE run_history SET status = 'running', ended_ms = NULL WHERE id = ?1", [&stale])?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(server.get(&format!("/v1/teams/acme/runs/{paused}"), &owner).await.0, StatusCode::NOT_FOUND);

    assert_eq!(server.state.runner.recover_interrupted(&server.state).await.unwrap(), 0, "no run was executing");
    let (_, run) = server.get(&format!("/v1/teams/other/runs/{unended}"), &owner_team).await;
    // Whether it succeeded was lost: `unknown`, not a failure it never had.
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("unknown"), json!(25)), "{run}");
    assert!(run["error"].as_str().unwrap().contains("unknown"), "the ledger had ended it; not an interruption: {run}");
    assert_eq!(server.state.ledger.run_status("other", &unended).await.unwrap(), Some(RunStatus::Completed));
    let (status, run) = server.get(&format!("/v1/teams/acme/runs/{finished}"), &owner).await;
    assert_eq!((status, run["status"].clone(), run["credits"].clone(), run["trigger"].clone()), (StatusCode::OK, json!("unknown"), json!(25), json!("api")), "{run}");
    assert!(run["error"].as_str().unwrap().contains("outcome"), "{run}");
    let (_, listed) = server.get("/v1/teams/acme/runs?status=unknown", &owner).await;
    assert_eq!(listed["items"].as_array().unwrap().iter().map(|run| run["id"].clone()).collect::<Vec<_>>(), vec![json!(finished)], "{listed}");
    let (status, run) = server.get(&format!("/v1/teams/acme/runs/{paused}"), &owner).await;
    assert_eq!((status, run["status"].clone(), run["credits"].clone()), (StatusCode::OK, json!("cancelled"), json!(0)), "{run}");
    assert_eq!(server.state.ledger.run_status("acme", &paused).await.unwrap(), Some(RunStatus::Cancelled));
    // A paused run whose history survived still waits for credits, untouched.
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{kept}"), &owner).await;
    assert_eq!(run["status"], "paused", "{run}");
    assert_eq!(server.state.ledger.run_status("acme", &kept).await.unwrap(), Some(RunStatus::Paused));
}

/// A run a crash cut off is shown ending where the ledger last knew of it (its last charge),
/// not when the server came back: the downtime is not the run's time. Both for a run history
/// saw start and for one whose history the crash lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_ends_at_its_last_charge_not_after_the_downtime() {
    use flowcredits_core::{BlockKind, BlockUsage, ExecutionId, RunContext, Trigger};
    use flowcredits_server::history::RunState;
    use flowcredits_server::history_log::AdmittedRun;
    let server = support::start().await;
    let owner = server.team("crashy", "team").await;
    let state = &server.state;
    let context = RunContext::automated(Trigger::Api).unwrap();
    let now_ms = || jiff::Timestamp::now().as_millisecond();
    let mut charged_ms = Vec::new();
    for run in ["run_seen", "run_unseen"] {
        state.ledger.start_run("crashy", run, context, true).await.unwrap();
        if run == "run_seen" {
            state.history.admitted(AdmittedRun { id: run.into(), team: "crashy".into(), flow_id: "f".into(), snapshot: None, deployment_id: None, trigger: "api", location: "cloud", status: RunState::Running, input: json!({"n": 1}), paused_http: None, resumed: false });
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = now_ms();
        let charge = flowcredits_engine::BlockCharge::new(ExecutionId::new(format!("{run}/work")).unwrap(), BlockUsage::of_kind(BlockKind::Integration));
        state.ledger.charge("crashy", run, &[charge]).await.unwrap();
        charged_ms.push((before, now_ms()));
    }
    state.history.flush().await;
    // The server is down a while before it starts again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted_ms = now_ms();
    assert_eq!(state.runner.recover_interrupted(state).await.unwrap(), 2);
    for (run, (before, after)) in ["run_seen", "run_unseen"].into_iter().zip(charged_ms) {
        let (_, shown) = server.get(&format!("/v1/teams/crashy/runs/{run}"), &owner).await;
        assert_eq!((shown["status"].clone(), shown["credits"].clone()), (json!("failed"), json!(2)), "{shown}");
        assert!(shown["error"].as_str().unwrap().starts_with("interrupted"), "{shown}");
        let ended_ms = shown["ended_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert!(ended_ms >= before && ended_ms <= after && ended_ms < restarted_ms, "{run} ends at its last charge ({before}..={after}), not at the restart ({restarted_ms}): {shown}");
        assert!(shown["duration_ms"].as_i64().unwrap() < 300, "the downtime is not counted: {shown}");
    }
}

/// A leaked key can be found and revoked by its user (or an operator): it stops working at
/// once, even though a key's lookup is cached, and its token is never shown again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lists_and_revokes_their_keys_and_a_revoked_key_stops_at_once() {
    let server = support::start().await;
    let (user, first) = server.user("alice").await;
    let (status, created) = server.post(&format!("/v1/users/{user}/keys"), &first, json!({"label": "ci"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (second, second_id) = (created["token"].as_str().unwrap().to_owned(), created["key"]["id"].as_str().unwrap().to_owned());
    // Used once, so its lookup is cached.
    assert_eq!(server.get("/v1/me", &second).await.0, StatusCode::OK);

    let (status, keys) = server.get(&format!("/v1/users/{user}/keys"), &first).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let items = keys["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{keys}");
    assert!(items.iter().all(|key| key.get("token").is_none() && key["revoked_at"].is_null()), "{keys}");
    let (_, page) = server.get(&format!("/v1/users/{user}/keys?limit=1"), &first).await;
    assert_eq!((page["items"].as_array().unwrap().len(), page["next"].is_string()), (1, true), "{page}");
    // Each key says when it was last used: after a leak, the keys in use are the ones to look at.
    let (_, unused) = server.post(&format!("/v1/users/{user}/keys"), &first, json!({"label": "spare"})).await;
    let (_, keys) = server.get(&format!("/v1/users/{user}/keys"), &first).await;
    let used: Vec<(String, bool)> = keys["items"].as_array().unwrap().iter().map(|key| (key["label"].as_str().unwrap().to_owned(), key["last_used_at"].is_string())).collect();
    assert!(used.contains(&("ci".to_owned(), true)) && used.contains(&("spare".to_owned(), false)), "{keys}");
    assert_eq!(unused["key"]["last_used_at"], Value::Null, "{unused}");

    let (mallory, other) = server.user("mallory").await;
    assert_eq!(server.get(&format!("/v1/users/{user}/keys"), &other).await.0, StatusCode::FORBIDDEN);
    // Operators see every user; others may not list them.
    let (status, users) = server.get("/v1/users", &server.operator).await;
    let ids: Vec<&str> = users["items"].as_array().unwrap().iter().map(|listed| listed["id"].as_str().unwrap()).collect();
    assert!(status == StatusCode::OK && ids.contains(&user.as_str()) && ids.contains(&mallory.as_str()), "{users}");
    assert_eq!(server.get("/v1/users", &other).await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.call(Method::DELETE, &format!("/v1/users/{user}/keys/{second_id}"), &other, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/v1/me", &second).await.0, StatusCode::OK, "another user's attempt changed nothing");

    let (status, revoked) = server.call(Method::DELETE, &format!("/v1/users/{user}/keys/{second_id}"), &first, None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let revoked_at = revoked["revoked_at"].as_str().unwrap().to_owned();
    assert_eq!(server.get("/v1/me", &second).await.0, StatusCode::UNAUTHORIZED, "revoked: refused at once");
    assert_eq!(server.get("/v1/me", &first).await.0, StatusCode::OK, "the other key still works");
    let (status, again) = server.call(Method::DELETE, &format!("/v1/users/{user}/keys/{second_id}"), &server.operator, None).await;
    assert_eq!((status, again["revoked_at"].as_str().unwrap()), (StatusCode::OK, revoked_at.as_str()), "revoking again changes nothing");
    assert_eq!(server.call(Method::DELETE, &format!("/v1/users/{user}/keys/key_unknown"), &first, None).await.0, StatusCode::NOT_FOUND);
    let (_, keys) = server.get(&format!("/v1/users/{user}/keys"), &first).await;
    let revoked_listed: Vec<bool> = keys["items"].as_array().unwrap().iter().map(|key| key["revoked_at"].is_string()).collect();
    assert_eq!(revoked_listed.iter().filter(|revoked| **revoked).count(), 1, "{keys}");
    // The operators' last working key is not revoked: nobody could make keys again.
    let (_, me) = server.get("/v1/me", &server.operator).await;
    let operator = me["user"]["id"].as_str().unwrap().to_owned();
    let (_, keys) = server.get(&format!("/v1/users/{operator}/keys"), &server.operator).await;
    let only = keys["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, refused) = server.call(Method::DELETE, &format!("/v1/users/{operator}/keys/{only}"), &server.operator, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("last working key of any operator"), "{refused}");
    assert_eq!(server.get("/v1/me", &server.operator).await.0, StatusCode::OK);
    // With another, it goes.
    let (_, spare) = server.post(&format!("/v1/users/{operator}/keys"), &server.operator, json!({"label": "spare"})).await;
    let spare = spare["token"].as_str().unwrap().to_owned();
    assert_eq!(server.call(Method::DELETE, &format!("/v1/users/{operator}/keys/{only}"), &spare, None).await.0, StatusCode::OK);
    assert_eq!(server.get("/v1/me", &server.operator).await.0, StatusCode::UNAUTHORIZED);
}

/// A new snapshot goes live at the same path (and deployment id) when the deployment is
/// pointed at it; an unknown snapshot is refused and the deployment keeps serving the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_pointed_at_a_new_snapshot_without_changing_its_path() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let answering = |greeting: &str| {
        json!({
            "name": "greet",
            "blocks": [{"id": "request", "kind": "request"}, {"id": "say", "kind": "string", "config": {"value": greeting}}, {"id": "reply", "kind": "response"}],
            "edges": [{"from": "say.value", "to": "reply.body"}]
        })
    };
    let flow_id = server.deploy("acme", &owner, "greet", answering("hello")).await;
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let deployment = deployments["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.call_hook("acme", "greet", &owner, json!({})).await.1, json!("hello"));

    let (status, _) = server.call(Method::PUT, &format!("/v1/teams/acme/flows/{flow_id}"), &owner, Some(json!({"definition": answering("bonjour")}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, snapshot) = server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    assert_eq!((status, snapshot["number"].clone()), (StatusCode::CREATED, json!(2)));
    // Snapshotting alone changes nothing that is deployed.
    assert_eq!(server.call_hook("acme", "greet", &owner, json!({})).await.1, json!("hello"));

    let (status, refused) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{deployment}"), &owner, Some(json!({"snapshot": 9}))).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("snapshot")), "{refused}");
    let viewer = server.member("acme", &owner, "viewer").await;
    assert_eq!(server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{deployment}"), &viewer, Some(json!({}))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.call_hook("acme", "greet", &owner, json!({})).await.1, json!("hello"));

    let (status, redeployed) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{deployment}"), &owner, Some(json!({}))).await;
    assert_eq!((status, redeployed["id"].as_str(), redeployed["snapshot"].clone()), (StatusCode::OK, Some(deployment.as_str()), json!(2)), "{redeployed}");
    assert_eq!(server.call_hook("acme", "greet", &owner, json!({})).await.1, json!("bonjour"));
    // And back to the first, by number.
    let (status, _) = server.call(Method::PATCH, &format!("/v1/teams/acme/deployments/{deployment}"), &owner, Some(json!({"snapshot": 1}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.call_hook("acme", "greet", &owner, json!({})).await.1, json!("hello"));
}

/// A team admin sees which flows spent the period's credits, most first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_by_flow_shows_where_the_periods_credits_went() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let heavy = server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let light_flow = json!({
        "name": "light",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "check", "kind": "validate", "config": {"schema": {}}}, {"id": "reply", "kind": "response"}],
        "edges": [{"from": "request.body", "to": "check.value"}, {"from": "check.pass", "to": "reply.body"}]
    });
    let light = server.deploy("acme", &owner, "light", light_flow).await;
    for path in ["work", "light", "work"] {
        assert_eq!(server.call_hook("acme", path, &owner, json!({})).await.0, StatusCode::OK);
    }
    let (status, usage) = server.get("/v1/teams/acme/usage/flows", &owner).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let rows: Vec<(String, String, u64, u64)> = usage["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["flow_id"].as_str().unwrap().to_owned(), row["name"].as_str().unwrap().to_owned(), row["runs"].as_u64().unwrap(), row["credits"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, vec![(heavy.clone(), "work".to_owned(), 2, 50), (light.clone(), "light".to_owned(), 1, 1)], "{usage}");
    // The same credits the ledger counted for the period.
    let (_, ledger) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!((ledger["used"].clone(), usage["period"]["label"].clone()), (json!(51), ledger["period"]["label"].clone()), "{ledger}");

    // A history retention shorter than the billing period prunes these runs' rows; usage by flow
    // still counts them (a run still going counts too, with what it was charged so far).
    server.deploy("acme", &owner, "slow", slow_flow(1_000)).await;
    let (_, going) = server.post("/hooks/acme/slow?async=true", &owner, json!({"n": 1})).await;
    let going = going["run_id"].as_str().unwrap().to_owned();
    server.state.history.flush().await;
    let pruned = server.state.catalog.call(|connection| flowcredits_server::history::prune(connection, jiff::Timestamp::now().as_millisecond() + 1_000, 1_000)).await.unwrap();
    assert_eq!(pruned, 3, "every finished run's row is pruned");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "only the running run's row is left: {runs}");
    let (_, after) = server.get("/v1/teams/acme/usage/flows", &owner).await;
    let after: Vec<(String, u64, u64)> = after["flows"].as_array().unwrap().iter().map(|row| (row["name"].as_str().unwrap().to_owned(), row["runs"].as_u64().unwrap(), row["credits"].as_u64().unwrap())).collect();
    assert_eq!(&after[..2], &[("work".to_owned(), 2, 50), ("light".to_owned(), 1, 1)], "{after:?}");
    assert_eq!((after[2].0.as_str(), after[2].1), ("slow", 1), "{after:?}");
    let finished = server.finished_run("acme", &owner, &going).await;
    let (_, ended) = server.get("/v1/teams/acme/usage/flows", &owner).await;
    let slow = ended["flows"].as_array().unwrap().iter().find(|row| row["name"] == "slow").unwrap().clone();
    assert_eq!((slow["runs"].clone(), slow["credits"].clone()), (json!(1), finished["credits"].clone()), "a run that ends is counted once: {ended}");
    // A month before the team existed has nothing to show, and says so.
    let (status, past) = server.get("/v1/teams/acme/usage/flows?period=2026-01", &owner).await;
    assert_eq!((status, past["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("period")), "{past}");
    assert!(past["error"]["message"].as_str().unwrap().contains("before the team was created"), "{past}");
    let (status, refused) = server.get("/v1/teams/acme/usage/flows?period=soon", &owner).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("period")), "{refused}");
}

/// A flow is deleted only once nothing deploys it and none of its runs is running or paused;
/// its past runs stay in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_is_deleted_only_when_nothing_deploys_or_runs_it() {
    let server = support::start().await;
    let owner = server.team("acme", "free").await;
    let flow_id = server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    assert_eq!(server.call_hook("acme", "work", &owner, json!({})).await.0, StatusCode::OK);
    let (status, paused) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "Free's 25 credits are spent");
    let paused = paused["run_id"].as_str().unwrap().to_owned();
    let flow_path = format!("/v1/teams/acme/flows/{flow_id}");

    let (status, refused) = server.call(Method::DELETE, &flow_path, &owner, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("deployed at work"), "{refused}");
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let deployment = deployments["items"][0]["id"].as_str().unwrap();
    assert_eq!(server.call(Method::DELETE, &format!("/v1/teams/acme/deployments/{deployment}"), &owner, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(server.finished_run("acme", &owner, &paused).await["status"], "cancelled", "the deployment's paused run went with it");
    // A paused run started from the API would resume from one of the flow's snapshots.
    let (status, manual) = server.post("/v1/teams/acme/runs", &owner, json!({"flow_id": flow_id})).await;
    assert_eq!((status, manual["status"].clone()), (StatusCode::ACCEPTED, json!("paused")), "{manual}");
    let manual = manual["run_id"].as_str().unwrap().to_owned();
    let (status, refused) = server.call(Method::DELETE, &flow_path, &owner, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "the paused run would resume from a snapshot: {refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("running or paused"), "{refused}");

    assert_eq!(server.post(&format!("/v1/teams/acme/runs/{manual}/cancel"), &owner, json!(null)).await.0, StatusCode::OK);
    server.finished_run("acme", &owner, &manual).await;
    assert_eq!(server.call(Method::DELETE, &flow_path, &owner, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(server.get(&flow_path, &owner).await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.call(Method::DELETE, &flow_path, &owner, None).await.0, StatusCode::NOT_FOUND);
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 3, "its runs stay in history: {runs}");
    let (_, usage) = server.get("/v1/teams/acme/usage/flows", &owner).await;
    assert_eq!((usage["flows"][0]["flow_id"].as_str(), usage["flows"][0]["name"].clone(), usage["flows"][0]["credits"].clone()), (Some(flow_id.as_str()), Value::Null, json!(25)), "{usage}");
}

/// An Enterprise billing admin sees what was bought, what remains and when it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_are_listed_with_what_remains() {
    let server = support::start().await;
    let owner = server.team("big", "enterprise").await;
    let (_, none) = server.get("/v1/teams/big/purchases", &owner).await;
    assert_eq!(none["items"], json!([]), "{none}");
    assert_eq!(server.post("/v1/teams/big/purchases", &owner, json!({"credits": 1000})).await.0, StatusCode::CREATED);
    let (status, bought) = server.post("/v1/teams/big/purchases", &owner, json!({"credits": 500, "expires_at": "2099-01-01T00:00:00Z"})).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    // The answer is the purchase as the list shows it: its id and expiry, nothing used yet.
    assert_eq!((bought["id"].clone(), bought["credits"].clone(), bought["remaining"].clone(), bought["expires_at"].clone(), bought["runs_resumed"].clone()), (json!(2), json!(500), json!(500), json!("2099-01-01T00:00:00Z"), json!(0)), "{bought}");
    let viewer = server.member("big", &owner, "viewer").await;
    let (status, listed) = server.get("/v1/teams/big/purchases", &viewer).await;
    assert_eq!(status, StatusCode::OK, "members read them: {listed}");
    let rows: Vec<(u64, u64, u64, bool)> = listed["items"].as_array().unwrap().iter().map(|row| (row["id"].as_u64().unwrap(), row["credits"].as_u64().unwrap(), row["remaining"].as_u64().unwrap(), row["expired"].as_bool().unwrap())).collect();
    assert_eq!(rows, vec![(1, 1000, 1000, false), (2, 500, 500, false)], "{listed}");
    assert_eq!(listed["items"][1]["expires_at"], "2099-01-01T00:00:00Z", "{listed}");
    assert_eq!(listed["items"][1]["bought_at"], bought["bought_at"], "the answer's time is the one listed");
    let (_, first) = server.get("/v1/teams/big/purchases?limit=1", &viewer).await;
    let (_, second) = server.get(&format!("/v1/teams/big/purchases?limit=1&after={}", first["next"].as_str().unwrap()), &viewer).await;
    assert_eq!((first["items"][0]["id"].clone(), second["items"][0]["id"].clone(), second["next"].clone()), (json!(1), json!(2), Value::Null));
    let (_, plain) = server.get("/v1/teams/big/purchases?after=1", &viewer).await;
    assert_eq!(plain["items"][0]["id"], 2, "an id as people write it is a cursor too: {plain}");
    let (status, _) = server.get("/v1/teams/big/purchases?after=zzz", &viewer).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_owner_changes_owners_and_the_last_owner_stays() {
    let server = support::start().await;
    for plan in ["team", "free"] {
        // On Free every member acts as an admin; owners are guarded all the same.
        let team = format!("guard-{plan}");
        let owner_key = server.team(&team, plan).await;
        let (status, me) = server.get("/v1/me", &owner_key).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        let owner = me["user"]["id"].as_str().unwrap().to_owned();
        let admin_key = server.member(&team, &owner_key, if plan == "free" { "viewer" } else { "admin" }).await;
        let owner_path = format!("/v1/teams/{team}/members/{owner}");
        for (method, body) in [(Method::PUT, Some(json!({"role": "viewer"}))), (Method::DELETE, None)] {
            let (status, refused) = server.call(method.clone(), &owner_path, &admin_key, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{plan} {method}: {refused}");
            assert!(refused["error"]["message"].as_str().unwrap().contains("only an owner"), "{refused}");
        }
        // The owner cannot leave the team ownerless either.
        for (method, body) in [(Method::PUT, Some(json!({"role": "admin"}))), (Method::DELETE, None)] {
            let (status, refused) = server.call(method.clone(), &owner_path, &owner_key, body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{plan} {method}: {refused}");
            assert!(refused["error"]["message"].as_str().unwrap().contains("last owner"), "{refused}");
        }
        let (status, members) = server.get(&format!("/v1/teams/{team}/members"), &owner_key).await;
        assert_eq!(status, StatusCode::OK);
        assert!(members["items"].as_array().unwrap().iter().any(|member| member["user_id"] == owner.as_str() && member["role"] == "owner"), "{members}");
    }
    // With a second owner, the first may step down.
    let owner_key = server.team("two-owners", "team").await;
    let (second, _) = server.user("second owner").await;
    let (status, body) = server.call(Method::PUT, &format!("/v1/teams/two-owners/members/{second}"), &owner_key, Some(json!({"role": "owner"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = server.get("/v1/me", &owner_key).await.1["user"]["id"].as_str().unwrap().to_owned();
    let (status, body) = server.call(Method::PUT, &format!("/v1/teams/two-owners/members/{first}"), &owner_key, Some(json!({"role": "admin"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_hook_run_resumes_with_the_request_that_made_it() {
    let server = support::start().await;
    let owner = server.team("echo", "free").await;
    server.deploy("echo", &owner, "work", support::flow_costing_25()).await;
    // The Free plan's 25 included credits go on one call.
    assert_eq!(server.call_hook("echo", "work", &owner, json!({})).await.0, StatusCode::OK);
    let echo = json!({
        "name": "echo",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "query", "kind": "validate", "config": {"schema": {"type": "object"}}},
            {"id": "path", "kind": "validate", "config": {"schema": {"type": "string"}}},
            {"id": "header", "kind": "validate", "config": {"schema": {"type": "object"}}}
        ],
        "edges": [
            {"from": "request.query", "to": "query.value"},
            {"from": "request.path", "to": "path.value"},
            {"from": "request.headers", "to": "header.value"}
        ]
    });
    server.deploy("echo", &owner, "echo", echo).await;
    let client = reqwest::Client::new();
    let response = client.post(format!("{}/hooks/echo/echo?x=1", server.base)).bearer_auth(&owner).header("x-custom", "abc").json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let paused: Value = response.json().await.unwrap();
    let run_id = paused["run_id"].as_str().unwrap().to_owned();
    // Started from the API, a run that cannot start answers as a hook does: 402 to a caller
    // that waits for the result, 202 to one that does not; both are paused with their id.
    let (_, flows) = server.get("/v1/teams/echo/flows", &owner).await;
    let work = flows["items"].as_array().unwrap().iter().find(|flow| flow["name"] == "work").unwrap()["id"].as_str().unwrap().to_owned();
    for (wait, expected) in [(true, StatusCode::PAYMENT_REQUIRED), (false, StatusCode::ACCEPTED)] {
        let (status, answer) = server.post("/v1/teams/echo/runs", &owner, json!({"flow_id": work, "wait": wait})).await;
        assert_eq!((status, answer["status"].clone()), (expected, json!("paused")), "wait {wait}: {answer}");
        let (status, cancelled) = server.post(&format!("/v1/teams/echo/runs/{}/cancel", answer["run_id"].as_str().unwrap()), &owner, json!(null)).await;
        assert!(status.is_success(), "{cancelled}");
    }

    // A purchase is Enterprise only; the plan moves up instead, which gives credits back.
    let (status, body) = server.call(Method::PUT, "/v1/teams/echo/plan", &server.operator, Some(json!({"plan": "team"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = server.finished_run("echo", &owner, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let input = |block: &str| run["blocks"].as_array().unwrap().iter().find(|listed| listed["block_id"] == block).map(|listed| listed["input"]["value"].clone()).unwrap_or(Value::Null);
    assert_eq!(input("query"), json!({"x": "1"}), "{run}");
    assert_eq!(input("path"), json!("/echo"), "{run}");
    assert_eq!(input("header")["x-custom"], "abc", "{run}");
    assert!(input("header").get("authorization").is_none(), "the key is never kept: {run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_naming_an_unknown_model_is_refused_when_saved() {
    let server = support::start().await;
    let owner = server.team("models", "team").await;
    let agent = |model: &str| {
        json!({"name": "agent", "blocks": [
            {"id": "start", "kind": "start"},
            {"id": "think", "kind": "ai_agent", "config": {"model": model}}
        ], "edges": [{"from": "start.input", "to": "think.prompt"}]})
    };
    let (status, refused) = server.post("/v1/teams/models/flows", &owner, json!({"name": "agent", "definition": agent("gpt-99")})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("definition")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("think") && message.contains("config.model") && message.contains("gpt-99"), "{message}");
    let (status, flows) = server.get("/v1/teams/models/flows", &owner).await;
    assert_eq!((status, flows["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "nothing was saved: {flows}");
    let (status, saved) = server.post("/v1/teams/models/flows", &owner, json!({"name": "agent", "definition": agent("gpt-5")})).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    let flow_id = saved["id"].as_str().unwrap();
    let (status, refused) = server.call(Method::PUT, &format!("/v1/teams/models/flows/{flow_id}"), &owner, Some(json!({"definition": agent("gpt-99")}))).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("definition")), "an edit is checked too: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_queries_name_the_field() {
    let server = support::start().await;
    let owner = server.team("fields", "team").await;
    let many: Vec<String> = (1..=17).map(|amount| format!("{amount}")).collect();
    let cases: [(Method, &str, Option<Value>, &str, &str); 20] = [
        (Method::GET, "/v1/teams/fields/flows/flw_00000000000000000000/estimate?trigger=mcp&cloud_run=true", None, "cloud_run", "manual runs only"),
        (Method::GET, "/v1/teams/fields/runs?after=zzz", None, "after", "not a cursor"),
        // Every list ordered by ids takes only an id of its own kind as a cursor.
        (Method::GET, "/v1/teams/fields/flows?after=run_0", None, "after", "a `flw_…` id"),
        (Method::GET, "/v1/teams/fields/deployments?after=zzz", None, "after", "a `dep_…` id"),
        (Method::GET, "/v1/teams/fields/members?after=zzz", None, "after", "a `usr_…` id"),
        (Method::GET, "/v1/teams/fields/alerts?after=zzz", None, "after", "a `alr_…` id"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_cap_usd": "0.0005"})), "payg_cap_usd", "finer than $0.001"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_cap_usd": "20000000"})), "payg_cap_usd", "$20000000.000 is more than the largest cap, $10000000.000"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_alerts_usd": many})), "payg_alerts_usd", "17 amounts"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_alerts_usd": ["5", "0"]})), "payg_alerts_usd[1]", "above $0.000"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_alerts_usd": ["5", "five"]})), "payg_alerts_usd[1]", "not a dollar amount"),
        (Method::POST, "/v1/teams/fields/flows", Some(json!({"definition": {}})), "name", "missing field"),
        (Method::POST, "/v1/teams/fields/flows", Some(json!({"name": 5, "definition": {}})), "name", "invalid type"),
        (Method::POST, "/v1/users", Some(json!(["Arr"])), "body", "not an array"),
        (Method::GET, "/v1/teams/fields/runs?limit=-1", None, "limit", "invalid digit"),
        (Method::GET, "/v1/teams/fields/runs?limit=0", None, "limit", ""),
        (Method::POST, "/mcp", Some(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})), "team", "missing field"),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_cap_usd": 0.2})), "payg_cap_usd", "write dollars as a string with at most three decimals, such as \"0.200\""),
        (Method::PATCH, "/v1/teams/fields/billing", Some(json!({"payg_alerts_usd": ["1.000", 5]})), "payg_alerts_usd[1]", "write dollars as a string"),
        (Method::POST, "/mcp?team=fields&team=other", Some(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})), "team", "duplicate field"),
    ];
    for (method, path, body, field, problem) in cases {
        let (status, refused) = server.call(method.clone(), path, &owner, body).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!(field)), "{method} {path}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains(problem), "{method} {path}: {refused}");
    }
    // A hook path HTTP clients would rewrite before sending could never be called.
    let flow_id = server.deploy("fields", &owner, "ok/path.v2", slow_flow(0)).await;
    for (path, problem) in [("a/", "empty segment"), ("/a", "empty segment"), ("a//b", "empty segment"), ("a/./b", "`.` segment"), ("../a", "`..` segment"), ("a b", "characters")] {
        let (status, refused) = server.post("/v1/teams/fields/deployments", &owner, json!({"flow_id": flow_id, "path": path})).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("path")), "{path}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains(problem), "{path}: {refused}");
    }
    let (status, refused) = server.post("/v1/teams", &server.operator, json!({"name": "..", "plan": "team"})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("name")), "{refused}");
    // Broken JSON is about the whole body, not a field named after where the parser stopped.
    for text in [r#"{"name": "x", "#, r#"{"name": "x", "definition": {}} trailing"#, "{name: 1}"] {
        let response = server.client.post(format!("{}/v1/teams/fields/flows", server.base)).bearer_auth(&owner).header("content-type", "application/json").body(text).send().await.unwrap();
        let status = response.status();
        let refused: Value = response.json().await.unwrap();
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("body")), "{text}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().starts_with("body: is not valid JSON"), "{text}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_flows_and_webhooks_reach_public_hosts_only() {
    let server = support::start_public_only().await;
    let owner = server.team("guarded", "team").await;
    // The server itself, by address and by name, and a cloud metadata address.
    let targets = [format!("{}/metrics", server.base), format!("{}/metrics", server.base.replace("127.0.0.1", "localhost")), "http://169.254.169.254/latest/meta-data/".to_owned(), "http://[::1]:9/".to_owned(), "http://10.0.0.1/".to_owned()];
    for (index, url) in targets.iter().enumerate() {
        let flow = json!({"name": format!("probe{index}"), "blocks": [
            {"id": "start", "kind": "start"},
            {"id": "fetch", "kind": "http_request", "config": {"url": url, "timeout_ms": 2000}},
            {"id": "show", "kind": "display"}
        ], "edges": [{"from": "start.input", "to": "fetch.input"}, {"from": "fetch.failure", "to": "show.value"}]});
        let (status, saved) = server.post("/v1/teams/guarded/flows", &owner, json!({"name": format!("probe{index}"), "definition": flow})).await;
        assert_eq!(status, StatusCode::CREATED, "{saved}");
        let (status, run) = server.post("/v1/teams/guarded/runs", &owner, json!({"flow_id": saved["id"], "wait": true})).await;
        assert_eq!(status, StatusCode::OK, "{url}: {run}");
        let shown = run["output"].to_string();
        assert!(shown.contains("public"), "{url} was not refused: {run}");
        assert!(!shown.contains("flowcredits_runs"), "{url} reached the server's metrics: {run}");
    }
    for url in ["http://127.0.0.1:9/hook", "http://[fd00::1]/hook", "http://192.168.1.10/hook", "http://localhost:9/hook", "http://api.LOCALHOST./hook"] {
        let (status, refused) = server.call(Method::PATCH, "/v1/teams/guarded/billing", &owner, Some(json!({"alert_webhook_url": url}))).await;
        assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("alert_webhook_url")), "{url}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_read_as_http_says_and_refused_clearly_when_malformed() {
    let server = support::start().await;
    let owner = server.team("strict", "team").await;
    server.deploy("strict", &owner, "echo", slow_flow(0)).await;
    let client = reqwest::Client::new();
    let hook = format!("{}/hooks/strict/echo", server.base);
    // The scheme of `Authorization` is case-insensitive.
    let me = client.get(format!("{}/v1/me", server.base)).header("authorization", format!("bearer {owner}")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    // A body that says it is JSON must be JSON; one that does not is passed on as text.
    let refused = client.post(&hook).bearer_auth(&owner).header("content-type", "application/json").body("not json").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["field"], "body", "{refused}");
    let text = client.post(&hook).bearer_auth(&owner).header("content-type", "text/plain").body("not json").send().await.unwrap();
    assert_eq!((text.status(), text.json::<Value>().await.unwrap()), (StatusCode::CREATED, json!("not json")));
    // A flag that is neither true nor false is refused, not read as false.
    let (status, refused) = server.post("/hooks/strict/echo?async=maybe", &owner, json!({})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("async")), "{refused}");
    for asked in ["async", "async=TRUE", "async=1"] {
        let (status, accepted) = server.post(&format!("/hooks/strict/echo?{asked}"), &owner, json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{asked}: {accepted}");
    }
    // A query name given twice reaches the flow as a list; a header given twice, joined.
    let request_echo = json!({
        "name": "request-echo",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "pack", "kind": "record", "config": {"inputs": ["query", "headers"]}}, {"id": "reply", "kind": "response"}],
        "edges": [{"from": "request.query", "to": "pack.query"}, {"from": "request.headers", "to": "pack.headers"}, {"from": "pack.record", "to": "reply.body"}]
    });
    server.deploy("strict", &owner, "request-echo", request_echo).await;
    let echoed: Value = client.post(format!("{}/hooks/strict/request-echo?tag=a&tag=b&one=1", server.base)).bearer_auth(&owner).header("x-seen", "1").header("x-seen", "2").json(&json!({})).send().await.unwrap().json().await.unwrap();
    assert_eq!((echoed["query"].clone(), echoed["headers"]["x-seen"].clone()), (json!({"tag": ["a", "b"], "one": "1"}), json!("1, 2")), "{echoed}");
    // A 204 answer carries no content.
    let empty = json!({
        "name": "empty",
        "blocks": [{"id": "request", "kind": "request"}, {"id": "reply", "kind": "response", "config": {"status": 204}}],
        "edges": [{"from": "request.body", "to": "reply.body"}]
    });
    server.deploy("strict", &owner, "empty", empty).await;
    let answered = client.post(format!("{}/hooks/strict/empty", server.base)).bearer_auth(&owner).json(&json!({"a": 1})).send().await.unwrap();
    assert_eq!((answered.status(), answered.headers().get("content-length").map(|value| value.to_str().unwrap().to_owned())), (StatusCode::NO_CONTENT, None));
    // A method a route does not take gets the JSON error shape too.
    let (status, refused) = server.call(Method::DELETE, "/v1/teams", &owner, None).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed")), "{refused}");
    // No body where every field is optional is an empty object.
    let (_, deployments) = server.get("/v1/teams/strict/deployments", &owner).await;
    let deployment = deployments["items"][0]["id"].as_str().unwrap().to_owned();
    let started = client.post(format!("{}/v1/teams/strict/deployments/{deployment}/runs", server.base)).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED, "{}", started.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_a_bounded_number_of_a_runs_block_executions_and_counts_the_rest() {
    let server = support::start().await;
    let owner = server.team("loopy", "team").await;
    let limit = flowcredits_server::history::BLOCKS_PER_RUN_MAX as u64;
    // A loop of free blocks: `times` iterations of one priced-nothing `select`, plus the loop's own.
    let times = limit + 50;
    let flow = json!({"name": "loopy", "blocks": [
        {"id": "again", "kind": "repeat", "config": {"times": times}},
        {"id": "pick", "kind": "select", "config": {"path": "$"}}
    ], "edges": [{"from": "again.index", "to": "pick.value"}]});
    let (status, saved) = server.post("/v1/teams/loopy/flows", &owner, json!({"name": "loopy", "definition": flow})).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    let (status, run) = server.post("/v1/teams/loopy/runs", &owner, json!({"flow_id": saved["id"], "wait": true})).await;
    assert_eq!((status, run["status"].clone()), (StatusCode::OK, json!("succeeded")), "{}", run["error"]);
    let run = server.finished_run("loopy", &owner, run["run_id"].as_str().unwrap()).await;
    let listed = run["blocks"].as_array().unwrap().len() as u64;
    let omitted = run["blocks_omitted"].as_u64().unwrap_or(0);
    assert_eq!(listed, limit, "history stops at its limit");
    assert!(omitted > 0, "{}", run["blocks_omitted"]);
    assert_eq!(listed + omitted, times + 1, "every execution is listed or counted (the loop, each select)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_shows_what_it_has_been_charged_so_far() {
    let server = support::start().await;
    let owner = server.team("live", "team").await;
    let slow = json!({"name": "slow", "blocks": [
        {"id": "request", "kind": "request"},
        {"id": "first", "kind": "evaluate", "config": {"code": "return 1;"}},
        {"id": "wait", "kind": "delay", "config": {"ms": 3000}},
        {"id": "second", "kind": "evaluate", "config": {"code": "return 2;"}}
    ], "edges": [{"from": "request.body", "to": "first.input"}, {"from": "first.result", "to": "wait.value"}, {"from": "wait.value", "to": "second.input"}]});
    server.deploy("live", &owner, "slow", slow).await;
    let (_, started) = server.post("/hooks/live/slow?async=true", &owner, json!({})).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    // While it waits, the first charge shows on the run (read through history, which waits for
    // what is queued).
    let mut seen = None;
    for _ in 0..100 {
        let (_, run) = server.get(&format!("/v1/teams/live/runs/{run_id}"), &owner).await;
        if run["credits"] == 1 {
            seen = Some(run);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.expect("the first charge shows while the run goes on");
    assert_eq!(seen["status"], "running", "{seen}");
    let run = server.finished_run("live", &owner, &run_id).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("succeeded"), json!(2)), "counted once: {run}");
}

/// A billing change is all or nothing: refused as a whole, it changes none of its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_billing_change_changes_nothing() {
    let server = support::start().await;
    let owner = server.team("tiny", "free").await;
    let (_, before) = server.get("/v1/teams/tiny/billing", &owner).await;
    let change = json!({"payg_cap_usd": "50.000", "payg_alerts_usd": ["10.000"], "payg_enabled": true});
    let (status, refused) = server.call(Method::PATCH, "/v1/teams/tiny/billing", &owner, Some(change)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("no pay-as-you-go"), "{refused}");
    let (_, after) = server.get("/v1/teams/tiny/billing", &owner).await;
    assert_eq!(after, before, "nothing of the refused change was kept");
    let (_, team) = server.get("/v1/teams/tiny", &owner).await;
    assert!(!team.to_string().contains("50.000"), "{team}");
    // A cap or alert amounts alone are refused too: the plan has no pay-as-you-go to bound.
    for change in [json!({"payg_cap_usd": "5.000"}), json!({"payg_alerts_usd": ["1.000"]})] {
        let (status, refused) = server.call(Method::PATCH, "/v1/teams/tiny/billing", &owner, Some(change.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{change}: {refused}");
    }
    let (_, after) = server.get("/v1/teams/tiny/billing", &owner).await;
    assert_eq!(after, before);
}
