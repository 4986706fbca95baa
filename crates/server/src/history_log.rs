//! Writes run history behind the runs: a thread of its own takes whatever history rows are
//! queued (a run admitted, its blocks, its end) and commits them in one transaction, so a run
//! neither waits for nor contends over history writes. Reads that must see every row queued so
//! far go through [`HistoryLog::read`], which waits until the writer has committed them.
//!
//! History is for people to read; the ledger holds the credits. A history write that fails is
//! logged and does not stop the others (each row group is its own savepoint).

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};

use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::history::{self, NewBlock, NewRun, RunState};

/// History rows waiting to be written, at most; a full queue makes runs wait (back-pressure)
/// rather than grow memory without bound.
const QUEUE_ENTRIES_MAX: usize = 65_536;
/// Entries committed in one transaction, at most.
const BATCH_ENTRIES_MAX: usize = 4_096;

/// A run as it was admitted (or resumed).
pub struct AdmittedRun {
    pub id: String,
    pub team: String,
    pub flow_id: String,
    pub snapshot: Option<u32>,
    pub deployment_id: Option<String>,
    pub trigger: &'static str,
    pub location: &'static str,
    pub status: RunState,
    pub input: Value,
}

/// One block execution as history shows it.
pub struct BlockRecord {
    pub block_id: String,
    pub kind: &'static str,
    pub failed: bool,
    pub input: Value,
    pub output: Value,
    pub started_ms: i64,
    pub duration_us: i64,
    pub credits: u64,
    pub error: Option<String>,
}

/// A run's end as history shows it.
pub struct FinishedRun {
    pub id: String,
    pub state: RunState,
    pub credits: u64,
    pub output: Value,
    pub error: Option<String>,
}

enum Entry {
    Admitted(AdmittedRun),
    Blocks { run: String, blocks: Vec<BlockRecord> },
    Finished(FinishedRun),
    /// Answered once every entry queued before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct HistoryLog {
    entries: SyncSender<Entry>,
}

impl HistoryLog {
    /// Starts the writer on its own connection to the catalog database at `path`.
    pub fn open(path: &Path) -> Result<HistoryLog, ApiError> {
        let connection = Catalog::connect(path)?;
        let (entries, queue) = mpsc::sync_channel(QUEUE_ENTRIES_MAX);
        std::thread::Builder::new().name("history-writer".into()).spawn(move || write_loop(connection, queue)).map_err(|err| ApiError::internal(format!("cannot start the history writer: {err}")))?;
        Ok(HistoryLog { entries })
    }

    fn queue(&self, entry: Entry) {
        if self.entries.send(entry).is_err() {
            tracing::error!("the history writer stopped; a history row was not recorded");
        }
    }

    /// A run the ledger admitted or paused; a resumed run that already has its row starts.
    pub fn admitted(&self, run: AdmittedRun) {
        self.queue(Entry::Admitted(run));
    }

    /// Blocks a run executed, in order, after the ones recorded before.
    pub fn blocks(&self, run: String, blocks: Vec<BlockRecord>) {
        self.queue(Entry::Blocks { run, blocks });
    }

    pub fn finished(&self, run: FinishedRun) {
        debug_assert!(run.state.is_finished());
        self.queue(Entry::Finished(run));
    }

    /// Waits until every history row queued before this call is committed.
    pub async fn flush(&self) {
        let (flushed, done) = oneshot::channel();
        self.queue(Entry::Flush(flushed));
        // A stopped writer answers nothing more; there is nothing left to wait for.
        let _ = done.await;
    }

    /// Reads the catalog after the history queued so far is written.
    pub async fn read<T, F>(&self, catalog: &Catalog, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
    {
        self.flush().await;
        catalog.call(work).await
    }
}

fn write_loop(mut connection: Connection, queue: Receiver<Entry>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_ENTRIES_MAX {
            match queue.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let flushes = write_batch(&mut connection, batch);
        for flushed in flushes {
            let _ = flushed.send(());
        }
    }
}

/// Writes a batch in one transaction; returns the flushes to answer once it is committed.
fn write_batch(connection: &mut Connection, batch: Vec<Entry>) -> Vec<oneshot::Sender<()>> {
    let mut flushes = Vec::new();
    // Immediate: the write lock is taken (waiting out the catalog's own writes) before the
    // first read, so no write in the batch can fail on a snapshot another connection changed.
    let transaction = match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(err) => {
            tracing::error!(error = %err, rows = batch.len(), "cannot begin writing run history; these rows are lost");
            return batch.into_iter().filter_map(|entry| if let Entry::Flush(flushed) = entry { Some(flushed) } else { None }).collect();
        }
    };
    for entry in batch {
        let (run, written) = match entry {
            Entry::Flush(flushed) => {
                flushes.push(flushed);
                continue;
            }
            Entry::Admitted(run) => (run.id.clone(), in_savepoint(&transaction, |connection| write_admitted(connection, &run))),
            Entry::Blocks { run, blocks } => {
                let written = in_savepoint(&transaction, |connection| write_blocks(connection, &run, &blocks));
                (run, written)
            }
            Entry::Finished(run) => {
                let written = in_savepoint(&transaction, |connection| history::finish_run(connection, &run.id, run.state, run.credits, &run.output, run.error.as_deref()));
                (run.id, written)
            }
        };
        if let Err(err) = written {
            tracing::error!(run = %run, error = %err, "recording run history failed");
        }
    }
    if let Err(err) = transaction.commit() {
        tracing::error!(error = %err, "committing run history failed; this batch's rows are lost");
    }
    flushes
}

/// Runs `work` so that its failure undoes only its own rows.
fn in_savepoint(connection: &Connection, work: impl FnOnce(&Connection) -> Result<(), ApiError>) -> Result<(), ApiError> {
    connection.execute_batch("SAVEPOINT entry")?;
    match work(connection) {
        Ok(()) => Ok(connection.execute_batch("RELEASE entry")?),
        Err(err) => {
            connection.execute_batch("ROLLBACK TO entry; RELEASE entry")?;
            Err(err)
        }
    }
}

fn write_admitted(connection: &Connection, run: &AdmittedRun) -> Result<(), ApiError> {
    // A resumed run already has its row: it starts if the ledger admitted it, and otherwise
    // stays paused as recorded.
    if history::run_exists(connection, &run.id)? {
        if run.status == RunState::Running {
            history::mark_started(connection, &run.id)?;
        }
        return Ok(());
    }
    let new_run = NewRun { id: &run.id, team: &run.team, flow_id: &run.flow_id, snapshot: run.snapshot, deployment_id: run.deployment_id.as_deref(), trigger: run.trigger, location: run.location, status: run.status, input: &run.input };
    history::insert_run(connection, &new_run)
}

fn write_blocks(connection: &Connection, run: &str, blocks: &[BlockRecord]) -> Result<(), ApiError> {
    let first: u32 = connection.prepare_cached("SELECT COUNT(*) FROM run_history_blocks WHERE run_id = ?1")?.query_row([run], |row| row.get(0))?;
    let rows: Vec<NewBlock<'_>> = blocks
        .iter()
        .enumerate()
        .map(|(index, block)| NewBlock {
            seq: first + index as u32,
            block_id: &block.block_id,
            kind: block.kind,
            status: if block.failed { "failed" } else { "completed" },
            input: &block.input,
            output: &block.output,
            started_ms: block.started_ms,
            duration_us: block.duration_us,
            credits: block.credits,
            error: block.error.as_deref(),
        })
        .collect();
    history::insert_blocks(connection, run, &rows)
}
