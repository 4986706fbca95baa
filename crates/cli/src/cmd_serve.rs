use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use flowcredits_server::serve::{Notices, ServeConfig, serve};

use crate::BadArgument;
use crate::rules::RulesArgs;

/// Serves the HTTP API, deployed-flow hooks, the MCP endpoint and the usage dashboard.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// SQLite file for the ledger and the catalog (created on first use).
    #[arg(long, default_value = "flowcredits.db", env = "FLOWCREDITS_DB")]
    db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FLOWCREDITS_LISTEN")]
    listen: SocketAddr,
    /// Create a demo team (`demo`, plan team) with a deployed flow, and print its owner's key.
    #[arg(long)]
    demo: bool,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for open requests and running flows together; a
    /// second signal stops at once.
    #[arg(long, default_value_t = 300)]
    drain_timeout_s: u64,
    /// Days finished runs stay in run history (0: forever). Running and paused runs stay; the
    /// ledger keeps every charge regardless.
    #[arg(long, default_value_t = 90, env = "FLOWCREDITS_HISTORY_DAYS", value_parser = clap::value_parser!(u32).range(0..=36_500))]
    history_days: u32,
    /// Let flows' HTTP requests and alert webhooks reach loopback, private and link-local
    /// addresses (a server on a trusted network). By default they reach public hosts only, so
    /// that no team's flow can call this server, its neighbours or a cloud metadata service.
    #[arg(long, env = "FLOWCREDITS_ALLOW_PRIVATE_HOSTS")]
    allow_private_hosts: bool,
    /// Log as JSON lines instead of text: then every line on stderr is JSON (the one-time keys
    /// and where it listens too, a failure to start, a panic). Which lines: the FLOWCREDITS_LOG
    /// environment variable, as a tracing filter (default `info`; e.g. `debug`,
    /// `flowcredits_server=debug` for every run's admission and end).
    #[arg(long)]
    log_json: bool,
    #[command(flatten)]
    rules: RulesArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let filter = match std::env::var("FLOWCREDITS_LOG") {
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).map_err(|err| BadArgument(format!("FLOWCREDITS_LOG: `{text}` is not a log filter ({err}); give a level such as info or debug"))),
        Err(_) => Ok(tracing_subscriber::EnvFilter::new("info")),
    };
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A bad filter is still reported through the log, so that with --log-json it is JSON too.
    let (filter, bad_filter) = match filter {
        Ok(filter) => (filter, None),
        Err(bad) => (tracing_subscriber::EnvFilter::new("info"), Some(bad)),
    };
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if !args.log_json {
        subscriber.init();
        return match bad_filter {
            Some(bad) => Err(bad.into()),
            None => serve_with(args, Notices::Text),
        };
    }
    subscriber.json().init();
    // A panic's message goes to the log as one JSON event instead of plain text.
    std::panic::set_hook(Box::new(|panic| tracing::error!(panic = %panic, "a thread panicked")));
    let result = match bad_filter {
        Some(bad) => Err(bad.into()),
        None => serve_with(args, Notices::Json),
    };
    // The error is logged here as JSON, not printed as text by `main`.
    result.or_else(|err| {
        let usage_error = err.downcast_ref::<BadArgument>().is_some();
        tracing::error!(error = %crate::error_chain(&err), "flowcredits serve stopped");
        Ok(if usage_error { ExitCode::from(2) } else { ExitCode::FAILURE })
    })
}

fn serve_with(args: ServeArgs, notices: Notices) -> anyhow::Result<ExitCode> {
    let history_retention = (args.history_days > 0).then(|| Duration::from_secs(u64::from(args.history_days) * 24 * 3600));
    let config = ServeConfig { db: args.db, listen: args.listen, rules: args.rules.load()?, demo: args.demo, drain: Duration::from_secs(args.drain_timeout_s), history_retention, allow_private_hosts: args.allow_private_hosts, notices };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(config)).map_err(|err| anyhow::anyhow!("{}", err.detail()))?;
    Ok(ExitCode::SUCCESS)
}
