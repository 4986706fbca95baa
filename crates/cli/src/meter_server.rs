//! Meters a run executing on this machine against a team's ledger on a flowcredits server:
//! admission before it starts, each block execution charged as it completes (idempotently, by
//! its execution id), and the end of the run. The server decides; this only forwards.

use std::collections::HashMap;
use std::sync::Mutex;

use flowcredits_core::{BlockUsage, Credits, RunContext, RunId};
use flowcredits_engine::{Admission, BlockCharge, EngineError, Meter};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

pub struct ServerMeter {
    client: reqwest::Client,
    /// `https://host:port/v1/teams/TEAM`.
    team_url: String,
    key: String,
    flow: String,
    /// The server's id for each local run id.
    runs: Mutex<HashMap<RunId, String>>,
}

impl ServerMeter {
    pub fn new(server: &str, team: &str, key: &str, flow: &str) -> ServerMeter {
        ServerMeter {
            client: flowcredits_engine::http::client(),
            team_url: format!("{}/v1/teams/{team}", server.trim_end_matches('/')),
            key: key.to_owned(),
            flow: flow.to_owned(),
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// The server's id of a local run (once admitted).
    pub fn server_run_id(&self, run: &RunId) -> Option<String> {
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(run).cloned()
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, EngineError> {
        let url = format!("{}{path}", self.team_url);
        let response = self.client.post(&url).bearer_auth(&self.key).json(&body).send().await.map_err(|err| EngineError::Store(format!("cannot reach the server at {url}: {err}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = answer["error"]["message"].as_str().unwrap_or("no error message").to_owned();
            return Err(EngineError::Store(format!("the server refused ({status}): {message}")));
        }
        Ok(answer)
    }

    fn server_run(&self, run: &RunId) -> Result<String, EngineError> {
        self.server_run_id(run).ok_or_else(|| EngineError::Store(format!("run {run} was not admitted by the server")))
    }

    async fn admit_inner(&self, run: &RunId, context: RunContext, planned: &[BlockUsage]) -> Result<Admission, EngineError> {
        let blocks: Vec<Value> = planned.iter().map(|usage| json!({"type": usage.kind.as_str(), "model": usage.model})).collect();
        let cloud_run = context.location() != flowcredits_core::Location::Local;
        let answer = self.post("/local-runs", json!({"flow": self.flow, "blocks": blocks, "cloud_run": cloud_run})).await?;
        let server_run = answer["run_id"].as_str().ok_or_else(|| EngineError::Store("the server's admission has no run_id".into()))?;
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(run.clone(), server_run.to_owned());
        Ok(if answer["status"] == "running" { Admission::Running } else { Admission::Paused })
    }

    async fn charge_inner(&self, run: &RunId, charges: &[BlockCharge]) -> Result<Vec<Credits>, EngineError> {
        let server_run = self.server_run(run)?;
        let charges: Vec<Value> = charges
            .iter()
            .map(|charge| {
                let usage = &charge.usage;
                json!({
                    "execution_id": charge.execution.as_str(),
                    "type": usage.kind.as_str(),
                    "model": usage.model,
                    "external_mcp_tools": usage.external_mcp_tools,
                    "internal_mcp_tools": usage.internal_mcp_tools,
                })
            })
            .collect();
        let answer = self.post(&format!("/local-runs/{server_run}/charges"), json!({"charges": charges})).await?;
        let credits = answer["credits"].as_array().ok_or_else(|| EngineError::Store("the server's charge answer has no credits".into()))?;
        Ok(credits.iter().map(|credits| Credits(credits.as_u64().unwrap_or(0))).collect())
    }
}

impl Meter for ServerMeter {
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>> {
        Box::pin(self.admit_inner(run, context, planned))
    }

    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>> {
        Box::pin(self.charge_inner(run, charges))
    }

    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let server_run = self.server_run(run)?;
            self.post(&format!("/local-runs/{server_run}/end"), Value::Null).await.map(drop)
        })
    }
}
