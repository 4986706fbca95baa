//! Loading one team's ledger from the database, exactly where the last commit left it.

use foldhash::HashMap;

use flowcredits_core::{AnchorDay, Credits, Grant, LedgerSnapshot, MicroUsd, Period, PeriodUsage, RunId, RunRecord, TeamLedger, TeamSettings};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::codec::{alert_from, context_from, instant, plan_from, status_from, to_u64};
use crate::error::{Result, StoreError};
use crate::model::TeamName;

/// A team as the writer holds it: the ledger state machine, and the row ids of its open runs
/// (finished runs are dropped from memory and looked up on disk when named again).
pub(crate) struct TeamState {
    pub id: i64,
    pub ledger: TeamLedger,
    pub open_runs: HashMap<RunId, i64>,
    /// The largest execution key stored for the team, read on the first charge and kept up to
    /// date as executions are written (the writer is the only one writing them), so that a
    /// charge does not ask the database for it again. `None` until read.
    pub largest_key: Option<Option<Vec<u8>>>,
}

/// The columns of `teams` that make a team's settings.
pub(crate) const TEAM_COLUMNS: &str = "id, name, plan, anchor_day, payg, payg_cap_micro_usd, payg_alerts, clock_ms, next_run_seq, created_ms";

pub(crate) struct TeamRow {
    pub id: i64,
    pub name: String,
    pub settings: TeamSettings,
    pub clock_ms: Option<i64>,
    pub next_run_seq: i64,
    pub created_ms: i64,
}

