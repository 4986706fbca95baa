//! The single writer thread. It owns the write connection and every team's ledger state
//! machine, so decisions for a team are serialized by construction. It takes whatever requests
//! are waiting (up to [`GROUP_REQUESTS_MAX`]), decides each one in memory with the core ledger,
//! writes the outcome, and commits the whole group at once: one fsync acknowledges many callers.
//!
//! A request the ledger refuses writes nothing and does not disturb the others in its group. A
//! database failure rolls the whole group back and drops the cached team states, which are then
//! reloaded from what was committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flowcredits_core::{Charge, Command, CoreError, Credits, LedgerEvent, Period, PeriodUsage, Refused, Rules, RunId, RunStatus, TeamLedger, TeamSettings, Timestamp};
use foldhash::HashMap;
use rusqlite::{Connection, OptionalExtension, params};

use super::stats::StatCounters;
use super::syncer::{Answers, Syncer};
use super::team::{StoredRun, TeamState, find_run, format_alerts, load_team};
use crate::bulk::insert_rows;
use crate::codec::{alert_code, detail_hash, execution_key, kind_code, location_code, ms, plan_code, status_code, status_from, to_i64, trigger_code};
use crate::error::{Result, StoreError};
use crate::limits::GROUP_REQUESTS_MAX;
use crate::model::{Actor, Admission, BillingChange, ChargeOutcome, IdempotencyKey, NewTeam, Purchase, Purchased, StartRun, TeamName, UsageEvent};

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
    /// A run's last charges (possibly none), then its completion, whatever the charge's answer.
    ChargeAndEnd(TeamName, RunId, Vec<UsageEvent>, Timestamp),
    /// Billing changes decided in order and applied together, or not at all.
    Billing(TeamName, Actor, Timestamp, Vec<BillingChange>),
    Purchase(TeamName, Actor, Timestamp, Purchase),
    CloseAll(Timestamp),
}

pub(crate) enum Reply {
    TeamCreated,
    Admission(Admission),
    Charges(Vec<ChargeOutcome>),
    /// Boxed: two results would make every reply as large as two errors.
    ChargedAndEnded(Box<crate::ChargedAndEnded>),
    Done,
    /// Billing changes, each with the grant it made when it was a purchase.
    BillingChanged(Vec<Option<flowcredits_core::Grant>>),
    Purchased(Purchased),
    Invoiced(usize),
}

/// Told the request's result once its group is committed (or it was refused), on the writer's
/// thread: it must hand the result on and return, never wait.
pub(crate) type ReplyTo = Box<dyn FnOnce(Result<Reply>) + Send>;

pub(crate) struct Request {
    pub op: Op,
    pub reply: ReplyTo,
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
    /// Answers committed groups once they are on disk; `None` answers at commit (durability
    /// traded away, for benchmarks).
    syncer: Option<Syncer>,
    stats: Arc<StatCounters>,
    /// Set by the checkpoint thread when the WAL is long and nearly all copied: the writer
    /// copies the rest between two groups, so that its next commit rewinds the WAL.
    wal_restart_due: Arc<AtomicBool>,
}

/// Balances and rollups changed by the current group, written once at its end rather than once
/// per event.
#[derive(Default)]
struct Pending {
    /// Teams whose row changed, and whether their current period's balances did too.
    teams: HashMap<TeamName, bool>,
    grants: HashMap<(i64, u64), Credits>,
    run_credits: HashMap<i64, Credits>,
    rollups: HashMap<RollupKey, RollupSums>,
}

