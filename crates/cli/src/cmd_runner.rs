//! `flowcredits runner`: a private runner. It claims its team's jobs from the server, runs each
//! here with the real engine (metered through the server as it goes), and reports how each
//! ended. One job at a time; start more runners for more at once.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use flowcredits_server::client::{Job, JobResult, RunnerClient};
use serde_json::json;
use tokio::sync::watch;

/// Runs the team's `runs_on: private` deployments on this machine (Enterprise).
///
/// Register the runner first (owner or admin): `POST /v1/teams/TEAM/runners {"name": "…"}`
/// answers with its token, shown once. The runner claims jobs oldest first, runs each here with
/// the flow engine, is charged by the server as each block runs (private-runner prices), and
/// reports the result to whoever called the deployment. SIGINT or SIGTERM stop it after the
/// job in hand.
#[derive(clap::Args)]
pub struct RunnerArgs {
    /// The flowcredits server (e.g. http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The team whose jobs this runner takes.
    #[arg(long, value_name = "TEAM")]
    pub team: String,
    /// The runner's token (fcr_…), as shown when it was registered.
    #[arg(long, value_name = "TOKEN", env = "FLOWCREDITS_RUNNER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Wait for one job (up to --wait-s), run it, and exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds each claim waits for a job (the server allows at most 25).
    #[arg(long, value_name = "SECONDS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=25))]
    pub wait_s: u64,
    /// Log one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Longest pause between claims after the server could not be reached.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(30);

pub fn run(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.token.starts_with(flowcredits_server::runners::RUNNER_TOKEN_PREFIX), "--token is not a runner token (they start with fcr_; an API key starts with fck_); register a runner with POST /v1/teams/{}/runners", args.team);
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")?.block_on(serve(args))
}

async fn serve(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    let client = RunnerClient::connect(&args.server, &args.team, &args.token).await?;
    let log = Log { json: args.json };
    log.started(&client, &args);
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        flowcredits_server::serve::stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut retry_wait = Duration::from_secs(1);
    loop {
        let claimed = tokio::select! {
            claimed = client.claim(args.wait_s) => claimed,
            _ = stop.changed() => break,
        };
        match claimed {
            Ok(Some(job)) => {
                retry_wait = Duration::from_secs(1);
                log.claimed(&job);
                // A stop signal waits for the job in hand.
                match client.run(&job).await {
                    Ok(result) => log.finished(&result),
                    Err(err) => log.lost(&job, &err.to_string()),
                }
                if args.once {
                    break;
                }
            }
            Ok(None) if args.once => {
                log.idle(args.wait_s);
                break;
            }
            Ok(None) => {}
            Err(refusal) if args.once || refusal.is_final() => return Err(refusal.into()),
            Err(refusal) => {
                log.retrying(&refusal.to_string(), retry_wait);
                tokio::select! {
                    _ = tokio::time::sleep(retry_wait) => {}
                    _ = stop.changed() => break,
                }
                retry_wait = (retry_wait * 2).min(RETRY_WAIT_MAX);
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    log.stopped();
    Ok(ExitCode::SUCCESS)
}

/// Progress on stdout: sentences, or one JSON object per line with `--json`.
struct Log {
    json: bool,
}

impl Log {
    fn line(&self, text: String, event: serde_json::Value) {
        if self.json {
            println!("{event}");
        } else {
            println!("{text}");
        }
    }

    fn started(&self, client: &RunnerClient, args: &RunnerArgs) {
        self.line(
            format!("runner {} ({}) of team {} is taking jobs from {}", client.runner_name, client.runner_id, args.team, args.server),
            json!({"event": "started", "runner": client.runner_id, "name": client.runner_name, "team": args.team, "lease_s": client.lease.as_secs()}),
        );
    }

    fn claimed(&self, job: &Job) {
        self.line(format!("claimed run {} of flow `{}` (attempt {})", job.run_id, job.flow, job.attempt), json!({"event": "claimed", "run_id": job.run_id, "flow": job.flow, "attempt": job.attempt}));
    }

    fn finished(&self, result: &JobResult) {
        let error = result.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default();
        self.line(
            format!("run {} {} ({} credits){error}", result.run_id, result.state.as_str(), result.credits),
            json!({"event": "finished", "run_id": result.run_id, "state": result.state, "credits": result.credits, "error": result.error}),
        );
    }

    fn lost(&self, job: &Job, error: &str) {
        self.line(format!("run {} was not reported: {error}", job.run_id), json!({"event": "lost", "run_id": job.run_id, "error": error}));
    }

    fn idle(&self, wait_s: u64) {
        self.line(format!("no job came within {wait_s} s"), json!({"event": "idle", "wait_s": wait_s}));
    }

    fn retrying(&self, error: &str, wait: Duration) {
        self.line(format!("{error}; trying again in {} s", wait.as_secs()), json!({"event": "retrying", "error": error, "wait_s": wait.as_secs()}));
    }

    fn stopped(&self) {
        self.line("runner stopped".to_owned(), json!({"event": "stopped"}));
    }
}
