//! The reference points of `bench ledger`: the same execution rows written by a batched INSERT
//! into a table whose only index is the unique execution id, with the same durability settings,
//! row at a time (the plain way) or with the multi-row statements the ledger itself uses. No
//! ledger, no dedupe check, no balances.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::bulk::insert_rows;
use crate::codec::{detail_hash, execution_key, kind_code, ms};
use crate::error::Result;
use crate::model::UsageEvent;
use crate::sqlite::{Durability, open_connection};

/// 2026-03-01T00:00:00Z: the period of the benchmark's events (any constant would do).
const PERIOD_START_MS: i64 = 1_772_323_200_000;

const INSERT_HEAD: &str = "INSERT INTO plain_executions (team_id, key, op, run_id, at_ms, kind, detail_hash, credits, period_start_ms)";

/// How the baseline's statements carry rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertStyle {
    /// One prepared single-row INSERT executed per row: the plain way.
    RowAtATime,
    /// Multi-row INSERT statements, as the ledger itself writes.
    MultiRow,
}

/// Inserts `events` in transactions of `batch` rows into a fresh table in `path`; returns the
/// time spent inserting and committing (not building the rows).
pub fn plain_insert(path: &Path, events: &[UsageEvent], batch: usize, durability: Durability, style: InsertStyle) -> Result<Duration> {
    let conn = open_connection(path, durability)?;
    conn.execute_batch(
        "CREATE TABLE plain_executions (team_id INTEGER NOT NULL, key BLOB NOT NULL, op INTEGER NOT NULL, run_id INTEGER NOT NULL, \
         at_ms INTEGER NOT NULL, kind INTEGER NOT NULL, detail_hash INTEGER NOT NULL, credits INTEGER NOT NULL, period_start_ms INTEGER NOT NULL, PRIMARY KEY (team_id, key)) STRICT, WITHOUT ROWID",
    )?;
    let rows: Vec<(Vec<u8>, i64, i64, i64)> = events.iter().map(|event| (execution_key(&event.execution), ms(event.at), kind_code(event.usage.kind), detail_hash(&event.run, &event.usage))).collect();
    let started = Instant::now();
    let mut op = 0i64;
    let mut bind = |statement: &mut rusqlite::Statement<'_>, first: usize, (key, at_ms, kind, hash): &(Vec<u8>, i64, i64, i64)| {
        op += 1;
        let values: [&dyn rusqlite::ToSql; 9] = [&1, key, &op, &1, at_ms, kind, hash, &2, &PERIOD_START_MS];
        for (offset, value) in values.iter().enumerate() {
            statement.raw_bind_parameter(first + offset, value)?;
        }
        Ok(())
    };
    for chunk in rows.chunks(batch.max(1)) {
        conn.execute_batch("BEGIN")?;
        match style {
            InsertStyle::MultiRow => insert_rows(&conn, INSERT_HEAD, 9, chunk, &mut bind)?,
            InsertStyle::RowAtATime => {
                let mut statement = conn.prepare_cached(&format!("{INSERT_HEAD} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"))?;
                for row in chunk {
                    bind(&mut statement, 1, row)?;
                    statement.raw_execute()?;
                }
            }
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok(started.elapsed())
}