/// A usage rollup row: `(team, period start, kind, trigger)`.
type RollupKey = (i64, i64, i64, i64);
/// What to add to a rollup row: `(executions, credits)`.
type RollupSums = (i64, i64);

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
    pub(crate) fn new(conn: Connection, rules: Arc<Rules>, decision_ns: Option<DecisionTimes>, syncer: Option<Syncer>, stats: Arc<StatCounters>, wal_restart_due: Arc<AtomicBool>) -> Result<Writer> {
        let next_op = read_next_op(&conn)?;
        Ok(Writer { conn, rules, teams: HashMap::default(), next_op, pending: Pending::default(), decision_ns, syncer, stats, wal_restart_due })
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
            let (started, requests) = (Instant::now(), group.len());
            self.commit_group(group);
            self.stats.committed(requests, started.elapsed());
            if self.wal_restart_due.swap(false, Ordering::AcqRel) {
                self.finish_checkpoint();
            }
        }
    }

    /// Copies into the database file the commits the checkpoint thread's last pass left in the
    /// WAL (those made during it), with no commit under way, so that the WAL is copied whole
    /// and the next commit starts it again from its beginning (see `Checkpointer`). The
    /// checkpoint syncs the WAL before copying and the database file after, so what it copied
    /// is on disk before any frame is overwritten. Requests wait meanwhile: a few milliseconds,
    /// once per [`crate::limits::WAL_RESTART_FRAMES`] frames.
    fn finish_checkpoint(&mut self) {
        let started = Instant::now();
        // Not whole when a reader still reads an older snapshot from the WAL: the checkpoint
        // thread asks again after its next pass.
        if super::checkpoint_passive(&self.conn).is_some_and(|(frames, copied)| frames == copied) {
            self.stats.wal_copied_whole(started.elapsed());
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        if self.syncer.as_ref().is_some_and(Syncer::failed) {
            // What the disk holds is unknown past the failed sync, and so is the state cached
            // here: nothing more is written until the store is opened again.
            for Request { reply, .. } in group {
                reply(Err(StoreError::SyncFailed("an earlier commit was not confirmed by the disk".into())));
            }
            return;
        }
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
        let answers: Answers = replies.into_iter().zip(results).collect();
        match &self.syncer {
            Some(syncer) => syncer.acknowledge(answers),
            None => answers.into_iter().for_each(|(reply, result)| reply(result)),
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
            Op::ChargeAndEnd(team, run, events, at) => self.with_team(&team, |writer, state| {
                // A database failure aborts the whole group (nothing more is written in its
                // transaction); refusals are the caller's answers.
                let charged = match if events.is_empty() { Ok(Vec::new()) } else { writer.charge(&team, state, events) } {
                    Err(StoreError::Storage(err)) => return Err(StoreError::Storage(err)),
                    charged => charged,
                };
                match writer.end_run(&team, state, run, at, RunEnd::Complete) {
                    Err(StoreError::Storage(err)) => Err(StoreError::Storage(err)),
                    ended => Ok(Reply::ChargedAndEnded(Box::new((charged, ended)))),
                }
            }),
            Op::Billing(team, actor, at, changes) => self.with_team(&team, |writer, state| writer.change_billing(&team, state, &actor, at, changes)).map(Reply::BillingChanged),
            Op::Purchase(team, actor, at, purchase) => self.with_team(&team, |writer, state| writer.purchase(&team, state, &actor, at, purchase)).map(Reply::Purchased),
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
        let (at, events) = self.step(team, state, start.at, command)?;
        let status = state.ledger.run(&start.run).expect("the ledger just admitted this run").status;
        if let Some(times) = &self.decision_ns {
            // From the team's state to the decision: the duplicate check and the ledger's
            // admission; not the write that follows nor the commit the caller waits for.
            times.lock().expect("decision times lock").push(u32::try_from(started.elapsed().as_nanos()).unwrap_or(u32::MAX));
        }
        self.write(team, state, events.into_effects(at), None)?;
        Ok(Admission { status, replayed: false })
    }

    /// One command through the core's [`TeamLedger::step`]: a refusal leaves the team as it
    /// was, except for a billing period that began by `at`, which is written here. Returns the
    /// instant used and the events for the caller to write.
    fn step(&mut self, team: &TeamName, state: &mut TeamState, at: Timestamp, command: Command) -> Result<(Timestamp, Stepped)> {
        let at = at.max(state.ledger.clock().unwrap_or(at));
        let closing = closing_period(&state.ledger, at);
        match state.ledger.step(&self.rules, at, command) {
            Ok(events) => Ok((at, Stepped { events, closing })),
            Err(Refused { error, kept }) => {
                if !kept.is_empty() {
                    self.write(team, state, Stepped { events: kept, closing }.into_effects(at), None)?;
                }
                Err(self.refine_unknown_run(state.id, error))
            }
        }
    }

    fn charge(&mut self, team: &TeamName, state: &mut TeamState, events: Vec<UsageEvent>) -> Result<Vec<ChargeOutcome>> {
        let first_at = events.first().map(|event| event.at).ok_or_else(|| StoreError::invalid("events", "the batch is empty"))?;
        let at = first_at.max(state.ledger.clock().unwrap_or(first_at));
        let mut effects = Effects::new(at);
        let largest_stored = self.largest_key(state)?;
        if events.len() == 1 {
            // One charge is one core step, which undoes itself when refused: no copy needed.
            let decided = self.decide_charges(state.id, &state.open_runs, largest_stored, &mut state.ledger, events, &mut effects);
            // A refusal leaves only the opening of a period that began, in `effects`.
            if decided.is_ok() || !effects.events.is_empty() {
                self.write(team, state, effects, None)?;
            }
            return decided;
        }
        // A batch is all or nothing: a refused event takes back the ones before it. Within the
        // current period that is a few balances (`charge_savepoint`); a batch that reaches into
        // the next period is decided on a copy of the whole ledger, open runs and all.
        let latest = events.iter().map(|event| event.at).max().unwrap_or(at);
        let savepoint = state.ledger.charge_savepoint(events.iter().map(|event| &event.run), latest);
        let mut copy = savepoint.is_none().then(|| state.ledger.clone());
        let ledger = copy.as_mut().unwrap_or(&mut state.ledger);
        match self.decide_charges(state.id, &state.open_runs, largest_stored, ledger, events, &mut effects) {
            Ok(outcomes) => {
                if let Some(copy) = copy {
                    state.ledger = copy;
                }
                self.write(team, state, effects, None)?;
                Ok(outcomes)
            }
            Err(refusal) => {
                match savepoint {
                    Some(savepoint) => state.ledger.roll_back_charges(savepoint),
                    // The batch's first instant began a period: that stays.
                    None if state.ledger.current_period().is_none_or(|usage| !usage.period.contains(at)) => self.advance(team, state, at)?,
                    None => {}
                }
                Err(refusal)
            }
        }
    }

    /// The largest execution key stored for the team: read once, then kept by
    /// [`Self::write_executions`].
    fn largest_key(&self, state: &mut TeamState) -> Result<Option<Vec<u8>>> {
        if state.largest_key.is_none() {
            let stored: Option<Vec<u8>> = self.conn.prepare_cached("SELECT max(key) FROM executions WHERE team_id = ?1")?.query_row([state.id], |row| row.get(0))?;
            state.largest_key = Some(stored);
        }
        Ok(state.largest_key.clone().flatten())
    }

    fn decide_charges(&self, team_id: i64, open_runs: &HashMap<RunId, i64>, largest_stored: Option<Vec<u8>>, ledger: &mut TeamLedger, events: Vec<UsageEvent>, effects: &mut Effects) -> Result<Vec<ChargeOutcome>> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut find_execution = self.conn.prepare_cached("SELECT run_id, kind, detail_hash, credits FROM executions WHERE team_id = ?1 AND key = ?2")?;
        let mut batch = BatchKeys::new(largest_stored);
        for (index, event) in events.into_iter().enumerate() {
            let in_event = |source: StoreError| StoreError::Event { index, source: Box::new(source) };
            let key = execution_key(&event.execution);
            let run_row = match open_runs.get(&event.run) {
                Some(&row) => row,
                None => find_run(&self.conn, team_id, &event.run)?.ok_or_else(|| in_event(CoreError::UnknownRun { run: event.run.to_string() }.into()))?.id,
            };
            let content = Content { run_row, kind: kind_code(event.usage.kind), detail_hash: detail_hash(&event.run, &event.usage), credits: 0 };
            let prior = match batch.seen(&key, &effects.executions) {
                Seen::New => None,
                Seen::InBatch(position) => Some(effects.executions[position].content),
                Seen::MaybeStored => find_execution.query_row(params![team_id, &key], |row| Ok(Content { run_row: row.get(0)?, kind: row.get(1)?, detail_hash: row.get(2)?, credits: row.get(3)? })).optional()?,
            };
            if let Some(prior) = prior {
                outcomes.push(replayed_charge(&event, prior, content).map_err(in_event)?);
                continue;
            }
            let at = event.at.max(ledger.clock().unwrap_or(event.at));
            let closing = closing_period(ledger, at);
            let command = Command::ChargeBlock { run: event.run.clone(), execution: event.execution, usage: event.usage };
            let changes = match ledger.step(&self.rules, at, command) {
                Ok(changes) => changes,
                Err(Refused { error, kept }) => {
                    effects.add(Stepped { events: kept, closing });
                    return Err(in_event(self.refine_unknown_run(team_id, error)));
                }
            };
            let trigger = trigger_code(ledger.run(&event.run).expect("a charged run is known").context.trigger());
            let mut rest = Vec::new();
            for change in changes {
                let LedgerEvent::BlockCharged(charge) = change else {
                    rest.push(change);
                    continue;
                };
                let credits = to_i64(charge.split.total().0);
                outcomes.push(ChargeOutcome { credits: charge.split.total(), replayed: false });
                batch.add(&key, &effects.executions);
                effects.executions.push(NewExecution { key: key.clone(), run: event.run.clone(), run_row, trigger, content: Content { credits, ..content }, charge });
            }
            effects.add(Stepped { events: rest, closing });
        }
        Ok(outcomes)
    }

    fn end_run(&mut self, team: &TeamName, state: &mut TeamState, run: RunId, at: Timestamp, end: RunEnd) -> Result<()> {
        let command = match end {
            RunEnd::Complete => Command::EndRun { run },
            RunEnd::Cancel => Command::CancelRun { run },
        };
        let (at, events) = self.step(team, state, at, command)?;
        self.write(team, state, events.into_effects(at), None)?;
        state.ledger.forget_finished_runs();
        Ok(())
    }

    /// Decides `changes` in order on a copy of the team's ledger, so that a refused change
    /// undoes the ones before it; writes them all (each event with its own audit line) only
    /// when every one was taken.
    fn change_billing(&mut self, team: &TeamName, state: &mut TeamState, actor: &Actor, at: Timestamp, changes: Vec<BillingChange>) -> Result<Vec<Option<flowcredits_core::Grant>>> {
        let at = at.max(state.ledger.clock().unwrap_or(at));
        let mut ledger = state.ledger.clone();
        let mut effects = Effects::new(at);
        let mut grants = Vec::with_capacity(changes.len());
        for (index, change) in changes.into_iter().enumerate() {
            let closing = closing_period(&ledger, at);
            match ledger.step(&self.rules, at, billing_command(change)) {
                Ok(events) => {
                    grants.push(events.iter().find_map(|event| match event {
                        LedgerEvent::CreditsPurchased { grant } => Some(grant.clone()),
                        _ => None,
                    }));
                    effects.add(Stepped { events, closing });
                }
                Err(Refused { error, .. }) => {
                    if state.ledger.current_period().is_none_or(|usage| !usage.period.contains(at)) {
                        // The instant began a billing period: that happened with time and stays.
                        self.advance(team, state, at)?;
                    }
                    return Err(StoreError::Change { index, source: Box::new(self.refine_unknown_run(state.id, error)) });
                }
            }
        }
        state.ledger = ledger;
        self.write(team, state, effects, Some(actor))?;
        Ok(grants)
    }

    /// A purchase, looked up first by its idempotency key: a key the team used before answers
    /// with the grant it bought (the same request) or is refused (another request); a new key
    /// is recorded with the grant, in the same transaction as the purchase.
    fn purchase(&mut self, team: &TeamName, state: &mut TeamState, actor: &Actor, at: Timestamp, purchase: Purchase) -> Result<Purchased> {
        let Purchase { credits, expires_at, key } = purchase;
        let expires_ms = expires_at.map(ms);
        if let Some(key) = &key
            && let Some(prior) = self.find_purchase_key(state.id, key)?
        {
            let difference = if prior.credits != to_i64(credits.0) {
                "credits"
            } else if prior.expires_ms != expires_ms {
                "expires_at"
            } else {
                let grant = state.ledger.grants().iter().find(|grant| to_i64(grant.id) == prior.grant_no).cloned();
                let grant = grant.ok_or_else(|| StoreError::Corrupt(format!("idempotency key `{}` names grant {}, which the team lacks", key.as_str(), prior.grant_no)))?;
                return Ok(Purchased { grant, replayed: true });
            };
            return Err(StoreError::IdempotencyConflict { key: key.as_str().to_owned(), difference });
        }
        let grants = self.change_billing(team, state, actor, at, vec![BillingChange::Purchase { credits, expires_at }]).map_err(outside_batch)?;
        let grant = grants.into_iter().next().flatten().ok_or_else(|| StoreError::Corrupt("the ledger recorded a purchase without a grant".into()))?;
        if let Some(key) = key {
            let sql = "INSERT INTO purchase_keys (team_id, key, credits, expires_ms, grant_no, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
            self.conn.prepare_cached(sql)?.execute(params![state.id, key.as_str(), to_i64(credits.0), expires_ms, to_i64(grant.id), ms(grant.granted_at)])?;
        }
        Ok(Purchased { grant, replayed: false })
    }

    fn find_purchase_key(&self, team_id: i64, key: &IdempotencyKey) -> Result<Option<PurchaseKey>> {
        let sql = "SELECT credits, expires_ms, grant_no FROM purchase_keys WHERE team_id = ?1 AND key = ?2";
        let found = self.conn.prepare_cached(sql)?.query_row(params![team_id, key.as_str()], |row| Ok(PurchaseKey { credits: row.get(0)?, expires_ms: row.get(1)?, grant_no: row.get(2)? })).optional()?;
        Ok(found)
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
        self.bill_idle_periods(state, &effects)?;
        for event in &effects.events {
            self.write_event(state, event, effects.at, actor)?;
        }
        self.write_executions(state, &effects.executions)?;
        // The period's balances change with charges, a new period and a plan change only.
        let balances_changed = !effects.executions.is_empty() || effects.events.iter().any(|event| matches!(event, LedgerEvent::PeriodOpened { .. } | LedgerEvent::PlanChanged { .. }));
        let dirty = self.pending.teams.entry(team.clone()).or_insert(false);
        *dirty |= balances_changed;
        Ok(())
    }

    /// Periods that passed between the one that closed and the one that opened, with no step
    /// of the team's in them: each is invoiced too (nothing used, its included credits
    /// expired), since every period gets an invoice. The core's ledger never opened them, so
    /// they are made here, at the plan the team had throughout; like the core, the store lists
    /// among its periods only those in which something happened.
    fn bill_idle_periods(&self, state: &TeamState, effects: &Effects) -> Result<()> {
        let Some(closed) = effects.closed.last() else { return Ok(()) };
        let opened = effects.events.iter().find_map(|event| match event {
            LedgerEvent::PeriodOpened { period, included } => Some((*period, *included)),
            _ => None,
        });
        let Some((opened, included)) = opened else { return Ok(()) };
        let mut start = closed.period.end;
        while start < opened.start {
            let idle = PeriodUsage::new(Period::containing(state.ledger.settings().anchor_day, start), included);
            insert_invoice(&self.conn, state.id, &idle, effects.at)?;
            start = idle.period.end;
        }
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
            LedgerEvent::PlanChanged { from, to, .. } => self.audit(team_id, at, actor, super::read::PLAN_CHANGED_ACTION, &super::read::plan_change_detail(*from, *to)),
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

    /// Writes executions and their ledger entries; balances and rollups go to [`Pending`]. An
    /// entry's id is its execution's op number.
    fn write_executions(&mut self, state: &mut TeamState, executions: &[NewExecution]) -> Result<()> {
        let Some(largest_written) = executions.iter().map(|execution| &execution.key).max() else { return Ok(()) };
        // Kept only once read: until then the database answers, these rows included.
        if let Some(largest) = &mut state.largest_key
            && largest.as_ref().is_none_or(|stored| largest_written > stored)
        {
            *largest = Some(largest_written.clone());
        }
        let first_op = self.next_op;
        self.next_op += executions.len() as i64;
        let rows: Vec<(i64, &NewExecution)> = executions.iter().enumerate().map(|(index, execution)| (first_op + index as i64, execution)).collect();
        insert_rows(&self.conn, "INSERT INTO executions (team_id, key, op, run_id, at_ms, kind, detail_hash, credits, period_start_ms)", 9, &rows, |statement, first, (op, execution)| {
            let (charge, content) = (&execution.charge, execution.content);
            let values: [&dyn rusqlite::ToSql; 9] = [&state.id, &execution.key, op, &execution.run_row, &ms(charge.at), &content.kind, &content.detail_hash, &content.credits, &ms(charge.period_start)];
            bind_all(statement, first, &values)
        })?;
        let charged: Vec<&(i64, &NewExecution)> = rows.iter().filter(|(_, execution)| execution.content.credits > 0).collect();
        insert_rows(&self.conn, "INSERT INTO entries (id, included, purchased, payg, unbilled)", 5, &charged, |statement, first, (op, execution)| {
            let split = &execution.charge.split;
            let amounts = [split.included, split.purchased_total(), split.payg, split.unbilled].map(|credits| to_i64(credits.0));
            let values: [&dyn rusqlite::ToSql; 5] = [op, &amounts[0], &amounts[1], &amounts[2], &amounts[3]];
            bind_all(statement, first, &values)
        })?;
        self.record_pending(state, &rows)
    }

    /// Grant draws (rare), and the balances and rollups the executions change, for
    /// [`Self::flush`]. Consecutive executions nearly always share a rollup row and a run, so
    /// each is added up locally and recorded once per change.
    fn record_pending(&mut self, state: &TeamState, rows: &[(i64, &NewExecution)]) -> Result<()> {
        let mut rollup: Option<(RollupKey, RollupSums)> = None;
        let mut last_run: Option<&NewExecution> = None;
        for &(op, execution) in rows {
            let (charge, content) = (&execution.charge, execution.content);
            let key = (state.id, ms(charge.period_start), content.kind, execution.trigger);
            match &mut rollup {
                Some((current, sums)) if *current == key => (sums.0, sums.1) = (sums.0 + 1, sums.1 + content.credits),
                _ => self.add_rollup(rollup.replace((key, (1, content.credits)))),
            }
            if content.credits == 0 {
                continue;
            }
            for &(grant_no, credits) in &charge.split.purchased {
                let sql = "INSERT INTO grant_draws (entry_id, team_id, grant_no, credits) VALUES (?1, ?2, ?3, ?4)";
                self.conn.prepare_cached(sql)?.execute(params![op, state.id, to_i64(grant_no), to_i64(credits.0)])?;
                let remaining = state.ledger.grants().iter().find(|grant| grant.id == grant_no).expect("a drawn grant exists").remaining;
                self.pending.grants.insert((state.id, grant_no), remaining);
            }
            if last_run.is_some_and(|last| last.run_row != execution.run_row) {
                self.add_run_credits(state, last_run.take().expect("checked above"));
            }
            last_run = Some(execution);
        }
        self.add_rollup(rollup);
        if let Some(execution) = last_run {
            self.add_run_credits(state, execution);
        }
        Ok(())
    }

    fn add_rollup(&mut self, rollup: Option<(RollupKey, RollupSums)>) {
        if let Some((key, (executions, credits))) = rollup {
            let sums = self.pending.rollups.entry(key).or_default();
            (sums.0, sums.1) = (sums.0 + executions, sums.1 + credits);
        }
    }

    fn add_run_credits(&mut self, state: &TeamState, execution: &NewExecution) {
        let credits = state.ledger.run(&execution.run).expect("a charged run is known").credits;
        self.pending.run_credits.insert(execution.run_row, credits);
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
        for (team, balances_changed) in &pending.teams {
            let state = &self.teams[team];
            let settings = state.ledger.settings();
            let cap = settings.payg_cap.map(|cap| to_i64(cap.0));
            let values = params![plan_code(settings.plan), settings.payg_enabled, cap, format_alerts(&settings.payg_alerts), state.ledger.clock().map(ms), to_i64(state.ledger.next_run_seq()), state.id];
            self.conn.prepare_cached(update_team)?.execute(values)?;
            if let Some(usage) = state.ledger.current_period().filter(|_| *balances_changed) {
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

/// A purchase's idempotency key as recorded: the request it was first used with, and its grant.
struct PurchaseKey {
    credits: i64,
    expires_ms: Option<i64>,
    grant_no: i64,
}

fn billing_command(change: BillingChange) -> Command {
    match change {
        BillingChange::SetPayg { enabled } => Command::SetPayg { enabled },
        BillingChange::SetPaygCap { cap } => Command::SetPaygCap { cap },
        BillingChange::SetPaygAlerts { amounts } => Command::SetPaygAlerts { amounts },
        BillingChange::Purchase { credits, expires_at } => Command::Purchase { credits, expires_at },
        BillingChange::ChangePlan { plan } => Command::ChangePlan { plan },
    }
}

/// The refusal of a batch of one change, without the batch position that wraps it.
pub(crate) fn outside_batch(err: StoreError) -> StoreError {
    match err {
        StoreError::Change { source, .. } => *source,
        other => other,
    }
}

/// Where an execution key of a batch was seen before.
enum Seen {
    /// Above every stored key and every key earlier in the batch: new.
    New,
    /// Decided earlier in this batch, at this position.
    InBatch(usize),
    /// Not earlier in this batch; only the database can tell.
    MaybeStored,
}

/// The keys a batch has decided so far. Time-ordered ids arrive in increasing order, so the
/// common case needs neither a database lookup nor a hash map: a key above the largest one seen
/// is new, and the batch's keys stay sorted for a binary search. Out-of-order keys switch to a
/// map.
struct BatchKeys {
    largest: Option<Vec<u8>>,
    /// `None` while the batch's keys are sorted.
    unordered: Option<HashMap<Vec<u8>, usize>>,
}

impl BatchKeys {
    fn new(largest_stored: Option<Vec<u8>>) -> BatchKeys {
        BatchKeys { largest: largest_stored, unordered: None }
    }

    fn seen(&self, key: &[u8], decided: &[NewExecution]) -> Seen {
        if self.largest.as_deref().is_none_or(|largest| key > largest) {
            return Seen::New;
        }
        let position = match &self.unordered {
            None => decided.binary_search_by(|execution| execution.key.as_slice().cmp(key)).ok(),
            Some(positions) => positions.get(key).copied(),
        };
        position.map_or(Seen::MaybeStored, Seen::InBatch)
    }

    /// Records `key`, about to be pushed after `decided`.
    fn add(&mut self, key: &[u8], decided: &[NewExecution]) {
        let in_order = decided.last().is_none_or(|last| last.key.as_slice() < key);
        if !in_order && self.unordered.is_none() {
            self.unordered = Some(decided.iter().enumerate().map(|(position, execution)| (execution.key.clone(), position)).collect());
        }
        if let Some(positions) = &mut self.unordered {
            positions.insert(key.to_vec(), decided.len());
        }
        match &mut self.largest {
            Some(largest) if key <= largest.as_slice() => {}
            Some(largest) => {
                largest.clear();
                largest.extend_from_slice(key);
            }
            None => self.largest = Some(key.to_vec()),
        }
    }
}

/// Advances the ledger's clock to `at`; a period that ends on the way is kept for its invoice.
fn advance_ledger(rules: &Rules, ledger: &mut TeamLedger, at: Timestamp, effects: &mut Effects) -> Result<()> {
    let closing = closing_period(ledger, at);
    let events = ledger.advance_to(rules, at)?;
    effects.add(Stepped { events, closing });
    Ok(())
}

/// The current period, when `at` is past its end: what an invoice is made from if it closes.
fn closing_period(ledger: &TeamLedger, at: Timestamp) -> Option<PeriodUsage> {
    ledger.current_period().filter(|usage| !usage.period.contains(at)).cloned()
}

/// Events of one core step, with the period that was current before it.
struct Stepped {
    events: Vec<LedgerEvent>,
    closing: Option<PeriodUsage>,
}

impl Stepped {
    fn into_effects(self, at: Timestamp) -> Effects {
        let mut effects = Effects::new(at);
        effects.add(self);
        effects
    }
}

impl Effects {
    /// Adds a step's events; its closing period is kept only if a new period did open.
    fn add(&mut self, stepped: Stepped) {
        let opened = stepped.events.iter().any(|event| matches!(event, LedgerEvent::PeriodOpened { .. }));
        self.closed.extend(stepped.closing.filter(|_| opened));
        self.events.extend(stepped.events);
    }
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

fn bind_all(statement: &mut rusqlite::Statement<'_>, first: usize, values: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<()> {
    for (offset, value) in values.iter().enumerate() {
        statement.raw_bind_parameter(first + offset, value)?;
    }
    Ok(())
}

fn read_next_op(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT value FROM store_meta WHERE name = 'next_op'", [], |row| row.get(0))?)
}
