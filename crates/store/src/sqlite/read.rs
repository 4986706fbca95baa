//! Queries on committed data: teams, runs, usage (from the balances and rollups, never a scan
//! of executions), invoices and the audit log.

use flowcredits_core::{Credits, MicroUsd, Period, PeriodUsage, PlanId, Rules, RunId, RunStatus};
use jiff::civil::Date;
use jiff::tz::Offset;
use rusqlite::{Connection, OptionalExtension, params};

use super::team::{TEAM_COLUMNS, TeamRow, find_run, find_team, load_period, team_row};
use crate::codec::{context_from, instant, kind_from, run_execution_keys, status_code, status_from, to_u64, trigger_from};
use crate::error::{Result, StoreError};
use crate::model::{AuditEntry, Invoice, LedgerRun, PlanChange, RunInfo, RunTimes, TeamInfo, TeamName, UsageLine, UsageReport};

/// Runs `f` in one read transaction, so that every query sees the same commit.
pub(super) fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let result = f(conn);
    conn.execute_batch("COMMIT")?;
    result
}

fn info(row: TeamRow) -> Result<TeamInfo> {
    let name = TeamName::new(row.name).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    Ok(TeamInfo { name, settings: row.settings, created_at: instant(row.created_ms)?, clock: row.clock_ms.map(instant).transpose()? })
}

pub(super) fn team(conn: &Connection, team: &TeamName) -> Result<TeamInfo> {
    info(find_team(conn, team)?)
}

pub(super) fn teams(conn: &Connection) -> Result<Vec<TeamInfo>> {
    let mut statement = conn.prepare_cached(&format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY name"))?;
    let rows = statement.query_map([], team_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(|row| info(row?)).collect()
}

pub(super) fn run(conn: &Connection, team: &TeamName, run: &RunId) -> Result<Option<RunInfo>> {
    let team = find_team(conn, team)?;
    let Some(stored) = find_run(conn, team.id, run)? else { return Ok(None) };
    Ok(Some(RunInfo { status: status_from(stored.status)?, credits: Credits(to_u64(stored.credits)?), context: context_from(stored.trigger, stored.location)? }))
}

pub(super) fn run_times(conn: &Connection, team: &TeamName, run: &RunId) -> Result<Option<RunTimes>> {
    snapshot(conn, |conn| {
        let team = find_team(conn, team)?;
        let times = conn.prepare_cached("SELECT id, created_ms, ended_ms FROM runs WHERE team_id = ?1 AND run_key = ?2")?.query_row(params![team.id, run.as_str()], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Option<i64>>(2)?))).optional()?;
        let Some((run_row, created_ms, ended_ms)) = times else { return Ok(None) };
        let (from, to) = run_execution_keys(run);
        let sql = "SELECT MAX(at_ms) FROM executions WHERE team_id = ?1 AND key >= ?2 AND key < ?3 AND run_id = ?4";
        let last_ms: Option<i64> = conn.prepare_cached(sql)?.query_row(params![team.id, from, to, run_row], |row| row.get(0))?;
        Ok(Some(RunTimes { created_at: instant(created_ms)?, ended_at: ended_ms.map(instant).transpose()?, last_charge_at: last_ms.map(instant).transpose()? }))
    })
}

pub(super) fn running_runs(conn: &Connection) -> Result<Vec<(TeamName, RunId)>> {
    let sql = "SELECT teams.name, runs.run_key FROM runs JOIN teams ON teams.id = runs.team_id WHERE runs.status = ?1 ORDER BY runs.id";
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map([status_code(RunStatus::Running)], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(team, run)| {
            let corrupt = |err: StoreError| StoreError::Corrupt(err.to_string());
            Ok((TeamName::new(team).map_err(corrupt)?, RunId::new(run).map_err(|err| StoreError::Corrupt(err.to_string()))?))
        })
        .collect()
}

pub(super) fn runs_since(conn: &Connection, since: flowcredits_core::Timestamp, limit: usize) -> Result<Vec<LedgerRun>> {
    // Newest first by row id (the order runs were admitted in), stopping at the first run
    // older than `since`: a read of the runs asked for, not a scan of every run.
    let sql = "SELECT teams.name, runs.run_key, runs.status, runs.credits, runs.trigger, runs.location, runs.created_ms, runs.ended_ms \
               FROM runs JOIN teams ON teams.id = runs.team_id ORDER BY runs.id DESC";
    let corrupt = |err: StoreError| StoreError::Corrupt(err.to_string());
    let since_ms = since.as_millisecond();
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query([])?;
    let mut runs = Vec::new();
    while runs.len() < limit {
        let Some(row) = rows.next()? else { break };
        let created_ms: i64 = row.get(6)?;
        if created_ms < since_ms {
            break;
        }
        let (team, run): (String, String) = (row.get(0)?, row.get(1)?);
        let info = RunInfo { status: status_from(row.get(2)?)?, credits: Credits(to_u64(row.get(3)?)?), context: context_from(row.get(4)?, row.get(5)?)? };
        let ended_at = row.get::<_, Option<i64>>(7)?.map(instant).transpose()?;
        runs.push(LedgerRun { team: TeamName::new(team).map_err(corrupt)?, run: RunId::new(run).map_err(|err| StoreError::Corrupt(err.to_string()))?, info, created_at: instant(created_ms)?, ended_at });
    }
    runs.reverse();
    Ok(runs)
}

