//! Makes the writer's commits durable on a thread of their own, so that the writer never waits
//! for the disk.
//!
//! The writer's connection commits with `synchronous=NORMAL`: a commit appends its frames to
//! the WAL file without an fsync. The writer hands each committed group's answers to the
//! syncer and goes on with the next group; the syncer takes every group handed to it so far,
//! `fdatasync`s the WAL once, and only then answers their callers. A caller is therefore told
//! "done" only once its write is on disk (as with `synchronous=FULL`), but the fsync of one
//! group overlaps the work of the next, and one fsync serves every group that finished meanwhile.
//!
//! After a crash, SQLite's WAL recovery keeps the frames that passed their checksums: every
//! acknowledged group was synced, so it is kept; a group that was committed but not yet synced
//! was never acknowledged, so losing it loses nothing anyone was told about.
//!
//! A failed sync leaves the file in an unknown state: the groups waiting for it are answered
//! with [`StoreError::SyncFailed`] (refusals, which wrote nothing, keep their answer), and
//! [`Syncer::failed`] makes the writer refuse every later request until the store is opened
//! again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::stats::StatCounters;
use super::writer::{Reply, ReplyTo};
use crate::error::{Result, StoreError};

/// A committed group's callers and what each is to be told.
pub(crate) type Answers = Vec<(ReplyTo, Result<Reply>)>;

pub(crate) struct Syncer {
    groups: Option<Sender<Answers>>,
    thread: Option<JoinHandle<()>>,
    /// Why a sync failed, set by the first that did; never cleared.
    failure: Arc<OnceLock<String>>,
}

