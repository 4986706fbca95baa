//! The SQLite backend: one database file in WAL mode, created on first use.
//!
//! Writes go to one writer thread (see [`writer`]) that group-commits; reads use their own
//! connections, which WAL lets run beside the writer and see only committed data.

mod read;
mod stats;
mod syncer;
mod team;
mod verify;
mod writer;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use flowcredits_core::{PeriodUsage, Rules, RunId, Timestamp};
use rusqlite::{Connection, OpenFlags};

use self::writer::{DecisionTimes, Op, Reply, Request, RunEnd, Writer, outside_batch};
use crate::error::{Result, StoreError};
use crate::limits::{BATCH_EVENTS_MAX, BILLING_CHANGES_MAX, CHECKPOINT_INTERVAL, QUEUE_REQUESTS_MAX, READERS_IDLE_MAX, WAL_CHECKPOINT_PAGES, WAL_RESTART_FRAMES};
use crate::model::{Actor, Admission, AuditEntry, BillingChange, ChargeOutcome, Invoice, LedgerRun, NewTeam, Purchase, Purchased, RunInfo, RunTimes, StartRun, TeamInfo, TeamName, UsageEvent, UsageReport, VerifyReport, WriterStats, check_instant};
use crate::{ChargedAndEnded, Done, LedgerStore, schema};

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub rules: Rules,
    /// `Full` fsyncs every commit (the default: an acknowledged write survives power loss);
    /// `Normal` survives a process crash but may lose the last commits on power loss.
    pub durability: Durability,
    /// Keep how long each admission decision took (for `bench ledger`).
    pub record_decision_times: bool,
    /// WAL frames (pages written) past which the writer finishes a checkpoint between two
    /// groups, so that the WAL is copied whole and starts again from its beginning
    /// ([`WAL_RESTART_FRAMES`] unless a test wants it sooner).
    pub wal_restart_frames: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Full,
    Normal,
}

impl SqliteOptions {
    pub fn new(rules: Rules) -> SqliteOptions {
        SqliteOptions { rules, durability: Durability::Full, record_decision_times: false, wal_restart_frames: WAL_RESTART_FRAMES }
    }
}

/// A handle on a SQLite ledger. Cheap to clone, `Send + Sync`; the last clone dropped stops the
/// writer thread after it has committed what it was given.
///
/// Every method blocks the calling thread until its answer is known, and a write until it is
/// committed (for `Durability::Full`: on disk, synced by a thread of its own so that the
/// writer goes on with the next group meanwhile). From async code, call it through
/// `tokio::task::spawn_blocking`.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    rules: Rules,
    requests: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    decision_ns: Option<DecisionTimes>,
    stats: Arc<stats::StatCounters>,
    checkpointer: Option<Checkpointer>,
    /// Why the writer refuses every write until the store is opened again (a sync the disk did
    /// not confirm), set by the syncer when a sync fails; never cleared.
    write_failure: Arc<OnceLock<String>>,
    /// The WAL file, whose size `writer_stats` reports.
    wal: PathBuf,
    /// Held while the store is open: the writer's cached team states are only right while it
    /// is the file's one writer. Declared last, so dropped after every connection.
    _writer_lock: WriterLock,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what is queued.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }
}

/// Copies the WAL back into the database file from a thread of its own, every
/// [`CHECKPOINT_INTERVAL`], so that the writer's commits never stop for a checkpoint (a long
/// one would hold up every caller in the group). Passive: it never blocks the writer.
///
/// Under steady load that alone never lets the WAL start over: SQLite rewinds the WAL only
/// when a write begins after every frame was copied, and a pass here always ends behind the
/// commits made during it, so the WAL would grow for as long as the load lasts (by about
/// 100 MB a second at full speed) and every sync would extend the file. So once the WAL holds
/// more than `restart_frames`, this thread makes a second pass at once, which leaves only the
/// commits made during it, and asks the writer (`restart_due`) to copy that remainder itself
/// between two groups: nothing commits meanwhile, the copy is whole, and the writer's next
/// commit starts the WAL again from its beginning, overwriting the file in place.
struct Checkpointer {
    stop: SyncSender<()>,
    thread: JoinHandle<()>,
}

