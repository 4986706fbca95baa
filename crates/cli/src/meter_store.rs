//! Meters a local run against a team's durable ledger (`flowcredits run --db PATH`):
//! admission, each block execution charged as it completes under its execution id (the store
//! counts a repeated id once), and the end of the run.
//!
//! The store's API is synchronous (SQLite behind a writer thread); the CLI runs one flow on a
//! single-threaded runtime, so waiting for it in place holds up nothing else.

use std::future::ready;

use flowcredits_core::{BlockUsage, Credits, RunContext, RunId, Rules, Timestamp};
use flowcredits_engine::{Admission, BlockCharge, BoxFuture, EngineError, Meter};
use flowcredits_store::{LedgerStore, StartRun, StoreError, TeamName, UsageEvent};

pub struct StoreMeter<S> {
    store: S,
    team: TeamName,
    rules: Rules,
}

impl<S: LedgerStore> StoreMeter<S> {
    pub fn new(store: S, team: TeamName, rules: Rules) -> StoreMeter<S> {
        StoreMeter { store, team, rules }
    }

    fn admit_now(&self, run: &RunId, context: RunContext, planned: &[BlockUsage]) -> Result<Admission, EngineError> {
        let at = Timestamp::now();
        let needs_credits = self.rules.run_needs_credits(at, context, planned)?;
        let admission = self.store.start_run(&self.team, StartRun { run: run.clone(), context, needs_credits, at }).map_err(store_error)?;
        Ok(if admission.status == flowcredits_core::RunStatus::Paused { Admission::Paused } else { Admission::Running })
    }

    fn charge_now(&self, run: &RunId, charges: &[BlockCharge]) -> Result<Vec<Credits>, EngineError> {
        let at = Timestamp::now();
        let events = charges.iter().map(|charge| UsageEvent { execution: charge.execution.clone(), run: run.clone(), usage: charge.usage.clone(), at }).collect();
        let outcomes = self.store.charge(&self.team, events).map_err(store_error)?;
        Ok(outcomes.into_iter().map(|outcome| outcome.credits).collect())
    }
}

fn store_error(err: StoreError) -> EngineError {
    match err.root() {
        StoreError::ExecutionConflict { execution, .. } => EngineError::ExecutionConflict { execution: execution.clone() },
        _ => EngineError::Store(format!("the ledger database: {err}")),
    }
}

impl<S: LedgerStore> Meter for StoreMeter<S> {
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>> {
        Box::pin(ready(self.admit_now(run, context, planned)))
    }

    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>> {
        Box::pin(ready(self.charge_now(run, charges)))
    }

    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(ready(self.store.end_run(&self.team, run, Timestamp::now()).map_err(store_error)))
    }
}
