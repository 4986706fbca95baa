//! Ledger arithmetic and run admission for one team: a deterministic state machine.
//!
//! The ledger sees the world as a sequence of [`Command`]s at non-decreasing instants. Before a
//! command at instant `at`, the caller moves the clock with [`TeamLedger::advance_to`] (which
//! opens a new billing period and resumes paused runs when a month turns); then
//! [`TeamLedger::apply`] either refuses the command and changes nothing, or changes the state
//! and returns the [`LedgerEvent`]s that describe the change. Storage persists those events;
//! balances are always derivable from them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use foldhash::HashMap;
use jiff::Timestamp;

use crate::pricing::{block_price, run_needs_credits};
use crate::{AnchorDay, BlockKind, BlockUsage, CoreError, Credits, MicroUsd, Period, PlanCatalog, PlanId, PriceBook, RunContext};

/// Longest run id, in bytes.
pub const RUN_ID_BYTES_MAX: usize = 128;
/// Longest execution id, in bytes: room for a run id plus a block path within the run.
pub const EXECUTION_ID_BYTES_MAX: usize = 512;
/// Most credits one purchase may add.
pub const PURCHASE_CREDITS_MAX: u64 = 1_000_000_000;
/// Highest monthly pay-as-you-go cap a team may set: $10,000,000.
pub const PAYG_CAP_MICRO_USD_MAX: u64 = 10_000_000 * 1_000_000;
/// Most pay-as-you-go alert amounts a team may set.
pub const PAYG_ALERTS_MAX: usize = 16;
/// Most runs one team may have waiting for credits. Past it a run that would wait is refused
/// instead: every open run is held in memory by the ledger, and a team out of credits whose
/// hooks keep being called would otherwise grow it (and the burst of runs that starts when
/// credits return) without bound.
pub const PAUSED_RUNS_MAX: usize = 10_000;
/// Percentages of included credits at which a team is alerted.
pub const INCLUDED_ALERT_PERCENTS: [u8; 2] = [75, 100];

/// Plans and prices: the rules every ledger decision is made by.
#[derive(Clone, Debug)]
pub struct Rules {
    pub plans: PlanCatalog,
    pub prices: PriceBook,
}

impl Rules {
    pub fn shipped() -> Rules {
        Rules { plans: PlanCatalog::shipped(), prices: PriceBook::shipped() }
    }

    /// Whether a run of these blocks needs credits, priced at the instant it would start.
    pub fn run_needs_credits(&self, at: Timestamp, context: RunContext, blocks: &[BlockUsage]) -> Result<bool, CoreError> {
        run_needs_credits(self.prices.version_at(at)?, context, blocks)
    }

    /// Credits one block execution costs at `at`.
    pub fn block_price(&self, at: Timestamp, context: RunContext, usage: &BlockUsage) -> Result<Credits, CoreError> {
        block_price(self.prices.version_at(at)?, context, usage)
    }
}

