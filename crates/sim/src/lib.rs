//! Scenario replay: the `simulate` command's input format, its driver and its report.
//!
//! A scenario is parsed and checked completely before anything is replayed, so a malformed one
//! changes nothing and is reported with the step index and field. Replay sends each step to a
//! [`SimBackend`] (the in-memory [`MemoryBackend`], or a durable store), which either applies it
//! or refuses it; refusals are listed in the report and change nothing.

mod parse;
mod report;

pub use parse::{Action, Scenario, ScenarioError, Step, parse_scenario};
pub use report::{Report, RunOutcome};

use flowcredits_core::{Command, CoreError, ExecutionId, PeriodUsage, RunId, Rules, TeamLedger, TeamSettings, Timestamp};

/// Where a scenario is replayed: something that owns one team's ledger.
pub trait SimBackend {
    /// Moves the team's clock to `at` and applies `command`; a refusal changes nothing the
    /// command would have changed.
    fn apply(&mut self, at: Timestamp, command: Command) -> Result<(), CoreError>;
    /// Status and credits charged so far of a run this backend admitted.
    fn run_outcome(&self, run: &RunId) -> Option<RunOutcome>;
    /// Every billing period the team has seen, oldest first.
    fn periods(&self) -> Vec<PeriodUsage>;
}

/// A backend that keeps the ledger in memory.
pub struct MemoryBackend {
    rules: Rules,
    ledger: TeamLedger,
}

impl MemoryBackend {
    pub fn new(rules: Rules, settings: TeamSettings) -> MemoryBackend {
        MemoryBackend { rules, ledger: TeamLedger::new(settings) }
    }

    pub fn ledger(&self) -> &TeamLedger {
        &self.ledger
    }
}

impl SimBackend for MemoryBackend {
    fn apply(&mut self, at: Timestamp, command: Command) -> Result<(), CoreError> {
        self.ledger.advance_to(&self.rules, at)?;
        self.ledger.apply(&self.rules, at, command).map(drop)
    }

    fn run_outcome(&self, run: &RunId) -> Option<RunOutcome> {
        self.ledger.run(run).map(|record| RunOutcome { status: record.status, credits: record.credits })
    }

    fn periods(&self) -> Vec<PeriodUsage> {
        self.ledger.periods().cloned().collect()
    }
}

/// Replays a parsed scenario on `backend` and reports the outcome.
pub fn replay(scenario: &Scenario, backend: &mut impl SimBackend) -> Report {
    let mut rejected = Vec::new();
    let mut runs: Vec<RunId> = Vec::new();
    for (index, step) in scenario.steps.iter().enumerate() {
        let command = step_command(index, &step.action);
        if let Action::StartRun { run, .. } = &step.action {
            runs.push(run.clone());
        }
        if let Err(refusal) = backend.apply(step.at, command) {
            rejected.push((index, refusal.to_string()));
        }
    }
    // A start the backend refused (listed in `rejected`) left no run to report.
    let runs = runs.into_iter().filter_map(|run| backend.run_outcome(&run).map(|outcome| (run, outcome))).collect();
    Report { runs, periods: backend.periods(), rejected }
}

fn step_command(index: usize, action: &Action) -> Command {
    match action {
        Action::StartRun { run, context, needs_credits, .. } => Command::StartRun { run: run.clone(), context: *context, needs_credits: *needs_credits },
        Action::Block { run, usage } => Command::ChargeBlock { run: run.clone(), execution: execution_id(run, index), usage: usage.clone() },
        Action::EndRun { run } => Command::EndRun { run: run.clone() },
        Action::CancelRun { run } => Command::CancelRun { run: run.clone() },
        Action::SetPayg { enabled } => Command::SetPayg { enabled: *enabled },
        Action::SetPaygCap { cap } => Command::SetPaygCap { cap: *cap },
        Action::Purchase { credits, expires_at } => Command::Purchase { credits: *credits, expires_at: *expires_at },
        Action::ChangePlan { plan } => Command::ChangePlan { plan: *plan },
    }
}

/// A block step's execution id: unique within the scenario, and the same on every replay so a
/// durable backend sees a replay as the retry it is.
pub fn execution_id(run: &RunId, step_index: usize) -> ExecutionId {
    ExecutionId::new(format!("{run}/step-{step_index}")).expect("a run id (at most 128 bytes) plus a step number fits the execution id limit")
}
