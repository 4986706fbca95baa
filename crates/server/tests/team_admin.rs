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

/// Last month's usage does not call the allowance it left unused "remaining": those credits
/// expired with the period, as its invoice says (`included_expired`). What remains is only the
/// purchased credits still usable; the current period still counts its allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_periods_unused_allowance_is_not_remaining() {
    use flowcredits_core::{AnchorDay, BlockKind, BlockUsage, ExecutionId, PlanId, RunContext, RunId, Rules, TeamSettings, Timestamp, Trigger};
    use flowcredits_store::{Actor, LedgerStore, NewTeam, SqliteStore, StartRun, TeamName, UsageEvent};

    // Team `past` (Enterprise), made 40 days ago, used 1 credit 35 days ago and bought 30
    // credits lasting a year; its ended periods are invoiced.
    let ledger_dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(ledger_dir.path().join("ledger.db"), Rules::shipped()).unwrap();
    let days_ago = |days: i64| Timestamp::now() - jiff::SignedDuration::from_hours(days * 24);
    let team = TeamName::new("past").unwrap();
    let settings = TeamSettings { anchor_day: AnchorDay::new(1).unwrap(), ..TeamSettings::new(PlanId::Enterprise) };
    store.create_team(NewTeam { name: team.clone(), settings, actor: Actor::new("test").unwrap(), at: days_ago(40) }).unwrap();
    let run = RunId::new("run_old").unwrap();
    store.start_run(&team, StartRun { run: run.clone(), context: RunContext::automated(Trigger::Api).unwrap(), needs_credits: true, at: days_ago(35) }).unwrap();
    let usage = BlockUsage::of_kind(BlockKind::Evaluate);
    store.charge(&team, vec![UsageEvent { execution: ExecutionId::new("run_old/evaluate").unwrap(), run: run.clone(), usage, at: days_ago(35) }]).unwrap();
    store.end_run(&team, &run, days_ago(35)).unwrap();
    store.close_periods(Timestamp::now()).unwrap();
    let ledger = flowcredits_server::ledger::Ledger::new(std::sync::Arc::new(store));
    let server = support::start_with(Rules::shipped(), move |state| state.ledger = ledger).await;
    let operator = server.operator.clone();
    let in_a_year = (Timestamp::now() + jiff::SignedDuration::from_hours(365 * 24)).to_string();
    let (status, bought) = server.post("/v1/teams/past/purchases", &operator, json!({"credits": 30, "expires_at": in_a_year})).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");

    let (status, invoices) = server.get("/v1/teams/past/invoices", &operator).await;
    assert_eq!(status, StatusCode::OK, "{invoices}");
    let used = invoices["items"].as_array().unwrap().iter().find(|invoice| invoice["included_used"] == 1).expect("the period with the run is invoiced").clone();
    assert_eq!(used["included_expired"], 499, "{used}");
    let label = used["period"]["label"].as_str().unwrap();
    let (status, ended) = server.get(&format!("/v1/teams/past/usage?period={label}"), &operator).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!((ended["included"].clone(), ended["included_used"].clone()), (json!(500), json!(1)), "{ended}");
    assert_eq!((ended["remaining"].clone(), ended["purchased_remaining"].clone()), (json!(30), json!(30)), "the 499 expired; the purchase remains: {ended}");

    let (status, current) = server.get("/v1/teams/past/usage", &operator).await;
    assert_eq!(status, StatusCode::OK, "{current}");
    assert_eq!(current["remaining"], 530, "this period's allowance and the purchase: {current}");
}

/// A month to come counts only the purchased credits still valid when it starts: a purchase
/// that expires before then cannot be drawn in it. The current month counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_months_usage_counts_only_purchases_still_valid_then() {
    let server = support::start().await;
    server.team("ahead", "enterprise").await;
    let operator = server.operator.clone();
    let days_ahead = |days: i64| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(days * 24);
    for (credits, expires_at) in [(30, days_ahead(20)), (50, days_ahead(365))] {
        let (status, bought) = server.post("/v1/teams/ahead/purchases", &operator, json!({"credits": credits, "expires_at": expires_at.to_string()})).await;
        assert_eq!(status, StatusCode::CREATED, "{bought}");
    }
    // The month 70 days ahead starts at least 39 days ahead, after the 30 credits expired.
    let label = days_ahead(70).strftime("%Y-%m").to_string();
    let (status, future) = server.get(&format!("/v1/teams/ahead/usage?period={label}"), &operator).await;
    assert_eq!(status, StatusCode::OK, "{future}");
    assert_eq!((future["purchased_remaining"].clone(), future["remaining"].clone()), (json!(50), json!(550)), "{future}");

    let (status, current) = server.get("/v1/teams/ahead/usage", &operator).await;
    assert_eq!(status, StatusCode::OK, "{current}");
    assert_eq!((current["purchased_remaining"].clone(), current["remaining"].clone()), (json!(80), json!(580)), "{current}");
}