macro_rules! checked_id {
    ($name:ident, $field:literal, $max:expr) => {
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<$name, CoreError> {
                let id = id.into();
                if id.is_empty() {
                    return Err(CoreError::IdEmpty { field: $field });
                }
                if id.len() > $max {
                    return Err(CoreError::IdTooLong { field: $field, length: id.len(), max: $max });
                }
                Ok($name(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_id!(RunId, "run id", RUN_ID_BYTES_MAX);
checked_id!(ExecutionId, "execution id", EXECUTION_ID_BYTES_MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A team's billing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamSettings {
    pub plan: PlanId,
    pub anchor_day: AnchorDay,
    pub payg_enabled: bool,
    /// Most pay-as-you-go money per period; `None` is no cap.
    pub payg_cap: Option<MicroUsd>,
    /// Pay-as-you-go spending amounts at which the team wants an alert, ascending.
    pub payg_alerts: Vec<MicroUsd>,
}

impl TeamSettings {
    pub fn new(plan: PlanId) -> TeamSettings {
        TeamSettings { plan, anchor_day: AnchorDay::FIRST, payg_enabled: false, payg_cap: None, payg_alerts: Vec::new() }
    }
}

/// Purchased credits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Sequence number within the team, from 1.
    pub id: u64,
    pub credits: Credits,
    pub remaining: Credits,
    pub granted_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Grant {
    fn usable_at(&self, at: Timestamp) -> bool {
        self.granted_at <= at && at < self.expires_at && !self.remaining.is_zero()
    }
}

/// Where one charge's credits came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChargeSplit {
    pub included: Credits,
    /// `(grant id, credits)` in draw order.
    pub purchased: Vec<(u64, Credits)>,
    pub payg: Credits,
    /// Usage beyond every source the team allowed: recorded, never billed.
    pub unbilled: Credits,
}

impl ChargeSplit {
    pub fn purchased_total(&self) -> Credits {
        self.purchased.iter().map(|(_, credits)| *credits).sum()
    }

    pub fn total(&self) -> Credits {
        self.included + self.purchased_total() + self.payg + self.unbilled
    }
}

/// Usage totals of one billing period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodUsage {
    pub period: Period,
    /// The plan's included credits for this period.
    pub included: Credits,
    pub included_used: Credits,
    pub purchased_used: Credits,
    pub payg_credits: Credits,
    pub unbilled_credits: Credits,
    alerts_fired: BTreeSet<Alert>,
}

impl PeriodUsage {
    /// A period with `included` credits and nothing used.
    pub fn new(period: Period, included: Credits) -> PeriodUsage {
        PeriodUsage { period, included, included_used: Credits::ZERO, purchased_used: Credits::ZERO, payg_credits: Credits::ZERO, unbilled_credits: Credits::ZERO, alerts_fired: BTreeSet::new() }
    }

    pub fn used(&self) -> Credits {
        self.included_used + self.purchased_used + self.payg_credits + self.unbilled_credits
    }

    pub fn included_remaining(&self) -> Credits {
        self.included.saturating_sub(self.included_used)
    }

    pub fn payg_amount(&self) -> MicroUsd {
        self.payg_credits.payg_price()
    }

    /// Thresholds already announced this period (each fires once).
    pub fn alerts_fired(&self) -> impl Iterator<Item = &Alert> {
        self.alerts_fired.iter()
    }

    /// Fires the `alerts` this period has not fired yet: the one place an alert is announced,
    /// so each fires at most once per period whatever crossed it.
    fn fire(&mut self, alerts: impl IntoIterator<Item = Alert>, at: Timestamp) -> Vec<LedgerEvent> {
        let period_start = self.period.start;
        alerts.into_iter().filter(|alert| self.alerts_fired.insert(*alert)).map(|alert| LedgerEvent::AlertCrossed { alert, period_start, at }).collect()
    }

    /// A period's totals as a store saved them, with the alerts it had already fired.
    pub fn restored(period: Period, included: Credits, alerts_fired: impl IntoIterator<Item = Alert>) -> PeriodUsage {
        PeriodUsage { alerts_fired: alerts_fired.into_iter().collect(), ..PeriodUsage::new(period, included) }
    }

    fn record(&mut self, split: &ChargeSplit) {
        self.included_used += split.included;
        self.purchased_used += split.purchased_total();
        self.payg_credits += split.payg;
        self.unbilled_credits += split.unbilled;
    }
}

/// A threshold a team is told about once per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alert {
    /// This percentage of an allowance of `of` included credits is used. The allowance is part
    /// of the threshold: when a plan change gives the period a larger allowance, its 75% and
    /// 100% are new thresholds and fire when reached, or a team that upgraded after an alert
    /// would run out with no warning; a smaller one fires at once what usage already passed.
    IncludedPercent { percent: u8, of: Credits },
    /// Pay-as-you-go spending reached this amount.
    PaygAmount(MicroUsd),
}

/// One run the ledger knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub context: RunContext,
    pub needs_credits: bool,
    pub status: RunStatus,
    pub created_at: Timestamp,
    /// Admission order within the team; paused runs resume in this order.
    pub seq: u64,
    pub credits: Credits,
}

/// A change the caller asks of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Admit a new run: it starts, or waits paused when it needs credits the team lacks.
    StartRun { run: RunId, context: RunContext, needs_credits: bool },
    /// Charge one block execution of a running run.
    ChargeBlock { run: RunId, execution: ExecutionId, usage: BlockUsage },
    EndRun { run: RunId },
    CancelRun { run: RunId },
    SetPayg { enabled: bool },
    SetPaygCap { cap: Option<MicroUsd> },
    SetPaygAlerts { amounts: Vec<MicroUsd> },
    /// Buy credits (Enterprise); they expire at `expires_at`, by default the period's end.
    Purchase { credits: Credits, expires_at: Option<Timestamp> },
    ChangePlan { plan: PlanId },
}

