//! `simulate --db`: replays a scenario on the durable store instead of in memory.

use std::cell::RefCell;

use flowcredits_core::{Command, CoreError, PeriodUsage, RunId, TeamSettings, Timestamp};
use flowcredits_sim::{RunOutcome, SimBackend};
use flowcredits_store::{Actor, BillingChange, LedgerStore, NewTeam, SqliteStore, StartRun, StoreError, TeamName, UsageEvent};

/// One team of a [`SqliteStore`] as a simulator backend. The store answers with its own error
/// type; a refusal by the ledger is passed on as the simulator expects, and any other failure
/// (a database error, a conflicting retry) stops the replay and is reported by [`Self::finish`].
pub struct StoreBackend {
    store: SqliteStore,
    team: TeamName,
    actor: Actor,
    failure: RefCell<Option<StoreError>>,
}

impl StoreBackend {
    /// Uses the team `team`, creating it with `settings` when it does not exist yet.
    pub fn new(store: SqliteStore, team: TeamName, settings: TeamSettings, at: Timestamp) -> anyhow::Result<StoreBackend> {
        let actor = Actor::new("simulate").expect("a fixed, short actor name");
        // A scenario's steps start from a new team; replayed onto one with history, its runs
        // and purchases would collide with those already recorded.
        if store.team(&team).is_ok() {
            anyhow::bail!("team `{team}` already exists in this ledger and a scenario replays into a new team: pass another --team NAME, or another --db");
        }
        store.create_team(NewTeam { name: team.clone(), settings, actor: actor.clone(), at })?;
        Ok(StoreBackend { store, team, actor, failure: RefCell::new(None) })
    }

    /// The failure that stopped the replay, if one did.
    pub fn finish(self) -> Result<(), StoreError> {
        self.failure.into_inner().map_or(Ok(()), Err)
    }

    fn send(&self, at: Timestamp, command: Command) -> Result<(), StoreError> {
        let (store, team) = (&self.store, &self.team);
        let billing = |change| store.change_billing(team, &self.actor, at, change).map(drop);
        match command {
            Command::StartRun { run, context, needs_credits } => store.start_run(team, StartRun { run, context, needs_credits, at }).map(drop),
            Command::ChargeBlock { run, execution, usage } => store.charge(team, vec![UsageEvent { execution, run, usage, at }]).map(drop),
            Command::EndRun { run } => store.end_run(team, &run, at),
            Command::CancelRun { run } => store.cancel_run(team, &run, at),
            Command::SetPayg { enabled } => billing(BillingChange::SetPayg { enabled }),
            Command::SetPaygCap { cap } => billing(BillingChange::SetPaygCap { cap }),
            Command::SetPaygAlerts { amounts } => billing(BillingChange::SetPaygAlerts { amounts }),
            Command::Purchase { credits, expires_at } => billing(BillingChange::Purchase { credits, expires_at }),
            Command::ChangePlan { plan } => billing(BillingChange::ChangePlan { plan }),
        }
    }

    fn record<T>(&self, result: Result<T, StoreError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.failure.borrow_mut().get_or_insert(err);
                None
            }
        }
    }
}

/// What `apply` answers once the replay has stopped; never shown, as `finish` reports the cause.
fn stopped() -> CoreError {
    CoreError::UnknownRun { run: "(the store failed; see the error)".to_owned() }
}

impl SimBackend for StoreBackend {
    fn apply(&mut self, at: Timestamp, command: Command) -> Result<(), CoreError> {
        if self.failure.borrow().is_some() {
            return Err(stopped());
        }
        match self.send(at, command) {
            Ok(()) => Ok(()),
            Err(err) => match err.root() {
                StoreError::Refused(refusal) => Err(refusal.clone()),
                _ => {
                    self.record::<()>(Err(err));
                    Err(stopped())
                }
            },
        }
    }

    fn run_outcome(&self, run: &RunId) -> Option<RunOutcome> {
        let info = self.record(self.store.run(&self.team, run))??;
        Some(RunOutcome { status: info.status, credits: info.credits })
    }

    fn periods(&self) -> Vec<PeriodUsage> {
        self.record(self.store.periods(&self.team)).unwrap_or_default()
    }
}

/// Team used by `simulate --db` when `--team` is not given.
pub const DEFAULT_TEAM: &str = "simulation";

/// Replays `scenario` as team `team` of the ledger in `db`.
pub fn replay_on_store(db: &std::path::Path, team: Option<&str>, rules: flowcredits_core::Rules, scenario: &flowcredits_sim::Scenario) -> anyhow::Result<flowcredits_sim::Report> {
    let store = SqliteStore::open(db, rules)?;
    let created_at = scenario.steps.first().map_or_else(Timestamp::now, |step| step.at);
    let mut backend = StoreBackend::new(store, TeamName::new(team.unwrap_or(DEFAULT_TEAM))?, scenario.team.clone(), created_at)?;
    let report = flowcredits_sim::replay(scenario, &mut backend);
    backend.finish()?;
    Ok(report)
}
