//! Starting and stopping the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowcredits_core::{AnchorDay, PlanId, Rules};
use flowcredits_engine::Engine;
use flowcredits_engine::http::{Destinations, HttpClient};
use flowcredits_store::{LedgerStore, SqliteStore};
use serde_json::json;
use tokio::sync::watch;

use crate::auth::{self, Role};
use crate::catalog::{self, Catalog};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runner::Runner;
use crate::{ApiError, AppState};

pub struct ServeConfig {
    /// The SQLite file holding the ledger; the catalog is beside it ([`catalog_path`]).
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub rules: Rules,
    /// Create a demo team with flows, a deployment and some usage.
    pub demo: bool,
    /// How long shutdown waits for running flows to finish.
    pub drain: Duration,
    /// How long finished runs stay in run history (`None`: forever).
    pub history_retention: Option<Duration>,
    /// Let flows' requests and alert webhooks reach private and loopback addresses (a server
    /// on a trusted network; by default they reach public hosts only).
    pub allow_private_hosts: bool,
    /// How the messages for the person starting the server are written.
    pub notices: Notices,
}

/// How `serve` writes what the person starting it must read (the one-time keys, where it
/// listens, that it is stopping). Always written, whatever the log filter: a key shown once
/// must not be filtered away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notices {
    /// Plain sentences on stderr, beside a text log.
    Text,
    /// JSON lines on stderr shaped as the JSON log's events (`timestamp`, `level`, `fields`
    /// with `message` and any `api_key`, `target`), so that every line parses.
    Json,
}

impl Notices {
    /// Writes `message`, and `key` (an API key shown once) under it.
    pub fn say(self, message: &str, key: Option<&str>) {
        match self {
            Notices::Text => match key {
                Some(key) => eprintln!("{message}:\n  {key}"),
                None => eprintln!("{message}"),
            },
            Notices::Json => {
                let mut fields = json!({"message": message});
                if let Some(key) = key {
                    fields["api_key"] = json!(key);
                }
                eprintln!("{}", json!({"timestamp": jiff::Timestamp::now().to_string(), "level": "INFO", "fields": fields, "target": module_path!()}));
            }
        }
    }
}

/// Where the catalog (users, keys, flows, deployments, run history) lives for the ledger at
/// `db`: a file of its own beside it (`flowcredits.db` → `flowcredits.catalog.db`). Two files
/// because SQLite lets one writer at a time into a file: run history, written at the rate runs
/// finish, would otherwise queue behind the ledger's fsynced commits and they behind it.
pub fn catalog_path(db: &std::path::Path) -> PathBuf {
    let stem = db.file_stem().map_or_else(|| "flowcredits".into(), |stem| stem.to_string_lossy().into_owned());
    let name = match db.extension() {
        Some(extension) => format!("{stem}.catalog.{}", extension.to_string_lossy()),
        None => format!("{stem}.catalog"),
    };
    db.with_file_name(name)
}

/// Opens the databases and builds the state every handler shares. Flows' requests and alert
/// webhooks reach public hosts only ([`open_state_with`] chooses).
pub fn open_state(db: &std::path::Path, rules: Rules) -> Result<AppState, ApiError> {
    open_state_with(db, rules, Destinations::PublicOnly)
}

/// [`open_state`], with flows' requests and alert webhooks kept to `destinations`.
pub fn open_state_with(db: &std::path::Path, rules: Rules, destinations: Destinations) -> Result<AppState, ApiError> {
    let store = SqliteStore::open(db, rules.clone()).map_err(|err| ApiError::internal(format!("cannot open the ledger at {}: {err}", db.display())))?;
    let catalog_file = catalog_path(db);
    let catalog = Catalog::open(&catalog_file)?;
    let history = crate::history_log::HistoryLog::open(&catalog_file)?;
    // The engine's client: it installs the TLS provider and carries the project's timeouts.
    let http = HttpClient::new(destinations);
    Ok(AppState::new(crate::AppParts {
        rules: Arc::new(rules),
        catalog,
        history,
        ledger: Ledger::new(Arc::new(store) as Arc<dyn LedgerStore>),
        // History shows each block's inputs, outputs and timing.
        runner: Runner::new(Engine::default().with_block_traces().with_destinations(destinations)),
        metrics: Arc::new(Metrics::default()),
        http,
        sync_wait: crate::routes_runs::SYNC_WAIT_DEFAULT,
        run_duration_max: crate::runner::RUN_DURATION_MAX,
        history_retention: None,
        keys: Arc::new(crate::cache::TtlCache::new(Duration::from_secs(10), 10_000)),
        roles: Arc::new(crate::cache::TtlCache::new(Duration::from_secs(1), 100_000)),
        hooks: Arc::new(crate::cache::TtlCache::new(Duration::from_secs(1), 10_000)),
        // Longer than any check takes, so a lost task cannot block checks for long.
        alert_checks_pending: Arc::new(crate::cache::TtlCache::new(Duration::from_secs(5), 100_000)),
        alerts_fired: Arc::new(crate::cache::TtlCache::new(Duration::from_secs(24 * 3600), 100_000)),
        jobs: crate::jobs::JobHub::default(),
    }))
}