/// One block execution's charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub run: RunId,
    pub execution: ExecutionId,
    pub at: Timestamp,
    pub kind: BlockKind,
    pub period_start: Timestamp,
    pub split: ChargeSplit,
}

/// What changed. Every credit the ledger counts is in a [`LedgerEvent::BlockCharged`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerEvent {
    PeriodOpened { period: Period, included: Credits },
    RunStarted { run: RunId, at: Timestamp },
    RunPaused { run: RunId, at: Timestamp },
    RunResumed { run: RunId, at: Timestamp },
    BlockCharged(Charge),
    RunCompleted { run: RunId, at: Timestamp },
    RunCancelled { run: RunId, at: Timestamp },
    PaygChanged { enabled: bool, at: Timestamp },
    PaygCapChanged { cap: Option<MicroUsd>, at: Timestamp },
    PaygAlertsChanged { amounts: Vec<MicroUsd>, at: Timestamp },
    CreditsPurchased { grant: Grant },
    PlanChanged { from: PlanId, to: PlanId, at: Timestamp },
    AlertCrossed { alert: Alert, period_start: Timestamp, at: Timestamp },
}

/// A command [`TeamLedger::step`] refused, and what the passing of time changed anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub error: CoreError,
    /// Events of a billing period that opened before the command (empty when none did).
    pub kept: Vec<LedgerEvent>,
}

/// What [`TeamLedger::restore`] needs: the state a store keeps between commands.
#[derive(Clone, Debug)]
pub struct LedgerSnapshot {
    pub settings: TeamSettings,
    pub clock: Option<Timestamp>,
    pub current: Option<PeriodUsage>,
    pub grants: Vec<Grant>,
    /// Runs that are running or paused.
    pub runs: Vec<(RunId, RunRecord)>,
    pub next_run_seq: u64,
}

/// What charges within one period can change in a [`TeamLedger`], saved to be put back
/// ([`TeamLedger::charge_savepoint`]).
#[derive(Debug)]
pub struct ChargeSavepoint {
    clock: Option<Timestamp>,
    usage: PeriodUsage,
    grants: Vec<Grant>,
    run_credits: Vec<(RunId, Credits)>,
}

/// One team's ledger and run admission state.
#[derive(Clone, Debug)]
pub struct TeamLedger {
    settings: TeamSettings,
    clock: Option<Timestamp>,
    current: Option<Period>,
    periods: BTreeMap<Timestamp, PeriodUsage>,
    grants: Vec<Grant>,
    runs: HashMap<RunId, RunRecord>,
    /// Paused runs by admission order.
    paused: BTreeMap<u64, RunId>,
    next_run_seq: u64,
}

impl TeamLedger {
    pub fn new(settings: TeamSettings) -> TeamLedger {
        TeamLedger { settings, clock: None, current: None, periods: BTreeMap::new(), grants: Vec::new(), runs: HashMap::default(), paused: BTreeMap::new(), next_run_seq: 1 }
    }

    /// A ledger picked up where a store left it: `current` is the period the clock is in, `runs`
    /// the runs not finished yet (paused ones resume in `seq` order), `next_run_seq` the
    /// admission number the next run gets.
    pub fn restore(snapshot: LedgerSnapshot) -> TeamLedger {
        let LedgerSnapshot { settings, clock, current, grants, runs, next_run_seq } = snapshot;
        let paused = runs.iter().filter(|(_, record)| record.status == RunStatus::Paused).map(|(run, record)| (record.seq, run.clone())).collect();
        let period = current.as_ref().map(|usage| usage.period);
        let periods = current.into_iter().map(|usage| (usage.period.start, usage)).collect();
        TeamLedger { settings, clock, current: period, periods, grants, runs: runs.into_iter().collect(), paused, next_run_seq }
    }

