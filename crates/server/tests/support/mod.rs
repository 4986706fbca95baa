//! A real server on a loopback port with a fresh database, and a small client for it.

#![allow(dead_code)]

use std::time::Duration;

use flowcredits_core::{AnchorDay, BlockKind, BlockUsage, ExecutionId, PlanId, RunContext, RunId, Rules, TeamSettings, Trigger};
use flowcredits_server::ledger::Ledger;
use flowcredits_server::serve::{bootstrap_operator, open_state_with};
use flowcredits_store::{Actor, LedgerStore, NewTeam, SqliteStore, StartRun, TeamName, UsageEvent};
use flowcredits_server::{AppState, app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub operator: String,
    pub state: AppState,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Server {
    start_with(Rules::shipped(), |_| {}).await
}

/// A server with other rules, and its state changed by `tune` before it serves.
pub async fn start_with(rules: Rules, tune: impl FnOnce(&mut AppState)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    // The tests' webhooks and HTTP services listen on loopback.
    let mut state = open_state_with(&dir.path().join("flowcredits.db"), rules, flowcredits_engine::http::Destinations::Any).unwrap();
    tune(&mut state);
    let operator = bootstrap_operator(&state).await.unwrap().expect("a fresh database has no users");
    listen(state, operator, dir).await
}

/// A server as `serve` starts one by default: flows and webhooks reach public hosts only.
pub async fn start_public_only() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let state = flowcredits_server::serve::open_state(&dir.path().join("flowcredits.db"), Rules::shipped()).unwrap();
    let operator = bootstrap_operator(&state).await.unwrap().expect("a fresh database has no users");
    listen(state, operator, dir).await
}

/// Serves `server.state` (as changed by the test) on a new port.
pub async fn restart_with(server: Server) -> Server {
    listen(server.state, server.operator, server._dir).await
}

async fn listen(state: AppState, operator: String, dir: tempfile::TempDir) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app(state.clone())).into_future());
    Server { base, client: flowcredits_engine::http::client(), operator, state, _dir: dir }
}

