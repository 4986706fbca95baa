//! Private runners end to end over loopback HTTP: registration (Enterprise only), deployments
//! that run on the team's runners, jobs claimed, charged and completed by a real runner (the
//! client and engine `flowcredits runner` uses) inside the test, runner-token isolation,
//! leases that run out, and a team out of credits.

mod support;

use std::time::Duration;

use flowcredits_core::{PlanCatalog, PriceBook, Rules};
use flowcredits_server::client::{JobResult, RunnerClient};
use flowcredits_server::jobs::JobHub;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The shipped rules, with private-runner prices for evaluate and validate (2 each, cloud 1),
/// so `flow_costing_25` costs 50 on a private runner; Enterprise includes `included` credits.
fn private_rules(included: u64) -> Rules {
    let shipped_prices = include_str!("../../core/data/price_book.toml");
    let prices = shipped_prices
        .replace("evaluate = { local = 0, cloud = 1 }", "evaluate = { local = 0, cloud = 1, private = 2 }")
        .replace("validate = { local = 0, cloud = 1 }", "validate = { local = 0, cloud = 1, private = 2 }");
    assert_eq!(prices.matches("private = 2").count(), 2, "the shipped price book changed: update this test");
    let shipped_plans = include_str!("../../core/data/plans.toml");
    let plans = shipped_plans.replace("[plans.enterprise]\nincluded_credits = 500", &format!("[plans.enterprise]\nincluded_credits = {included}"));
    assert!(included == 500 || plans != shipped_plans, "the shipped plans changed: update this test");
    Rules { plans: PlanCatalog::from_toml(&plans).unwrap(), prices: PriceBook::from_toml(&prices).unwrap() }
}

/// Private-runner credits of one run of `support::flow_costing_25` under [`private_rules`].
const PRIVATE_RUN_CREDITS: u64 = 24 * 2 + 2;

