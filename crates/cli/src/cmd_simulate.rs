use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowcredits_sim::{MemoryBackend, parse_scenario, replay};

use crate::rules::RulesArgs;

/// Largest scenario file read, in bytes.
const SCENARIO_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Exit status for a scenario that cannot be replayed as written.
const EXIT_MALFORMED: u8 = 2;

/// Replays a scenario through the real ledger and prints one JSON report.
#[derive(clap::Args)]
#[command(after_long_help = SCENARIO_FORMAT)]
pub struct SimulateArgs {
    /// Scenario file (JSON); `-` reads standard input. `--help` describes the format.
    pub scenario: PathBuf,
    /// Replay on the durable ledger in this database instead of in memory.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// With --db: the team to replay as (created with the scenario's settings if new;
    /// default `simulation`).
    #[arg(long, requires = "db")]
    pub team: Option<String>,
    #[command(flatten)]
    pub rules: RulesArgs,
}

const SCENARIO_FORMAT: &str = r#"SCENARIO FORMAT
  {
    "team": {"plan": "team", "payg": false, "anchor_day": 1},
    "steps": [
      {"at": "2026-03-02T10:00:00Z", "op": "start_run", "run": "r1", "trigger": "manual",
       "cloud_run": false, "blocks": [{"type": "http_request"}, {"type": "ai_agent", "model": "gpt-5"}]},
      {"at": "2026-03-02T10:00:01Z", "op": "block", "run": "r1", "type": "ai_agent", "model": "gpt-5",
       "external_mcp_tools": ["search", "fetch"], "internal_mcp_tools": ["kb"]},
      {"at": "2026-03-02T10:00:02Z", "op": "end_run", "run": "r1"}
    ]
  }

  team: plan (free|solo|team|enterprise, required), payg (bool, default false),
        anchor_day (1-28, default 1), payg_cap_usd (decimal string, optional).
  Steps, in time order ("at" is RFC 3339 UTC):
    start_run     run, trigger (manual|api|mcp), cloud_run (bool), blocks (the flow's blocks:
                  type and, for ai_agent/ai_media, model) - decides whether the run needs credits
    block         run, type, model (ai_agent/ai_media), external_mcp_tools, internal_mcp_tools
    end_run       run
    cancel_run    run
    set_payg      enabled
    set_payg_cap  cap_usd (decimal string, or null for no cap)
    purchase      credits, expires_at (optional; default: end of the billing period)
    change_plan   plan

OUTPUT
  {"runs": {"r1": {"status": "completed", "credits": 14}},
   "periods": [{"start", "end", "included", "used", "included_used", "purchased_used",
                "payg_credits", "unbilled_credits", "payg_amount_usd": "0.000"}],
   "rejected": [{"step": 4, "reason": "plan team cannot buy credits"}]}
  A refused step (a block for a run that is not running, buying credits without the plan for
  it, ...) is listed under "rejected" and changes nothing.

EXIT STATUS
  0 the scenario was replayed; 2 the scenario is malformed (the message names the step index
  and the field); 1 any other failure (e.g. the file cannot be read)."#;

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let rules = args.rules.load()?;
    let text = read_scenario(&args.scenario)?;
    let scenario = match parse_scenario(&text, &rules) {
        Ok(scenario) => scenario,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_MALFORMED));
        }
    };
    let report = match &args.db {
        None => replay(&scenario, &mut MemoryBackend::new(rules, scenario.team.clone())),
        Some(db) => crate::sim_store::replay_on_store(db, args.team.as_deref(), rules, &scenario)?,
    };
    println!("{}", serde_json::to_string_pretty(&report.to_json()).expect("a JSON value always serializes"));
    Ok(ExitCode::SUCCESS)
}

fn read_scenario(path: &PathBuf) -> anyhow::Result<String> {
    let mut text = String::new();
    let source: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("cannot open scenario {}", path.display()))?)
    };
    source.take(SCENARIO_BYTES_MAX + 1).read_to_string(&mut text).with_context(|| format!("cannot read scenario {} as UTF-8 text", path.display()))?;
    anyhow::ensure!(text.len() as u64 <= SCENARIO_BYTES_MAX, "scenario {} is larger than {SCENARIO_BYTES_MAX} bytes", path.display());
    Ok(text)
}
