//! The single writer thread. It owns the write connection and every team's ledger state
//! machine, so decisions for a team are serialized by construction. It takes whatever requests
//! are waiting (up to [`GROUP_REQUESTS_MAX`]), decides each one in memory with the core ledger,
//! writes the outcome, and commits the whole group at once: one fsync acknowledges many callers.
//!
//! A request the ledger refuses writes nothing and does not disturb the others in its group. A
//! database failure rolls the whole group back and drops the cached team states, which are then
//! reloaded from what was committed.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flowcredits_core::{Charge, Command, CoreError, Credits, LedgerEvent, PeriodUsage, Rules, RunId, RunStatus, TeamLedger, TeamSettings, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use super::team::{StoredRun, TeamState, find_run, format_alerts, load_team};
use crate::codec::{alert_code, detail_hash, execution_key, kind_code, location_code, ms, plan_code, status_code, status_from, to_i64, trigger_code};
use crate::error::{Result, StoreError};
use crate::limits::GROUP_REQUESTS_MAX;
use crate::model::{Actor, Admission, BillingChange, ChargeOutcome, NewTeam, StartRun, TeamName, UsageEvent};

/// How a run ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RunEnd {
    Complete,
    Cancel,
}

pub(crate) enum Op {
    CreateTeam(NewTeam),
    Start(TeamName, StartRun),
    Charge(TeamName, Vec<UsageEvent>),
    End(TeamName, RunId, Timestamp, RunEnd),
    Billing(TeamName, Actor, Timestamp, BillingChange),
    CloseAll(Timestamp),
}

pub(crate) enum Reply {
    TeamCreated,
    Admission(Admission),
    Charges(Vec<ChargeOutcome>),
    Done,
    Invoiced(usize),
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: SyncSender<Result<Reply>>,
}

/// Where the writer records how long each admission decision took, when asked to.
pub(crate) type DecisionTimes = Arc<Mutex<Vec<u32>>>;

pub(crate) struct Writer {
    conn: Connection,
    rules: Arc<Rules>,
    teams: HashMap<TeamName, TeamState>,
    next_op: i64,
    pending: Pending,
    decision_ns: Option<DecisionTimes>,
}

/// Balances and rollups changed by the current group, written once at its end rather than once
/// per event.
#[derive(Default)]
struct Pending {
    teams: HashSet<TeamName>,
    grants: HashMap<(i64, u64), Credits>,
    run_credits: HashMap<i64, Credits>,
    /// `(team, period start, kind, trigger)` → `(executions, credits)` to add.
    rollups: HashMap<(i64, i64, i64, i64), (i64, i64)>,
}

/// What one request changed, decided in memory and then written.
struct Effects {
    at: Timestamp,
    events: Vec<LedgerEvent>,
    /// Periods that ended: each gets its final balances and an invoice.
    closed: Vec<PeriodUsage>,
    executions: Vec<NewExecution>,
}

impl Effects {
    fn new(at: Timestamp) -> Effects {
        Effects { at, events: Vec::new(), closed: Vec::new(), executions: Vec::new() }
    }
}

struct NewExecution {
    key: Vec<u8>,
    run: RunId,
    run_row: i64,
    trigger: i64,
    content: Content,
    charge: Charge,
}

/// What makes two events with the same execution id the same event.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Content {
    run_row: i64,
    kind: i64,
    detail_hash: i64,
    credits: i64,
}