/// An alert a billing or plan change makes pass (an amount set below what the period has spent,
/// an allowance already 75% used) is in the alerts list as soon as the change is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_a_billing_change_passes_are_listed_when_it_is_answered() {
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (status, _) = server.call(Method::PATCH, "/v1/teams/acme/billing", &owner, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(server.call_hook("acme", "work", &owner, json!({})).await.0, StatusCode::OK);
    }
    // 125 credits against 100 included: $0.025 of pay-as-you-go so far.
    let (status, body) = server.call(Method::PATCH, "/v1/teams/acme/billing", &owner, Some(json!({"payg_alerts_usd": ["0.010"]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, alerts) = server.get("/v1/teams/acme/alerts", &owner).await;
    let kinds: Vec<&str> = alerts["items"].as_array().unwrap().iter().filter_map(|alert| alert["alert"].as_str()).collect();
    assert!(kinds.contains(&"payg_0.010"), "listed at once: {alerts}");
}

/// A paused run says in history why it waits and what brings the credits back (what the 402
/// said), in the run and in lists; other runs carry no such note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_says_why_it_waits_and_what_brings_credits_back() {
    let server = support::start().await;
    let owner = server.team("acme", "free").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    let (status, done) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (status, paused) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "Free's 25 credits are spent");
    let (said, paused) = (paused["error"]["message"].as_str().unwrap_or_default().to_owned(), paused["run_id"].as_str().unwrap().to_owned());
    let (_, run) = server.get(&format!("/v1/teams/acme/runs/{paused}"), &owner).await;
    let note = run["waiting_for_credits"].as_str().unwrap_or_else(|| panic!("no reason: {run}"));
    let advice = note.split_once("credits return: ").map(|(_, advice)| advice).unwrap_or_else(|| panic!("{note}"));
    assert!(note.contains("out of credits") && said.contains(advice), "history: {note}; the 402: {said}");
    let (_, runs) = server.get("/v1/teams/acme/runs", &owner).await;
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{runs}");
    for item in items {
        assert_eq!(item["waiting_for_credits"].is_string(), item["status"] == "paused", "{item}");
    }
}

/// A team out of credits whose hook keeps being called holds at most `PAUSED_RUNS_MAX` waiting
/// runs: the call past it is refused with 422 saying why and what brings room back, and no run
/// is made for it; once credits return the waiting runs resume and new calls run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_most_waiting_runs_a_hook_call_is_refused_and_makes_no_run() {
    use flowcredits_core::ledger::PAUSED_RUNS_MAX;
    use flowcredits_core::{RunContext, RunStatus, Trigger};

    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    // The Team plan's 100 included credits go in 4 calls of 25.
    for _ in 0..4 {
        assert_eq!(server.call_hook("acme", "work", &owner, json!({})).await.0, StatusCode::OK);
    }
    let (status, _) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "out of credits, a call waits");
    // The rest of the waiting runs straight through the ledger: 10,000 hook calls would be slow.
    let ledger = &server.state.ledger;
    let waiting = (1..PAUSED_RUNS_MAX).map(|n| async move { ledger.start_run("acme", &format!("run_filler{n:05}"), RunContext::automated(Trigger::Api).unwrap(), true).await.unwrap() });
    let statuses = futures_util::future::join_all(waiting).await;
    assert!(statuses.iter().all(|status| *status == RunStatus::Paused));

    let (_, before) = server.get("/v1/teams/acme/runs?limit=100", &owner).await;
    let (status, refused) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "limit_reached", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("10000 runs waiting for credits") && message.contains("pay-as-you-go"), "{message}");
    assert!(refused["run_id"].is_null(), "no run is made: {refused}");
    let (_, after) = server.get("/v1/teams/acme/runs?limit=100", &owner).await;
    assert_eq!(before["items"], after["items"], "history lists no new run");

    // Pay-as-you-go turned on resumes the waiting runs; a new call then runs.
    let (status, body) = server.call(Method::PATCH, "/v1/teams/acme/billing", &owner, Some(json!({"payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, done) = server.call_hook("acme", "work", &owner, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
}
