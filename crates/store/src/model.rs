//! The store's vocabulary: what callers send and what they get back. Constructors check every
//! field, so a value of these types is already valid input.

use std::fmt;

use flowcredits_core::{BlockKind, BlockUsage, Credits, ExecutionId, MicroUsd, Period, PlanId, RunContext, RunId, RunStatus, TeamSettings, Timestamp, Trigger};

use crate::error::{Result, StoreError};
use crate::limits::{ACTOR_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, INSTANT_MS_MAX, INSTANT_MS_MIN, MODEL_BYTES_MAX, TEAM_NAME_BYTES_MAX, TOOL_NAME_BYTES_MAX};

/// A team's name: 1 to 64 bytes of letters, digits, `-`, `_` and `.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TeamName(String);

impl TeamName {
    pub fn new(name: impl Into<String>) -> Result<TeamName> {
        let name = name.into();
        check_len("team", &name, TEAM_NAME_BYTES_MAX)?;
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(StoreError::invalid("team", format!("character {bad:?} is not allowed (letters, digits, '-', '_', '.')")));
        }
        // Team names are URL path segments, where clients remove these two.
        if name == "." || name == ".." {
            return Err(StoreError::invalid("team", format!("`{name}` cannot name a team: it is not a path segment clients send")));
        }
        Ok(TeamName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TeamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who made a billing change, as the audit log records it (a user, an API key, `cli`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    pub fn new(actor: impl Into<String>) -> Result<Actor> {
        let actor = actor.into();
        check_len("actor", &actor, ACTOR_BYTES_MAX)?;
        Ok(Actor(actor))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_len(field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.is_empty() {
        return Err(StoreError::invalid(field, "is empty"));
    }
    if text.len() > max {
        return Err(StoreError::invalid(field, format!("is {} bytes long, more than the limit of {max}", text.len())));
    }
    Ok(())
}

/// Refuses instants outside 2000–2200: a clock that far off is a bug upstream.
pub(crate) fn check_instant(field: &'static str, at: Timestamp) -> Result<i64> {
    let ms = at.as_millisecond();
    if !(INSTANT_MS_MIN..=INSTANT_MS_MAX).contains(&ms) {
        return Err(StoreError::invalid(field, format!("{at} is outside 2000-01-01 to 2200-01-01")));
    }
    Ok(ms)
}

/// A team to create.
#[derive(Clone, Debug)]
pub struct NewTeam {
    pub name: TeamName,
    pub settings: TeamSettings,
    pub actor: Actor,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamInfo {
    pub name: TeamName,
    pub settings: TeamSettings,
    pub created_at: Timestamp,
    /// The last instant the team's ledger has seen.
    pub clock: Option<Timestamp>,
}

/// A run to admit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRun {
    pub run: RunId,
    pub context: RunContext,
    /// Whether any block of the flow costs credits (see `Rules::run_needs_credits`).
    pub needs_credits: bool,
    pub at: Timestamp,
}

/// How a run was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// `Running` or `Paused` for a new run; the run's current status for a repeated start.
    pub status: RunStatus,
    /// The run was started before with the same content: nothing new was written.
    pub replayed: bool,
}

/// One block execution to charge. `execution` is the idempotency key; time-ordered ids (see
/// [`crate::ExecutionIds`]) keep the index appends sequential and ingestion fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    pub execution: ExecutionId,
    pub run: RunId,
    pub usage: BlockUsage,
    pub at: Timestamp,
}

impl UsageEvent {
    /// Field checks the core does not make (lengths of free-text fields, the instant).
    pub(crate) fn check(&self) -> Result<()> {
        check_instant("at", self.at)?;
        if let Some(model) = &self.usage.model {
            check_len("model", model, MODEL_BYTES_MAX)?;
        }
        if let Some((field, index)) = self.usage.blank_tool() {
            return Err(StoreError::invalid(field, format!("tool {index} has no name; a tool is counted by its name")));
        }
        for tool in self.usage.external_mcp_tools.iter().chain(&self.usage.internal_mcp_tools) {
            check_len("mcp tool name", tool, TOOL_NAME_BYTES_MAX)?;
        }
        Ok(())
    }
}

/// What one usage event cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChargeOutcome {
    pub credits: Credits,
    /// The same event was recorded before: acknowledged again, not charged again.
    pub replayed: bool,
}

/// A billing change, recorded in the audit log with who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillingChange {
    SetPayg { enabled: bool },
    SetPaygCap { cap: Option<MicroUsd> },
    SetPaygAlerts { amounts: Vec<MicroUsd> },
    Purchase { credits: Credits, expires_at: Option<Timestamp> },
    ChangePlan { plan: PlanId },
}

/// A purchase of credits (Enterprise), optionally under the caller's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    pub credits: Credits,
    /// When the credits expire; `None` for the ledger's default (the end of the current period).
    pub expires_at: Option<Timestamp>,
    /// Makes a retry safe: a purchase with a key the team used before, with the same credits
    /// and expiry, is answered with the first purchase's grant and buys nothing; with another
    /// credits or expiry it is refused ([`crate::StoreError::IdempotencyConflict`]). Keys are
    /// kept in the ledger with the grant they bought, for as long as the grant.
    pub key: Option<IdempotencyKey>,
}

