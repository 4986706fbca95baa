//! `ledger verify`: rebuilds every stored balance from the append-only entries and executions
//! and reports each one that differs.

use std::collections::HashMap;

use flowcredits_core::{AnchorDay, Period};
use rusqlite::Connection;

use super::read::snapshot;
use crate::codec::instant;
use crate::error::{Result, StoreError};
use crate::model::VerifyReport;

pub(super) fn verify(conn: &Connection) -> Result<VerifyReport> {
    snapshot(conn, |conn| {
        let mut report = VerifyReport { entries: count(conn, "SELECT count(*) FROM entries")?, ..VerifyReport::default() };
        check_entries_match_executions(conn, &mut report)?;
        check_periods(conn, &mut report)?;
        check_grants(conn, &mut report)?;
        check_runs(conn, &mut report)?;
        check_rollups(conn, &mut report)?;
        Ok(report)
    })
}

fn count(conn: &Connection, sql: &str) -> Result<u64> {
    Ok(conn.query_row(sql, [], |row| row.get::<_, i64>(0))?.try_into().unwrap_or(0))
}

/// Pairs of `(what, stored, rebuilt)` that differ become mismatch lines.
fn compare<K: std::fmt::Debug + Eq + std::hash::Hash>(report: &mut VerifyReport, what: &str, stored: HashMap<K, Vec<i64>>, mut rebuilt: HashMap<K, Vec<i64>>) {
    for (key, values) in stored {
        report.balances_checked += 1;
        let expected = rebuilt.remove(&key).unwrap_or_else(|| vec![0; values.len()]);
        if values != expected {
            report.mismatches.push(format!("{what} {key:?}: stored {values:?}, rebuilt from entries {expected:?}"));
        }
    }
    for (key, expected) in rebuilt {
        if expected.iter().any(|value| *value != 0) {
            report.mismatches.push(format!("{what} {key:?}: nothing stored, rebuilt from entries {expected:?}"));
        }
    }
}

/// Rows of `sql` as `key columns → value columns`.
fn grouped(conn: &Connection, sql: &str, keys: usize) -> Result<HashMap<Vec<i64>, Vec<i64>>> {
    let mut statement = conn.prepare(sql)?;
    let columns = statement.column_count();
    let mut rows = statement.query([])?;
    let mut map = HashMap::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns).map(|index| row.get::<_, i64>(index)).collect::<rusqlite::Result<Vec<_>>>()?;
        map.insert(values[..keys].to_vec(), values[keys..].to_vec());
    }
    Ok(map)
}

/// Every entry points at an execution with the same credits, no execution has two entries,
/// and every charged execution has one.
fn check_entries_match_executions(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let orphans = count(conn, "SELECT count(*) FROM entries e LEFT JOIN executions x ON x.team_id = e.team_id AND x.key = e.execution_key WHERE x.key IS NULL OR x.credits != e.included + e.purchased + e.payg + e.unbilled")?;
    let doubles = count(conn, "SELECT count(*) FROM (SELECT 1 FROM entries GROUP BY team_id, execution_key HAVING count(*) > 1)")?;
    let charged = count(conn, "SELECT count(*) FROM executions WHERE credits > 0")?;
    let split = count(conn, "SELECT count(*) FROM entries e LEFT JOIN (SELECT entry_id, sum(credits) AS drawn FROM grant_draws GROUP BY entry_id) d ON d.entry_id = e.id WHERE e.purchased != coalesce(d.drawn, 0)")?;
    for (problem, n) in [("entries without a matching execution", orphans), ("executions with more than one entry", doubles), ("entries whose purchased credits differ from their grant draws", split)] {
        if n > 0 {
            report.mismatches.push(format!("{n} {problem}"));
        }
    }
    if charged != report.entries {
        report.mismatches.push(format!("{charged} charged executions but {} ledger entries", report.entries));
    }
    Ok(())
}

fn check_periods(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT team_id, start_ms, included_used, purchased_used, payg_credits, unbilled_credits FROM periods", 2)?;
    let rebuilt = grouped(conn, "SELECT team_id, period_start_ms, sum(included), sum(purchased), sum(payg), sum(unbilled) FROM entries GROUP BY team_id, period_start_ms", 2)?;
    compare(report, "period (team, start ms) used [included, purchased, payg, unbilled]", stored, rebuilt);
    Ok(())
}

fn check_grants(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT team_id, grant_no, credits - remaining FROM grants", 2)?;
    let rebuilt = grouped(conn, "SELECT team_id, grant_no, sum(credits) FROM grant_draws GROUP BY team_id, grant_no", 2)?;
    compare(report, "grant (team, number) credits drawn", stored, rebuilt);
    Ok(())
}

fn check_runs(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT id, credits FROM runs", 1)?;
    let rebuilt = grouped(conn, "SELECT run_id, sum(credits) FROM executions GROUP BY run_id", 1)?;
    compare(report, "run (row id) credits", stored, rebuilt);
    Ok(())
}

/// Rollups by period, kind and trigger, rebuilt by one scan of the executions. An execution's
/// period is the one its (recorded) instant falls in, for its team's anchor day.
fn check_rollups(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT team_id, period_start_ms, kind, trigger, executions, credits FROM usage_rollups", 4)?;
    let anchors = grouped(conn, "SELECT id, anchor_day FROM teams", 1)?;
    let mut rebuilt: HashMap<Vec<i64>, Vec<i64>> = HashMap::new();
    let mut statement = conn.prepare("SELECT x.team_id, x.at_ms, x.kind, r.trigger, x.credits FROM executions x JOIN runs r ON r.id = x.run_id")?;
    let mut rows = statement.query([])?;
    // The last period seen per team: consecutive executions are nearly always in it.
    let mut periods: HashMap<i64, Period> = HashMap::new();
    while let Some(row) = rows.next()? {
        let [team, at_ms, kind, trigger, credits] = [row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?];
        let at = instant(at_ms)?;
        let period = match periods.get(&team).filter(|period| period.contains(at)) {
            Some(period) => *period,
            None => *periods.entry(team).insert_entry(period_of(&anchors, team, at)?).get(),
        };
        let sums = rebuilt.entry(vec![team, period.start.as_millisecond(), kind, trigger]).or_insert_with(|| vec![0, 0]);
        sums[0] += 1;
        sums[1] += credits;
    }
    compare(report, "rollup (team, period start ms, kind, trigger) [executions, credits]", stored, rebuilt);
    Ok(())
}

fn period_of(anchors: &HashMap<Vec<i64>, Vec<i64>>, team: i64, at: flowcredits_core::Timestamp) -> Result<Period> {
    let day = anchors.get(&vec![team]).map(|values| values[0]).ok_or_else(|| StoreError::Corrupt(format!("execution of unknown team {team}")))?;
    let anchor = AnchorDay::new(day).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    Ok(Period::containing(anchor, at))
}