impl Writer {
    pub(crate) fn new(conn: Connection, rules: Arc<Rules>, decision_ns: Option<DecisionTimes>) -> Result<Writer> {
        let next_op = read_next_op(&conn)?;
        Ok(Writer { conn, rules, teams: HashMap::new(), next_op, pending: Pending::default(), decision_ns })
    }

    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut group = vec![first];
            while group.len() < GROUP_REQUESTS_MAX {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let mut replies = Vec::with_capacity(group.len());
        let mut results = Vec::with_capacity(group.len());
        let mut failure = self.conn.execute_batch("BEGIN IMMEDIATE").err().map(|err| err.to_string());
        for Request { op, reply } in group {
            let result = match &failure {
                Some(cause) => Err(StoreError::Aborted(cause.clone())),
                None => self.handle(op),
            };
            if let Err(StoreError::Storage(err)) = &result {
                failure = Some(err.to_string());
            }
            results.push(result);
            replies.push(reply);
        }
        let committed = match failure {
            None => self.flush().and_then(|()| Ok(self.conn.execute_batch("COMMIT")?)),
            Some(cause) => Err(StoreError::Aborted(cause)),
        };
        if let Err(err) = committed {
            self.roll_back();
            let cause = err.to_string();
            for result in &mut results {
                // Refusals wrote nothing and stay as they are; everything else was undone.
                if matches!(result, Ok(_) | Err(StoreError::Aborted(_))) {
                    *result = Err(StoreError::Aborted(cause.clone()));
                }
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that gave up waiting has nobody to tell.
            let _ = reply.send(result);
        }
    }

    /// Forgets everything not committed: cached team states are reloaded from disk on next use.
    fn roll_back(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.teams.clear();
        self.pending = Pending::default();
        if let Ok(next_op) = read_next_op(&self.conn) {
            self.next_op = next_op;
        }
    }

    fn handle(&mut self, op: Op) -> Result<Reply> {
        match op {
            Op::CreateTeam(new) => self.create_team(new).map(|()| Reply::TeamCreated),
            Op::Start(team, start) => self.with_team(&team, |writer, state| writer.start_run(&team, state, start)).map(Reply::Admission),
            Op::Charge(team, events) => self.with_team(&team, |writer, state| writer.charge(&team, state, events)).map(Reply::Charges),
            Op::End(team, run, at, end) => self.with_team(&team, |writer, state| writer.end_run(&team, state, run, at, end)).map(|()| Reply::Done),
            Op::Billing(team, actor, at, change) => self.with_team(&team, |writer, state| writer.change_billing(&team, state, &actor, at, change)).map(|()| Reply::Done),
            Op::CloseAll(at) => self.close_all(at).map(Reply::Invoiced),
        }
    }

    /// Runs `f` on the team's state, loading it on first use.
    fn with_team<T>(&mut self, team: &TeamName, f: impl FnOnce(&mut Writer, &mut TeamState) -> Result<T>) -> Result<T> {
        let mut state = match self.teams.remove(team) {
            Some(state) => state,
            None => load_team(&self.conn, team)?,
        };
        let result = f(self, &mut state);
        self.teams.insert(team.clone(), state);
        result
    }

    fn create_team(&mut self, new: NewTeam) -> Result<()> {
        let existing = self.conn.prepare_cached("SELECT 1 FROM teams WHERE name = ?1")?.query_row([new.name.as_str()], |_| Ok(())).optional()?;
        if existing.is_some() {
            let state = load_team(&self.conn, &new.name)?;
            // Creating a team again with the same settings is a retry, not a conflict.
            return if *state.ledger.settings() == new.settings { Ok(()) } else { Err(StoreError::TeamExists { team: new.name.to_string() }) };
        }
        check_settings(&self.rules, &new.settings, new.at)?;
        let settings = &new.settings;
        let sql = "INSERT INTO teams (name, plan, anchor_day, payg, payg_cap_micro_usd, payg_alerts, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
        let cap = settings.payg_cap.map(|cap| to_i64(cap.0));
        self.conn.prepare_cached(sql)?.execute(params![new.name.as_str(), plan_code(settings.plan), settings.anchor_day.get(), settings.payg_enabled, cap, format_alerts(&settings.payg_alerts), ms(new.at)])?;
        let team_id = self.conn.last_insert_rowid();
        let detail = format!("plan {}, anchor day {}, pay-as-you-go {}", settings.plan, settings.anchor_day.get(), if settings.payg_enabled { "on" } else { "off" });
        self.audit(team_id, new.at, new.actor.as_str(), "team_created", &detail)
    }

    fn start_run(&mut self, team: &TeamName, state: &mut TeamState, start: StartRun) -> Result<Admission> {
        let started = Instant::now();
        if let Some(existing) = find_run(&self.conn, state.id, &start.run)? {
            return repeated_start(&start, &existing);
        }
        let command = Command::StartRun { run: start.run.clone(), context: start.context, needs_credits: start.needs_credits };
        let (status, decided_in) = self.decide(team, state, start.at, None, |writer, _, ledger, effects| {
            effects.events.extend(ledger.apply(&writer.rules, effects.at, command)?);
            Ok((ledger.run(&start.run).expect("the ledger just admitted this run").status, started.elapsed()))
        })?;
        if let Some(times) = &self.decision_ns {
            // From the team's state to the decision: the duplicate check, the ledger's
            // admission; not the write that follows nor the commit the caller waits for.
            times.lock().expect("decision times lock").push(u32::try_from(decided_in.as_nanos()).unwrap_or(u32::MAX));
        }
        Ok(Admission { status, replayed: false })
    }

    fn charge(&mut self, team: &TeamName, state: &mut TeamState, events: Vec<UsageEvent>) -> Result<Vec<ChargeOutcome>> {
        let first_at = events.first().map(|event| event.at).ok_or_else(|| StoreError::invalid("events", "the batch is empty"))?;
        self.decide(team, state, first_at, None, |writer, state, ledger, effects| writer.decide_charges(state, ledger, events, effects))
    }

    /// Decides a request on a copy of the team's ledger, so that a refusal leaves the team
    /// exactly as it was; then writes what changed. The one thing a refused request keeps is a
    /// billing period that began before it: that happened with time, not by the request.
    fn decide<T>(&mut self, team: &TeamName, state: &mut TeamState, at: Timestamp, actor: Option<&Actor>, f: impl FnOnce(&Writer, &TeamState, &mut TeamLedger, &mut Effects) -> Result<T>) -> Result<T> {
        let at = at.max(state.ledger.clock().unwrap_or(at));
        let mut ledger = state.ledger.clone();
        let mut effects = Effects::new(at);
        advance_ledger(&self.rules, &mut ledger, at, &mut effects)?;
        let time_changed_things = !effects.events.is_empty();
        match f(self, state, &mut ledger, &mut effects) {
            Ok(value) => {
                state.ledger = ledger;
                self.write(team, state, effects, actor)?;
                Ok(value)
            }
            Err(refusal) => {
                if time_changed_things {
                    self.advance(team, state, at)?;
                }
                Err(refusal)
            }
        }
    }

    fn decide_charges(&self, state: &TeamState, ledger: &mut TeamLedger, events: Vec<UsageEvent>, effects: &mut Effects) -> Result<Vec<ChargeOutcome>> {
        let team_id = state.id;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut in_batch: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut find_execution = self.conn.prepare_cached("SELECT run_id, kind, detail_hash, credits FROM executions WHERE team_id = ?1 AND key = ?2")?;
        for (index, event) in events.into_iter().enumerate() {
            let in_event = |source: StoreError| StoreError::Event { index, source: Box::new(source) };
            let key = execution_key(&event.execution);
            let run_row = match state.open_runs.get(&event.run) {
                Some(&row) => row,
                None => find_run(&self.conn, team_id, &event.run)?.ok_or_else(|| in_event(CoreError::UnknownRun { run: event.run.to_string() }.into()))?.id,
            };
            let content = Content { run_row, kind: kind_code(event.usage.kind), detail_hash: detail_hash(&event.run, &event.usage), credits: 0 };
            let prior = match in_batch.get(&key) {
                Some(&position) => Some(effects.executions[position].content),
                None => find_execution.query_row(params![team_id, &key], |row| Ok(Content { run_row: row.get(0)?, kind: row.get(1)?, detail_hash: row.get(2)?, credits: row.get(3)? })).optional()?,
            };
            if let Some(prior) = prior {
                outcomes.push(replayed_charge(&event, prior, content).map_err(in_event)?);
                continue;
            }
            let at = event.at.max(ledger.clock().unwrap_or(event.at));
            advance_ledger(&self.rules, ledger, at, effects)?;
            let command = Command::ChargeBlock { run: event.run.clone(), execution: event.execution, usage: event.usage };
            let changes = ledger.apply(&self.rules, at, command).map_err(|err| in_event(self.refine_unknown_run(team_id, err)))?;
            let trigger = trigger_code(ledger.run(&event.run).expect("a charged run is known").context.trigger());
            for change in changes {
                let LedgerEvent::BlockCharged(charge) = change else {
                    effects.events.push(change);
                    continue;
                };
                let credits = to_i64(charge.split.total().0);
                outcomes.push(ChargeOutcome { credits: charge.split.total(), replayed: false });
                in_batch.insert(key.clone(), effects.executions.len());
                effects.executions.push(NewExecution { key: key.clone(), run: event.run.clone(), run_row, trigger, content: Content { credits, ..content }, charge });
            }
        }
        Ok(outcomes)
    }

    fn end_run(&mut self, team: &TeamName, state: &mut TeamState, run: RunId, at: Timestamp, end: RunEnd) -> Result<()> {
        let command = match end {
            RunEnd::Complete => Command::EndRun { run },
            RunEnd::Cancel => Command::CancelRun { run },
        };
        self.decide(team, state, at, None, |writer, state, ledger, effects| {
            effects.events.extend(ledger.apply(&writer.rules, effects.at, command).map_err(|err| writer.refine_unknown_run(state.id, err))?);
            Ok(())
        })?;
        state.ledger.forget_finished_runs();
        Ok(())
    }

    fn change_billing(&mut self, team: &TeamName, state: &mut TeamState, actor: &Actor, at: Timestamp, change: BillingChange) -> Result<()> {
        let command = match change {
            BillingChange::SetPayg { enabled } => Command::SetPayg { enabled },
            BillingChange::SetPaygCap { cap } => Command::SetPaygCap { cap },
            BillingChange::SetPaygAlerts { amounts } => Command::SetPaygAlerts { amounts },
            BillingChange::Purchase { credits, expires_at } => Command::Purchase { credits, expires_at },
            BillingChange::ChangePlan { plan } => Command::ChangePlan { plan },
        };
        self.decide(team, state, at, Some(actor), |writer, _, ledger, effects| {
            effects.events.extend(ledger.apply(&writer.rules, effects.at, command)?);
            Ok(())
        })
    }

    /// Moves every team's clock to `at`, closing the periods that ended; returns how many
    /// invoices that issued.
    fn close_all(&mut self, at: Timestamp) -> Result<usize> {
        let names: Vec<String> = self.conn.prepare_cached("SELECT name FROM teams ORDER BY id")?.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
        let mut invoiced = 0;
        for name in names {
            let team = TeamName::new(name).map_err(|err| StoreError::Corrupt(err.to_string()))?;
            invoiced += self.with_team(&team, |writer, state| {
                let invoices_before = writer.invoice_count(state.id)?;
                writer.advance(&team, state, at)?;
                Ok(writer.invoice_count(state.id)? - invoices_before)
            })?;
        }
        Ok(invoiced)
    }

    fn invoice_count(&self, team_id: i64) -> Result<usize> {
        Ok(self.conn.prepare_cached("SELECT count(*) FROM invoices WHERE team_id = ?1")?.query_row([team_id], |row| row.get(0))?)
    }

    /// Moves the team's clock to `at` (never backwards: a late event is recorded at the
    /// team's clock) and writes what that changed.
    fn advance(&mut self, team: &TeamName, state: &mut TeamState, at: Timestamp) -> Result<()> {
        let at = at.max(state.ledger.clock().unwrap_or(at));
        let mut effects = Effects::new(at);
        advance_ledger(&self.rules, &mut state.ledger, at, &mut effects)?;
        self.write(team, state, effects, None)
    }

    /// A run the ledger no longer holds in memory may be a finished run on disk: say so.
    fn refine_unknown_run(&self, team_id: i64, err: CoreError) -> StoreError {
        let CoreError::UnknownRun { run } = &err else { return err.into() };
        let Ok(run_id) = RunId::new(run.clone()) else { return err.into() };
        match find_run(&self.conn, team_id, &run_id) {
            Ok(Some(stored)) => match status_from(stored.status) {
                Ok(status) => CoreError::RunNotRunning { run: run.clone(), status }.into(),
                Err(corrupt) => corrupt,
            },
            Ok(None) => err.into(),
            Err(storage) => storage,
        }
    }

    fn write(&mut self, team: &TeamName, state: &mut TeamState, effects: Effects, actor: Option<&Actor>) -> Result<()> {
        let actor = actor.map_or("system", Actor::as_str);
        for closed in &effects.closed {
            upsert_period(&self.conn, state.id, closed)?;
            insert_invoice(&self.conn, state.id, closed, effects.at)?;
        }
        for event in &effects.events {
            self.write_event(state, event, effects.at, actor)?;
        }
        self.write_executions(state, &effects.executions)?;
        self.pending.teams.insert(team.clone());
        Ok(())
    }

    fn write_event(&mut self, state: &mut TeamState, event: &LedgerEvent, at: Timestamp, actor: &str) -> Result<()> {
        let team_id = state.id;
        match event {
            LedgerEvent::PeriodOpened { .. } | LedgerEvent::BlockCharged(_) => Ok(()),
            LedgerEvent::RunStarted { run, .. } | LedgerEvent::RunPaused { run, .. } => self.insert_run(state, run),
            LedgerEvent::RunResumed { run, .. } => {
                let row = *state.open_runs.get(run).expect("a paused run is open");
                self.conn.prepare_cached("UPDATE runs SET status = ?1 WHERE id = ?2")?.execute(params![status_code(RunStatus::Running), row])?;
                Ok(())
            }
            LedgerEvent::RunCompleted { run, .. } => self.finish_run(state, run, RunStatus::Completed, at),
            LedgerEvent::RunCancelled { run, .. } => self.finish_run(state, run, RunStatus::Cancelled, at),
            LedgerEvent::PaygChanged { enabled, .. } => self.audit(team_id, at, actor, if *enabled { "payg_enabled" } else { "payg_disabled" }, ""),
            LedgerEvent::PaygCapChanged { cap, .. } => {
                let detail = cap.map_or_else(|| "no cap".to_owned(), |cap| format!("${cap} per period"));
                self.audit(team_id, at, actor, "payg_cap_set", &detail)
            }
            LedgerEvent::PaygAlertsChanged { amounts, .. } => {
                let detail = amounts.iter().map(|amount| format!("${amount}")).collect::<Vec<_>>().join(", ");
                self.audit(team_id, at, actor, "payg_alerts_set", &detail)
            }
            LedgerEvent::CreditsPurchased { grant } => {
                let sql = "INSERT INTO grants (team_id, grant_no, credits, remaining, granted_ms, expires_ms) VALUES (?1, ?2, ?3, ?3, ?4, ?5)";
                self.conn.prepare_cached(sql)?.execute(params![team_id, to_i64(grant.id), to_i64(grant.credits.0), ms(grant.granted_at), ms(grant.expires_at)])?;
                self.audit(team_id, at, actor, "credits_purchased", &format!("grant {}: {} credits, expiring {}", grant.id, grant.credits, grant.expires_at))
            }
            LedgerEvent::PlanChanged { from, to, .. } => self.audit(team_id, at, actor, "plan_changed", &format!("{from} to {to}")),
            LedgerEvent::AlertCrossed { alert, period_start, at } => {
                let (kind, value) = alert_code(*alert);
                let sql = "INSERT OR IGNORE INTO alerts (team_id, period_start_ms, kind, value, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)";
                self.conn.prepare_cached(sql)?.execute(params![team_id, ms(*period_start), kind, value, ms(*at)])?;
                Ok(())
            }
        }
    }

    fn insert_run(&mut self, state: &mut TeamState, run: &RunId) -> Result<()> {
        let record = state.ledger.run(run).expect("the ledger just admitted this run");
        let sql = "INSERT INTO runs (team_id, run_key, seq, trigger, location, needs_credits, status, created_ms, start_op) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
        let context = record.context;
        let values = params![state.id, run.as_str(), to_i64(record.seq), trigger_code(context.trigger()), location_code(context.location()), record.needs_credits, status_code(record.status), ms(record.created_at), self.take_op()];
        self.conn.prepare_cached(sql)?.execute(values)?;
        state.open_runs.insert(run.clone(), self.conn.last_insert_rowid());
        Ok(())
    }

    fn finish_run(&mut self, state: &mut TeamState, run: &RunId, status: RunStatus, at: Timestamp) -> Result<()> {
        let row = state.open_runs.remove(run).expect("only open runs finish");
        let credits = state.ledger.run(run).expect("a finishing run is known").credits;
        let sql = "UPDATE runs SET status = ?1, ended_ms = ?2, credits = ?3, end_op = ?4 WHERE id = ?5";
        let op = self.take_op();
        self.conn.prepare_cached(sql)?.execute(params![status_code(status), ms(at), to_i64(credits.0), op, row])?;
        self.pending.run_credits.remove(&row);
        Ok(())
    }

    /// Writes executions and their ledger entries; balances and rollups go to [`Pending`].
    fn write_executions(&mut self, state: &TeamState, executions: &[NewExecution]) -> Result<()> {
        if executions.is_empty() {
            return Ok(());
        }
        let Writer { conn, pending, next_op, .. } = self;
        let mut insert_execution = conn.prepare_cached("INSERT INTO executions (team_id, key, op, run_id, at_ms, kind, detail_hash, credits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?;
        let mut insert_entry = conn.prepare_cached("INSERT INTO entries (team_id, execution_key, period_start_ms, included, purchased, payg, unbilled) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        let mut insert_draw = conn.prepare_cached("INSERT INTO grant_draws (entry_id, team_id, grant_no, credits) VALUES (?1, ?2, ?3, ?4)")?;
        for execution in executions {
            let (charge, content) = (&execution.charge, execution.content);
            let period_ms = ms(charge.period_start);
            insert_execution.execute(params![state.id, &execution.key, *next_op, execution.run_row, ms(charge.at), content.kind, content.detail_hash, content.credits])?;
            *next_op += 1;
            let rollup = pending.rollups.entry((state.id, period_ms, content.kind, execution.trigger)).or_default();
            (rollup.0, rollup.1) = (rollup.0 + 1, rollup.1 + content.credits);
            if content.credits == 0 {
                continue;
            }
            let split = &charge.split;
            insert_entry.execute(params![state.id, &execution.key, period_ms, to_i64(split.included.0), to_i64(split.purchased_total().0), to_i64(split.payg.0), to_i64(split.unbilled.0)])?;
            let entry_id = conn.last_insert_rowid();
            for &(grant_no, credits) in &split.purchased {
                insert_draw.execute(params![entry_id, state.id, to_i64(grant_no), to_i64(credits.0)])?;
                let remaining = state.ledger.grants().iter().find(|grant| grant.id == grant_no).expect("a drawn grant exists").remaining;
                pending.grants.insert((state.id, grant_no), remaining);
            }
            let run_credits = state.ledger.run(&execution.run).expect("a charged run is known").credits;
            pending.run_credits.insert(execution.run_row, run_credits);
        }
        Ok(())
    }

    fn audit(&self, team_id: i64, at: Timestamp, actor: &str, action: &str, detail: &str) -> Result<()> {
        let sql = "INSERT INTO audit_log (team_id, at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)";
        self.conn.prepare_cached(sql)?.execute(params![team_id, ms(at), actor, action, detail])?;
        Ok(())
    }

    fn take_op(&mut self) -> i64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    /// Writes the group's balances and rollups: once per team, grant, run and rollup row, however
    /// many events changed them.
    fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let update_team = "UPDATE teams SET plan = ?1, payg = ?2, payg_cap_micro_usd = ?3, payg_alerts = ?4, clock_ms = ?5, next_run_seq = ?6 WHERE id = ?7";
        for team in &pending.teams {
            let state = &self.teams[team];
            let settings = state.ledger.settings();
            let cap = settings.payg_cap.map(|cap| to_i64(cap.0));
            let values = params![plan_code(settings.plan), settings.payg_enabled, cap, format_alerts(&settings.payg_alerts), state.ledger.clock().map(ms), to_i64(state.ledger.next_run_seq()), state.id];
            self.conn.prepare_cached(update_team)?.execute(values)?;
            if let Some(usage) = state.ledger.current_period() {
                upsert_period(&self.conn, state.id, usage)?;
            }
        }
        let mut update_grant = self.conn.prepare_cached("UPDATE grants SET remaining = ?1 WHERE team_id = ?2 AND grant_no = ?3")?;
        for ((team_id, grant_no), remaining) in pending.grants {
            update_grant.execute(params![to_i64(remaining.0), team_id, to_i64(grant_no)])?;
        }
        let mut update_run = self.conn.prepare_cached("UPDATE runs SET credits = ?1 WHERE id = ?2")?;
        for (row, credits) in pending.run_credits {
            update_run.execute(params![to_i64(credits.0), row])?;
        }
        let upsert_rollup = "INSERT INTO usage_rollups (team_id, period_start_ms, kind, trigger, executions, credits) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
            ON CONFLICT DO UPDATE SET executions = executions + excluded.executions, credits = credits + excluded.credits";
        let mut upsert_rollup = self.conn.prepare_cached(upsert_rollup)?;
        for ((team_id, period_ms, kind, trigger), (executions, credits)) in pending.rollups {
            upsert_rollup.execute(params![team_id, period_ms, kind, trigger, executions, credits])?;
        }
        self.conn.prepare_cached("UPDATE store_meta SET value = ?1 WHERE name = 'next_op'")?.execute([self.next_op])?;
        Ok(())
    }
}

/// Advances the ledger's clock to `at`; a period that ends on the way is kept for its invoice.
fn advance_ledger(rules: &Rules, ledger: &mut TeamLedger, at: Timestamp, effects: &mut Effects) -> Result<()> {
    let stays = ledger.current_period().is_some_and(|usage| usage.period.contains(at));
    let ending = if stays { None } else { ledger.current_period().cloned() };
    let events = ledger.advance_to(rules, at)?;
    effects.closed.extend(ending.filter(|_| events.iter().any(|event| matches!(event, LedgerEvent::PeriodOpened { .. }))));
    effects.events.extend(events);
    Ok(())
}

/// Refuses settings the ledger would refuse: they are tried on a scratch ledger, so the limits
/// live in one place (the core).
fn check_settings(rules: &Rules, settings: &TeamSettings, at: Timestamp) -> Result<()> {
    let mut scratch = TeamLedger::new(TeamSettings { anchor_day: settings.anchor_day, ..TeamSettings::new(settings.plan) });
    scratch.advance_to(rules, at)?;
    let commands = [Command::SetPaygCap { cap: settings.payg_cap }, Command::SetPaygAlerts { amounts: settings.payg_alerts.clone() }, Command::SetPayg { enabled: settings.payg_enabled }];
    for command in commands {
        scratch.apply(rules, at, command)?;
    }
    Ok(())
}

fn repeated_start(start: &StartRun, existing: &StoredRun) -> Result<Admission> {
    let same = existing.trigger == trigger_code(start.context.trigger()) && existing.location == location_code(start.context.location()) && existing.needs_credits == start.needs_credits;
    if !same {
        return Err(StoreError::RunConflict { run: start.run.to_string() });
    }
    Ok(Admission { status: status_from(existing.status)?, replayed: true })
}

fn replayed_charge(event: &UsageEvent, prior: Content, content: Content) -> Result<ChargeOutcome> {
    let difference = if prior.run_row != content.run_row {
        "run"
    } else if prior.kind != content.kind {
        "block kind"
    } else if prior.detail_hash != content.detail_hash {
        "model or tools"
    } else {
        return Ok(ChargeOutcome { credits: Credits(u64::try_from(prior.credits).unwrap_or(0)), replayed: true });
    };
    Err(StoreError::ExecutionConflict { execution: event.execution.to_string(), difference })
}

fn upsert_period(conn: &Connection, team_id: i64, usage: &PeriodUsage) -> Result<()> {
    let sql = "INSERT INTO periods (team_id, start_ms, end_ms, included, included_used, purchased_used, payg_credits, unbilled_credits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
        ON CONFLICT DO UPDATE SET included = excluded.included, included_used = excluded.included_used, purchased_used = excluded.purchased_used, payg_credits = excluded.payg_credits, unbilled_credits = excluded.unbilled_credits";
    let amounts = [usage.included, usage.included_used, usage.purchased_used, usage.payg_credits, usage.unbilled_credits].map(|credits| to_i64(credits.0));
    conn.prepare_cached(sql)?.execute(params![team_id, ms(usage.period.start), ms(usage.period.end), amounts[0], amounts[1], amounts[2], amounts[3], amounts[4]])?;
    Ok(())
}

/// The bill of a period that ended: included credits left unused expire with it.
fn insert_invoice(conn: &Connection, team_id: i64, usage: &PeriodUsage, issued: Timestamp) -> Result<()> {
    let sql = "INSERT OR IGNORE INTO invoices (team_id, period_start_ms, period_end_ms, included, included_used, included_expired, purchased_used, payg_credits, unbilled_credits, amount_due_micro_usd, issued_ms) \
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
    let amounts = [usage.included, usage.included_used, usage.included_remaining(), usage.purchased_used, usage.payg_credits, usage.unbilled_credits].map(|credits| to_i64(credits.0));
    let due = to_i64(usage.payg_amount().0);
    conn.prepare_cached(sql)?.execute(params![team_id, ms(usage.period.start), ms(usage.period.end), amounts[0], amounts[1], amounts[2], amounts[3], amounts[4], amounts[5], due, ms(issued)])?;
    Ok(())
}

fn read_next_op(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT value FROM store_meta WHERE name = 'next_op'", [], |row| row.get(0))?)
}