    /// The admission number the next started run gets.
    pub fn next_run_seq(&self) -> u64 {
        self.next_run_seq
    }

    pub fn settings(&self) -> &TeamSettings {
        &self.settings
    }

    pub fn clock(&self) -> Option<Timestamp> {
        self.clock
    }

    pub fn current_period(&self) -> Option<&PeriodUsage> {
        self.current.and_then(|period| self.periods.get(&period.start))
    }

    /// Every period the ledger has seen, oldest first.
    pub fn periods(&self) -> impl Iterator<Item = &PeriodUsage> {
        self.periods.values()
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn run(&self, run: &RunId) -> Option<&RunRecord> {
        self.runs.get(run)
    }

    pub fn runs(&self) -> impl Iterator<Item = (&RunId, &RunRecord)> {
        self.runs.iter()
    }

    /// Paused runs, oldest first.
    pub fn paused_runs(&self) -> impl Iterator<Item = &RunId> {
        self.paused.values()
    }

    /// Saves what charges of `runs` at instants before the current period's end can change: the
    /// clock, the period's usage and alerts, the grants and those runs' credits. A store deciding
    /// a batch of charges all or nothing takes them back with [`Self::roll_back_charges`] when
    /// one is refused, instead of deciding on a copy of the whole ledger, whose open runs (paused
    /// ones included) may be thousands. `None` when there is no current period or an instant
    /// up to `latest` would open the next one (that resumes paused runs, which this does not save).
    pub fn charge_savepoint<'r>(&self, runs: impl IntoIterator<Item = &'r RunId>, latest: Timestamp) -> Option<ChargeSavepoint> {
        let usage = self.current_period().filter(|usage| latest < usage.period.end && self.clock.is_some_and(|clock| clock < usage.period.end))?;
        let run_credits = runs.into_iter().filter_map(|run| Some((run.clone(), self.runs.get(run)?.credits))).collect();
        Some(ChargeSavepoint { clock: self.clock, usage: usage.clone(), grants: self.grants.clone(), run_credits })
    }

    /// Puts back what [`Self::charge_savepoint`] saved. Only charges of its runs, in its period,
    /// may have been applied since.
    pub fn roll_back_charges(&mut self, savepoint: ChargeSavepoint) {
        let ChargeSavepoint { clock, usage, grants, run_credits } = savepoint;
        debug_assert_eq!(self.current, Some(usage.period), "charges since the savepoint stayed in its period");
        self.clock = clock;
        self.periods.insert(usage.period.start, usage);
        self.grants = grants;
        for (run, credits) in run_credits {
            if let Some(record) = self.runs.get_mut(&run) {
                record.credits = credits;
            }
        }
    }

    /// Drops finished runs from memory (a store keeps them on disk). Later commands naming
    /// them are refused as unknown runs.
    pub fn forget_finished_runs(&mut self) {
        self.runs.retain(|_, record| !record.status.is_finished());
    }

    /// [`Self::advance_to`] then [`Self::apply`], as one step that a refusal undoes: the ledger is
    /// left exactly as it was, except that a billing period that began by `at` stays open (with
    /// the runs it resumed), as that happened with time, not by the command. The refusal carries
    /// the events of that opening.
    pub fn step(&mut self, rules: &Rules, at: Timestamp, command: Command) -> Result<Vec<LedgerEvent>, Refused> {
        let clock = self.clock;
        let mut events = self.advance_to(rules, at).map_err(|error| Refused { error, kept: Vec::new() })?;
        match self.apply(rules, at, command) {
            Ok(applied) => {
                events.extend(applied);
                Ok(events)
            }
            Err(error) => {
                if events.is_empty() {
                    self.clock = clock;
                }
                Err(Refused { error, kept: events })
            }
        }
    }

    /// Moves the clock to `at`. When `at` is in a later billing period, that period opens with
    /// the plan's included credits and paused runs resume, oldest first, at its start.
    pub fn advance_to(&mut self, rules: &Rules, at: Timestamp) -> Result<Vec<LedgerEvent>, CoreError> {
        crate::period::check_supported(at)?;
        if let Some(last) = self.clock.filter(|last| at < *last) {
            return Err(CoreError::TimeWentBackwards { at, last });
        }
        let mut events = Vec::new();
        let period = Period::containing(self.settings.anchor_day, at);
        if self.current != Some(period) {
            let included = rules.plans.get(self.settings.plan).included_credits;
            self.periods.insert(period.start, PeriodUsage::new(period, included));
            self.current = Some(period);
            events.push(LedgerEvent::PeriodOpened { period, included });
            self.resume_paused(rules, period.start, &mut events);
        }
        self.clock = Some(at);
        Ok(events)
    }

