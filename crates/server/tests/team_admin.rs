//! What a team admin and a billing member meet on a real server: member changes, billing and
//! usage figures, each checked over a loopback socket.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;

/// Changing a member's role while the team's runs are being recorded is answered, never a 500:
/// the role change reads the member and then writes, and the run history is written by
/// another connection meanwhile, so the change must take the write lock before it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_while_runs_are_recorded_never_fail() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "ping", json!({"name": "ping", "blocks": [{"id": "request", "kind": "request"}, {"id": "reply", "kind": "response"}], "edges": [{"from": "request.body", "to": "reply.body"}]})).await;
    let (member, _) = server.user("sam").await;

    // Runs started one after another, each recorded in history by its own writer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, base, owner, stop) = (server.client.clone(), server.base.clone(), owner.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client.post(format!("{base}/hooks/acme/ping?async=true")).bearer_auth(&owner).json(&json!({})).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
            }
        }
    });
    let mut failures = Vec::new();
    for round in 0..300 {
        let role = if round % 2 == 0 { "editor" } else { "viewer" };
        let (status, body) = server.call(Method::PUT, &format!("/v1/teams/acme/members/{member}"), &owner, Some(json!({"role": role}))).await;
        if status != StatusCode::OK {
            failures.push(format!("round {round}: {status} {body}"));
        }
    }
    let (status, body) = server.call(Method::DELETE, &format!("/v1/teams/acme/members/{member}"), &owner, None).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(failures.is_empty(), "{} of 300 role changes failed: {:?}", failures.len(), &failures[..failures.len().min(3)]);
}

/// `null` clears the cap and the webhook; sent for the pay-as-you-go switch or the alert
/// amounts it used to be answered 200 with nothing changed, so a billing member who meant
/// "remove my alerts" kept them without knowing. It is refused, naming the field and what to
/// send, and changes nothing; `[]` removes the amounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_for_the_payg_switch_or_alert_amounts_is_refused_not_ignored() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    let billing = server.member("acme", &owner, "billing").await;
    let path = "/v1/teams/acme/billing";
    let (status, body) = server.call(Method::PATCH, path, &billing, Some(json!({"payg_enabled": true, "payg_alerts_usd": ["5.000", "10.000"]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = body;

    for (request, field, advice) in [
        (json!({"payg_alerts_usd": null}), "payg_alerts_usd", "send []"),
        (json!({"payg_enabled": null}), "payg_enabled", "send true or false"),
        (json!({"payg_cap_usd": "20.000", "payg_alerts_usd": null}), "payg_alerts_usd", "send []"),
    ] {
        let (status, body) = server.call(Method::PATCH, path, &billing, Some(request.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(advice), "{body}");
        let (_, now) = server.get(path, &billing).await;
        assert_eq!(now, before, "a refused change changes nothing ({request})");
    }

    let (status, body) = server.call(Method::PATCH, path, &billing, Some(json!({"payg_alerts_usd": [], "payg_cap_usd": null}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["payg_alerts_usd"].clone(), body["payg_cap_usd"].clone(), body["payg_enabled"].clone()), (json!([]), json!(null), json!(true)));
}