pub(crate) fn team_row(row: &Row<'_>) -> rusqlite::Result<Result<TeamRow>> {
    let (id, name, plan, anchor, payg): (i64, String, i64, i64, bool) = (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
    let (cap, alerts, clock_ms, next_run_seq, created_ms): (Option<i64>, String, Option<i64>, i64, i64) = (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?);
    Ok((|| {
        let settings = TeamSettings {
            plan: plan_from(plan)?,
            anchor_day: AnchorDay::new(anchor).map_err(|err| StoreError::Corrupt(err.to_string()))?,
            payg_enabled: payg,
            payg_cap: cap.map(to_u64).transpose()?.map(MicroUsd),
            payg_alerts: parse_alerts(&alerts)?,
        };
        Ok(TeamRow { id, name, settings, clock_ms, next_run_seq, created_ms })
    })())
}

pub(crate) fn find_team(conn: &Connection, team: &TeamName) -> Result<TeamRow> {
    let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE name = ?1");
    let row = conn.prepare_cached(&sql)?.query_row([team.as_str()], team_row).optional()?;
    row.ok_or_else(|| StoreError::UnknownTeam { team: team.to_string() })?
}

/// Pay-as-you-go alert amounts as stored: micro-dollars, comma-separated.
pub(crate) fn format_alerts(amounts: &[MicroUsd]) -> String {
    amounts.iter().map(|amount| amount.0.to_string()).collect::<Vec<_>>().join(",")
}

fn parse_alerts(text: &str) -> Result<Vec<MicroUsd>> {
    text.split(',').filter(|part| !part.is_empty()).map(|part| part.parse().map(MicroUsd).map_err(|_| StoreError::Corrupt(format!("payg alert `{part}`")))).collect()
}

pub(crate) fn load_team(conn: &Connection, team: &TeamName) -> Result<TeamState> {
    let row = find_team(conn, team)?;
    let clock = row.clock_ms.map(instant).transpose()?;
    let current = match clock {
        Some(at) => load_period(conn, row.id, Period::containing(row.settings.anchor_day, at))?,
        None => None,
    };
    let (runs, open_runs) = load_open_runs(conn, row.id)?;
    let snapshot = LedgerSnapshot { settings: row.settings, clock, current, grants: load_grants(conn, row.id)?, runs, next_run_seq: to_u64(row.next_run_seq)? };
    Ok(TeamState { id: row.id, ledger: TeamLedger::restore(snapshot), open_runs, largest_key: None })
}

/// One period's balances and the alerts it fired; `None` when the ledger never opened it.
pub(crate) fn load_period(conn: &Connection, team_id: i64, period: Period) -> Result<Option<PeriodUsage>> {
    let sql = "SELECT included, included_used, purchased_used, payg_credits, unbilled_credits FROM periods WHERE team_id = ?1 AND start_ms = ?2";
    let start = period.start.as_millisecond();
    let Some(totals) = conn.prepare_cached(sql)?.query_row(params![team_id, start], |row| Ok([row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?])).optional()? else {
        return Ok(None);
    };
    let mut alerts = Vec::new();
    let mut statement = conn.prepare_cached("SELECT kind, value FROM alerts WHERE team_id = ?1 AND period_start_ms = ?2")?;
    for pair in statement.query_map(params![team_id, start], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (kind, value) = pair?;
        alerts.push(alert_from(kind, value)?);
    }
    let [included, included_used, purchased_used, payg, unbilled] = totals.map(|value| to_u64(value).map(Credits));
    let mut usage = PeriodUsage::restored(period, included?, alerts);
    (usage.included_used, usage.purchased_used, usage.payg_credits, usage.unbilled_credits) = (included_used?, purchased_used?, payg?, unbilled?);
    Ok(Some(usage))
}

/// Every grant the team ever bought (the ledger numbers new grants after them).
pub(crate) fn load_grants(conn: &Connection, team_id: i64) -> Result<Vec<Grant>> {
    let mut statement = conn.prepare_cached("SELECT grant_no, credits, remaining, granted_ms, expires_ms FROM grants WHERE team_id = ?1 ORDER BY grant_no")?;
    let rows = statement.query_map([team_id], |row| Ok([row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?]))?;
    let mut grants = Vec::new();
    for row in rows {
        let [id, credits, remaining, granted_ms, expires_ms] = row?;
        grants.push(Grant { id: to_u64(id)?, credits: Credits(to_u64(credits)?), remaining: Credits(to_u64(remaining)?), granted_at: instant(granted_ms)?, expires_at: instant(expires_ms)? });
    }
    Ok(grants)
}

type OpenRuns = (Vec<(RunId, RunRecord)>, HashMap<RunId, i64>);

fn load_open_runs(conn: &Connection, team_id: i64) -> Result<OpenRuns> {
    let sql = "SELECT id, run_key, seq, trigger, location, needs_credits, status, created_ms, credits FROM runs WHERE team_id = ?1 AND status IN (0, 1) ORDER BY seq";
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map([team_id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, [row.get::<_, i64>(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?])))?;
    let (mut runs, mut open) = (Vec::new(), HashMap::default());
    for row in rows {
        let (row_id, key, [seq, trigger, location, needs_credits, status, created_ms, credits]) = row?;
        let run = RunId::new(key).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let record = RunRecord { context: context_from(trigger, location)?, needs_credits: needs_credits != 0, status: status_from(status)?, created_at: instant(created_ms)?, seq: to_u64(seq)?, credits: Credits(to_u64(credits)?) };
        open.insert(run.clone(), row_id);
        runs.push((run, record));
    }
    Ok((runs, open))
}

/// A run row, finished or not.
pub(crate) struct StoredRun {
    pub id: i64,
    pub trigger: i64,
    pub location: i64,
    pub needs_credits: bool,
    pub status: i64,
    pub credits: i64,
}

pub(crate) fn find_run(conn: &Connection, team_id: i64, run: &RunId) -> Result<Option<StoredRun>> {
    let sql = "SELECT id, trigger, location, needs_credits, status, credits FROM runs WHERE team_id = ?1 AND run_key = ?2";
    let found = conn
        .prepare_cached(sql)?
        .query_row(params![team_id, run.as_str()], |row| Ok(StoredRun { id: row.get(0)?, trigger: row.get(1)?, location: row.get(2)?, needs_credits: row.get(3)?, status: row.get(4)?, credits: row.get(5)? }))
        .optional()?;
    Ok(found)
}
