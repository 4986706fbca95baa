//! The durable flowcredits ledger.
//!
//! Every decision (admission, draw-down, pausing and resuming) is made by the core's
//! [`TeamLedger`](flowcredits_core::TeamLedger) state machine; this crate persists what it
//! decided, so that balances survive a crash and can be rebuilt from the append-only entries.
//! [`LedgerStore`] is the storage boundary; [`SqliteStore`] is the embedded backend (one file, WAL,
//! a single writer thread that group-commits many callers' requests in one transaction).
//!
//! Invariants:
//! - every charged block execution has exactly one ledger entry, and every entry names its
//!   execution; an execution id is recorded once per team, whatever the retries;
//! - a request the ledger refuses, or a batch with one bad event or billing change, writes
//!   nothing;
//! - periods, grants, run totals and usage rollups equal their rebuild from the entries
//!   (checked by [`LedgerStore::verify`]).

pub mod baseline;
mod bulk;
mod codec;
mod error;
mod ids;
pub mod limits;
mod model;
mod schema;
mod sqlite;

use flowcredits_core::{PeriodUsage, RunId, Timestamp};

pub use error::{Result, StoreError};
pub use ids::ExecutionIds;
pub use model::{Actor, Admission, AuditEntry, BillingChange, ChargeOutcome, IdempotencyKey, Invoice, LedgerRun, NewTeam, PlanChange, Purchase, Purchased, RunInfo, RunTimes, StartRun, TeamInfo, TeamName, UsageEvent, UsageLine, UsageReport, VerifyReport, WriterStats};
pub use schema::SCHEMA_VERSION;
pub use sqlite::{Durability, SqliteOptions, SqliteStore, migrate};

