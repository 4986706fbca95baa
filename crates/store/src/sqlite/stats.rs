//! Counters of the writer's and the syncer's work, read for monitoring (`/metrics`): how many
//! requests each commit carries and how long commits and syncs take say where load goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::WriterStats;

#[derive(Default)]
pub(crate) struct StatCounters {
    commits: AtomicU64,
    requests: AtomicU64,
    commit_ns: AtomicU64,
    syncs: AtomicU64,
    sync_ns: AtomicU64,
    wal_rewinds: AtomicU64,
    wal_rewind_ns: AtomicU64,
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

impl StatCounters {
    /// A group of `requests` was decided and committed (or rolled back) in `elapsed`.
    pub(crate) fn committed(&self, requests: usize, elapsed: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.commit_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    pub(crate) fn synced(&self, elapsed: Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    /// The writer copied the WAL whole between two groups in `elapsed`, so its next commit
    /// rewinds the WAL.
    pub(crate) fn wal_copied_whole(&self, elapsed: Duration) {
        self.wal_rewinds.fetch_add(1, Ordering::Relaxed);
        self.wal_rewind_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            commit_ns: self.commit_ns.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_ns: self.sync_ns.load(Ordering::Relaxed),
            wal_rewinds: self.wal_rewinds.load(Ordering::Relaxed),
            wal_rewind_ns: self.wal_rewind_ns.load(Ordering::Relaxed),
            wal_bytes: 0,
        }
    }
}