impl Server {
    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, key, Some(body)).await
    }

    /// Calls a deployed flow and waits for its run to end (the answer can come first, from its
    /// `response` block); returns the answer's status and body.
    pub async fn call_hook(&self, team: &str, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self.client.post(format!("{}/hooks/{team}/{path}", self.base)).bearer_auth(key).json(&body).send().await.unwrap();
        let status = response.status();
        let run = response.headers().get("x-flowcredits-run").map(|value| value.to_str().unwrap().to_owned());
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        // A paused run has not ended and will not until credits return.
        if let Some(run) = run.or_else(|| answer["run_id"].as_str().map(str::to_owned))
            && status != StatusCode::PAYMENT_REQUIRED
        {
            self.finished_run(team, key, &run).await;
        }
        (status, answer)
    }

    /// A user with a key; returns (user id, key).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (status, user) = self.post("/v1/users", &self.operator, json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let id = user["id"].as_str().unwrap().to_owned();
        let (status, key) = self.post(&format!("/v1/users/{id}/keys"), &self.operator, json!({"label": "test"})).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (id, key["token"].as_str().unwrap().to_owned())
    }

    /// A team on `plan` owned by a new user; returns the owner's key.
    pub async fn team(&self, name: &str, plan: &str) -> String {
        let (owner, key) = self.user(&format!("{name} owner")).await;
        let (status, team) = self.post("/v1/teams", &self.operator, json!({"name": name, "plan": plan, "owner": owner})).await;
        assert_eq!(status, StatusCode::CREATED, "{team}");
        key
    }

    /// Adds a new user to `team` with `role`; returns their key.
    pub async fn member(&self, team: &str, owner_key: &str, role: &str) -> String {
        let (id, key) = self.user(&format!("{team} {role}")).await;
        let (status, body) = self.call(Method::PUT, &format!("/v1/teams/{team}/members/{id}"), owner_key, Some(json!({"role": role}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        key
    }

    /// Creates a flow, snapshots it and deploys it at `path`; returns the flow id.
    pub async fn deploy(&self, team: &str, key: &str, path: &str, definition: Value) -> String {
        let (status, flow) = self.post(&format!("/v1/teams/{team}/flows"), key, json!({"name": path, "definition": definition})).await;
        assert_eq!(status, StatusCode::CREATED, "{flow}");
        let flow_id = flow["id"].as_str().unwrap().to_owned();
        let (status, snapshot) = self.post(&format!("/v1/teams/{team}/flows/{flow_id}/snapshots"), key, json!(null)).await;
        assert_eq!(status, StatusCode::CREATED, "{snapshot}");
        let (status, deployment) = self.post(&format!("/v1/teams/{team}/deployments"), key, json!({"flow_id": flow_id, "path": path})).await;
        assert_eq!(status, StatusCode::CREATED, "{deployment}");
        flow_id
    }

    /// Polls a run until it is finished; the bound only keeps a broken build from hanging.
    pub async fn finished_run(&self, team: &str, key: &str, run: &str) -> Value {
        for _ in 0..1_200 {
            let (status, body) = self.get(&format!("/v1/teams/{team}/runs/{run}"), key).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if !matches!(body["status"].as_str(), Some("running" | "paused")) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {run} did not finish");
    }
}

/// A flow that answers an HTTP call after 24 loop iterations of an evaluate block and one
/// validate block: 25 credits per automated run (cloud prices: evaluate 1, validate 1).
pub fn flow_costing_25() -> Value {
    json!({
        "name": "work",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "loop", "kind": "repeat", "config": {"times": 24}},
            {"id": "double", "kind": "evaluate", "config": {"code": "return input * 2;"}},
            {"id": "check", "kind": "validate", "config": {"schema": {"type": "number"}}},
            {"id": "reply", "kind": "response", "config": {"status": 200}}
        ],
        "edges": [
            {"from": "loop.index", "to": "double.input"},
            {"from": "loop.done", "to": "check.value"},
            {"from": "check.pass", "to": "reply.body"}
        ]
    })
}

/// A ledger holding team `past`, created 100 days ago, with its ended periods invoiced.
pub fn ledger_with_invoices(dir: &std::path::Path) -> Ledger {
    let store = SqliteStore::open(dir.join("ledger.db"), Rules::shipped()).unwrap();
    let created = flowcredits_core::Timestamp::now() - jiff::SignedDuration::from_hours(100 * 24);
    let settings = TeamSettings { anchor_day: AnchorDay::new(1).unwrap(), ..TeamSettings::new(PlanId::Solo) };
    let team = TeamName::new("past").unwrap();
    store.create_team(NewTeam { name: team.clone(), settings, actor: Actor::new("test").unwrap(), at: created }).unwrap();
    // A run in each of the three months before this one: invoices list periods that saw use.
    // Between the last two, the team moves up to Team: an invoice lists the change.
    for days_ago in [90, 60, 30] {
        let at = flowcredits_core::Timestamp::now() - jiff::SignedDuration::from_hours(days_ago * 24);
        if days_ago == 30 {
            let before = at - jiff::SignedDuration::from_hours(24);
            store.change_billing(&team, &Actor::new("test").unwrap(), before, flowcredits_store::BillingChange::ChangePlan { plan: PlanId::Team }).unwrap();
        }
        let run = RunId::new(format!("run_old_{days_ago}")).unwrap();
        store.start_run(&team, StartRun { run: run.clone(), context: RunContext::automated(Trigger::Api).unwrap(), needs_credits: true, at }).unwrap();
        let usage = BlockUsage::of_kind(BlockKind::Evaluate);
        store.charge(&team, vec![UsageEvent { execution: ExecutionId::new(format!("{run}/evaluate")).unwrap(), run: run.clone(), usage, at }]).unwrap();
        store.end_run(&team, &run, at).unwrap();
    }
    store.close_periods(flowcredits_core::Timestamp::now()).unwrap();
    Ledger::new(std::sync::Arc::new(store))
}
