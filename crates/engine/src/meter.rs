//! Metering: the executor asks a [`Meter`] to admit the run, charges every block execution as
//! it completes, and ends the run. [`LedgerMeter`] is the in-memory implementation over the
//! domain's [`TeamLedger`]; durable stores implement the same trait.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use flowcredits_core::{BlockUsage, Command, Credits, ExecutionId, LedgerEvent, RunContext, RunId, Rules, TeamLedger, Timestamp};
use futures_util::future::{BoxFuture, FutureExt};

use crate::error::EngineError;

/// Whether a run may execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Running,
    /// The run needs credits the team lacks; it waits and executes nothing.
    Paused,
}

/// One block execution to charge. The execution id is deterministic
/// (`run/block`, `run/loop#3/block`, `run/subflow/block`), so a retried charge is counted once.
#[derive(Clone, Debug)]
pub struct BlockCharge {
    pub execution: ExecutionId,
    pub usage: BlockUsage,
    /// What the execution did, when the engine keeps block traces (run history); never part
    /// of the price.
    pub trace: Option<Box<BlockTrace>>,
}

impl BlockCharge {
    pub fn new(execution: ExecutionId, usage: BlockUsage) -> BlockCharge {
        BlockCharge { execution, usage, trace: None }
    }
}

/// One block execution as run history shows it. Its values are kept as JSON text, written from
/// the values themselves when the block ran: a trace copies no value, and history stores the
/// text as it is.
#[derive(Clone, Debug)]
pub struct BlockTrace {
    /// The values on its input ports, by port name (a JSON object).
    pub input: Box<serde_json::value::RawValue>,
    /// The values it sent, by output port name (a JSON object), or `null` when it failed.
    pub output: Box<serde_json::value::RawValue>,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub duration_us: u64,
}

/// What [`Meter::charge_and_end`] answers: the last charge's result, then the end's.
pub type ChargedAndEnded = (Result<Vec<Credits>, EngineError>, Result<(), EngineError>);

pub trait Meter: Send + Sync {
    /// Admits a new run. `planned` lists the usage of every block the run may execute, from
    /// the flow definition (and the flows it runs), to decide whether it needs credits.
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>>;

    /// Charges completed executions of a running run, in order; returns each one's credits.
    /// The meter may take each charge's trace (to record it without a copy); the engine reads
    /// only the executions and their usage afterwards.
    /// Charging an execution id again with the same usage is a no-op returning the same
    /// credits; with a different usage it is [`EngineError::ExecutionConflict`].
    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>>;

    /// Marks the run completed.
    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Charges the run's last executions (possibly none) and then ends it, even when that
    /// charge fails; returns the charge's result and the end's. A meter that can send both at
    /// once (one round trip, one commit) overrides this.
    fn charge_and_end<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, ChargedAndEnded> {
        Box::pin(async move {
            let charged = if charges.is_empty() { Ok(Vec::new()) } else { self.charge(run, charges).await };
            (charged, self.end(run).await)
        })
    }
}

/// A team's ledger in memory, behind a mutex. Time is the wall clock, never earlier than the
/// ledger's last event.
pub struct LedgerMeter {
    rules: Rules,
    state: Mutex<LedgerState>,
}

struct LedgerState {
    ledger: TeamLedger,
    charged: HashMap<ExecutionId, (BlockUsage, Credits), BuildHasherDefault<IdHasher>>,
    events: Vec<LedgerEvent>,
}

impl LedgerMeter {
    pub fn new(rules: Rules, ledger: TeamLedger) -> LedgerMeter {
        LedgerMeter { rules, state: Mutex::new(LedgerState { ledger, charged: HashMap::default(), events: Vec::new() }) }
    }

    /// The ledger as it stands.
    pub fn ledger(&self) -> TeamLedger {
        self.lock().ledger.clone()
    }

    /// Every event the ledger produced except block charges, oldest first.
    pub fn events(&self) -> Vec<LedgerEvent> {
        self.lock().events.clone()
    }

