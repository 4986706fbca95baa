//! `flowcredits bench …`: benchmarks that print medians beside a baseline measured in the same
//! run. Each target lives in its own module.

use std::process::ExitCode;

use crate::{bench_engine, bench_ledger, bench_server};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(clap::Subcommand)]
enum BenchTarget {
    /// Ledger ingestion, admission latency and usage queries on a fresh temporary database.
    Ledger(bench_ledger::BenchLedgerArgs),
    /// Engine overhead: free-block executions per second, metered.
    Engine(bench_engine::BenchEngineArgs),
    /// Hook calls per second and latency on loopback, beside a `/healthz` baseline.
    Server(bench_server::BenchServerArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.target {
        BenchTarget::Ledger(args) => bench_ledger::run(args),
        BenchTarget::Engine(args) => bench_engine::run(args),
        BenchTarget::Server(args) => bench_server::run(args),
    }
}