    /// Applies one command at `at`, which must already be the clock (see [`Self::advance_to`]).
    /// A refused command changes nothing.
    pub fn apply(&mut self, rules: &Rules, at: Timestamp, command: Command) -> Result<Vec<LedgerEvent>, CoreError> {
        assert_eq!(self.clock, Some(at), "advance_to(at) must come before apply(at, ..)");
        let mut events = Vec::new();
        match command {
            Command::StartRun { run, context, needs_credits } => self.start_run(rules, at, run, context, needs_credits, &mut events)?,
            Command::ChargeBlock { run, execution, usage } => self.charge_block(rules, at, run, execution, usage, &mut events)?,
            Command::EndRun { run } => {
                self.running_run_mut(&run)?.status = RunStatus::Completed;
                events.push(LedgerEvent::RunCompleted { run, at });
            }
            Command::CancelRun { run } => self.cancel_run(at, run, &mut events)?,
            Command::SetPayg { enabled } => {
                if enabled && !rules.plans.get(self.settings.plan).has_payg() {
                    return Err(CoreError::PlanHasNoPayg { plan: self.settings.plan });
                }
                self.settings.payg_enabled = enabled;
                events.push(LedgerEvent::PaygChanged { enabled, at });
                self.resume_paused(rules, at, &mut events);
            }
            Command::SetPaygCap { cap } => {
                if let Some(cap) = cap.filter(|cap| cap.0 > PAYG_CAP_MICRO_USD_MAX) {
                    return Err(CoreError::AmountOutOfRange { field: "payg_cap (micro-dollars)", value: cap.0, max: PAYG_CAP_MICRO_USD_MAX });
                }
                self.settings.payg_cap = cap;
                events.push(LedgerEvent::PaygCapChanged { cap, at });
                self.resume_paused(rules, at, &mut events);
            }
            Command::SetPaygAlerts { mut amounts } => {
                if amounts.len() > PAYG_ALERTS_MAX {
                    return Err(CoreError::AmountOutOfRange { field: "payg alert count", value: amounts.len() as u64, max: PAYG_ALERTS_MAX as u64 });
                }
                if let Some(amount) = amounts.iter().find(|amount| amount.0 == 0 || amount.0 > PAYG_CAP_MICRO_USD_MAX) {
                    return Err(CoreError::AmountOutOfRange { field: "payg alert (micro-dollars)", value: amount.0, max: PAYG_CAP_MICRO_USD_MAX });
                }
                amounts.sort_unstable();
                amounts.dedup();
                self.settings.payg_alerts = amounts.clone();
                events.push(LedgerEvent::PaygAlertsChanged { amounts: amounts.clone(), at });
                // An amount this period's spending has already passed was crossed: it fires now
                // (once, as every alert), not never.
                if let Some(usage) = self.current.and_then(|period| self.periods.get_mut(&period.start)) {
                    let spent = usage.payg_amount();
                    events.extend(usage.fire(amounts.into_iter().filter(|amount| *amount <= spent).map(Alert::PaygAmount), at));
                }
            }
            Command::Purchase { credits, expires_at } => self.purchase(rules, at, credits, expires_at, &mut events)?,
            Command::ChangePlan { plan } => self.change_plan(rules, at, plan, &mut events),
        }
        Ok(events)
    }

    /// Whether a new run that needs credits may start now: included or purchased credits are
    /// left, or pay-as-you-go is on with room under its cap.
    pub fn has_credits_left(&self, rules: &Rules, at: Timestamp) -> bool {
        let included_left = self.current_period().is_some_and(|usage| !usage.included_remaining().is_zero());
        included_left || self.grants.iter().any(|grant| grant.usable_at(at)) || !self.payg_room(rules).is_zero()
    }

