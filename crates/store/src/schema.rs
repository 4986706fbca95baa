//! Schema migrations, applied in order inside one transaction; `PRAGMA user_version` records
//! how many have run.

use rusqlite::Connection;

use crate::error::{Result, StoreError};

const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_ledger.sql"), include_str!("../migrations/0002_purchase_keys.sql"), include_str!("../migrations/0003_alert_allowance.sql")];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations `conn` lacks; returns how many ran.
pub(crate) fn migrate(conn: &mut Connection) -> Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, known: SCHEMA_VERSION });
    }
    let pending = &MIGRATIONS[found as usize..];
    for sql in pending {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(pending.len())
}
