//! Under steady writing the WAL starts over from its beginning again and again, instead of
//! growing for as long as the load lasts, and nothing committed is lost by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowcredits_core::{BlockKind, BlockUsage, CloudRun, ExecutionId, PlanId, RunContext, RunStatus, Rules};
use flowcredits_store::{LedgerStore, SqliteOptions, SqliteStore, StartRun, UsageEvent};

use crate::support::*;

const WRITERS: usize = 4;
/// A small threshold, so that a test-sized load passes it many times over.
const RESTART_FRAMES: u32 = 64;
const AT: &str = "2026-03-02T10:00:00Z";

/// Runs on the local canvas with free blocks: every run starts, and each writes a run row, three
/// executions and their entries.
fn write_runs(store: &SqliteStore, writer: usize, stop: &AtomicBool) -> usize {
    let t = team("busy");
    let mut runs = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{writer}-r{runs}");
        let start = StartRun { run: run(&id), context: RunContext::manual(CloudRun::Off), needs_credits: false, at: ts(AT) };
        assert_eq!(store.start_run(&t, start).unwrap().status, RunStatus::Running);
        let events = (0..3).map(|n| UsageEvent { execution: ExecutionId::new(format!("{id}-e{n}")).unwrap(), run: run(&id), usage: BlockUsage::of_kind(BlockKind::HttpRequest), at: ts(AT) }).collect();
        store.charge(&t, events).unwrap();
        store.end_run(&t, &run(&id), ts(AT)).unwrap();
        runs += 1;
    }
    runs
}

/// The WAL beside the database file at `db`.
fn wal_of(db: &std::path::Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// How many times the WAL has started over from its beginning: SQLite counts them in the WAL
/// file's header (bytes 12 to 15, big-endian, the checkpoint sequence number).
fn wal_restarts(db: &std::path::Path) -> u32 {
    let header = std::fs::read(wal_of(db)).map(|bytes| bytes.get(..32).map(<[u8]>::to_vec)).ok().flatten().unwrap_or_default();
    header.get(12..16).map_or(0, |bytes| u32::from_be_bytes(bytes.try_into().unwrap()))
}

#[test]
fn steady_writing_rewinds_the_wal_and_loses_nothing() {
    let dir = TempDir::new("wal");
    let options = SqliteOptions { wal_restart_frames: RESTART_FRAMES, ..SqliteOptions::new(Rules::shipped()) };
    let store = Arc::new(SqliteStore::open_with(dir.db(), options).unwrap());
    create(&store, "busy", PlanId::Team);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || write_runs(&store, writer, &stop))
        })
        .collect();
    // Until the WAL has started over three times (the checkpoint thread looks every 200 ms),
    // or 20 s.
    let started = Instant::now();
    while store.writer_stats().wal_rewinds < 3 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let runs: usize = writers.into_iter().map(|writer| writer.join().unwrap()).sum();
    let stats = store.writer_stats();
    assert!(stats.wal_rewinds >= 3, "the writer never copied the WAL whole while writes went on: {stats:?}");
    // The size it reports is the file's (for `/metrics`).
    assert_eq!(stats.wal_bytes, std::fs::metadata(wal_of(&dir.db())).unwrap().len());
    assert!(stats.wal_bytes > 0);
    // Each time, the writer's next commit started the WAL over (without that the WAL would
    // hold every frame written since the store opened).
    assert!(wal_restarts(&dir.db()) >= 3, "the WAL started over {} times ({runs} runs, {stats:?})", wal_restarts(&dir.db()));

    // Every run written across the rewinds is there, with its three executions, also after
    // the store is opened again.
    let count_runs = |path: &std::path::Path| -> (usize, usize) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let runs: usize = conn.query_row("SELECT count(*) FROM runs WHERE status = 2", [], |row| row.get(0)).unwrap();
        let executions: usize = conn.query_row("SELECT count(*) FROM executions", [], |row| row.get(0)).unwrap();
        (runs, executions)
    };
    assert_eq!(count_runs(&dir.db()), (runs, runs * 3));
    assert_verified(&store);
    drop(store);
    let reopened = open(&dir.db());
    assert_eq!(count_runs(&dir.db()), (runs, runs * 3));
    assert_verified(&reopened);
}
