//! What team admins and billing members meet when they change billing, buy credits and read
//! billing settings, on a real server over loopback.

mod support;

use std::sync::Arc;

use flowcredits_core::{PlanId, Rules, Timestamp};
use flowcredits_server::ledger::Ledger;
use flowcredits_store::{Actor, BillingChange, LedgerStore, SqliteStore, TeamName};
use reqwest::{Method, StatusCode};
use serde_json::json;

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
