//! `flowcredits`: the command line. Only argument parsing and glue live here; the work is done
//! by the library crates.

/// mimalloc rather than the system allocator: the server allocates many small, short-lived
/// values per request on several threads, where glibc's allocator spent a fifth of the request
/// path's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_engine;
mod bench_ledger;
mod bench_server;
mod cmd_bench;
mod cmd_estimate;
mod cmd_run;
mod cmd_runner;
mod cmd_serve;
mod cmd_simulate;
mod cmd_store;
mod meter_store;
mod rules;
mod sim_store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs workflows and meters, limits and bills the credits they consume.
#[derive(Parser)]
#[command(name = "flowcredits", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Simulate(cmd_simulate::SimulateArgs),
    Run(cmd_run::RunArgs),
    Estimate(cmd_estimate::EstimateArgs),
    Serve(cmd_serve::ServeArgs),
    Runner(cmd_runner::RunnerArgs),
    /// Benchmarks (see BENCHMARKS.md).
    Bench(cmd_bench::BenchArgs),
    #[command(flatten)]
    Store(cmd_store::StoreCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Runner(_) | Command::Bench(_)) {
        stop_quietly_on_closed_output();
    }
    // Scripts that asked for JSON get their error as JSON on stdout too (text stays on stderr).
    let json_errors = match &cli.command {
        Command::Run(args) => args.json,
        Command::Estimate(args) => args.json,
        Command::Store(command) => command.json(),
        _ => false,
    };
    let result = match cli.command {
        Command::Simulate(args) => cmd_simulate::run(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Estimate(args) => cmd_estimate::run(args),
        Command::Serve(args) => cmd_serve::run(args),
        Command::Runner(args) => cmd_runner::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Store(command) => cmd_store::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            // A bad argument value is a usage error wherever it is found, as clap's own are.
            let usage_error = err.downcast_ref::<BadArgument>().is_some();
            if json_errors {
                println!("{}", serde_json::json!({"error": error_chain(&err), "exit_code": if usage_error { 2 } else { 1 }}));
            }
            if usage_error { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// Lets a command whose reader went away (`flowcredits usage … | head`) end quietly, as Unix
/// tools do, instead of panicking in `println!`: Rust ignores SIGPIPE, so a write to a closed
/// pipe fails, and `println!` panics on a failed write. Not for the long-running commands
/// (`serve`, `runner`, `bench`), which must outlive a closed terminal or client.
fn stop_quietly_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An argument value refused after parsing (clap cannot check it): the command exits 2, as for
/// any usage error. Attach it as context: `.context(BadArgument("--input is not JSON".into()))`.
#[derive(Debug)]
pub struct BadArgument(pub String);

impl std::fmt::Display for BadArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgument {}

/// The error and its causes on one line, each said once: several error types already include
/// their cause in their own message.
fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