/// A passive checkpoint: how many frames the WAL holds and how many of them are now copied
/// into the database file; `None` when it could not run (another checkpoint was running, or
/// the database is unreadable: the next pass retries).
pub(crate) fn checkpoint_passive(conn: &Connection) -> Option<(i64, i64)> {
    // The pragma answers (busy, frames in the WAL, frames copied).
    let (busy, frames, copied) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))).ok()?;
    (busy == 0).then_some((frames, copied))
}

impl Checkpointer {
    fn start(path: &Path, durability: Durability, restart_frames: u32, restart_due: Arc<AtomicBool>) -> Result<Checkpointer> {
        let conn = open_connection(path, durability)?;
        let (stop, stopped) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                    // A checkpoint that cannot finish (a reader on an old snapshot) is retried
                    // at the next interval; nothing is lost meanwhile, the WAL only grows.
                    if checkpoint_passive(&conn).is_some_and(|(frames, _)| frames >= i64::from(restart_frames)) && checkpoint_passive(&conn).is_some() {
                        restart_due.store(true, Ordering::Release);
                    }
                }
            })
            .map_err(|err| StoreError::Aborted(format!("cannot start the checkpoint thread: {err}")))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Creates the database file if needed and applies pending migrations; returns how many ran.
/// Refused with [`StoreError::InUse`] while another process (a server) has the file open for
/// writing: its writer's cached state would no longer match the file.
pub fn migrate(path: &Path) -> Result<usize> {
    let _writer_lock = lock_for_writing(path)?;
    let mut conn = open_connection(path, Durability::Full)?;
    schema::migrate(&mut conn)
}

/// The locks a store holds while it is the database's one writer; the operating system
/// releases them if the process dies.
struct WriterLock {
    _beside: File,
    _database: File,
}

/// Takes the exclusive locks on `<database>-writer.lock` and on the database file itself, or
/// says who holds them. The first sits beside the database's real path (symbolic links
/// followed); the second is the file's own, whatever name reached it, so a hard link to a
/// served database is refused too (through another name SQLite would also keep another WAL,
/// and the two writers would corrupt the file). The database's lock is a `flock`, which the
/// `fcntl` locks SQLite takes on the same file do not see. Its descriptor stays open as long as
/// the store: closing a descriptor of the file would drop every `fcntl` lock this process holds
/// on it, SQLite's included, and the store closes its connections before it.
fn lock_for_writing(path: &Path) -> Result<WriterLock> {
    let mut lock_path = real_path(path).into_os_string();
    lock_path.push("-writer.lock");
    let beside = lock_exclusively(path, Path::new(&lock_path))?;
    let database = lock_exclusively(path, path)?;
    Ok(WriterLock { _beside: beside, _database: database })
}

/// Opens (creating if needed) `file` and takes its exclusive lock without waiting; `database`
/// names the database the lock stands for.
fn lock_exclusively(database: &Path, file: &Path) -> Result<File> {
    let opened = File::options().create(true).truncate(false).read(true).write(true).open(file).map_err(|err| StoreError::Locked(format!("cannot open {}: {err}", file.display())))?;
    match opened.try_lock() {
        Ok(()) => Ok(opened),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse(database.display().to_string())),
        Err(TryLockError::Error(err)) => Err(StoreError::Locked(format!("cannot lock {}: {err}", file.display()))),
    }
}

/// `path` with every symbolic link resolved, also for a database not made yet (its directory
/// is resolved); `path` itself when that cannot be done (the open that follows says why).
fn real_path(path: &Path) -> std::path::PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return path.to_path_buf() };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    std::fs::canonicalize(parent).map_or_else(|_| path.to_path_buf(), |dir| dir.join(name))
}

