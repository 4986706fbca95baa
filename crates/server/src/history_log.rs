//! Writes run history behind the runs: a thread of its own takes whatever history rows are
//! queued (a run admitted, its blocks, its end) and commits them in one transaction, so a run
//! neither waits for nor contends over history writes. Reads that must see every row queued so
//! far go through [`HistoryLog::read`], which waits until the writer has committed them.
//!
//! History is for people to read; the ledger holds the credits. A history write that fails is
//! logged and does not stop the others.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};

use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::catalog::now_ms;
use crate::history::{self, BlockRecord, NewRun, RunEnd, RunState};

/// History rows waiting to be written, at most; a full queue makes runs wait (back-pressure)
/// rather than grow memory without bound.
const QUEUE_ENTRIES_MAX: usize = 65_536;
/// Entries committed in one transaction, at most.
const BATCH_ENTRIES_MAX: usize = 4_096;
/// The writer commits at most once per this interval while entries keep coming: fewer, larger
/// transactions, and a short run's admission and end land in one batch and so in one row. A
/// read that must see the rows queued so far wakes the writer at once ([`HistoryLog::read`]),
/// so the interval delays no reader. A crash loses what is queued; start-up restores those runs
/// from the ledger (`runner::restore_lost_history`).
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

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
    /// The hook request of a paused run, kept for when it resumes (`jobs::http_json`).
    pub paused_http: Option<Value>,
    /// A paused run the ledger resumed: its row exists already.
    pub resumed: bool,
}

/// A run's end as history shows it.
pub struct FinishedRun {
    pub id: String,
    pub state: RunState,
    pub credits: u64,
    pub output: Value,
    pub error: Option<String>,
    /// The `response` block's answer (status, body), when the flow gave one.
    pub response: Option<(u16, Value)>,
}

/// Each entry carries when it happened (Unix milliseconds), not when it is written.
enum Entry {
    Admitted(AdmittedRun, i64),
    Blocks { run: String, blocks: Vec<BlockRecord> },
    Finished(FinishedRun, i64),
    /// Answered once every entry queued before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct HistoryLog {
    entries: SyncSender<Entry>,
    /// The writer's thread, woken early when someone waits for a flush.
    writer: std::thread::Thread,
    flush_waiting: Arc<AtomicBool>,
    /// Entries queued and not yet written (for `/metrics`).
    queued: Arc<AtomicUsize>,
}