/// The ledger's storage: what a backend must offer. Shaped so that a PostgreSQL backend can
/// implement it with per-team row locks in place of the single writer.
///
/// The plain methods block until the answer is known; a write returns once it is durable. The
/// hot writes of a run (start, charge, end) also come as `submit_*`, which return at once and
/// hand the same answer to a [`Done`] callback: an async caller waits on a channel instead of
/// parking a thread per write. Instants are the caller's clock; a team's ledger never moves back
/// in time, so an instant earlier than the team's last one is recorded at the team's last one.
pub trait LedgerStore: Send + Sync {
    /// Creates a team; creating it again with the same settings is acknowledged.
    fn create_team(&self, new: NewTeam) -> Result<TeamInfo>;
    fn team(&self, team: &TeamName) -> Result<TeamInfo>;
    /// Every team, by name.
    fn teams(&self) -> Result<Vec<TeamInfo>>;
    /// Admits a run: it starts, or waits paused when it needs credits the team lacks. A repeated
    /// start of the same run is acknowledged with the run's current status.
    fn start_run(&self, team: &TeamName, start: StartRun) -> Result<Admission> {
        wait_for(|done| self.submit_start_run(team, start, done))
    }
    /// Charges block executions, all or nothing (at most [`limits::BATCH_EVENTS_MAX`]). An event
    /// whose execution id was recorded with the same content is acknowledged, not charged again.
    fn charge(&self, team: &TeamName, events: Vec<UsageEvent>) -> Result<Vec<ChargeOutcome>> {
        wait_for(|done| self.submit_charge(team, events, done))
    }
    fn end_run(&self, team: &TeamName, run: &RunId, at: Timestamp) -> Result<()> {
        wait_for(|done| self.submit_end_run(team, run, at, done))
    }
    /// [`LedgerStore::start_run`], answered through `done`.
    fn submit_start_run(&self, team: &TeamName, start: StartRun, done: Done<Admission>);
    /// [`LedgerStore::charge`], answered through `done`.
    fn submit_charge(&self, team: &TeamName, events: Vec<UsageEvent>, done: Done<Vec<ChargeOutcome>>);
    /// [`LedgerStore::end_run`], answered through `done`.
    fn submit_end_run(&self, team: &TeamName, run: &RunId, at: Timestamp, done: Done<()>);
    /// A run's last charges (possibly none) and its end, decided in one request and in that
    /// order: the run ends even when the charge is refused. `done` gets both answers, or one
    /// error when neither was decided.
    fn submit_charge_and_end(&self, team: &TeamName, run: &RunId, events: Vec<UsageEvent>, at: Timestamp, done: Done<ChargedAndEnded>);
    fn cancel_run(&self, team: &TeamName, run: &RunId, at: Timestamp) -> Result<()>;
    /// Pay-as-you-go, its cap and alerts, purchases and plan changes; recorded in the audit log.
    /// A purchase returns the grant it made (its id and expiry); other changes return `None`.
    fn change_billing(&self, team: &TeamName, actor: &Actor, at: Timestamp, change: BillingChange) -> Result<Option<flowcredits_core::Grant>>;
    /// Several billing changes (at most [`limits::BILLING_CHANGES_MAX`]) decided in order as one
    /// request and committed together: either every one applies or none does, whatever other
    /// requests the ledger decides meanwhile (a plan change, say). A refusal names the change
    /// that was refused ([`StoreError::Change`] with its index). Each applied change has its own
    /// line in the audit log. Returns what [`LedgerStore::change_billing`] would for each.
    fn change_billing_all(&self, team: &TeamName, actor: &Actor, at: Timestamp, changes: Vec<BillingChange>) -> Result<Vec<Option<flowcredits_core::Grant>>>;
    /// Buys credits, as [`BillingChange::Purchase`] does, under an optional idempotency key: the
    /// key is looked up and recorded in the same request as the purchase, so two concurrent
    /// retries buy once.
    fn purchase(&self, team: &TeamName, actor: &Actor, at: Timestamp, purchase: Purchase) -> Result<Purchased>;
    /// Moves every team's clock to `at`: periods that ended are invoiced and paused runs resume
    /// with the new period's credits. Returns how many invoices were issued.
    fn close_periods(&self, at: Timestamp) -> Result<usize>;
    fn run(&self, team: &TeamName, run: &RunId) -> Result<Option<RunInfo>>;
    /// When `run` was admitted, ended and last charged: at start-up, where a run cut off by a
    /// crash is known to have been last. The last charge is read among the executions named
    /// `{run}/…` (as the engine names every execution: `run/block`, `run/loop#3/block`), a range
    /// of the executions' key, so it costs one short index read however many the team has.
    fn run_times(&self, team: &TeamName, run: &RunId) -> Result<Option<RunTimes>>;
    /// Every run the ledger holds as running, across teams, oldest first: at start-up, the
    /// runs a stopped server may have been executing.
    fn running_runs(&self) -> Result<Vec<(TeamName, RunId)>>;
    /// The runs admitted at or after `since`, across teams and whatever their status, oldest
    /// first; at most the newest `limit` of them. At start-up, a server compares them with its
    /// run history to find runs whose history a crash lost.
    fn runs_since(&self, since: Timestamp, limit: usize) -> Result<Vec<LedgerRun>>;
    /// Every period the team's ledger opened, oldest first.
    fn periods(&self, team: &TeamName) -> Result<Vec<PeriodUsage>>;
    /// Usage of the period named `YYYY-MM`, or of the period `at` is in, read at `at` (the
    /// caller's now; the team's clock when that is later): purchased credits count when usable
    /// at `at`, or at the period's start for a period not begun yet, and what is left of an
    /// ended period's allowance has expired.
    fn usage(&self, team: &TeamName, month: Option<&str>, at: Timestamp) -> Result<UsageReport>;
    fn invoices(&self, team: &TeamName) -> Result<Vec<Invoice>>;
    /// Credits the team bought, oldest first, with what remains of each.
    fn grants(&self, team: &TeamName) -> Result<Vec<flowcredits_core::Grant>>;
    fn audit_log(&self, team: &TeamName) -> Result<Vec<AuditEntry>>;
    /// Compares every stored balance and rollup with its rebuild from the ledger entries.
    fn verify(&self) -> Result<VerifyReport>;
    /// What the writer has done since the store opened (commits, requests, syncs and their
    /// times), for monitoring.
    fn writer_stats(&self) -> WriterStats;
    /// Why the store refuses every write until it is opened again, if it does: the disk did
    /// not confirm a commit (an fsync failed), so what the file holds is unknown. `None` while
    /// writes are taken. For health checks; it never changes back while the store is open.
    fn write_failure(&self) -> Option<String>;
}

/// Receives the answer to a submitted write once, when it is durable or refused. It may be
/// called on the store's own thread, so it hands the answer on (a channel send) and returns.
pub type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// What [`LedgerStore::submit_charge_and_end`] answers: the charge's outcome and the end's.
pub type ChargedAndEnded = (Result<Vec<ChargeOutcome>>, Result<()>);

/// Submits a write and blocks this thread until its answer arrives.
fn wait_for<T: Send + 'static>(submit: impl FnOnce(Done<T>)) -> Result<T> {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    submit(Box::new(move |result| {
        // A caller that gave up waiting has nobody to tell.
        let _ = answer.send(result);
    }));
    answered.recv().map_err(|_| StoreError::Closed)?
}