    /// How many more credits pay-as-you-go may bill this period.
    fn payg_room(&self, rules: &Rules) -> Credits {
        if !self.settings.payg_enabled || !rules.plans.get(self.settings.plan).has_payg() {
            return Credits::ZERO;
        }
        let spent = self.current_period().map_or(MicroUsd::ZERO, PeriodUsage::payg_amount);
        match self.settings.payg_cap {
            None => Credits(u64::MAX),
            Some(cap) => MicroUsd(cap.0.saturating_sub(spent.0)).whole_credits(),
        }
    }

    fn start_run(&mut self, rules: &Rules, at: Timestamp, run: RunId, context: RunContext, needs_credits: bool, events: &mut Vec<LedgerEvent>) -> Result<(), CoreError> {
        if self.runs.contains_key(&run) {
            return Err(CoreError::DuplicateRun { run: run.0 });
        }
        let admitted = !needs_credits || self.has_credits_left(rules, at);
        if !admitted && self.paused.len() >= PAUSED_RUNS_MAX {
            return Err(CoreError::TooManyPausedRuns { max: PAUSED_RUNS_MAX });
        }
        let seq = self.next_run_seq;
        self.next_run_seq += 1;
        let status = if admitted { RunStatus::Running } else { RunStatus::Paused };
        self.runs.insert(run.clone(), RunRecord { context, needs_credits, status, created_at: at, seq, credits: Credits::ZERO });
        if admitted {
            events.push(LedgerEvent::RunStarted { run, at });
        } else {
            self.paused.insert(seq, run.clone());
            events.push(LedgerEvent::RunPaused { run, at });
        }
        Ok(())
    }

    fn charge_block(&mut self, rules: &Rules, at: Timestamp, run: RunId, execution: ExecutionId, usage: BlockUsage, events: &mut Vec<LedgerEvent>) -> Result<(), CoreError> {
        let context = self.running_run_mut(&run)?.context;
        let credits = rules.block_price(at, context, &usage)?;
        let split = self.draw(rules, at, credits, usage.kind.is_ai());
        self.runs.get_mut(&run).expect("checked running above").credits += credits;
        let usage_now = self.periods.get_mut(&self.current.expect("advance_to opened a period").start).expect("current period is stored");
        let payg_before = usage_now.payg_amount();
        usage_now.record(&split);
        let period_start = usage_now.period.start;
        events.push(LedgerEvent::BlockCharged(Charge { run, execution, at, kind: usage.kind, period_start, split }));
        self.fire_alerts(at, payg_before, events);
        Ok(())
    }

    /// Splits `credits` over the sources in draw order: included, purchased (earliest expiry
    /// first), pay-as-you-go (when on, allowed for this kind of credit, under the cap), and
    /// what is left as unbilled overage. Takes the credits from the grants.
    fn draw(&mut self, rules: &Rules, at: Timestamp, credits: Credits, is_ai: bool) -> ChargeSplit {
        let mut left = credits;
        let included = self.current_period().map_or(Credits::ZERO, PeriodUsage::included_remaining).min(left);
        left -= included;
        let mut purchased = Vec::new();
        let mut usable: Vec<&mut Grant> = self.grants.iter_mut().filter(|grant| grant.usable_at(at)).collect();
        usable.sort_by_key(|grant| (grant.expires_at, grant.id));
        for grant in usable {
            if left.is_zero() {
                break;
            }
            let take = grant.remaining.min(left);
            grant.remaining -= take;
            left -= take;
            purchased.push((grant.id, take));
        }
        let plan = rules.plans.get(self.settings.plan);
        let payg_allowed = if is_ai { plan.payg_ai_credits } else { plan.payg_flows_credits };
        let payg = if payg_allowed { self.payg_room(rules).min(left) } else { Credits::ZERO };
        left -= payg;
        ChargeSplit { included, purchased, payg, unbilled: left }
    }

    fn fire_alerts(&mut self, at: Timestamp, payg_before: MicroUsd, events: &mut Vec<LedgerEvent>) {
        let usage = self.periods.get_mut(&self.current.expect("a charge has a period").start).expect("current period is stored");
        let mut crossed = included_alerts_reached(usage);
        let payg_now = usage.payg_amount();
        crossed.extend(self.settings.payg_alerts.iter().filter(|amount| payg_before < **amount && **amount <= payg_now).map(|amount| Alert::PaygAmount(*amount)));
        events.extend(usage.fire(crossed, at));
    }