    /// Applies a command at the current time (e.g. turning pay-as-you-go on in a test).
    pub fn apply(&self, command: Command) -> Result<Vec<LedgerEvent>, EngineError> {
        let mut state = self.lock();
        let at = state.now(&self.rules)?;
        state.apply(&self.rules, at, command)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // A panic while holding the lock leaves the ledger as the last whole command left it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit_now(&self, run: &RunId, context: RunContext, planned: &[BlockUsage]) -> Result<Admission, EngineError> {
        let mut state = self.lock();
        let at = state.now(&self.rules)?;
        let needs_credits = self.rules.run_needs_credits(at, context, planned)?;
        let events = state.apply(&self.rules, at, Command::StartRun { run: run.clone(), context, needs_credits })?;
        Ok(if events.iter().any(|event| matches!(event, LedgerEvent::RunPaused { .. })) { Admission::Paused } else { Admission::Running })
    }

    fn charge_now(&self, run: &RunId, charges: &[BlockCharge]) -> Result<Vec<Credits>, EngineError> {
        let mut state = self.lock();
        let at = state.now(&self.rules)?;
        let mut credits = Vec::with_capacity(charges.len());
        for charge in charges {
            if let Some((usage, price)) = state.charged.get(&charge.execution) {
                if *usage != charge.usage {
                    return Err(EngineError::ExecutionConflict { execution: charge.execution.to_string() });
                }
                credits.push(*price);
                continue;
            }
            let events = state.apply(&self.rules, at, Command::ChargeBlock { run: run.clone(), execution: charge.execution.clone(), usage: charge.usage.clone() })?;
            // The event owns a copy of the execution id already: it becomes the map's key.
            let (execution, price) = events.into_iter().find_map(|event| match event {
                LedgerEvent::BlockCharged(charged) => Some((charged.execution, charged.split.total())),
                _ => None,
            }).expect("a charge the ledger accepts is reported");
            state.charged.insert(execution, (charge.usage.clone(), price));
            credits.push(price);
        }
        Ok(credits)
    }
}

impl LedgerState {
    fn now(&mut self, rules: &Rules) -> Result<Timestamp, EngineError> {
        let now = Timestamp::now();
        let at = self.ledger.clock().map_or(now, |last| last.max(now));
        let events = self.ledger.advance_to(rules, at)?;
        self.events.extend(events);
        Ok(at)
    }

    fn apply(&mut self, rules: &Rules, at: Timestamp, command: Command) -> Result<Vec<LedgerEvent>, EngineError> {
        let events = self.ledger.apply(rules, at, command)?;
        // Charges are kept per execution in `charged`; the log keeps the rest (admission,
        // completion, alerts), which stays small however long the run.
        self.events.extend(events.iter().filter(|event| !matches!(event, LedgerEvent::BlockCharged(_))).cloned());
        Ok(events)
    }
}

impl Meter for LedgerMeter {
    fn admit<'a>(&'a self, run: &'a RunId, context: RunContext, planned: &'a [BlockUsage]) -> BoxFuture<'a, Result<Admission, EngineError>> {
        futures_util::future::ready(self.admit_now(run, context, planned)).boxed()
    }

    fn charge<'a>(&'a self, run: &'a RunId, charges: &'a mut [BlockCharge]) -> BoxFuture<'a, Result<Vec<Credits>, EngineError>> {
        futures_util::future::ready(self.charge_now(run, charges)).boxed()
    }

    fn end<'a>(&'a self, run: &'a RunId) -> BoxFuture<'a, Result<(), EngineError>> {
        let result = (|| {
            let mut state = self.lock();
            let at = state.now(&self.rules)?;
            state.apply(&self.rules, at, Command::EndRun { run: run.clone() }).map(drop)
        })();
        futures_util::future::ready(result).boxed()
    }
}

/// A multiply-rotate hash (the one rustc uses) over the execution id, eight bytes at a time.
/// The ids come from this engine (run id, block ids, iteration numbers) and the map lives for
/// one in-memory ledger, so a keyed hash buys nothing here, while SipHash and the rehashing of
/// a growing map were a fifth of the time of a metered inline block.
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    const SEED: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("chunks of eight")));
        }
        for &byte in words.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