pub(crate) fn open_connection(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durability == Durability::Full { "FULL" } else { "NORMAL" })?;
    // 8 MiB of page cache: enough for the hot ends of the indexes, which is all a writer or a
    // usage read touches. Not more: SQLite's page cache remembers the temporary page number a
    // B-tree rebalance uses (the lock page, far past the end), and the next commit then walks
    // the cache's whole hash table to drop pages past the end; a 64 MiB cache made that walk
    // a visible share of the writer's time (BENCHMARKS.md, session 6).
    conn.pragma_update(None, "cache_size", -8_192)?;
    // Rarer checkpoints: the hot pages (team balances, rollups, the ends of the indexes) change
    // in every commit, and a rarer checkpoint copies each to the database file once instead of
    // many times. The writer's own connection checkpoints not at all (see `Checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    pub fn open(path: impl AsRef<Path>, rules: Rules) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::new(rules))
    }

    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let writer_lock = lock_for_writing(&path)?;
        // The writer's commits do not sync; with `Full` durability the syncer does, before
        // anyone is answered (see `syncer`).
        let mut conn = open_connection(&path, Durability::Normal)?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a load spike left a long WAL, its first rewind cuts the file back to this.
        let page_bytes: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        conn.pragma_update(None, "journal_size_limit", i64::from(options.wal_restart_frames).saturating_mul(2 * page_bytes))?;
        let wal_restart_due = Arc::new(AtomicBool::new(false));
        let checkpointer = Checkpointer::start(&path, options.durability, options.wal_restart_frames, Arc::clone(&wal_restart_due))?;
        let rules = Arc::new(options.rules.clone());
        let decision_ns = options.record_decision_times.then(DecisionTimes::default);
        let stats = Arc::new(stats::StatCounters::default());
        let write_failure = Arc::new(OnceLock::new());
        // The WAL is named after the file SQLite opened, which is the database's real path
        // (SQLite follows symbolic links); a WAL looked for beside a link would not exist.
        let opened = conn.path().map_or_else(|| real_path(&path), std::path::PathBuf::from);
        let wal = syncer::wal_path(&opened);
        let syncer = match options.durability {
            Durability::Full => Some(syncer::Syncer::start(opened, Arc::clone(&stats), Arc::clone(&write_failure))?),
            Durability::Normal => None,
        };
        let writer = Writer::new(conn, rules, decision_ns.clone(), syncer, Arc::clone(&stats), wal_restart_due)?;
        let (requests, queue) = mpsc::sync_channel(QUEUE_REQUESTS_MAX);
        let thread = std::thread::Builder::new().name("ledger-writer".into()).spawn(move || writer.run(queue)).map_err(|err| StoreError::Aborted(format!("cannot start the writer thread: {err}")))?;
        let shared = Shared { path, rules: options.rules, requests: Some(requests), writer: Some(thread), readers: Mutex::new(Vec::new()), decision_ns, stats, checkpointer: Some(checkpointer), write_failure, wal, _writer_lock: writer_lock };
        Ok(SqliteStore { shared: Arc::new(shared) })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn rules(&self) -> &Rules {
        &self.shared.rules
    }

    /// Admission decision times recorded so far, in nanoseconds, emptied by the call (only with
    /// `record_decision_times`).
    pub fn take_decision_times_ns(&self) -> Vec<u32> {
        self.shared.decision_ns.as_ref().map(|times| std::mem::take(&mut *times.lock().expect("decision times lock"))).unwrap_or_default()
    }

    fn call(&self, op: Op) -> Result<Reply> {
        crate::wait_for(|done| self.submit(op, done))
    }

    /// Queues `op` for the writer; `done` gets the writer's reply once the op's group is
    /// committed. Waits only while the queue is full (at most [`QUEUE_REQUESTS_MAX`] requests).
    fn submit(&self, op: Op, done: Done<Reply>) {
        let Some(requests) = self.shared.requests.as_ref() else { return done(Err(StoreError::Closed)) };
        if let Err(refused) = requests.send(Request { op, reply: done }) {
            (refused.0.reply)(Err(StoreError::Closed));
        }
    }

    /// Submits `op` and hands `done` the reply as `T`, or `Reply`'s mismatch as corruption.
    fn submit_expecting<T: 'static>(&self, op: Op, expect: fn(Reply) -> std::result::Result<T, Reply>, done: Done<T>) {
        self.submit(op, Box::new(move |reply| done(reply.and_then(|reply| expect(reply).map_err(unexpected)))));
    }

    /// Runs `f` on an idle read connection (opening one if none is idle).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.shared.readers.lock().expect("reader pool lock").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_connection(&self.shared.path, Durability::Full)?,
        };
        let result = f(&conn);
        let mut idle = self.shared.readers.lock().expect("reader pool lock");
        if idle.len() < READERS_IDLE_MAX {
            idle.push(conn);
        }
        result
    }
}

