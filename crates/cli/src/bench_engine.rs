use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchEngineArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchEngineArgs) -> anyhow::Result<ExitCode> {
    let _ = args.json;
    anyhow::bail!("bench engine is not built yet")
}
