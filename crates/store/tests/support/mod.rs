//! Shared test helpers: a temporary database, short constructors, and a dump of the ledger's
//! tables to compare "before" with "after".

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use flowcredits_core::{BlockKind, BlockUsage, ExecutionId, PlanId, RunContext, RunId, Rules, TeamSettings, Timestamp, Trigger};
use flowcredits_store::{Actor, LedgerStore, NewTeam, SqliteStore, StartRun, TeamName, UsageEvent};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!("flowcredits-store-{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("ledger.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

pub fn team(name: &str) -> TeamName {
    TeamName::new(name).unwrap()
}

pub fn run(id: &str) -> RunId {
    RunId::new(id).unwrap()
}

pub fn actor() -> Actor {
    Actor::new("ana@example.com").unwrap()
}

pub fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, Rules::shipped()).unwrap()
}

/// When [`create`] makes its teams. A usage report read as of it is read as of the team's
/// clock, which is never earlier.
pub const CREATED: &str = "2026-03-01T00:00:00Z";

pub fn create(store: &SqliteStore, name: &str, plan: PlanId) {
    store.create_team(NewTeam { name: team(name), settings: TeamSettings::new(plan), actor: actor(), at: ts(CREATED) }).unwrap();
}

pub fn api() -> RunContext {
    RunContext::automated(Trigger::Api).unwrap()
}

pub fn start(id: &str, at: &str) -> StartRun {
    StartRun { run: run(id), context: api(), needs_credits: true, at: ts(at) }
}

/// An integration block (2 credits on every run type).
pub fn integration(execution: &str, run_id: &str, at: &str) -> UsageEvent {
    UsageEvent { execution: ExecutionId::new(execution).unwrap(), run: run(run_id), usage: BlockUsage::of_kind(BlockKind::Integration), at: ts(at) }
}

/// Every row of the ledger's tables, in a stable order, as text.
pub fn dump(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let tables = ["teams", "periods", "alerts", "grants", "runs", "executions", "entries", "grant_draws", "usage_rollups", "invoices", "audit_log"];
    let mut rows = Vec::new();
    for table in tables {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2")).unwrap();
        let columns = statement.column_count();
        let mut result = statement.query([]).unwrap();
        while let Some(row) = result.next().unwrap() {
            let values: Vec<String> = (0..columns).map(|index| format!("{:?}", row.get_ref(index).unwrap())).collect();
            rows.push(format!("{table}: {}", values.join(" | ")));
        }
    }
    rows
}

/// How many rows `sql` counts.
pub fn count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path).unwrap().query_row(sql, [], |row| row.get(0)).unwrap()
}

pub fn assert_verified(store: &SqliteStore) {
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "verify found: {:#?}", report.mismatches);
}
