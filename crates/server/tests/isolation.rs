//! No request reads or changes another team's data. Every route of the served OpenAPI document
//! that names a team is called with a key from another team, with a valid body; each must
//! answer 404 (or 403 for operator-only routes), and the team's data must be unchanged.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A body the route would accept from a member of the team.
fn valid_body(method: &str, path: &str, flow_id: &str) -> Option<Value> {
    let body = match (method, path) {
        ("post", "/v1/teams/{team}/flows") => json!({"name": "intruder", "definition": support::flow_costing_25()}),
        ("put", "/v1/teams/{team}/flows/{flow}") => json!({"definition": support::flow_costing_25()}),
        ("post", "/v1/teams/{team}/flows/{flow}/snapshots") => json!(null),
        ("post", "/v1/teams/{team}/deployments") => json!({"flow_id": flow_id, "path": "intruder"}),
        ("post", "/v1/teams/{team}/deployments/{deployment}/runs") => json!({"input": {"x": 1}}),
        ("patch", "/v1/teams/{team}/deployments/{deployment}") => json!({"snapshot": 1}),
        ("post", "/v1/teams/{team}/runners") => json!({"name": "intruder"}),
        ("post", "/v1/teams/{team}/runners/{runner}/jobs/claim") => json!(null),
        ("post", "/v1/teams/{team}/runners/{runner}/jobs/{run}/charges") => json!({"charges": [{"execution_id": "x", "type": "integration"}]}),
        ("post", "/v1/teams/{team}/runners/{runner}/jobs/{run}/heartbeat") => json!(null),
        ("post", "/v1/teams/{team}/runners/{runner}/jobs/{run}/complete") => json!({"state": "succeeded"}),
        ("post", "/v1/teams/{team}/runs") => json!({"flow_id": flow_id}),
        ("post", "/v1/teams/{team}/runs/{run}/cancel") => json!(null),
        ("post", "/v1/teams/{team}/local-runs") => json!({"flow": "intruder", "blocks": [{"type": "integration"}]}),
        ("post", "/v1/teams/{team}/local-runs/{run}/charges") => json!({"charges": [{"execution_id": "x", "type": "integration"}]}),
        ("post", "/v1/teams/{team}/local-runs/{run}/end") => json!(null),
        ("put", "/v1/teams/{team}/members/{user}") => json!({"role": "owner"}),
        ("patch", "/v1/teams/{team}/billing") => json!({"payg_enabled": true}),
        ("post", "/v1/teams/{team}/purchases") => json!({"credits": 100}),
        ("put", "/v1/teams/{team}/plan") => json!({"plan": "enterprise"}),
        ("post" | "put" | "patch", "/hooks/{team}/{path}") => json!({"x": 1}),
        ("post", "/mcp") => json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        (_, _) if method == "get" || method == "delete" => return None,
        _ => panic!("no test body for {method} {path}: add one so the route is covered"),
    };
    Some(body)
}

