//! `flowcredits estimate FLOW`: whether a run needs credits and what it will cost.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowcredits_core::{CloudRun, RunContext, Timestamp, Trigger};

use crate::cmd_run::load_flow;
use crate::rules::RulesArgs;

/// Prices a run of a flow before it runs: whether it needs credits, and its cost (exact where
/// the graph fixes it, otherwise a minimum and the cost of each loop iteration).
#[derive(clap::Args)]
pub struct EstimateArgs {
    /// The flow file (YAML or JSON).
    pub flow: PathBuf,
    /// How the run is started: manual, api or mcp (schedules and webhooks count as api).
    #[arg(long, default_value = "manual", value_name = "TRIGGER", value_parser = ["manual", "api", "mcp"])]
    pub trigger: String,
    /// A manual run with Cloud Run on (api and mcp runs are always in the cloud).
    #[arg(long)]
    pub cloud_run: bool,
    /// Where flows run by `flow` blocks are found (default: the flow file's directory).
    #[arg(long, value_name = "DIR")]
    pub flows: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rules: RulesArgs,
}

pub fn run(args: EstimateArgs) -> anyhow::Result<ExitCode> {
    let rules = args.rules.load()?;
    let trigger: Trigger = args.trigger.parse().context("--trigger")?;
    if args.cloud_run && trigger != Trigger::Manual {
        return Err(crate::BadArgument(format!("--cloud-run applies to manual runs only; {trigger} runs always execute in the cloud, so drop --cloud-run")).into());
    }
    let context = RunContext::for_trigger(trigger, CloudRun::from(args.cloud_run));
    let (flow, resolver) = load_flow(&args.flow, args.flows.as_deref())?;
    let estimate = flowcredits_engine::estimate(&rules, Timestamp::now(), context, &flow, &*resolver).map_err(|err| match err {
        // Problems of the file (models the price book lacks), said as load problems are.
        invalid @ flowcredits_engine::EngineError::Invalid { .. } => anyhow::Error::new(invalid).context(format!("in {}; fix these and try again", args.flow.display())),
        other => anyhow::Error::new(other),
    })?;
    if args.json {
        println!("{}", estimate.to_json(&flow, context));
        return Ok(ExitCode::SUCCESS);
    }
    println!("flow `{}`, {} run ({}):", flow.name, trigger, context.location().as_str());
    println!("  needs credits: {}", if estimate.needs_credits { "yes" } else { "no" });
    match (estimate.exact, estimate.maximum) {
        (Some(credits), _) => println!("  cost: exactly {}", credits.with_unit()),
        (None, Some(maximum)) => println!("  cost: {} to {}, depending on the branches taken", estimate.minimum.0, maximum.with_unit()),
        (None, None) => println!("  cost: at least {}", estimate.minimum.with_unit()),
    }
    for line in &estimate.per_iteration {
        println!("  plus up to {} per iteration of loop `{}`", line.credits.with_unit(), line.at);
    }
    for note in &estimate.notes {
        println!("  note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}