fn unexpected(reply: Reply) -> StoreError {
    let name = match reply {
        Reply::TeamCreated => "team created",
        Reply::Admission(_) => "admission",
        Reply::Charges(_) => "charges",
        Reply::ChargedAndEnded(..) => "charged and ended",
        Reply::Done => "done",
        Reply::BillingChanged(_) => "billing changed",
        Reply::Purchased(_) => "purchased",
        Reply::Invoiced(_) => "invoiced",
    };
    StoreError::Corrupt(format!("the writer answered `{name}` to another request"))
}

impl LedgerStore for SqliteStore {
    fn create_team(&self, new: NewTeam) -> Result<TeamInfo> {
        check_instant("at", new.at)?;
        let name = new.name.clone();
        match self.call(Op::CreateTeam(new))? {
            Reply::TeamCreated => self.team(&name),
            other => Err(unexpected(other)),
        }
    }

    fn team(&self, team: &TeamName) -> Result<TeamInfo> {
        self.read(|conn| read::team(conn, team))
    }

    fn teams(&self) -> Result<Vec<TeamInfo>> {
        self.read(read::teams)
    }

    fn submit_start_run(&self, team: &TeamName, start: StartRun, done: Done<Admission>) {
        if let Err(err) = check_instant("at", start.at) {
            return done(Err(err));
        }
        let expect = |reply| match reply {
            Reply::Admission(admission) => Ok(admission),
            other => Err(other),
        };
        self.submit_expecting(Op::Start(team.clone(), start), expect, done);
    }

    fn submit_charge(&self, team: &TeamName, events: Vec<UsageEvent>, done: Done<Vec<ChargeOutcome>>) {
        if let Err(err) = check_events(&events) {
            return done(Err(err));
        }
        let expect = |reply| match reply {
            Reply::Charges(outcomes) => Ok(outcomes),
            other => Err(other),
        };
        self.submit_expecting(Op::Charge(team.clone(), events), expect, done);
    }

    fn submit_end_run(&self, team: &TeamName, run: &RunId, at: Timestamp, done: Done<()>) {
        if let Err(err) = check_instant("at", at) {
            return done(Err(err));
        }
        self.submit_expecting(Op::End(team.clone(), run.clone(), at, RunEnd::Complete), expect_done, done);
    }

    fn submit_charge_and_end(&self, team: &TeamName, run: &RunId, events: Vec<UsageEvent>, at: Timestamp, done: Done<ChargedAndEnded>) {
        if let Err(err) = check_instant("at", at).and_then(|_| if events.is_empty() { Ok(()) } else { check_events(&events) }) {
            return done(Err(err));
        }
        let expect = |reply| match reply {
            Reply::ChargedAndEnded(both) => Ok(*both),
            other => Err(other),
        };
        self.submit_expecting(Op::ChargeAndEnd(team.clone(), run.clone(), events, at), expect, done);
    }

    fn cancel_run(&self, team: &TeamName, run: &RunId, at: Timestamp) -> Result<()> {
        self.finish(team, run, at, RunEnd::Cancel)
    }

    fn change_billing(&self, team: &TeamName, actor: &Actor, at: Timestamp, change: BillingChange) -> Result<Option<flowcredits_core::Grant>> {
        let mut grants = self.change_billing_all(team, actor, at, vec![change]).map_err(outside_batch)?;
        grants.pop().ok_or_else(|| StoreError::Corrupt("the writer answered no change to one billing change".into()))
    }