pub(super) fn periods(conn: &Connection, team: &TeamName) -> Result<Vec<PeriodUsage>> {
    snapshot(conn, |conn| {
        let team = find_team(conn, team)?;
        let mut statement = conn.prepare_cached("SELECT start_ms, end_ms FROM periods WHERE team_id = ?1 ORDER BY start_ms")?;
        let bounds = statement.query_map([team.id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        let mut periods = Vec::with_capacity(bounds.len());
        for (start, end) in bounds {
            let period = Period { start: instant(start)?, end: instant(end)? };
            periods.extend(load_period(conn, team.id, period)?);
        }
        Ok(periods)
    })
}

/// The period named `YYYY-MM` (the one starting on the team's anchor day of that month), or the
/// one `as_of` is in.
fn chosen_period(team: &TeamRow, month: Option<&str>, as_of: jiff::Timestamp) -> Result<Period> {
    let anchor = team.settings.anchor_day;
    let Some(month) = month else {
        return Ok(Period::containing(anchor, as_of));
    };
    let bad = || StoreError::BadPeriod { period: month.to_owned(), problem: "is not a month written as YYYY-MM" };
    let (year, month_number) = month.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || month_number.len() != 2 {
        return Err(bad());
    }
    let (year, month_number): (i16, i8) = (year.parse().map_err(|_| bad())?, month_number.parse().map_err(|_| bad())?);
    let date = Date::new(year, month_number, anchor.get() as i8).map_err(|_| bad())?;
    let start = Offset::UTC.to_timestamp(date.to_datetime(jiff::civil::Time::midnight())).map_err(|_| bad())?;
    flowcredits_core::check_supported(start).map_err(|_| StoreError::BadPeriod { period: month.to_owned(), problem: "is after 9998-12, the last month flowcredits handles" })?;
    let period = Period::containing(anchor, start);
    // A period that ended before the team existed has no usage and no allowance to show.
    if period.end.as_millisecond() <= team.created_ms {
        return Err(StoreError::BadPeriod { period: month.to_owned(), problem: "ended before the team was created" });
    }
    Ok(period)
}

/// `rules` give the plan's allowance for a period the ledger has not opened yet. The report is
/// read as of `at`, or of the team's clock when that is later (the ledger never goes back).
pub(super) fn usage(conn: &Connection, rules: &Rules, team: &TeamName, month: Option<&str>, at: jiff::Timestamp) -> Result<UsageReport> {
    snapshot(conn, |conn| {
        let row = find_team(conn, team)?;
        let as_of = at.max(instant(row.clock_ms.unwrap_or(row.created_ms))?);
        let period = chosen_period(&row, month, as_of)?;
        let usage = load_period(conn, row.id, period)?;
        // A period with nothing in it has no row: its allowance is on its invoice when it has
        // ended (the plan then), else the plan's now.
        let included = match &usage {
            Some(usage) => usage.included,
            None => {
                let invoiced: Option<i64> = conn.prepare_cached("SELECT included FROM invoices WHERE team_id = ?1 AND period_start_ms = ?2")?.query_row(params![row.id, period.start.as_millisecond()], |row| row.get(0)).optional()?;
                match invoiced {
                    Some(included) => Credits(to_u64(included)?),
                    None => rules.plans.get(row.settings.plan).included_credits,
                }
            }
        };
        // Purchases usable from here on into the period: those that will have expired by the
        // start of a period not begun yet cannot be drawn in it.
        let usable_at = as_of.max(period.start).as_millisecond();
        let purchased_remaining = conn
            .prepare_cached("SELECT coalesce(sum(remaining), 0) FROM grants WHERE team_id = ?1 AND granted_ms <= ?2 AND ?2 < expires_ms")?
            .query_row(params![row.id, usable_at], |row| row.get::<_, i64>(0))?;
        let mut report = UsageReport {
            team: team.clone(),
            period,
            included,
            included_used: Credits::ZERO,
            purchased_used: Credits::ZERO,
            payg_credits: Credits::ZERO,
            unbilled_credits: Credits::ZERO,
            purchased_remaining: Credits(to_u64(purchased_remaining)?),
            as_of,
            breakdown: breakdown(conn, row.id, period)?,
        };
        if let Some(usage) = usage {
            (report.included_used, report.purchased_used, report.payg_credits, report.unbilled_credits) = (usage.included_used, usage.purchased_used, usage.payg_credits, usage.unbilled_credits);
        }
        Ok(report)
    })
}

fn breakdown(conn: &Connection, team_id: i64, period: Period) -> Result<Vec<UsageLine>> {
    let sql = "SELECT kind, trigger, executions, credits FROM usage_rollups WHERE team_id = ?1 AND period_start_ms = ?2 ORDER BY credits DESC, executions DESC, kind, trigger";
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params![team_id, period.start.as_millisecond()], |row| Ok([row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?]))?;
    let mut lines = Vec::new();
    for row in rows {
        let [kind, trigger, executions, credits] = row?;
        lines.push(UsageLine { kind: kind_from(kind)?, trigger: trigger_from(trigger)?, executions: to_u64(executions)?, credits: Credits(to_u64(credits)?) });
    }
    Ok(lines)
}

pub(super) fn invoices(conn: &Connection, team: &TeamName) -> Result<Vec<Invoice>> {
    let team = find_team(conn, team)?;
    let sql = "SELECT period_start_ms, period_end_ms, included, included_used, included_expired, purchased_used, payg_credits, unbilled_credits, amount_due_micro_usd, issued_ms \
        FROM invoices WHERE team_id = ?1 ORDER BY period_start_ms";
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map([team.id], |row| {
        let mut values = [0i64; 10];
        for (index, value) in values.iter_mut().enumerate() {
            *value = row.get(index)?;
        }
        Ok(values)
    })?;
    let mut invoices = Vec::new();
    for row in rows {
        let [start, end, included, included_used, expired, purchased_used, payg, unbilled, due, issued] = row?;
        let credits = |value: i64| to_u64(value).map(Credits);
        invoices.push(Invoice {
            period: Period { start: instant(start)?, end: instant(end)? },
            included: credits(included)?,
            included_used: credits(included_used)?,
            included_expired: credits(expired)?,
            purchased_used: credits(purchased_used)?,
            payg_credits: credits(payg)?,
            unbilled_credits: credits(unbilled)?,
            amount_due: MicroUsd(to_u64(due)?),
            issued_at: instant(issued)?,
            plan: team.settings.plan,
            plan_changes: Vec::new(),
        });
    }
    // Each invoice's plan is the one in force when its period ended: the plan the first change
    // at or after that end changed from, or the team's plan now.
    let changes = plan_changes(conn, team.id)?;
    for invoice in &mut invoices {
        invoice.plan_changes = changes.iter().filter(|change| invoice.period.start <= change.at && change.at < invoice.period.end).copied().collect();
        invoice.plan = changes.iter().find(|change| change.at >= invoice.period.end).map_or(team.settings.plan, |change| change.from);
    }
    Ok(invoices)
}

/// Every plan change of a team, oldest first, from the audit log (which the writer keeps in
/// the same transaction as the change).
fn plan_changes(conn: &Connection, team_id: i64) -> Result<Vec<PlanChange>> {
    let mut statement = conn.prepare_cached("SELECT at_ms, detail FROM audit_log WHERE team_id = ?1 AND action = ?2 ORDER BY id")?;
    let rows = statement.query_map(params![team_id, PLAN_CHANGED_ACTION], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?;
    let mut changes = Vec::new();
    for row in rows {
        let (at, detail) = row?;
        let (from, to) = parse_plan_change(&detail).ok_or_else(|| StoreError::Corrupt(format!("plan change `{detail}` in the audit log")))?;
        changes.push(PlanChange { at: instant(at)?, from, to });
    }
    Ok(changes)
}

/// The audit log's action for a plan change; its detail is [`plan_change_detail`].
pub(crate) const PLAN_CHANGED_ACTION: &str = "plan_changed";

pub(crate) fn plan_change_detail(from: PlanId, to: PlanId) -> String {
    format!("{from} to {to}")
}

fn parse_plan_change(detail: &str) -> Option<(PlanId, PlanId)> {
    let (from, to) = detail.split_once(" to ")?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

pub(super) fn audit_log(conn: &Connection, team: &TeamName) -> Result<Vec<AuditEntry>> {
    let team = find_team(conn, team)?;
    let mut statement = conn.prepare_cached("SELECT at_ms, actor, action, detail FROM audit_log WHERE team_id = ?1 ORDER BY id")?;
    let rows = statement.query_map([team.id], |row| Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?;
    let mut entries = Vec::new();
    for row in rows {
        let (at, actor, action, detail) = row?;
        entries.push(AuditEntry { at: instant(at)?, actor, action, detail });
    }
    Ok(entries)
}
