use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchLedgerArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchLedgerArgs) -> anyhow::Result<ExitCode> {
    let _ = args.json;
    anyhow::bail!("bench ledger is not built yet")
}