    fn cancel_run(&mut self, at: Timestamp, run: RunId, events: &mut Vec<LedgerEvent>) -> Result<(), CoreError> {
        let record = self.runs.get_mut(&run).ok_or_else(|| CoreError::UnknownRun { run: run.0.clone() })?;
        if record.status.is_finished() {
            return Err(CoreError::RunAlreadyFinished { run: run.0, status: record.status });
        }
        if record.status == RunStatus::Paused {
            self.paused.remove(&record.seq);
        }
        record.status = RunStatus::Cancelled;
        events.push(LedgerEvent::RunCancelled { run, at });
        Ok(())
    }

    fn purchase(&mut self, rules: &Rules, at: Timestamp, credits: Credits, expires_at: Option<Timestamp>, events: &mut Vec<LedgerEvent>) -> Result<(), CoreError> {
        if !rules.plans.get(self.settings.plan).can_purchase_credits {
            return Err(CoreError::PlanCannotPurchase { plan: self.settings.plan });
        }
        if credits.is_zero() || credits.0 > PURCHASE_CREDITS_MAX {
            return Err(CoreError::AmountOutOfRange { field: "credits", value: credits.0, max: PURCHASE_CREDITS_MAX });
        }
        let expires_at = expires_at.unwrap_or(self.current.expect("advance_to opened a period").end);
        if expires_at <= at {
            return Err(CoreError::ExpiryNotAfterPurchase { at, expires_at });
        }
        let grant = Grant { id: self.grants.len() as u64 + 1, credits, remaining: credits, granted_at: at, expires_at };
        self.grants.push(grant.clone());
        events.push(LedgerEvent::CreditsPurchased { grant });
        self.resume_paused(rules, at, events);
        Ok(())
    }

    fn change_plan(&mut self, rules: &Rules, at: Timestamp, plan: PlanId, events: &mut Vec<LedgerEvent>) {
        let from = std::mem::replace(&mut self.settings.plan, plan);
        let new_plan = rules.plans.get(plan);
        let mut crossed = Vec::new();
        if let Some(usage) = self.current.and_then(|period| self.periods.get_mut(&period.start)) {
            // The new plan's allowance applies to the rest of this period; credits already
            // used stay used, and may already be 75% or all of a smaller allowance.
            usage.included = new_plan.included_credits;
            crossed = usage.fire(included_alerts_reached(usage), at);
        }
        events.push(LedgerEvent::PlanChanged { from, to: plan, at });
        events.extend(crossed);
        if self.settings.payg_enabled && !new_plan.has_payg() {
            self.settings.payg_enabled = false;
            events.push(LedgerEvent::PaygChanged { enabled: false, at });
        }
        self.resume_paused(rules, at, events);
    }

    /// Resumes paused runs, oldest first, while the team has credits left.
    fn resume_paused(&mut self, rules: &Rules, at: Timestamp, events: &mut Vec<LedgerEvent>) {
        while let Some((&seq, _)) = self.paused.first_key_value() {
            if !self.has_credits_left(rules, at) {
                break;
            }
            let run = self.paused.remove(&seq).expect("first key exists");
            self.runs.get_mut(&run).expect("paused runs are known").status = RunStatus::Running;
            events.push(LedgerEvent::RunResumed { run, at });
        }
    }

    fn running_run_mut(&mut self, run: &RunId) -> Result<&mut RunRecord, CoreError> {
        let record = self.runs.get_mut(run).ok_or_else(|| CoreError::UnknownRun { run: run.0.clone() })?;
        if record.status != RunStatus::Running {
            return Err(CoreError::RunNotRunning { run: run.0.clone(), status: record.status });
        }
        Ok(record)
    }
}

