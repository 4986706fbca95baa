//! What team admins and billing members meet when they change billing, buy credits and read
//! billing settings, on a real server over loopback.

mod support;

use std::sync::Arc;

use flowcredits_core::{PlanId, Rules, Timestamp};
use flowcredits_server::ledger::Ledger;
use flowcredits_store::{Actor, BillingChange, LedgerStore, SqliteStore, TeamName};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server whose ledger the test holds too, to change and read it underneath the server.
async fn server_with_ledger(dir: &std::path::Path) -> (support::Server, SqliteStore) {
    let store = SqliteStore::open(dir.join("ledger.db"), Rules::shipped()).unwrap();
    let ledger = Ledger::new(Arc::new(store.clone()));
    (support::start_with(Rules::shipped(), move |state| state.ledger = ledger).await, store)
}

async fn user_id(server: &support::Server, key: &str) -> String {
    let (status, me) = server.get("/v1/me", key).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    me["user"]["id"].as_str().unwrap().to_owned()
}

/// The audit log's actions after the team's creation, with who made each.
fn audit_lines(store: &SqliteStore, team: &str) -> Vec<(String, String)> {
    let log = store.audit_log(&TeamName::new(team).unwrap()).unwrap();
    log.into_iter().skip(1).map(|entry| (entry.action, entry.actor)).collect()
}

/// A PATCH with several fields answers as it did, with one audit line per change; when the
/// ledger refuses one of its changes (here because another admin moved the team to a plan
/// without pay-as-you-go after this server checked the plan, and before it wrote), none of them
/// is applied, and the refusal names the field. The plan change lands in the ledger directly,
/// under the server's 1-second team cache, so the server's own check still sees the old plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_patch_applies_all_its_changes_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let (server, store) = server_with_ledger(dir.path()).await;
    let owner = server.team("acme", "team").await;
    let owner_id = user_id(&server, &owner).await;
    let path = "/v1/teams/acme/billing";

    let (status, body) = server.call(Method::PATCH, path, &owner, Some(json!({"payg_cap_usd": "25.000", "payg_alerts_usd": ["10.000"], "payg_enabled": true}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["payg_cap_usd"].clone(), body["payg_alerts_usd"].clone(), body["payg_enabled"].clone(), body["plan"].clone()), (json!("25.000"), json!(["10.000"]), json!(true), json!("team")), "{body}");
    let changes = ["payg_cap_set", "payg_alerts_set", "payg_enabled"].map(|action| (action.to_owned(), owner_id.clone()));
    assert_eq!(audit_lines(&store, "acme"), changes, "one line per change, by the member who made it");

    // This request puts the team (plan team, pay-as-you-go on) in the server's cache.
    let (status, before) = server.get(path, &owner).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let other_admin = Actor::new("usr_other_admin").unwrap();
    store.change_billing(&TeamName::new("acme").unwrap(), &other_admin, Timestamp::now(), BillingChange::ChangePlan { plan: PlanId::Free }).unwrap();
    let change = json!({"payg_cap_usd": "5.000", "payg_alerts_usd": ["2.000"], "payg_enabled": true});
    let (status, refused) = server.call(Method::PATCH, path, &owner, Some(change)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("payg_enabled: plan free has no pay-as-you-go"), "{refused}");
    let settings = store.team(&TeamName::new("acme").unwrap()).unwrap().settings;
    assert_eq!((settings.plan, settings.payg_cap.map(|cap| cap.to_string()), settings.payg_alerts.len(), settings.payg_enabled), (PlanId::Free, Some("25.000".to_owned()), 1, false), "the cap and alerts before the refused change were not kept");
    let after: Vec<(String, String)> = audit_lines(&store, "acme").split_off(changes.len());
    assert_eq!(after, [("plan_changed".to_owned(), "usr_other_admin".to_owned()), ("payg_disabled".to_owned(), "usr_other_admin".to_owned())], "nothing of the refused PATCH is in the log");
}

async fn buy(server: &support::Server, key: &str, idempotency_key: Option<&str>, body: Value) -> (StatusCode, Option<String>, Value) {
    let mut request = server.client.post(format!("{}/v1/teams/big/purchases", server.base)).bearer_auth(key).json(&body);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.send().await.unwrap();
    let (status, replayed) = (response.status(), response.headers().get("idempotent-replayed").map(|value| value.to_str().unwrap().to_owned()));
    (status, replayed, response.json().await.unwrap())
}

