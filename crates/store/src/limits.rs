//! Every limit the store enforces, with its unit.

/// Most usage events in one ingestion batch.
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Most requests the writer folds into one transaction (one commit, one fsync).
pub const GROUP_REQUESTS_MAX: usize = 4_096;
/// Requests that may wait for the writer before callers block (back-pressure).
pub const QUEUE_REQUESTS_MAX: usize = 16_384;
/// Longest team name, in bytes.
pub const TEAM_NAME_BYTES_MAX: usize = 64;
/// Longest actor (who made a billing change), in bytes.
pub const ACTOR_BYTES_MAX: usize = 128;
/// Longest idempotency key of a purchase, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Most billing changes decided together in one request (`LedgerStore::change_billing_all`).
pub const BILLING_CHANGES_MAX: usize = 16;
/// Longest model name on a usage event, in bytes.
pub const MODEL_BYTES_MAX: usize = 128;
/// Longest MCP tool name on a usage event, in bytes.
pub const TOOL_NAME_BYTES_MAX: usize = 256;
/// Earliest instant the store accepts: 2000-01-01T00:00:00Z, in Unix milliseconds.
pub const INSTANT_MS_MIN: i64 = 946_684_800_000;
/// Latest instant the store accepts: 2200-01-01T00:00:00Z, in Unix milliseconds.
pub const INSTANT_MS_MAX: i64 = 7_258_118_400_000;
/// Idle read connections kept open for reuse.
pub const READERS_IDLE_MAX: usize = 8;
/// WAL pages (4 KiB each) written before SQLite copies them back into the database file.
pub const WAL_CHECKPOINT_PAGES: i64 = 10_000;
/// WAL frames past which the writer finishes a checkpoint itself between two groups, so that
/// the WAL starts again from its beginning under steady load (64 MiB of 4 KiB pages); the WAL
/// file is cut back to twice this after a spike.
pub const WAL_RESTART_FRAMES: u32 = 16_384;
/// How often the store's checkpoint thread copies the WAL back into the database file.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