    fn change_billing_all(&self, team: &TeamName, actor: &Actor, at: Timestamp, changes: Vec<BillingChange>) -> Result<Vec<Option<flowcredits_core::Grant>>> {
        check_instant("at", at)?;
        if changes.is_empty() || changes.len() > BILLING_CHANGES_MAX {
            return Err(StoreError::invalid("changes", format!("{} billing changes in one request; send 1 to {BILLING_CHANGES_MAX}", changes.len())));
        }
        for (index, change) in changes.iter().enumerate() {
            if let BillingChange::Purchase { expires_at: Some(expires_at), .. } = change {
                check_instant("expires_at", *expires_at).map_err(|source| StoreError::Change { index, source: Box::new(source) })?;
            }
        }
        match self.call(Op::Billing(team.clone(), actor.clone(), at, changes))? {
            Reply::BillingChanged(grants) => Ok(grants),
            other => Err(unexpected(other)),
        }
    }

    fn purchase(&self, team: &TeamName, actor: &Actor, at: Timestamp, purchase: Purchase) -> Result<Purchased> {
        check_instant("at", at)?;
        if let Some(expires_at) = purchase.expires_at {
            check_instant("expires_at", expires_at)?;
        }
        match self.call(Op::Purchase(team.clone(), actor.clone(), at, purchase))? {
            Reply::Purchased(purchased) => Ok(purchased),
            other => Err(unexpected(other)),
        }
    }

    fn close_periods(&self, at: Timestamp) -> Result<usize> {
        check_instant("at", at)?;
        match self.call(Op::CloseAll(at))? {
            Reply::Invoiced(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    fn run(&self, team: &TeamName, run: &RunId) -> Result<Option<RunInfo>> {
        self.read(|conn| read::run(conn, team, run))
    }

    fn run_times(&self, team: &TeamName, run: &RunId) -> Result<Option<RunTimes>> {
        self.read(|conn| read::run_times(conn, team, run))
    }

    fn running_runs(&self) -> Result<Vec<(TeamName, RunId)>> {
        self.read(read::running_runs)
    }

    fn writer_stats(&self) -> WriterStats {
        WriterStats { wal_bytes: std::fs::metadata(&self.shared.wal).map_or(0, |metadata| metadata.len()), ..self.shared.stats.read() }
    }

    fn write_failure(&self) -> Option<String> {
        self.shared.write_failure.get().cloned()
    }

    fn runs_since(&self, since: Timestamp, limit: usize) -> Result<Vec<LedgerRun>> {
        self.read(|conn| read::runs_since(conn, since, limit))
    }

    fn periods(&self, team: &TeamName) -> Result<Vec<PeriodUsage>> {
        self.read(|conn| read::periods(conn, team))
    }

    fn usage(&self, team: &TeamName, month: Option<&str>, at: Timestamp) -> Result<UsageReport> {
        check_instant("at", at)?;
        self.read(|conn| read::usage(conn, &self.shared.rules, team, month, at))
    }

    fn grants(&self, team: &TeamName) -> Result<Vec<flowcredits_core::Grant>> {
        self.read(|conn| team::load_grants(conn, team::find_team(conn, team)?.id))
    }

    fn invoices(&self, team: &TeamName) -> Result<Vec<Invoice>> {
        self.read(|conn| read::invoices(conn, team))
    }

    fn audit_log(&self, team: &TeamName) -> Result<Vec<AuditEntry>> {
        self.read(|conn| read::audit_log(conn, team))
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.read(verify::verify)
    }
}

impl SqliteStore {
    fn finish(&self, team: &TeamName, run: &RunId, at: Timestamp, end: RunEnd) -> Result<()> {
        check_instant("at", at)?;
        expect_done(self.call(Op::End(team.clone(), run.clone(), at, end))?).map_err(unexpected)
    }
}

fn expect_done(reply: Reply) -> std::result::Result<(), Reply> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(other),
    }
}

/// A batch the writer may take: not empty, under the limit, every event well formed.
fn check_events(events: &[UsageEvent]) -> Result<()> {
    if events.is_empty() {
        return Err(StoreError::invalid("events", "the batch is empty"));
    }
    if events.len() > BATCH_EVENTS_MAX {
        return Err(StoreError::invalid("events", format!("{} events in one batch is more than the limit of {BATCH_EVENTS_MAX}", events.len())));
    }
    for (index, event) in events.iter().enumerate() {
        event.check().map_err(|source| StoreError::Event { index, source: Box::new(source) })?;
    }
    Ok(())
}