/// A client that retries a purchase after a timeout, with the `Idempotency-Key` it sent the
/// first time, gets the first purchase's answer back and buys nothing more, also after the
/// server restarted (the key is in the ledger); the key with another body is refused naming the
/// header; a malformed key is refused before anything is bought.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_retried_with_its_idempotency_key_buys_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _store) = server_with_ledger(dir.path()).await;
    let owner = server.team("big", "enterprise").await;
    let body = json!({"credits": 1000, "expires_at": "2099-01-01T00:00:00Z"});
    let (status, replayed, first) = buy(&server, &owner, Some("order-7f3a"), body.clone()).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, None), "{first}");
    for _ in 0..2 {
        let (status, replayed, again) = buy(&server, &owner, Some("order-7f3a"), body.clone()).await;
        assert_eq!((status, replayed.as_deref()), (StatusCode::CREATED, Some("true")), "{again}");
        assert_eq!((again["id"].clone(), again["bought_at"].clone(), again["expires_at"].clone(), again["credits"].clone()), (first["id"].clone(), first["bought_at"].clone(), first["expires_at"].clone(), json!(1000)), "{again}");
    }
    // The same instant written another way is the same body.
    let (status, replayed, _) = buy(&server, &owner, Some("order-7f3a"), json!({"expires_at": "2099-01-01T01:00:00+01:00", "credits": 1000})).await;
    assert_eq!((status, replayed.as_deref()), (StatusCode::CREATED, Some("true")));

    for other in [json!({"credits": 999, "expires_at": "2099-01-01T00:00:00Z"}), json!({"credits": 1000})] {
        let (status, replayed, refused) = buy(&server, &owner, Some("order-7f3a"), other.clone()).await;
        assert_eq!((status, replayed), (StatusCode::CONFLICT, None), "{other}: {refused}");
        assert_eq!(refused["error"]["field"], "Idempotency-Key", "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().starts_with("Idempotency-Key: "), "{refused}");
    }
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        let (status, _, refused) = buy(&server, &owner, Some(bad), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {refused}");
        assert_eq!(refused["error"]["field"], "Idempotency-Key", "{refused}");
    }
    let (_, listed) = server.get("/v1/teams/big/purchases", &owner).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "bought once: {listed}");
    // Without a key every request buys, as before; a new key buys too.
    assert_eq!(buy(&server, &owner, None, body.clone()).await.0, StatusCode::CREATED);
    assert_eq!(buy(&server, &owner, Some("order-8b21"), body.clone()).await.0, StatusCode::CREATED);

    // A restart: the ledger as the disk holds it, under a new server process's state.
    let copy = dir.path().join("restarted.db");
    rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap().execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    let restarted = SqliteStore::open(&copy, Rules::shipped()).unwrap();
    let ledger = Ledger::new(Arc::new(restarted));
    let server = support::start_with(Rules::shipped(), move |state| state.ledger = ledger).await;
    let operator = server.operator.clone();
    let (status, replayed, again) = buy(&server, &operator, Some("order-7f3a"), body.clone()).await;
    assert_eq!((status, replayed.as_deref(), again["id"].clone()), (StatusCode::CREATED, Some("true"), first["id"].clone()), "{again}");
    let (status, _, refused) = buy(&server, &operator, Some("order-7f3a"), json!({"credits": 5})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (_, listed) = server.get("/v1/teams/big/purchases", &operator).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
}

/// A chat-style webhook URL is itself a secret (whoever has it can post there): like the
/// signing secret, it is shown only to roles that may change billing. Viewers and editors see
/// whether one is set. On a plan without roles every member acts as an admin and sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_webhook_url_is_shown_only_to_those_who_manage_billing() {
    let server = support::start().await;
    let hook = "https://hooks.example.com/services/T000/B000/XXXXSECRET";
    for (team, plan) in [("acme", "team"), ("tiny", "free")] {
        let owner = server.team(team, plan).await;
        let path = format!("/v1/teams/{team}/billing");
        let viewer = server.member(team, &owner, "viewer").await;
        let (_, unset) = server.get(&path, &viewer).await;
        assert_eq!((unset["alert_webhook_set"].clone(), unset["alert_webhook_url"].clone()), (json!(false), Value::Null), "{unset}");
        let (status, set) = server.call(Method::PATCH, &path, &owner, Some(json!({"alert_webhook_url": hook}))).await;
        assert_eq!(status, StatusCode::OK, "{set}");
        assert_eq!((set["alert_webhook_set"].clone(), set["alert_webhook_url"].clone()), (json!(true), json!(hook)), "{set}");
        let secret = set["alert_signing_secret"].clone();
        assert!(secret.is_string(), "{set}");

        let manages = |role: &str| plan == "free" || matches!(role, "owner" | "admin" | "billing");
        for role in ["admin", "billing", "editor", "viewer"] {
            let key = server.member(team, &owner, role).await;
            let (status, seen) = server.get(&path, &key).await;
            assert_eq!(status, StatusCode::OK, "{seen}");
            let (url, shown_secret) = if manages(role) { (json!(hook), secret.clone()) } else { (Value::Null, Value::Null) };
            assert_eq!((seen["alert_webhook_set"].clone(), seen["alert_webhook_url"].clone(), seen["alert_signing_secret"].clone()), (json!(true), url, shown_secret), "{plan} {role}: {seen}");
        }
        let (_, seen) = server.get(&path, &owner).await;
        assert_eq!(seen["alert_webhook_url"], json!(hook), "{seen}");
    }
}