/// The WAL SQLite keeps for the database file at `database` (the file it opened: links
/// followed, since SQLite follows them).
pub(crate) fn wal_path(database: &Path) -> PathBuf {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Syncer {
    /// Starts the syncer for the WAL file of the database at `database`. The cause of the
    /// first failed sync goes into `failure`, which the store reads for health checks.
    pub(crate) fn start(database: PathBuf, stats: Arc<StatCounters>, failure: Arc<OnceLock<String>>) -> Result<Syncer> {
        let wal = wal_path(&database);
        let (groups, queue) = mpsc::channel();
        let noted = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("ledger-sync".into())
            .spawn(move || sync_loop(wal, queue, &noted, &stats))
            .map_err(|err| StoreError::Aborted(format!("cannot start the sync thread: {err}")))?;
        Ok(Syncer { groups: Some(groups), thread: Some(thread), failure })
    }

    /// Whether a sync failed: what the disk holds past it is unknown.
    pub(crate) fn failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Answers a committed group's callers once the WAL holding it is on disk.
    pub(crate) fn acknowledge(&self, answers: Answers) {
        let Some(groups) = &self.groups else { return answer(answers, Some(&Unconfirmed::Closed)) };
        if let Err(unsent) = groups.send(answers) {
            answer(unsent.0, Some(&Unconfirmed::Closed));
        }
    }
}

impl Drop for Syncer {
    /// Answers every group handed over so far (syncing them first), then stops.
    fn drop(&mut self) {
        drop(self.groups.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sync_loop(wal: PathBuf, queue: Receiver<Answers>, failure: &OnceLock<String>, stats: &StatCounters) {
    // Opened on first use, and kept: the same file while the writer's connection is open.
    let mut file: Option<File> = None;
    while let Ok(first) = queue.recv() {
        let mut groups = vec![first];
        groups.extend(queue.try_iter());
        let unconfirmed = if failure.get().is_some() {
            Some(Unconfirmed::SyncFailed("an earlier sync failed".into()))
        } else {
            let started = std::time::Instant::now();
            let synced = sync(&wal, &mut file);
            stats.synced(started.elapsed());
            synced.err().map(|err| {
                let cause = format!("fdatasync of {}: {err}", wal.display());
                let _ = failure.set(cause.clone());
                Unconfirmed::SyncFailed(cause)
            })
        };
        for answers in groups {
            answer(answers, unconfirmed.as_ref());
        }
    }
}

fn sync(wal: &PathBuf, file: &mut Option<File>) -> std::io::Result<()> {
    let file = match file {
        Some(file) => file,
        // The writer's connection made the WAL file when it opened, and it stays while that
        // connection is open: a missing file means this is not the file the commits went to,
        // and nothing could be confirmed.
        None => file.insert(File::options().read(true).write(true).open(wal)?),
    };
    file.sync_data()
}

/// Why a group's successes cannot be acknowledged.
enum Unconfirmed {
    /// The syncer is gone (the store is closing).
    Closed,
    SyncFailed(String),
}

impl Unconfirmed {
    fn error(&self) -> StoreError {
        match self {
            Unconfirmed::Closed => StoreError::Closed,
            Unconfirmed::SyncFailed(cause) => StoreError::SyncFailed(cause.clone()),
        }
    }
}

/// Tells each caller its result, or `failure` instead of a success that was not made durable.
fn answer(answers: Answers, failure: Option<&Unconfirmed>) {
    for (reply, result) in answers {
        match (failure, result) {
            (Some(failure), Ok(_)) => reply(Err(failure.error())),
            (_, result) => reply(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use flowcredits_core::CoreError;

    /// One success and one refusal, with a channel that receives what each caller was told.
    fn answers() -> (Answers, mpsc::Receiver<Result<Reply>>) {
        let (told, heard) = mpsc::channel();
        let (success, refusal) = (told.clone(), told);
        let answers: Answers = vec![
            (Box::new(move |result| success.send(result).unwrap()), Ok(Reply::Done)),
            (Box::new(move |result| refusal.send(result).unwrap()), Err(StoreError::Refused(CoreError::UnknownRun { run: "r".into() }))),
        ];
        (answers, heard)
    }

    #[test]
    fn callers_are_answered_once_the_wal_is_synced() {
        let dir = std::env::temp_dir().join(format!("flowcredits-syncer-ok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let database = dir.join("ledger.db");
        std::fs::write(dir.join("ledger.db-wal"), b"frames").unwrap();
        let syncer = Syncer::start(database, Arc::default(), Arc::default()).unwrap();
        let (group, heard) = answers();
        syncer.acknowledge(group);
        assert!(matches!(heard.recv().unwrap(), Ok(Reply::Done)));
        assert!(matches!(heard.recv().unwrap(), Err(StoreError::Refused(_))));
        assert!(!syncer.failed());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A sync that fails turns every success waiting on it, and every later one, into an error;
    /// refusals wrote nothing and keep their answer. The writer sees the flag.
    #[test]
    fn a_failed_sync_acknowledges_nothing_from_then_on() {
        // A directory where the WAL file should be: it cannot be opened for writing.
        let dir = std::env::temp_dir().join(format!("flowcredits-syncer-fails-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ledger.db-wal")).unwrap();
        let syncer = Syncer::start(dir.join("ledger.db"), Arc::default(), Arc::default()).unwrap();
        for _ in 0..2 {
            let (group, heard) = answers();
            syncer.acknowledge(group);
            assert!(matches!(heard.recv().unwrap(), Err(StoreError::SyncFailed(_))));
            assert!(matches!(heard.recv().unwrap(), Err(StoreError::Refused(_))));
        }
        assert!(syncer.failed());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_wal_file_confirms_nothing() {
        let database = std::env::temp_dir().join(format!("flowcredits-syncer-nowal-{}", std::process::id())).join("ledger.db");
        let syncer = Syncer::start(database, Arc::default(), Arc::default()).unwrap();
        let (group, heard) = answers();
        syncer.acknowledge(group);
        assert!(matches!(heard.recv().unwrap(), Err(StoreError::SyncFailed(cause)) if cause.contains("ledger.db-wal")));
        assert!(syncer.failed());
    }
}
