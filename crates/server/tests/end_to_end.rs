//! The server end to end over HTTP: a team builds and deploys a flow, calls it until its
//! credits run out, sees the next call paused, turns on pay-as-you-go as a billing member (an
//! editor is refused), and sees the paused run resume and be billed.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_runs_out_of_credits_and_pay_as_you_go_resumes_the_paused_run() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let editor = server.member("acme", &owner, "editor").await;
    let billing = server.member("acme", &owner, "billing").await;
    server.deploy("acme", &editor, "work", support::flow_costing_25()).await;

    // The estimate agrees with what runs will cost.
    let (_, flows) = server.get("/v1/teams/acme/flows", &editor).await;
    let flow_id = flows["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, estimate) = server.get(&format!("/v1/teams/acme/flows/{flow_id}/estimate?trigger=api"), &editor).await;
    assert_eq!(status, StatusCode::OK, "{estimate}");
    assert_eq!((estimate["needs_credits"].clone(), estimate["exact"].clone()), (json!(true), json!(25)));

    // Four calls use the Team plan's 100 included credits.
    for call in 0..4 {
        let (status, body) = server.call_hook("acme", "work", &editor, json!({"call": call})).await;
        assert_eq!(status, StatusCode::OK, "call {call}: {body}");
        assert_eq!(body, json!(24), "the response block answers the loop's iteration count, validated as a number");
    }
    let (_, usage) = server.get("/v1/teams/acme/usage", &billing).await;
    assert_eq!((usage["used"].clone(), usage["remaining"].clone(), usage["payg_credits"].clone()), (json!(100), json!(0), json!(0)), "{usage}");

    // Out of credits: the next call is paused, with its run id, and nothing is charged.
    let (status, paused) = server.call_hook("acme", "work", &editor, json!({"call": 4})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{paused}");
    assert_eq!(paused["status"], "paused");
    let run_id = paused["run_id"].as_str().unwrap().to_owned();
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{run_id}"), &editor).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("paused"), json!(0)));

    // Only owner, admin or billing may turn pay-as-you-go on.
    let (status, refused) = server.call(Method::PATCH, "/v1/teams/acme/billing", &editor, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    let (status, billing_view) = server.call(Method::PATCH, "/v1/teams/acme/billing", &billing, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "{billing_view}");
    assert_eq!(billing_view["payg_enabled"], true);

    // The paused run resumes, runs, and its 25 credits are billed as pay-as-you-go.
    let run = server.finished_run("acme", &editor, &run_id).await;
    assert_eq!((run["status"].clone(), run["credits"].clone()), (json!("succeeded"), json!(25)), "{run}");
    let blocks = run["blocks"].as_array().unwrap();
    assert_eq!(blocks.iter().map(|block| block["credits"].as_u64().unwrap()).sum::<u64>(), 25, "every charged execution is listed: {run}");
    let check = blocks.iter().find(|block| block["block_id"] == "check").expect("the validate block is listed");
    assert_eq!((check["status"].clone(), check["input"].clone(), check["output"].clone()), (json!("completed"), json!({"value": 24}), json!({"pass": 24})), "{check}");
    assert!(check["duration_us"].is_u64() && check["started_at"].as_str().is_some_and(|at| at.starts_with("20")), "{check}");
    let iteration = blocks.iter().find(|block| block["block_id"] == "loop#3/double").expect("loop iterations are listed by iteration");
    assert_eq!((iteration["input"].clone(), iteration["output"].clone()), (json!({"input": 3}), json!({"result": 6})), "{iteration}");
    let (_, usage) = server.get("/v1/teams/acme/usage", &billing).await;
    assert_eq!((usage["used"].clone(), usage["payg_credits"].clone(), usage["payg_amount_usd"].clone()), (json!(125), json!(25), json!("0.025")), "{usage}");

    // History lists all five runs, filterable by status.
    let (_, runs) = server.get("/v1/teams/acme/runs?status=succeeded&trigger=api", &billing).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 5, "{runs}");
}