/// Registers a runner; returns (runner id, token).
async fn register(server: &support::Server, team: &str, key: &str, name: &str) -> (String, String) {
    let (status, registered) = server.post(&format!("/v1/teams/{team}/runners"), key, json!({"name": name})).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let token = registered["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("fcr_") && token.len() == 4 + 64, "{token}");
    (registered["runner"]["id"].as_str().unwrap().to_owned(), token)
}

/// Creates a flow, snapshots it and deploys it at `path` on the team's private runners;
/// returns the deployment's id.
async fn deploy_private(server: &support::Server, team: &str, key: &str, path: &str, definition: Value) -> (StatusCode, Value) {
    let (status, flow) = server.post(&format!("/v1/teams/{team}/flows"), key, json!({"name": path, "definition": definition})).await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    let (status, snapshot) = server.post(&format!("/v1/teams/{team}/flows/{flow_id}/snapshots"), key, json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    server.post(&format!("/v1/teams/{team}/deployments"), key, json!({"flow_id": flow_id, "path": path, "runs_on": "private"})).await
}

/// A private runner inside the test, as `flowcredits runner` runs: claims and runs `jobs` jobs.
fn spawn_runner(server: &support::Server, team: &str, token: &str, jobs: usize) -> tokio::task::JoinHandle<Vec<JobResult>> {
    let (base, team, token) = (server.base.clone(), team.to_owned(), token.to_owned());
    tokio::spawn(async move {
        let client = RunnerClient::connect(&base, &team, &token).await.unwrap();
        let mut done = Vec::new();
        while done.len() < jobs {
            if let Some(job) = client.claim(2).await.unwrap() {
                done.push(client.run(&job).await.unwrap());
            }
        }
        done
    })
}

async fn joined(runner: tokio::task::JoinHandle<Vec<JobResult>>) -> Vec<JobResult> {
    tokio::time::timeout(Duration::from_secs(60), runner).await.expect("the runner finished its jobs").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enterprise_teams_private_deployment_runs_on_its_runner_at_private_prices() {
    let server = support::start_with(private_rules(500), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;

    // Not on the Team plan: registering and deploying are refused, naming the plan.
    let small = server.team("small", "team").await;
    let (status, refused) = server.post("/v1/teams/small/runners", &small, json!({"name": "r"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("Enterprise") && message.contains("plan team"), "{message}");
    let (status, refused) = deploy_private(&server, "small", &small, "work", support::flow_costing_25()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    // Only owners and admins register runners; names are unique in a team.
    let editor = server.member("acme", &owner, "editor").await;
    let (status, refused) = server.post("/v1/teams/acme/runners", &editor, json!({"name": "rack-1"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (runner_id, token) = register(&server, "acme", &owner, "rack-1").await;
    let (status, refused) = server.post("/v1/teams/acme/runners", &owner, json!({"name": "rack-1"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, refused) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": "x", "path": "p", "runs_on": "moon"})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("runs_on")), "{refused}");

    let (status, deployment) = deploy_private(&server, "acme", &editor, "work", support::flow_costing_25()).await;
    assert_eq!((status, deployment["runs_on"].clone()), (StatusCode::CREATED, json!("private")), "{deployment}");
    let deployment_id = deployment["id"].as_str().unwrap().to_owned();
    let runner = spawn_runner(&server, "acme", &token, 3);

    // A synchronous call waits for the runner's answer: the flow's response block.
    let (status, answer) = server.call_hook("acme", "work", &owner, json!({"call": 1})).await;
    assert_eq!((status, answer.clone()), (StatusCode::OK, json!(24)), "{answer}");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    let run = &runs["items"][0];
    assert_eq!((run["trigger"].clone(), run["location"].clone(), run["status"].clone(), run["credits"].clone()), (json!("api"), json!("private"), json!("succeeded"), json!(PRIVATE_RUN_CREDITS)), "{run}");
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{}", run["id"].as_str().unwrap()), &owner).await;
    let blocks = run["blocks"].as_array().unwrap();
    assert_eq!(blocks.iter().map(|block| block["credits"].as_u64().unwrap()).sum::<u64>(), PRIVATE_RUN_CREDITS, "every charged execution is listed: {run}");
    let check = blocks.iter().find(|block| block["block_id"] == "check").expect("the validate block is listed");
    assert_eq!((check["status"].clone(), check["input"].clone(), check["output"].clone(), check["credits"].clone()), (json!("completed"), json!({"value": 24}), json!({"pass": 24}), json!(2)), "{check}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], PRIVATE_RUN_CREDITS, "private-runner prices, not cloud ones (25): {usage}");

    // An asynchronous call gets 202 with the run id; the runner finishes it.
    let (status, accepted) = server.post("/hooks/acme/work?async=true", &owner, json!({})).await;
    assert_eq!((status, accepted["status"].clone()), (StatusCode::ACCEPTED, json!("running")), "{accepted}");
    let run = server.finished_run("acme", &owner, accepted["run_id"].as_str().unwrap()).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("succeeded"), json!(PRIVATE_RUN_CREDITS)), "{run}");

    // An API run of the deployment, waiting for it.
    let (status, run) = server.post(&format!("/v1/teams/acme/deployments/{deployment_id}/runs"), &editor, json!({"input": {"n": 1}, "wait": true})).await;
    assert_eq!((status, run["status"].clone(), run["credits"].clone()), (StatusCode::OK, json!("succeeded"), json!(PRIVATE_RUN_CREDITS)), "{run}");

    let results = joined(runner).await;
    assert!(results.iter().all(|result| result.state.as_str() == "succeeded" && result.credits == PRIVATE_RUN_CREDITS), "{results:?}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 3 * PRIVATE_RUN_CREDITS, "{usage}");
    let (_, runners) = server.get("/v1/teams/acme/runners", &editor).await;
    let listed = &runners["items"][0];
    assert_eq!((listed["id"].clone(), listed["name"].clone(), listed["jobs_running"].clone()), (json!(runner_id), json!("rack-1"), json!(0)), "{runners}");
    assert!(listed["last_seen_at"].as_str().is_some() && listed.get("token").is_none() && !runners.to_string().contains("fcr_"), "{runners}");
    let (_, metrics) = server.get("/metrics", "").await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("flowcredits_runner_jobs_claimed_total 3") && metrics.contains("flowcredits_runner_jobs{state=\"waiting\"} 0"), "{metrics}");

    // Deregistered: the token stops working at once.
    let (status, _) = server.call(Method::DELETE, &format!("/v1/teams/acme/runners/{runner_id}"), &owner, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, refused) = server.post(&format!("/v1/teams/acme/runners/{runner_id}/jobs/claim?wait_s=0"), &token, json!(null)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("POST /v1/teams/acme/runners"), "{refused}");
    assert!(RunnerClient::connect(&server.base, "acme", &token).await.is_err());
    let (_, runners) = server.get("/v1/teams/acme/runners", &owner).await;
    assert_eq!(runners["items"], json!([]), "{runners}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_tokens_reach_only_their_own_runners_jobs_and_bad_reports_change_nothing() {
    let server = support::start_with(private_rules(500), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;
    let outsider_owner = server.team("other", "enterprise").await;
    let (runner_id, token) = register(&server, "acme", &owner, "rack-1").await;
    let (outsider_runner, outsider_token) = register(&server, "other", &outsider_owner, "rack-1").await;
    let (status, deployment) = deploy_private(&server, "acme", &owner, "work", support::flow_costing_25()).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let (_, accepted) = server.post("/hooks/acme/work?async=true", &owner, json!({"ping": 1})).await;
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();

    // A restart keeps queued jobs: they are rows of the catalog, not runs of this process.
    assert_eq!(server.state.runner.recover_interrupted(&server.state).await.unwrap(), 0);
    // The run holds its credits from admission (`running`) and says that it waits for a runner.
    let (_, queued) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &owner).await;
    assert_eq!((queued["status"].clone(), queued["runner"].clone()), (json!("running"), json!({"id": null, "waiting_for_runner": true, "claims": 0})), "{queued}");

    // Another team's runner token reaches nothing of acme's.
    for path in [format!("/v1/teams/acme/runners/{runner_id}/jobs/claim?wait_s=0"), format!("/v1/teams/acme/runners/{outsider_runner}/jobs/claim?wait_s=0"), format!("/v1/teams/acme/runners/{runner_id}/jobs/{run_id}/heartbeat")] {
        let (status, answer) = server.post(&path, &outsider_token, json!(null)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {answer}");
    }
    let (status, _) = server.get("/v1/teams/acme/runners/me", &outsider_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Runner tokens are not API keys: the rest of the API does not know them.
    let (status, _) = server.call(Method::DELETE, &format!("/v1/teams/acme/runners/{runner_id}"), &outsider_token, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.get("/v1/teams/acme/runners", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And API keys are not runner tokens, not even the owner's.
    let (status, refused) = server.post(&format!("/v1/teams/acme/runners/{runner_id}/jobs/claim?wait_s=0"), &owner, json!(null)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("runner token"), "{refused}");
    // The outsider's runner finds nothing in its own team; the wait is capped, not refused.
    let (status, _) = server.post(&format!("/v1/teams/other/runners/{outsider_runner}/jobs/claim?wait_s=0"), &outsider_token, json!(null)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, me) = server.get("/v1/teams/acme/runners/me", &token).await;
    assert_eq!((status, me["runner"]["id"].clone(), me["claim_wait_s_max"].clone()), (StatusCode::OK, json!(runner_id), json!(25)), "{me}");

    let jobs = format!("/v1/teams/acme/runners/{runner_id}/jobs");
    let (status, job) = server.post(&format!("{jobs}/claim?wait_s=1000"), &token, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!((job["run_id"].clone(), job["input"].clone(), job["attempt"].clone(), job["flow"]["name"].clone()), (json!(run_id), json!({"ping": 1}), json!(1), json!("work")), "{job}");
    assert_eq!((job["context"].clone(), job["http"]["method"].clone()), (json!({"trigger": "api", "location": "private"}), json!("POST")), "{job}");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    assert_eq!(runs["items"][0]["runner"], json!({"id": runner_id, "waiting_for_runner": false, "claims": 1}), "lists say who holds it too: {runs}");

    // Bad reports are refused naming the field, and write nothing.
    let bad = [
        ("complete", json!({"state": "done"}), "state"),
        ("complete", json!({"state": "succeeded", "response": {"status": 42}}), "response.status"),
        ("complete", json!({"state": "succeeded", "colour": "red"}), "colour"),
        ("charges", json!({"charges": [{"execution_id": "check", "type": "validate", "trace": {"started_at": "yesterday", "duration_us": 1}}]}), "charges[0].trace.started_at"),
        ("charges", json!({"charges": [{"execution_id": "check", "type": "warp_drive"}]}), "charges[0].type"),
    ];
    for (endpoint, body, field) in bad {
        let (status, refused) = server.post(&format!("{jobs}/{run_id}/{endpoint}"), &token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint} {body}: {refused}");
        assert!(refused["error"]["field"].as_str().unwrap().starts_with(field), "{endpoint} {body}: {refused}");
    }
    let (status, _) = server.post(&format!("{jobs}/run_nope/heartbeat"), &token, json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &owner).await;
    assert_eq!((run["status"].clone(), run["credits"].clone(), run["blocks"].clone()), (json!("running"), json!(0), json!([])), "{run}");

    // A report as the runner sends it: charged, then ended as failed with its error.
    let charge = json!({"charges": [{"execution_id": "check", "type": "validate", "trace": {"input": {"value": 1}, "output": {}, "error": "boom", "started_at": "2026-03-02T10:00:00Z", "duration_us": 5}}]});
    let (status, charged) = server.post(&format!("{jobs}/{run_id}/charges"), &token, charge.clone()).await;
    assert_eq!((status, charged["credits"].clone()), (StatusCode::OK, json!([2])), "{charged}");
    let (_, retried) = server.post(&format!("{jobs}/{run_id}/charges"), &token, charge).await;
    assert_eq!(retried["run_credits"], 2, "a repeated execution is charged once: {retried}");
    let (status, completed) = server.post(&format!("{jobs}/{run_id}/complete"), &token, json!({"state": "failed", "error": "boom"})).await;
    assert_eq!((status, completed["credits"].clone()), (StatusCode::OK, json!(2)), "{completed}");
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &owner).await;
    assert_eq!((run["status"].clone(), run["error"].clone(), run["blocks"].as_array().unwrap().len()), (json!("failed"), json!("boom"), 1), "{run}");
    assert_eq!(run["blocks"][0]["status"], "failed", "{run}");
    let (status, refused) = server.post(&format!("{jobs}/{run_id}/complete"), &token, json!({"state": "succeeded"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an ended run is not completed again: {refused}");
}

/// Three evaluate executions and a validate (8 credits on a private runner), then a wait of
/// `delay_ms` before answering.
fn slow_flow(delay_ms: u64) -> Value {
    json!({
        "name": "slow",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "loop", "kind": "repeat", "config": {"times": 3}},
            {"id": "double", "kind": "evaluate", "config": {"code": "return input * 2;"}},
            {"id": "check", "kind": "validate", "config": {"schema": {"type": "number"}}},
            {"id": "wait", "kind": "delay", "config": {"ms": delay_ms}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [
            {"from": "loop.index", "to": "double.input"},
            {"from": "loop.done", "to": "check.value"},
            {"from": "check.pass", "to": "wait.value"},
            {"from": "wait.value", "to": "reply.body"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_runner_died_goes_out_again_and_is_charged_once() {
    let server = support::start_with(private_rules(500), |state| state.jobs = JobHub::new(Duration::from_secs(1))).await;
    let owner = server.team("acme", "enterprise").await;
    let (dead_id, dead_token) = register(&server, "acme", &owner, "dies").await;
    let (_, token) = register(&server, "acme", &owner, "lives").await;
    let (status, deployment) = deploy_private(&server, "acme", &owner, "slow", slow_flow(2_000)).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let (_, accepted) = server.post("/hooks/acme/slow?async=true", &owner, json!(3)).await;
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();

    // The first runner charges the blocks before the wait, then dies.
    let dying = RunnerClient::connect(&server.base, "acme", &dead_token).await.unwrap();
    let job = dying.claim(5).await.unwrap().expect("the job is handed out");
    assert_eq!((job.run_id.clone(), job.attempt), (run_id.clone(), 1));
    let work = tokio::spawn(async move { dying.run(&job).await });
    let mut charged = false;
    for _ in 0..400 {
        let (_, run) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &owner).await;
        charged = run["credits"] == 8;
        if charged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    work.abort();
    assert!(charged, "the first runner charged its executions before it died");

    // Its lease runs out; the job goes to the other runner, which runs it again from the start.
    let living = RunnerClient::connect(&server.base, "acme", &token).await.unwrap();
    let job = tokio::time::timeout(Duration::from_secs(10), living.claim(5)).await.unwrap().unwrap().expect("the job is handed out again");
    assert_eq!((job.run_id.clone(), job.attempt), (run_id.clone(), 2));
    let (status, refused) = server.post(&format!("/v1/teams/acme/runners/{dead_id}/jobs/{run_id}/heartbeat"), &dead_token, json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "the first runner's lease is over: {refused}");
    let result = living.run(&job).await.unwrap();
    assert_eq!((result.state.as_str(), result.credits), ("succeeded", 8), "{result:?}");

    // Each execution was charged once and is listed once.
    let run = server.finished_run("acme", &owner, &run_id).await;
    assert_eq!((run["status"].clone(), run["credits"].clone(), run["output"].clone()), (json!("succeeded"), json!(8), json!({})), "{run}");
    let evaluated = run["blocks"].as_array().unwrap().iter().filter(|block| block["kind"] == "evaluate").count();
    assert_eq!(evaluated, 3, "{run}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!(usage["used"], 8, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_credits_a_job_waits_paused_until_pay_as_you_go_hands_it_out() {
    let server = support::start_with(private_rules(2 * PRIVATE_RUN_CREDITS), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;
    let (_, token) = register(&server, "acme", &owner, "rack-1").await;
    let (status, deployment) = deploy_private(&server, "acme", &owner, "work", support::flow_costing_25()).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let runner = spawn_runner(&server, "acme", &token, 2);
    for call in 0..2 {
        let (status, answer) = server.call_hook("acme", "work", &owner, json!({"call": call})).await;
        assert_eq!((status, answer.clone()), (StatusCode::OK, json!(24)), "{answer}");
    }
    joined(runner).await;

    // The included credits are used: the next call is paused, answered 402 with its run id.
    let (status, paused) = server.call_hook("acme", "work", &owner, json!({"call": 2})).await;
    assert_eq!((status, paused["status"].clone()), (StatusCode::PAYMENT_REQUIRED, json!("paused")), "{paused}");
    let run_id = paused["run_id"].as_str().unwrap().to_owned();
    let client = RunnerClient::connect(&server.base, "acme", &token).await.unwrap();
    assert!(client.claim(1).await.unwrap().is_none(), "a paused run is not handed out");

    // Pay-as-you-go resumes it, and it is handed out.
    let (status, billing) = server.call(Method::PATCH, "/v1/teams/acme/billing", &owner, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "{billing}");
    let job = client.claim(5).await.unwrap().expect("the resumed run is handed out");
    assert_eq!(job.run_id, run_id);
    let result = client.run(&job).await.unwrap();
    assert_eq!((result.state.as_str(), result.credits), ("succeeded", PRIVATE_RUN_CREDITS), "{result:?}");
    let run = server.finished_run("acme", &owner, &run_id).await;
    assert_eq!((run["status"].clone(), run["credits"].clone(), run["location"].clone()), (json!("succeeded"), json!(PRIVATE_RUN_CREDITS), json!("private")), "{run}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &owner).await;
    assert_eq!((usage["used"].clone(), usage["payg_credits"].clone()), (json!(3 * PRIVATE_RUN_CREDITS), json!(PRIVATE_RUN_CREDITS)), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_tool_deployed_to_a_private_runner_is_answered_by_the_runner() {
    let server = support::start_with(private_rules(500), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;
    let (_, token) = register(&server, "acme", &owner, "rack-1").await;
    let tool = json!({
        "name": "greet",
        "blocks": [
            {"id": "args", "kind": "mcp", "config": {"input_schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
            {"id": "greet", "kind": "template", "config": {"template": "Hello, {{input.name}}!"}},
            {"id": "check", "kind": "validate", "config": {"schema": {"type": "string"}}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [{"from": "args.arguments", "to": "greet.input"}, {"from": "greet.text", "to": "check.value"}, {"from": "check.pass", "to": "reply.body"}]
    });
    let (status, flow) = server.post("/v1/teams/acme/flows", &owner, json!({"name": "greet", "definition": tool})).await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    server.post(&format!("/v1/teams/acme/flows/{flow_id}/snapshots"), &owner, json!(null)).await;
    let (status, deployment) = server.post("/v1/teams/acme/deployments", &owner, json!({"flow_id": flow_id, "path": "greet", "trigger": "mcp", "runs_on": "private"})).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let runner = spawn_runner(&server, "acme", &token, 1);
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "greet", "arguments": {"name": "Ada"}}});
    let (_, called) = server.post("/mcp?team=acme", &owner, call).await;
    assert_eq!(called["result"], json!({"content": [{"type": "text", "text": "Hello, Ada!"}], "isError": false}), "{called}");
    joined(runner).await;
    let (_, runs) = server.get("/v1/teams/acme/runs?trigger=mcp", &owner).await;
    let run = server.finished_run("acme", &owner, runs["items"][0]["id"].as_str().unwrap()).await;
    assert_eq!((run["location"].clone(), run["credits"].clone()), (json!("private"), json!(2)), "the validate block at its private price: {run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_runner_has_it_keeps_what_it_was_charged() {
    let server = support::start_with(private_rules(500), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;
    let (runner_id, token) = register(&server, "acme", &owner, "rack-1").await;
    let (status, deployment) = deploy_private(&server, "acme", &owner, "work", support::flow_costing_25()).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let (_, started) = server.post("/hooks/acme/work?async=true", &owner, json!({})).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    // The runner takes the job and reports one execution, then the run is cancelled.
    let (status, claimed) = server.post(&format!("/v1/teams/acme/runners/{runner_id}/jobs/claim?wait_s=5"), &token, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let charge = json!({"charges": [{"execution_id": "check", "type": "validate"}]});
    let (status, charged) = server.post(&format!("/v1/teams/acme/runners/{runner_id}/jobs/{run_id}/charges"), &token, charge).await;
    assert_eq!(status, StatusCode::OK, "{charged}");
    let (status, answer) = server.post(&format!("/v1/teams/acme/runs/{run_id}/cancel"), &owner, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let run = server.finished_run("acme", &owner, &run_id).await;
    let charged = charged["run_credits"].as_u64().unwrap();
    assert!(charged > 0);
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("cancelled"), json!(charged)), "{run}");
    let (_, by_flow) = server.get("/v1/teams/acme/usage/flows", &owner).await;
    assert_eq!(by_flow["flows"][0]["credits"], json!(charged), "{by_flow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_run_cancelled_mid_block_stops_on_its_runner_before_its_next_block() {
    let server = support::start_with(private_rules(500), |_| {}).await;
    let owner = server.team("acme", "enterprise").await;
    let (_, token) = register(&server, "acme", &owner, "rack-1").await;
    // The block after the wait calls this listener: any connection to it is a side effect that
    // should not have happened.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/after-the-wait", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    tokio::spawn(async move {
        while let Ok((_connection, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let flow = json!({"name": "wait-then-call", "blocks": [
        {"id": "request", "kind": "request"},
        {"id": "wait", "kind": "delay", "config": {"ms": 8000}},
        {"id": "call", "kind": "http_request", "config": {"url": url, "timeout_ms": 1000}}
    ], "edges": [{"from": "request.body", "to": "wait.value"}, {"from": "wait.value", "to": "call.input"}]});
    let (status, deployment) = deploy_private(&server, "acme", &owner, "work", flow).await;
    assert_eq!(status, StatusCode::CREATED, "{deployment}");
    let (_, started) = server.post("/hooks/acme/work?async=true", &owner, json!({})).await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    let client = RunnerClient::connect(&server.base, "acme", &token).await.unwrap();
    let job = client.claim(5).await.unwrap().expect("the job is handed out");
    let running = tokio::spawn(async move { client.run(&job).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, answer) = server.post(&format!("/v1/teams/acme/runs/{run_id}/cancel"), &owner, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The runner learns it at its next heartbeat, inside the wait, and drops the run.
    let stopped = tokio::time::timeout(Duration::from_secs(60), running).await.expect("the runner stopped").unwrap();
    let err = stopped.expect_err("a cancelled run does not complete").to_string();
    assert!(err.contains("stopped on this runner") && err.contains("cancelled"), "{err}");
    // Past the end of the wait, the call after it has still not been made.
    tokio::time::sleep(Duration::from_millis(8500)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0, "the block after the wait ran");
    let run = server.finished_run("acme", &owner, &run_id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
}