/// On first start (no users), creates an operator and returns its key, shown once.
pub async fn bootstrap_operator(state: &AppState) -> Result<Option<String>, ApiError> {
    state
        .catalog
        .call(|connection| {
            if catalog::user_count(connection)? > 0 {
                return Ok(None);
            }
            let user = catalog::create_user(connection, "operator", true)?;
            let (token, digest) = auth::new_key();
            catalog::create_key(connection, &user.id, "bootstrap", &digest)?;
            Ok(Some(token))
        })
        .await
}

/// The demo team: an owner, a flow with a snapshot deployed at `/hooks/demo/hello`, and a few
/// runs of it so the dashboard has usage to show. Returns the owner's key.
pub async fn create_demo(state: &AppState) -> Result<String, ApiError> {
    if state.ledger.team("demo").await.is_ok() {
        return Err(ApiError::Conflict("the demo team exists already (delete the database file to start over)".into()));
    }
    let definition = json!({
        "name": "hello",
        "description": "Greets the caller by name and checks the greeting before answering",
        "blocks": [
            {"id": "request", "kind": "request"},
            {"id": "greet", "kind": "evaluate", "config": {"code": "return { greeting: 'Hello, ' + ((input && input.name) || 'world') + '!' };"}},
            {"id": "check", "kind": "validate", "config": {"schema": {"type": "object", "required": ["greeting"]}}},
            {"id": "reply", "kind": "response"}
        ],
        "edges": [
            {"from": "request.body", "to": "greet.input"},
            {"from": "greet.result", "to": "check.value"},
            {"from": "check.pass", "to": "reply.body"}
        ]
    });
    let (token, digest) = auth::new_key();
    let owner = state
        .catalog
        .call(move |connection| {
            let user = catalog::create_user(connection, "demo owner", false)?;
            catalog::create_key(connection, &user.id, "demo", &digest)?;
            Ok(user)
        })
        .await?;
    state.ledger.create_team("demo", PlanId::Team, AnchorDay::FIRST, &owner.id).await?;
    let owner_id = owner.id.clone();
    let stored = definition.clone();
    let deployment = state
        .catalog
        .call(move |connection| {
            catalog::set_member(connection, "demo", &owner_id, Role::Owner)?;
            let flow = catalog::create_flow(connection, "demo", "hello", &stored)?;
            let snapshot = catalog::create_snapshot(connection, "demo", &flow.id, None)?;
            let deployment = catalog::Deployment {
                id: catalog::new_id("dep"),
                team: "demo".into(),
                path: "hello".into(),
                flow_id: flow.id,
                snapshot: snapshot.number,
                trigger: "api".into(),
                schedule_every_s: None,
                schedule_cron: None,
                runs_on: catalog::RunsOn::Cloud,
                created_at: String::new(),
            };
            catalog::create_deployment(connection, &deployment, catalog::now_ms())?;
            Ok(deployment)
        })
        .await?;
    for name in ["Ada", "Grace", "Edsger"] {
        let request = crate::runner::StartRequest {
            team: "demo".into(),
            flow_id: deployment.flow_id.clone(),
            snapshot: Some(deployment.snapshot),
            deployment_id: Some(deployment.id.clone()),
            flow: Arc::new(crate::runner::load_flow(&definition)?),
            input: json!({"name": name}),
            context: flowcredits_core::RunContext::automated(flowcredits_core::Trigger::Api).expect("api is automated"),
            http: None,
            answer_on_response: true,
        };
        state.runner.start(state, request).await?;
    }
    // The answers come from the flow's response block; the usage is complete once runs end.
    state.runner.drain(Duration::from_secs(30)).await;
    state.history.flush().await;
    Ok(token)
}

