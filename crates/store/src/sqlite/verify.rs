//! `ledger verify`: rebuilds every stored balance from the append-only entries and executions
//! and reports each one that differs.

use std::collections::HashMap;

use rusqlite::Connection;

use super::read::snapshot;
use crate::error::Result;
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

/// Every entry points at an execution with the same credits, every charged execution has one,
/// and no two executions share an op number (the entries' key).
fn check_entries_match_executions(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let shared_ops = count(conn, "SELECT count(*) - count(DISTINCT op) FROM executions")?;
    let matched = count(conn, "SELECT count(*) FROM executions x JOIN entries e ON e.id = x.op")?;
    let unequal = count(conn, "SELECT count(*) FROM executions x LEFT JOIN entries e ON e.id = x.op WHERE (e.id IS NULL AND x.credits > 0) OR x.credits != e.included + e.purchased + e.payg + e.unbilled")?;
    let split = count(conn, "SELECT count(*) FROM entries e LEFT JOIN (SELECT entry_id, sum(credits) AS drawn FROM grant_draws GROUP BY entry_id) d ON d.entry_id = e.id WHERE e.purchased != coalesce(d.drawn, 0)")?;
    let problems = [
        ("executions sharing an op number", shared_ops),
        ("entries without an execution", report.entries - matched.min(report.entries)),
        ("executions whose credits differ from their entry (or that lack one)", unequal),
        ("entries whose purchased credits differ from their grant draws", split),
    ];
    for (problem, n) in problems {
        if n > 0 {
            report.mismatches.push(format!("{n} {problem}"));
        }
    }
    Ok(())
}

fn check_periods(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT team_id, start_ms, included_used, purchased_used, payg_credits, unbilled_credits FROM periods", 2)?;
    let rebuilt = grouped(conn, "SELECT x.team_id, x.period_start_ms, sum(e.included), sum(e.purchased), sum(e.payg), sum(e.unbilled) FROM executions x JOIN entries e ON e.id = x.op GROUP BY 1, 2", 2)?;
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

fn check_rollups(conn: &Connection, report: &mut VerifyReport) -> Result<()> {
    let stored = grouped(conn, "SELECT team_id, period_start_ms, kind, trigger, executions, credits FROM usage_rollups", 4)?;
    let rebuilt = grouped(conn, "SELECT x.team_id, x.period_start_ms, x.kind, r.trigger, count(*), sum(x.credits) FROM executions x JOIN runs r ON r.id = x.run_id GROUP BY 1, 2, 3, 4", 4)?;
    compare(report, "rollup (team, period start ms, kind, trigger) [executions, credits]", stored, rebuilt);
    Ok(())
}
