use std::path::PathBuf;
use std::process::ExitCode;

use crate::rules::RulesArgs;

/// Replays a scenario through the real ledger and prints one JSON report.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Scenario file (JSON); `-` reads standard input.
    pub scenario: PathBuf,
}

pub fn run(rules: &RulesArgs, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let _ = (rules.load()?, args.scenario);
    anyhow::bail!("simulate is being built")
}