/// What a [`Purchase`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchased {
    /// The grant the purchase made, as it stands now (for a replay, with what remains of it).
    pub grant: flowcredits_core::Grant,
    /// The key was used before with the same purchase: nothing new was bought.
    pub replayed: bool,
}

/// A caller's idempotency key for a purchase: 1 to 255 bytes of visible ASCII (`!` to `~`), as
/// payment APIs take them (a UUID, say).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(key: impl Into<String>) -> Result<IdempotencyKey> {
        let key = key.into();
        check_len("idempotency key", &key, IDEMPOTENCY_KEY_BYTES_MAX)?;
        if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(StoreError::invalid("idempotency key", format!("character {bad:?} is not allowed (visible ASCII only, `!` to `~`, no spaces)")));
        }
        Ok(IdempotencyKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A run as the store knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub status: RunStatus,
    pub credits: Credits,
    pub context: RunContext,
}

/// When a run happened, as the ledger recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunTimes {
    pub created_at: Timestamp,
    /// When the ledger ended (or cancelled) it; `None` while it is running or paused.
    pub ended_at: Option<Timestamp>,
    /// When its last execution was charged; `None` when none was. Executions are found by the
    /// engine's naming, `{run}/…` (see [`crate::LedgerStore::run_times`]).
    pub last_charge_at: Option<Timestamp>,
}

/// What a store's writer has done since it opened, for monitoring. Every field only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed or rolled back; each carries a group of requests.
    pub commits: u64,
    /// Requests decided, refused ones included.
    pub requests: u64,
    /// Time spent deciding and committing groups, in nanoseconds.
    pub commit_ns: u64,
    /// Syncs of committed groups to disk (none with `Durability::Normal`).
    pub syncs: u64,
    /// Time spent in those syncs, in nanoseconds.
    pub sync_ns: u64,
    /// Times the writer copied the rest of a long WAL into the database file between two
    /// groups, so that the WAL started again from its beginning.
    pub wal_rewinds: u64,
    /// Time spent in those copies (requests waited meanwhile), in nanoseconds.
    pub wal_rewind_ns: u64,
    /// The WAL file's size now, in bytes (0 when there is none): it stays near the rewind
    /// threshold under steady load, and a reader holding an old snapshot makes it grow.
    pub wal_bytes: u64,
}

/// A run as the ledger recorded it, with its team and when it was admitted and ended (see
/// [`crate::LedgerStore::runs_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRun {
    pub team: TeamName,
    pub run: RunId,
    pub info: RunInfo,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

/// One billing period's usage, from the balances and rollups kept with the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    pub team: TeamName,
    pub period: Period,
    pub included: Credits,
    pub included_used: Credits,
    pub purchased_used: Credits,
    pub payg_credits: Credits,
    pub unbilled_credits: Credits,
    /// Purchased credits still usable when the period starts, or at `as_of` when that is later
    /// (the current period, an ended one): a purchase that will have expired by a future
    /// period's start is not counted for it.
    pub purchased_remaining: Credits,
    /// When the report was read for: the reader's now, never earlier than the team's clock.
    pub as_of: Timestamp,
    /// Usage by block kind and trigger, largest first.
    pub breakdown: Vec<UsageLine>,
}

impl UsageReport {
    pub fn used(&self) -> Credits {
        self.included_used + self.purchased_used + self.payg_credits + self.unbilled_credits
    }

    /// Whether the period had ended at `as_of`.
    pub fn ended(&self) -> bool {
        self.period.end <= self.as_of
    }

    /// The included allowance left unused, which expires with an ended period (its invoice's
    /// `included_expired`); zero while the period goes on.
    pub fn included_expired(&self) -> Credits {
        if self.ended() { self.included.saturating_sub(self.included_used) } else { Credits::ZERO }
    }

    /// Credits left before pay-as-you-go (or pausing) starts: the included allowance left and
    /// the purchased credits usable; for an ended period only the purchased ones, the rest of
    /// its allowance having expired.
    pub fn remaining(&self) -> Credits {
        if self.ended() { self.purchased_remaining } else { self.included.saturating_sub(self.included_used) + self.purchased_remaining }
    }

    pub fn payg_amount(&self) -> MicroUsd {
        self.payg_credits.payg_price()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageLine {
    pub kind: BlockKind,
    pub trigger: Trigger,
    pub executions: u64,
    pub credits: Credits,
}

/// The bill of one closed period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoice {
    pub period: Period,
    pub included: Credits,
    pub included_used: Credits,
    /// Included credits left unused at the period's end: they expire.
    pub included_expired: Credits,
    pub purchased_used: Credits,
    pub payg_credits: Credits,
    pub unbilled_credits: Credits,
    /// Pay-as-you-go credits at $0.001 each; purchased credits are paid when bought.
    pub amount_due: MicroUsd,
    pub issued_at: Timestamp,
    /// The team's plan when the period ended: `included` is its allowance.
    pub plan: PlanId,
    /// Plan changes during the period, oldest first: each gave the rest of the period the new
    /// plan's allowance, so `included_used` may exceed `included` after a downgrade.
    pub plan_changes: Vec<PlanChange>,
}

/// A team's plan changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanChange {
    pub at: Timestamp,
    pub from: PlanId,
    pub to: PlanId,
}

/// One line of the append-only audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// What `verify` compared and what disagreed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub balances_checked: u64,
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}