/// Serves until SIGINT or SIGTERM, then stops taking requests and waits for running flows.
pub async fn serve(config: ServeConfig) -> Result<(), ApiError> {
    // The address first: a server that cannot listen must fail before it makes accounts and
    // prints their one-time keys.
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|err| ApiError::internal(format!("cannot listen on {}: {err} (is another server running there? choose another with --listen)", config.listen)))?;
    let destinations = if config.allow_private_hosts { Destinations::Any } else { Destinations::PublicOnly };
    let mut state = open_state_with(&config.db, config.rules, destinations)?;
    state.history_retention = config.history_retention;
    if let Some(token) = bootstrap_operator(&state).await? {
        config.notices.say("Created the operator account. Its API key is shown once; store it now", Some(&token));
    }
    let interrupted = state.runner.recover_interrupted(&state).await?;
    if interrupted > 0 {
        tracing::warn!(runs = interrupted, "runs interrupted by the last stop were ended and recorded as failed");
    }
    if config.demo {
        match create_demo(&state).await {
            Ok(token) => config.notices.say("Created the demo team `demo` (plan team). Its owner's API key", Some(&token)),
            Err(ApiError::Conflict(message)) => config.notices.say(&message, None),
            Err(err) => return Err(err),
        }
    }
    let address = listener.local_addr().map_err(ApiError::internal)?;
    if config.demo {
        config.notices.say(&format!("Demo dashboard: http://{address}/dashboard?team=demo"), None);
    }
    tracing::info!(address = %address, db = %config.db.display(), "flowcredits is serving");
    config.notices.say(&format!("Listening on http://{address} (API under /v1, OpenAPI at /openapi.json, dashboard at /dashboard)"), None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(crate::scheduler::run(state.clone(), stop_rx));
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signals = Arc::new(tokio::sync::Mutex::new(StopSignals::new().map_err(|err| ApiError::internal(format!("cannot listen for stop signals: {err}")))?));
    let first = Arc::clone(&signals);
    let app = crate::app(state.clone());
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                first.lock().await.recv().await;
                tracing::info!("shutting down: no new requests; running flows may finish");
                let _ = signalled_tx.send(());
            })
            .await
    });
    tokio::select! {
        // The stop signal first: on a stop, the server's task ends right after it sends this,
        // and taking its end for a failure would skip the drain (running flows cut off, run
        // history unwritten).
        biased;
        _ = signalled_rx => {}
        ended = &mut server => {
            // The server stopped by itself: a failure to accept connections.
            let _ = stop_tx.send(true);
            return ended.map_err(ApiError::internal)?.map_err(ApiError::internal);
        }
    }
    // No scheduled run starts once the stop is asked for.
    let _ = stop_tx.send(true);
    let running = state.runner.in_flight();
    config.notices.say(&format!("Stopping: waiting up to {} s for open requests and {running} running flow(s) to finish (a second Ctrl-C or SIGTERM stops at once)…", config.drain.as_secs()), None);
    // One bound for both: open HTTP requests (a slow client's unfinished body too) and running
    // flows get the drain time together, not one after the other.
    let finished = tokio::select! {
        finished = async {
            let _ = (&mut server).await;
            state.runner.drain(config.drain).await
        } => finished,
        () = tokio::time::sleep(config.drain) => false,
        () = async { signals.lock().await.recv().await } => {
            config.notices.say("Second stop signal: stopping now", None);
            false
        }
    };
    server.abort();
    let _ = scheduler.await;
    // Run history is written behind the runs: what they queued is written before exiting.
    state.history.flush().await;
    if !finished {
        let left = state.runner.in_flight();
        tracing::warn!(runs = left, "shutdown stopped waiting for open requests and running flows");
        return Err(ApiError::internal(format!(
            "stopped before open requests and running flows finished ({left} flow(s) still running); runs cut off are recorded as failed at the next start, keeping what they were charged"
        )));
    }
    Ok(())
}

/// Returns when the process gets SIGINT (Ctrl-C) or SIGTERM: the server and `flowcredits
/// runner` stop on either.
pub async fn stop_signal() {
    match StopSignals::new() {
        Ok(mut signals) => signals.recv().await,
        Err(_) => std::future::pending::<()>().await,
    }
}

/// SIGINT and SIGTERM as one stream that counts each signal once: `serve` waits on the same
/// listeners for the first stop and for a second one, so the first can never be seen again as
/// the second.
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn new() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
