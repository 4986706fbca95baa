//! The reference point of `bench ledger`: the same execution rows written by a plain batched
//! INSERT into a table whose only index is the unique execution id, with the same durability
//! settings. No ledger, no dedupe check, no balances.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::{detail_hash, execution_key, kind_code, ms};
use crate::error::Result;
use crate::model::UsageEvent;
use crate::sqlite::{Durability, open_connection};

/// Inserts `events` in transactions of `batch` rows into a fresh table in `path`; returns the
/// time spent inserting and committing (not building the rows).
pub fn plain_insert(path: &Path, events: &[UsageEvent], batch: usize) -> Result<Duration> {
    let conn = open_connection(path, Durability::Full)?;
    conn.execute_batch(
        "CREATE TABLE plain_executions (team_id INTEGER NOT NULL, key BLOB NOT NULL, op INTEGER NOT NULL, run_id INTEGER NOT NULL, \
         at_ms INTEGER NOT NULL, kind INTEGER NOT NULL, detail_hash INTEGER NOT NULL, credits INTEGER NOT NULL, PRIMARY KEY (team_id, key)) STRICT, WITHOUT ROWID",
    )?;
    let rows: Vec<(Vec<u8>, i64, i64, i64)> = events.iter().map(|event| (execution_key(&event.execution), ms(event.at), kind_code(event.usage.kind), detail_hash(&event.run, &event.usage))).collect();
    let started = Instant::now();
    let mut op = 0i64;
    for chunk in rows.chunks(batch.max(1)) {
        conn.execute_batch("BEGIN")?;
        let mut insert = conn.prepare_cached("INSERT INTO plain_executions VALUES (1, ?1, ?2, 1, ?3, ?4, ?5, 2)")?;
        for (key, at_ms, kind, hash) in chunk {
            op += 1;
            insert.execute(rusqlite::params![key, op, at_ms, kind, hash])?;
        }
        drop(insert);
        conn.execute_batch("COMMIT")?;
    }
    Ok(started.elapsed())
}