impl HistoryLog {
    /// Starts the writer on its own connection to the catalog database at `path`.
    pub fn open(path: &Path) -> Result<HistoryLog, ApiError> {
        let connection = Catalog::connect(path)?;
        let (entries, queue) = mpsc::sync_channel(QUEUE_ENTRIES_MAX);
        let (flush_waiting, queued) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (waiting, backlog) = (Arc::clone(&flush_waiting), Arc::clone(&queued));
        let writer = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || write_loop(connection, queue, &waiting, &backlog))
            .map_err(|err| ApiError::internal(format!("cannot start the history writer: {err}")))?;
        Ok(HistoryLog { entries, writer: writer.thread().clone(), flush_waiting, queued })
    }

    /// Entries queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn queue(&self, entry: Entry) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.entries.send(entry).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the history writer stopped; a history row was not recorded");
        }
    }

    /// A run the ledger admitted or paused; a resumed run that already has its row starts.
    pub fn admitted(&self, run: AdmittedRun) {
        self.queue(Entry::Admitted(run, now_ms()));
    }

    /// Blocks a run executed, in order, after the ones recorded before.
    pub fn blocks(&self, run: String, blocks: Vec<BlockRecord>) {
        self.queue(Entry::Blocks { run, blocks });
    }

    pub fn finished(&self, run: FinishedRun) {
        self.finished_at(run, now_ms());
    }

    /// A run's end as it happened at `at_ms` (Unix milliseconds), not now: a run a crash cut
    /// off ends where the ledger last knew of it.
    pub fn finished_at(&self, run: FinishedRun, at_ms: i64) {
        debug_assert!(run.state.is_finished());
        self.queue(Entry::Finished(run, at_ms));
    }

    /// Waits until every history row queued before this call is committed.
    pub async fn flush(&self) {
        let (flushed, done) = oneshot::channel();
        self.queue(Entry::Flush(flushed));
        self.flush_waiting.store(true, Ordering::Release);
        self.writer.unpark();
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

fn write_loop(mut connection: Connection, queue: Receiver<Entry>, flush_waiting: &AtomicBool, queued: &AtomicUsize) {
    let mut kept = KeptBlocks::default();
    while let Ok(first) = queue.recv() {
        let began = std::time::Instant::now();
        flush_waiting.store(false, Ordering::Release);
        let mut batch = vec![first];
        while batch.len() < BATCH_ENTRIES_MAX {
            match queue.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let full = taken == BATCH_ENTRIES_MAX;
        let flushes = write_batch(&mut connection, batch, &mut kept);
        queued.fetch_sub(taken, Ordering::Relaxed);
        for flushed in flushes {
            let _ = flushed.send(());
        }
        // Waits out the interval unless a full batch or a reader wants the next one now. A
        // park may end early for no reason, hence the loop.
        let deadline = began + BATCH_INTERVAL;
        while !full && !flush_waiting.load(Ordering::Acquire) {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

/// One run's entries in a batch, in the order they came.
#[derive(Default)]
struct RunEntries {
    admitted: Option<(AdmittedRun, i64)>,
    blocks: Vec<BlockRecord>,
    finished: Option<(FinishedRun, i64)>,
}

/// A batch's entries by run, runs in the order they first appear.
#[derive(Default)]
struct BatchRuns {
    order: Vec<(String, RunEntries)>,
    index: foldhash::HashMap<String, usize>,
}

impl BatchRuns {
    fn of(&mut self, run: &str) -> &mut RunEntries {
        let position = match self.index.get(run) {
            Some(&position) => position,
            None => {
                self.order.push((run.to_owned(), RunEntries::default()));
                self.index.insert(run.to_owned(), self.order.len() - 1);
                self.order.len() - 1
            }
        };
        &mut self.order[position].1
    }
}

/// Writes a batch in one transaction; returns the flushes to answer once it is committed.
/// Entries are gathered per run first: a short run admitted, executed and finished within one
/// batch is written as one row and its blocks, instead of a row that is then updated.
/// How many block executions history holds for each run still going, so that a run's list stops
/// at [`history::BLOCKS_PER_RUN_MAX`]. A run is counted from the database when first seen here
/// (after a restart, or a run charged from another machine) and forgotten when it finishes.
#[derive(Default)]
struct KeptBlocks(foldhash::HashMap<String, usize>);

impl KeptBlocks {
    /// Keeps what room is left of `blocks` and counts the rest as omitted in the run's row.
    fn admit(&mut self, connection: &Connection, run: &str, run_is_new: bool, blocks: &mut Vec<BlockRecord>) -> Result<(), ApiError> {
        let kept = match self.0.get_mut(run) {
            Some(kept) => kept,
            None => {
                let stored = if run_is_new { 0 } else { history::stored_block_count(connection, run)? };
                self.0.entry(run.to_owned()).or_insert(stored)
            }
        };
        let room = history::BLOCKS_PER_RUN_MAX.saturating_sub(*kept);
        if blocks.len() > room {
            history::add_omitted_blocks(connection, run, blocks.len() - room)?;
            blocks.truncate(room);
        }
        *kept += blocks.len();
        Ok(())
    }

    fn forget(&mut self, run: &str) {
        self.0.remove(run);
    }
}

fn write_batch(connection: &mut Connection, batch: Vec<Entry>, kept: &mut KeptBlocks) -> Vec<oneshot::Sender<()>> {
    let mut flushes = Vec::new();
    let mut runs = BatchRuns::default();
    for entry in batch {
        match entry {
            Entry::Flush(flushed) => flushes.push(flushed),
            Entry::Admitted(run, at_ms) => {
                let entries = runs.of(&run.id);
                entries.admitted = Some((run, at_ms));
            }
            Entry::Blocks { run, mut blocks } => runs.of(&run).blocks.append(&mut blocks),
            Entry::Finished(run, at_ms) => {
                let entries = runs.of(&run.id);
                entries.finished = Some((run, at_ms));
            }
        }
    }
    // Immediate: the write lock is taken (waiting out the catalog's own writes) before the
    // first read, so no write in the batch can fail on a snapshot another connection changed.
    let transaction = match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(err) => {
            tracing::error!(error = %err, runs = runs.order.len(), "cannot begin writing run history; these runs' rows are lost");
            return flushes;
        }
    };
    let mut tally = history::FlowUsageTally::default();
    for (run, entries) in runs.order {
        // No savepoint per run: a failure (there is none but a bug or a full disk) leaves at worst
        // part of one run's history, and savepoints cost a statement journal per run.
        if let Err(err) = write_run(&transaction, &run, entries, kept, &mut tally) {
            tracing::error!(run = %run, error = %err, "recording run history failed");
        }
    }
    if let Err(err) = tally.write(&transaction) {
        tracing::error!(error = %err, "recording usage by flow failed");
    }
    if let Err(err) = transaction.commit() {
        tracing::error!(error = %err, "committing run history failed; this batch's rows are lost");
    }
    flushes
}

fn write_run(connection: &Connection, run: &str, entries: RunEntries, kept: &mut KeptBlocks, tally: &mut history::FlowUsageTally) -> Result<(), ApiError> {
    let RunEntries { admitted, mut blocks, mut finished } = entries;
    let finishes = finished.is_some();
    let mut new_row = false;
    if let Some((admitted, at_ms)) = admitted {
        // A resumed run already has its row: it starts if the ledger admitted it, and otherwise
        // stays paused as recorded.
        if admitted.resumed {
            if admitted.status == RunState::Running {
                history::mark_started(connection, run, at_ms)?;
            }
        } else {
            let new_run = NewRun { id: run, team: &admitted.team, flow_id: &admitted.flow_id, snapshot: admitted.snapshot, deployment_id: admitted.deployment_id.as_deref(), trigger: admitted.trigger, location: admitted.location, status: admitted.status, input: &admitted.input, at_ms };
            history::insert_run_tallied(connection, &new_run, finished.take().as_ref().map(end).as_ref(), tally)?;
            if let Some(http) = &admitted.paused_http {
                history::keep_paused_http(connection, run, http)?;
            }
            new_row = true;
        }
    }
    // A run still going shows what it has been charged so far; its end sets the ledger's total.
    let charged: u64 = blocks.iter().map(|block| block.credits).sum();
    if charged > 0 && !finishes {
        history::add_running_credits(connection, run, charged)?;
    }
    if !blocks.is_empty() {
        kept.admit(connection, run, new_row, &mut blocks)?;
    }
    if !blocks.is_empty() {
        history::insert_blocks(connection, run, &blocks, new_row)?;
    }
    if let Some(finished) = &finished {
        history::finish_run_tallied(connection, run, &end(finished), tally)?;
    }
    if finishes {
        kept.forget(run);
    }
    Ok(())
}

fn end((finished, at_ms): &(FinishedRun, i64)) -> RunEnd<'_> {
    RunEnd { state: finished.state, at_ms: *at_ms, credits: finished.credits, output: &finished.output, error: finished.error.as_deref(), response: finished.response.as_ref() }
}