/// The included-credit alerts a period's usage has reached (fired or not): its percentage of
/// the allowance, compared in integers (used * 100 >= included * percent).
fn included_alerts_reached(usage: &PeriodUsage) -> Vec<Alert> {
    if usage.included.is_zero() {
        return Vec::new();
    }
    let used = u128::from(usage.included_used.0) * 100;
    let of = usage.included;
    INCLUDED_ALERT_PERCENTS.into_iter().filter(|percent| used >= u128::from(of.0) * u128::from(*percent)).map(|percent| Alert::IncludedPercent { percent, of }).collect()
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::Trigger;

    fn snapshot(ledger: &TeamLedger) -> LedgerSnapshot {
        let current = ledger.current_period().map(|usage| {
            let mut restored = PeriodUsage::restored(usage.period, usage.included, usage.alerts_fired().copied());
            (restored.included_used, restored.purchased_used) = (usage.included_used, usage.purchased_used);
            (restored.payg_credits, restored.unbilled_credits) = (usage.payg_credits, usage.unbilled_credits);
            restored
        });
        let runs = ledger.runs().filter(|(_, record)| !record.status.is_finished()).map(|(run, record)| (run.clone(), record.clone())).collect();
        LedgerSnapshot { settings: ledger.settings().clone(), clock: ledger.clock(), current, grants: ledger.grants().to_vec(), runs, next_run_seq: ledger.next_run_seq() }
    }

    /// A refused step leaves the ledger as it was, clock included, unless a period began.
    #[test]
    fn a_refused_step_changes_nothing_but_a_new_period() {
        let rules = Rules::shipped();
        let mut ledger = TeamLedger::new(TeamSettings::new(PlanId::Team));
        let at: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        ledger.step(&rules, at, Command::SetPayg { enabled: true }).unwrap();
        let end_ghost = || Command::EndRun { run: RunId::new("ghost").unwrap() };
        let refused = ledger.step(&rules, "2026-03-03T00:00:00Z".parse().unwrap(), end_ghost()).unwrap_err();
        assert_eq!((refused.error, refused.kept), (CoreError::UnknownRun { run: "ghost".into() }, Vec::new()));
        assert_eq!(ledger.clock(), Some(at));
        let april: Timestamp = "2026-04-01T00:00:00Z".parse().unwrap();
        let refused = ledger.step(&rules, april, end_ghost()).unwrap_err();
        assert!(matches!(refused.kept[..], [LedgerEvent::PeriodOpened { .. }]));
        assert_eq!((ledger.clock(), ledger.current_period().unwrap().period.start), (Some(april), april));
    }

    /// A restored ledger answers every later command exactly as the one it was saved from.
    #[test]
    fn a_restored_ledger_continues_like_the_original() {
        let rules = Rules::shipped();
        let mut original = TeamLedger::new(TeamSettings::new(PlanId::Team));
        let at: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        let context = RunContext::automated(Trigger::Api).unwrap();
        let run = |id: &str| RunId::new(id).unwrap();
        let charge = |id: &str, n: u32| Command::ChargeBlock { run: run(id), execution: ExecutionId::new(format!("{id}-{n}")).unwrap(), usage: BlockUsage::of_kind(BlockKind::Integration) };
        let before = [Command::StartRun { run: run("a"), context, needs_credits: true }]
            .into_iter()
            .chain((0..60).map(|n| charge("a", n)))
            .chain([Command::StartRun { run: run("b"), context, needs_credits: true }, Command::StartRun { run: run("c"), context, needs_credits: true }]);
        for command in before {
            original.advance_to(&rules, at).unwrap();
            original.apply(&rules, at, command).unwrap();
        }
        assert_eq!(original.paused_runs().count(), 2, "the included credits are gone, so b and c wait");
        let mut restored = TeamLedger::restore(snapshot(&original));
        let later: Timestamp = "2026-04-01T00:00:00Z".parse().unwrap();
        let after = [Command::SetPaygCap { cap: Some(MicroUsd(5_000)) }, charge("a", 99), Command::EndRun { run: run("a") }, Command::CancelRun { run: run("c") }];
        for command in after {
            for ledger in [&mut original, &mut restored] {
                ledger.advance_to(&rules, at).unwrap();
            }
            assert_eq!(original.apply(&rules, at, command.clone()), restored.apply(&rules, at, command));
        }
        assert_eq!(original.advance_to(&rules, later), restored.advance_to(&rules, later), "the new period resumes b in both");
        assert_eq!(original.current_period(), restored.current_period());
        assert_eq!(original.next_run_seq(), restored.next_run_seq());
    }
}
