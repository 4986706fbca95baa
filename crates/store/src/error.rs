use flowcredits_core::CoreError;

/// Everything the store refuses or fails at. `Refused`, `Invalid`, `UnknownTeam`,
/// `TeamExists`, `ExecutionConflict` and `IdempotencyConflict` are the caller's to fix and safe to show; `Storage`
/// and `Closed` are the operator's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The ledger refused the command (a run that is not running, a plan without
    /// pay-as-you-go, ...). Nothing was written.
    #[error("{0}")]
    Refused(#[from] CoreError),
    /// A field is malformed or out of range. Nothing was written.
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
    /// One event of a batch was refused; the whole batch was.
    #[error("event {index} of the batch: {source}")]
    Event { index: usize, source: Box<StoreError> },
    /// One change of a billing batch was refused; the whole batch was.
    #[error("change {index} of the batch: {source}")]
    Change { index: usize, source: Box<StoreError> },
    /// A purchase's idempotency key was used before by the team for another purchase.
    #[error("idempotency key `{key}` was already used for a purchase with different {difference}; a retry must resend the same purchase, a new purchase needs a new key")]
    IdempotencyConflict { key: String, difference: &'static str },
    #[error("team `{team}` is not known")]
    UnknownTeam { team: String },
    #[error("team `{team}` already exists with other settings")]
    TeamExists { team: String },
    /// The id was seen before with other content: a retry must resend the same event.
    #[error("execution {execution} was already recorded with different content ({difference})")]
    ExecutionConflict { execution: String, difference: &'static str },
    /// The run id was started before with another trigger, location or flow.
    #[error("run {run} was already started with a different trigger, location or flow")]
    RunConflict { run: String },
    #[error("period `{period}` {problem}")]
    BadPeriod { period: String, problem: &'static str },
    #[error("database: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("database file was written by a newer flowcredits (schema version {found}, this build knows up to {known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// Another request in the same transaction failed in the database, so this one was rolled
    /// back with it; it is safe to retry.
    #[error("rolled back with its group commit: {0}")]
    Aborted(String),
    /// The disk did not confirm a commit (fsync failed). What was written since the last
    /// confirmed commit may not be on disk, so the store takes no more writes until it is
    /// opened again, which reads back what the disk holds.
    #[error("the ledger's disk did not confirm a write ({0}); nothing since is acknowledged: restart the server after checking the disk")]
    SyncFailed(String),
    /// The lock beside the database could not be taken (it cannot be opened or locked).
    #[error("ledger database is locked: {0}")]
    Locked(String),
    /// Another process (a running server, another command) has the database at this path open
    /// for writing.
    #[error("ledger database is locked: {0} is open in another process (a running `flowcredits serve`?); stop it, or go through its API")]
    InUse(String),
    /// The writer thread is gone (the store is shutting down, or a previous failure stopped it).
    #[error("the store's writer has stopped")]
    Closed,
}

impl StoreError {
    /// The error itself, outside the batch position that wraps it.
    pub fn root(&self) -> &StoreError {
        match self {
            StoreError::Event { source, .. } | StoreError::Change { source, .. } => source.root(),
            other => other,
        }
    }

    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> StoreError {
        StoreError::Invalid { field, problem: problem.into() }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