async fn snapshot_of_team(server: &support::Server, key: &str) -> Value {
    let mut view = json!({});
    for path in ["", "/flows", "/deployments", "/runs", "/members", "/usage", "/billing", "/invoices", "/alerts", "/runners"] {
        let (status, body) = server.get(&format!("/v1/teams/acme{path}"), key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        view[path] = body;
    }
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_key_reaches_nothing() {
    let server = support::start().await;
    let owner = server.team("acme", "enterprise").await;
    let flow_id = server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (status, called) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{called}");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    let run_id = runs["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, deployments) = server.get("/v1/teams/acme/deployments", &owner).await;
    let deployment_id = deployments["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, members) = server.get("/v1/teams/acme/members", &owner).await;
    let user_id = members["items"][0]["user_id"].as_str().unwrap().to_owned();
    let (status, registered) = server.post("/v1/teams/acme/runners", &owner, json!({"name": "rack-1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let runner_id = registered["runner"]["id"].as_str().unwrap().to_owned();
    let outsider = server.team("other", "enterprise").await;
    let before = snapshot_of_team(&server, &owner).await;

    let (_, document) = server.get("/openapi.json", &owner).await;
    let mut covered = 0;
    for (template, operations) in document["paths"].as_object().unwrap() {
        let team_scoped = template.contains("{team}") || template == "/mcp";
        if !team_scoped {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let path = template
                .replace("{team}", "acme")
                .replace("{flow}", &flow_id)
                .replace("{run}", &run_id)
                .replace("{deployment}", &deployment_id)
                .replace("{user}", &user_id)
                .replace("{runner}", &runner_id)
                .replace("{path}", "work");
            let path = if template == "/mcp" { format!("{path}?team=acme") } else { path };
            let body = valid_body(method, template, &flow_id);
            let (status, answer) = server.call(method.to_uppercase().parse::<Method>().unwrap(), &path, &outsider, body).await;
            let expected = if template.ends_with("/plan") { StatusCode::FORBIDDEN } else { StatusCode::NOT_FOUND };
            assert_eq!(status, expected, "{method} {path}: {answer}");
            covered += 1;
        }
    }
    assert!(covered >= 30, "only {covered} team routes were found in the OpenAPI document");
    assert_eq!(snapshot_of_team(&server, &owner).await, before, "another team's requests changed acme's data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_members_do_and_free_plans_make_everyone_admin() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let viewer = server.member("acme", &owner, "viewer").await;
    let billing = server.member("acme", &owner, "billing").await;
    let editor = server.member("acme", &owner, "editor").await;
    let definition = json!({"name": "work", "definition": support::flow_costing_25()});
    let cases = [
        (&viewer, Method::POST, "/v1/teams/acme/flows", Some(definition.clone()), StatusCode::FORBIDDEN),
        (&billing, Method::POST, "/v1/teams/acme/flows", Some(definition.clone()), StatusCode::FORBIDDEN),
        (&viewer, Method::PATCH, "/v1/teams/acme/billing", Some(json!({"payg_enabled": true})), StatusCode::FORBIDDEN),
        (&editor, Method::POST, "/v1/teams/acme/purchases", Some(json!({"credits": 5})), StatusCode::FORBIDDEN),
        (&editor, Method::PUT, "/v1/teams/acme/members/nobody", Some(json!({"role": "viewer"})), StatusCode::FORBIDDEN),
        (&viewer, Method::GET, "/v1/teams/acme/usage", None, StatusCode::OK),
        // A hook call starts a run and spends credits: not for viewers or billing members.
        (&viewer, Method::POST, "/hooks/acme/work", Some(json!({})), StatusCode::FORBIDDEN),
        (&billing, Method::POST, "/hooks/acme/work", Some(json!({})), StatusCode::FORBIDDEN),
        (&editor, Method::POST, "/v1/teams/acme/flows", Some(definition.clone()), StatusCode::CREATED),
        (&billing, Method::PATCH, "/v1/teams/acme/billing", Some(json!({"payg_cap_usd": "5.000"})), StatusCode::OK),
        // Team cannot buy credits: the plan refuses, whoever asks.
        (&billing, Method::POST, "/v1/teams/acme/purchases", Some(json!({"credits": 5})), StatusCode::FORBIDDEN),
    ];
    for (key, method, path, body, expected) in cases {
        let (status, answer) = server.call(method.clone(), path, key, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }

    // On Free there is no RBAC: a viewer acts as an admin.
    let free_owner = server.team("tiny", "free").await;
    let free_viewer = server.member("tiny", &free_owner, "viewer").await;
    let (status, answer) = server.post("/v1/teams/tiny/flows", &free_viewer, definition).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (_, team) = server.get("/v1/teams/tiny", &free_viewer).await;
    assert_eq!(team["your_role"], "admin");
    // A key that is no key.
    let (status, answer) = server.get("/v1/teams/tiny", "fck_0000").await;
    assert_eq!((status, answer["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthenticated")));
}
