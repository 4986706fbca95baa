//! The server's catalog: who may call it (users, API keys, team roles) and what teams built
//! (flows, snapshots, deployments), plus run history and alert deliveries. Credits live in the
//! ledger store, never here.
//!
//! SQLite through one connection: the catalog sees little write traffic (configuration and one
//! history row per run), so a mutex is simpler than a pool and never the bottleneck; every call
//! runs on the blocking pool so async workers never wait on the disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use crate::auth::Role;
use crate::error::ApiError;

/// Most rows a list request returns.
pub const PAGE_ITEMS_MAX: u32 = 200;
/// Rows a list request returns when it does not say.
pub const PAGE_ITEMS_DEFAULT: u32 = 50;

const SCHEMA: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, is_operator INTEGER NOT NULL, created_ms INTEGER NOT NULL);
     CREATE TABLE api_keys (id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), token_sha256 BLOB NOT NULL UNIQUE,
        label TEXT NOT NULL, created_ms INTEGER NOT NULL, revoked_ms INTEGER);
     CREATE TABLE members (team TEXT NOT NULL, user_id TEXT NOT NULL REFERENCES users(id), role TEXT NOT NULL, PRIMARY KEY (team, user_id));
     CREATE INDEX members_by_user ON members (user_id);
     CREATE TABLE flows (id TEXT PRIMARY KEY, team TEXT NOT NULL, name TEXT NOT NULL, definition TEXT NOT NULL,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, UNIQUE (team, name));
     CREATE TABLE snapshots (flow_id TEXT NOT NULL REFERENCES flows(id), number INTEGER NOT NULL, definition TEXT NOT NULL,
        created_ms INTEGER NOT NULL, PRIMARY KEY (flow_id, number));
     CREATE TABLE deployments (id TEXT PRIMARY KEY, team TEXT NOT NULL, path TEXT NOT NULL, flow_id TEXT NOT NULL REFERENCES flows(id),
        snapshot INTEGER NOT NULL, trigger TEXT NOT NULL, schedule_every_s INTEGER, created_ms INTEGER NOT NULL, UNIQUE (team, path));
     CREATE TABLE run_history (id TEXT PRIMARY KEY, team TEXT NOT NULL, flow_id TEXT NOT NULL, snapshot INTEGER, deployment_id TEXT,
        trigger TEXT NOT NULL, location TEXT NOT NULL, status TEXT NOT NULL, created_ms INTEGER NOT NULL, started_ms INTEGER,
        ended_ms INTEGER, credits INTEGER NOT NULL DEFAULT 0, error TEXT, input TEXT NOT NULL, output TEXT);
     CREATE INDEX run_history_by_team ON run_history (team, id);
     CREATE TABLE run_history_blocks (run_id TEXT NOT NULL REFERENCES run_history(id), seq INTEGER NOT NULL, block_id TEXT NOT NULL, kind TEXT NOT NULL,
        status TEXT NOT NULL, input TEXT NOT NULL, output TEXT, started_ms INTEGER NOT NULL, duration_us INTEGER NOT NULL,
        credits INTEGER NOT NULL, error TEXT, PRIMARY KEY (run_id, seq));
     CREATE TABLE team_settings (team TEXT PRIMARY KEY, alert_webhook_url TEXT);
     CREATE TABLE alert_deliveries (id TEXT PRIMARY KEY, team TEXT NOT NULL, alert TEXT NOT NULL, period_start_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, delivered_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        UNIQUE (team, alert, period_start_ms));",
    // 2: private runners. A deployment says where its runs execute; a runner is a team's own
    // machine holding a token (SHA-256 only, like API keys); a job is a run queued for, or
    // leased to, one of the team's runners (`runner_id` NULL or its lease passed: waiting).
    // A run's block executions are stored as the batches they were charged in (one row, a JSON
    // array, per charge: a short run writes one row, not one per block). An execution reported
    // twice (a retried charge, a job handed out again) is listed once when read, as the ledger
    // counts it once.
    "ALTER TABLE deployments ADD COLUMN runs_on TEXT NOT NULL DEFAULT 'cloud';
     CREATE TABLE runners (id TEXT PRIMARY KEY, team TEXT NOT NULL, name TEXT NOT NULL, token_sha256 BLOB NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL, last_seen_ms INTEGER, UNIQUE (team, name));
     CREATE INDEX runners_by_team ON runners (team, id);
     CREATE TABLE runner_jobs (run_id TEXT PRIMARY KEY REFERENCES run_history(id), team TEXT NOT NULL, http TEXT,
        runner_id TEXT, lease_until_ms INTEGER, claims INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
     CREATE INDEX runner_jobs_by_team ON runner_jobs (team, run_id);
     CREATE TABLE run_history_batches (run_id TEXT NOT NULL REFERENCES run_history(id), batch INTEGER NOT NULL, blocks TEXT NOT NULL,
        PRIMARY KEY (run_id, batch)) WITHOUT ROWID;
     INSERT INTO run_history_batches (run_id, batch, blocks)
        SELECT run_id, seq, json_array(json_object('block_id', block_id, 'kind', kind, 'status', status, 'input', json(input), 'output', json(coalesce(output, 'null')),
            'started_ms', started_ms, 'duration_us', duration_us, 'credits', credits, 'error', error)) FROM run_history_blocks;
     DROP TABLE run_history_blocks;",
    // 3: a user's keys are listed (and revoked) by user; a deployment may run on a cron
    // schedule instead of every so many seconds.
    "CREATE INDEX api_keys_by_user ON api_keys (user_id, id);
     ALTER TABLE deployments ADD COLUMN schedule_cron TEXT;",
    // 4: a paused hook run keeps the HTTP request that made it (method, path, headers, query),
    // which its flow reads again when it resumes.
    "ALTER TABLE run_history ADD COLUMN http TEXT;",
    // 5: a run on the user's machine (`flowcredits run --server`) declares at admission the
    // blocks it may execute, which decide whether it needs credits; its charges must be among them.
    "ALTER TABLE run_history ADD COLUMN declared TEXT;",
    // 6: history keeps at most `history::BLOCKS_PER_RUN_MAX` block executions per run and counts
    // the rest (the ledger keeps every charge).
    "ALTER TABLE run_history ADD COLUMN blocks_omitted INTEGER NOT NULL DEFAULT 0;",
    // 7: when each API key was last used (to about a minute), so that after a leak a user can
    // tell which keys were in use.
    "ALTER TABLE api_keys ADD COLUMN last_used_ms INTEGER;",
    // 8: what a run's `response` block answered, for a caller that stopped waiting (408).
    "ALTER TABLE run_history ADD COLUMN response TEXT;",
    // 9: alert deliveries are signed with a secret of the team's (made when a webhook is set).
    "ALTER TABLE team_settings ADD COLUMN alert_signing_secret TEXT;",
    // 10: an alert keeps what it delivers and when it was last tried, so that one whose first
    // attempts all failed is tried again later.
    "ALTER TABLE alert_deliveries ADD COLUMN payload TEXT;
     ALTER TABLE alert_deliveries ADD COLUMN last_attempt_ms INTEGER;",
    // 11: finished runs and their credits per team, flow and UTC day the run was admitted on,
    // added to as runs end (`history::finish_run`): usage by flow reads these, so it stays
    // whole when history older than the billing period is pruned. Filled from the history kept.
    "CREATE TABLE flow_usage (team TEXT NOT NULL, day INTEGER NOT NULL, flow_id TEXT NOT NULL, runs INTEGER NOT NULL, credits INTEGER NOT NULL,
        PRIMARY KEY (team, day, flow_id)) WITHOUT ROWID;
     INSERT INTO flow_usage (team, day, flow_id, runs, credits)
        SELECT team, created_ms / 86400000, flow_id, COUNT(*), SUM(credits) FROM run_history WHERE status NOT IN ('running', 'paused')
        GROUP BY team, created_ms / 86400000, flow_id;",
    // 12: runs recorded from the ledger alone (`runner::restore_lost_history`) had an empty
    // flow id; they now have `history::LEDGER_FLOW_ID`.
    "UPDATE run_history SET flow_id = '(ledger)' WHERE flow_id = '';
     UPDATE flow_usage SET flow_id = '(ledger)' WHERE flow_id = '';",
    // 13: an included-credit alert's name says the allowance it is a percentage of (the ledger's
    // migration 3), so that an upgrade's new thresholds are new deliveries. Deliveries made
    // before are renamed from the allowance they reported, so that they are not sent again.
    "UPDATE alert_deliveries SET alert = alert || '_of_' || json_extract(payload, '$.detail.included')
        WHERE alert IN ('included_75', 'included_100') AND json_extract(payload, '$.detail.included') IS NOT NULL;",
];

/// A key's `last_used_ms` is written at most once per this many milliseconds: keys are checked
/// from a cache, and a busy key costs no write per request.
const KEY_LAST_USED_PRECISION_MS: i64 = 60_000;

#[derive(Clone)]
pub struct Catalog {
    connection: Arc<Mutex<Connection>>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog in the SQLite file at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Catalog, ApiError> {
        Catalog::migrate(Catalog::connect(path)?)
    }

    /// A connection to the catalog database at `path`, set up as every catalog connection is.
    pub fn connect(path: &Path) -> Result<Connection, ApiError> {
        let connection = Connection::open(path)?;
        // Run history is appended in kilobytes per run: 16 KiB pages write it in a quarter of the
        // WAL frames (and system calls) that 4 KiB pages take. Only a new file takes the size.
        connection.pragma_update(None, "page_size", 16_384)?;
        connection.pragma_update(None, "wal_autocheckpoint", 256)?;
        // The history writer's connection may hold the write lock briefly.
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // History and configuration, not money: a commit reaches the WAL at once and the disk
        // at the next checkpoint, so a power cut may lose the last moments of history but never
        // corrupts it. The ledger, which holds the credits, keeps fsyncing every commit.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        Ok(connection)
    }

    fn migrate(mut connection: Connection) -> Result<Catalog, ApiError> {
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("CREATE TABLE IF NOT EXISTS catalog_migrations (version INTEGER PRIMARY KEY)", [])?;
        let applied: i64 = tx.query_row("SELECT COUNT(*) FROM catalog_migrations", [], |row| row.get(0))?;
        for (version, sql) in SCHEMA.iter().enumerate().skip(applied as usize) {
            tx.execute_batch(sql)?;
            tx.execute("INSERT INTO catalog_migrations (version) VALUES (?1)", [version as i64 + 1])?;
        }
        tx.commit()?;
        Ok(Catalog { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `work` with the connection on this thread, for callers that cannot await (the
    /// engine's flow resolver, called once per run before it starts).
    pub fn call_here<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut connection)
    }

    /// Runs `work` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(ApiError::internal)?
    }
}

/// A fresh time-ordered id: milliseconds then randomness, so ids sort by creation and index
/// inserts append.
/// The smallest id [`new_id`] makes with `prefix` at `ms` or later: ids sort by the
/// millisecond they were made in, so a time range is an id range (and an index range).
pub fn first_id_at(prefix: &str, ms: i64) -> String {
    format!("{prefix}_{:011x}", ms.max(0))
}

/// Refuses a page cursor that is not an id made by [`new_id`] with `prefix`: compared as text,
/// any other string would silently start the page somewhere arbitrary.
pub fn check_id_cursor(prefix: &str, after: Option<&str>) -> Result<(), ApiError> {
    let Some(after) = after else { return Ok(()) };
    let well_formed = after.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('_')).is_some_and(|hex| hex.len() == 21 && hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)));
    if well_formed { Ok(()) } else { Err(ApiError::invalid("after", format!("`{after}` is not a cursor this list gave (a `{prefix}_…` id)"))) }
}

pub fn new_id(prefix: &str) -> String {
    // Ids name things, they grant nothing (every route checks the caller's team), so a fast
    // per-thread generator seeded from the OS serves: no system call per id on the hook path.
    let random = fastrand::u64(..1 << 40);
    format!("{prefix}_{:011x}{random:010x}", jiff::Timestamp::now().as_millisecond())
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The UTC day (days since the Unix epoch) of an instant in Unix milliseconds. Billing periods
/// begin at 00:00 UTC, so whole days tile them: the unit of the per-flow usage rollup, and the
/// only ticks at which a period can begin.
pub(crate) fn utc_day(ms: i64) -> i64 {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    ms.div_euclid(DAY_MS)
}

pub(crate) fn ms_to_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|at| at.to_string()).unwrap_or_default()
}

pub(crate) fn json_column(text: Option<String>) -> Value {
    text.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or(Value::Null)
}

/// One page of a list, and the cursor for the next.
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; null on the last page.
    pub next: Option<String>,
}

/// Where a list starts and how long it is.
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

impl<T> Page<T> {
    /// One page of a list already in memory, sorted by `cursor`.
    pub fn of_sorted(items: Vec<T>, page: &PageRequest, cursor: impl Fn(&T) -> String) -> Page<T> {
        let rows: Vec<T> = items.into_iter().filter(|item| page.after.as_ref().is_none_or(|after| cursor(item) > *after)).take(page.limit as usize + 1).collect();
        Page::from_rows(rows, page.limit, cursor)
    }

    /// Builds a page from up to `limit + 1` rows: the extra row only says there is more.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Page<T> {
        let next = (rows.len() > limit as usize).then(|| {
            rows.truncate(limit as usize);
            cursor(rows.last().expect("limit is at least 1"))
        });
        Page { items: rows, next }
    }
}

// ---------------------------------------------------------------- users and keys

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub is_operator: bool,
    pub created_at: String,
}

pub fn create_user(connection: &Connection, name: &str, is_operator: bool) -> Result<User, ApiError> {
    let id = new_id("usr");
    let created = now_ms();
    connection.execute("INSERT INTO users (id, name, is_operator, created_ms) VALUES (?1, ?2, ?3, ?4)", params![id, name, is_operator, created])?;
    Ok(User { id, name: name.to_owned(), is_operator, created_at: ms_to_text(created) })
}

pub fn user_count(connection: &Connection) -> Result<u64, ApiError> {
    Ok(connection.query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0))? as u64)
}

fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User { id: row.get(0)?, name: row.get(1)?, is_operator: row.get(2)?, created_at: ms_to_text(row.get(3)?) })
}

pub fn user(connection: &Connection, id: &str) -> Result<User, ApiError> {
    connection.query_row("SELECT id, name, is_operator, created_ms FROM users WHERE id = ?1", [id], user_row).optional()?.ok_or_else(|| ApiError::NotFound(format!("user {id}")))
}

/// Every user, by id.
pub fn users(connection: &Connection, page: &PageRequest) -> Result<Page<User>, ApiError> {
    let mut statement = connection.prepare_cached("SELECT id, name, is_operator, created_ms FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let rows = statement.query_map(params![page.after.as_deref().unwrap_or(""), page.limit + 1], user_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |user| user.id.clone()))
}

/// An API key as it is shown: never its token, which only its holder has.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub user_id: String,
    pub label: String,
    pub created_at: String,
    /// When it stopped working; `null` while it works.
    pub revoked_at: Option<String>,
    /// When a request last came with it, to within about a minute; `null` if never.
    pub last_used_at: Option<String>,
}

fn key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: row.get(0)?,
        user_id: row.get(1)?,
        label: row.get(2)?,
        created_at: ms_to_text(row.get(3)?),
        revoked_at: row.get::<_, Option<i64>>(4)?.map(ms_to_text),
        last_used_at: row.get::<_, Option<i64>>(5)?.map(ms_to_text),
    })
}

const KEY_COLUMNS: &str = "id, user_id, label, created_ms, revoked_ms, last_used_ms";

pub fn create_key(connection: &Connection, user_id: &str, label: &str, token_sha256: &[u8]) -> Result<ApiKeyInfo, ApiError> {
    let id = new_id("key");
    let created = now_ms();
    connection.execute(
        "INSERT INTO api_keys (id, user_id, token_sha256, label, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, user_id, token_sha256, label, created],
    )?;
    Ok(ApiKeyInfo { id, user_id: user_id.to_owned(), label: label.to_owned(), created_at: ms_to_text(created), revoked_at: None, last_used_at: None })
}

/// A user's keys, revoked ones included, oldest first.
pub fn keys(connection: &Connection, user_id: &str, page: &PageRequest) -> Result<Page<ApiKeyInfo>, ApiError> {
    let mut statement = connection.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"))?;
    let rows = statement.query_map(params![user_id, page.after.as_deref().unwrap_or(""), page.limit + 1], key_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |key| key.id.clone()))
}

/// Revokes one of the user's keys (revoking it again changes nothing). Returns the key and its
/// token's digest, for caches to forget.
pub fn revoke_key(connection: &Connection, user_id: &str, key_id: &str) -> Result<(ApiKeyInfo, Vec<u8>), ApiError> {
    // The operators' last working key stays: without one nobody could make users, teams or
    // keys again (`serve` makes the first operator only in an empty catalog).
    let revokes_an_operator_key: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?1 AND k.user_id = ?2 AND u.is_operator AND k.revoked_ms IS NULL)",
        params![key_id, user_id],
        |row| row.get(0),
    )?;
    let operator_keys_left: i64 = if revokes_an_operator_key {
        connection.query_row("SELECT count(*) FROM api_keys k JOIN users u ON u.id = k.user_id WHERE u.is_operator AND k.revoked_ms IS NULL AND k.id <> ?1", [key_id], |row| row.get(0))?
    } else {
        1
    };
    if revokes_an_operator_key && operator_keys_left == 0 {
        return Err(ApiError::Conflict(format!("key {key_id} is the last working key of any operator; make another first (POST /v1/users/{user_id}/keys), then revoke this one")));
    }
    connection.execute("UPDATE api_keys SET revoked_ms = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_ms IS NULL", params![key_id, user_id, now_ms()])?;
    let found = connection
        .query_row(&format!("SELECT {KEY_COLUMNS}, token_sha256 FROM api_keys WHERE id = ?1 AND user_id = ?2"), params![key_id, user_id], |row| Ok((key_row(row)?, row.get::<_, Vec<u8>>(6)?)))
        .optional()?;
    found.ok_or_else(|| ApiError::NotFound(format!("key {key_id} of user {user_id}")))
}

/// The user a live key acts for.
/// The user a working key acts for; notes that the key was used (see `last_used_at`).
pub fn user_by_key(connection: &Connection, token_sha256: &[u8]) -> Result<Option<User>, ApiError> {
    let user_id: Option<String> = connection
        .query_row("SELECT user_id FROM api_keys WHERE token_sha256 = ?1 AND revoked_ms IS NULL", [token_sha256], |row| row.get(0))
        .optional()?;
    if user_id.is_some() {
        let now = now_ms();
        connection
            .prepare_cached("UPDATE api_keys SET last_used_ms = ?2 WHERE token_sha256 = ?1 AND (last_used_ms IS NULL OR last_used_ms <= ?2 - ?3)")?
            .execute(params![token_sha256, now, KEY_LAST_USED_PRECISION_MS])?;
    }
    user_id.map(|id| user(connection, &id)).transpose()
}

// ---------------------------------------------------------------- members

#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub role: Role,
}

pub fn set_member(connection: &Connection, team: &str, user_id: &str, role: Role) -> Result<(), ApiError> {
    user(connection, user_id)?;
    connection.execute(
        "INSERT INTO members (team, user_id, role) VALUES (?1, ?2, ?3) ON CONFLICT (team, user_id) DO UPDATE SET role = excluded.role",
        params![team, user_id, role.as_str()],
    )?;
    Ok(())
}

pub fn remove_member(connection: &Connection, team: &str, user_id: &str) -> Result<(), ApiError> {
    match connection.execute("DELETE FROM members WHERE team = ?1 AND user_id = ?2", params![team, user_id])? {
        0 => Err(ApiError::NotFound(format!("member {user_id} of team {team}"))),
        _ => Ok(()),
    }
}

/// Sets a member's role (`Some`) or removes the member (`None`), guarding the team's owners:
/// only an owner may make, change or remove an owner, and the last owner stays (a team
/// without one could never again change its owners). `actor` is the caller's effective role.
/// The transaction takes the write lock before it reads (IMMEDIATE): a deferred one that read
/// first could not then write once the history writer had committed meanwhile (SQLite answers
/// that at once, busy timeout or not), and the change failed as an internal error.
pub fn change_member(connection: &mut Connection, team: &str, user_id: &str, role: Option<Role>, actor: Role) -> Result<(), ApiError> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current = role_of(&transaction, team, user_id)?;
    let touches_owner = current == Some(Role::Owner) || role == Some(Role::Owner);
    if touches_owner && actor != Role::Owner {
        return Err(ApiError::Forbidden(format!("your role in team {team} is {actor}; only an owner can make, change or remove an owner")));
    }
    if current == Some(Role::Owner) && role != Some(Role::Owner) {
        let owners: i64 = transaction.query_row("SELECT count(*) FROM members WHERE team = ?1 AND role = 'owner'", [team], |row| row.get(0))?;
        if owners <= 1 {
            return Err(ApiError::Conflict(format!("{user_id} is the last owner of team {team}; make another member an owner first")));
        }
    }
    match role {
        Some(role) => set_member(&transaction, team, user_id, role)?,
        None => remove_member(&transaction, team, user_id)?,
    }
    transaction.commit()?;
    Ok(())
}

pub fn members(connection: &Connection, team: &str) -> Result<Vec<Member>, ApiError> {
    let mut statement = connection.prepare("SELECT m.user_id, u.name, m.role FROM members m JOIN users u ON u.id = m.user_id WHERE m.team = ?1 ORDER BY m.user_id")?;
    let rows = statement.query_map([team], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (user_id, name, role) = row?;
        out.push(Member { user_id, name, role: role.parse().map_err(ApiError::internal)? });
    }
    Ok(out)
}

pub fn role_of(connection: &Connection, team: &str, user_id: &str) -> Result<Option<Role>, ApiError> {
    let role: Option<String> = connection.prepare_cached("SELECT role FROM members WHERE team = ?1 AND user_id = ?2")?.query_row(params![team, user_id], |row| row.get(0)).optional()?;
    role.map(|role| role.parse().map_err(ApiError::internal)).transpose()
}

pub fn teams_of(connection: &Connection, user_id: &str) -> Result<Vec<String>, ApiError> {
    let mut statement = connection.prepare("SELECT team FROM members WHERE user_id = ?1 ORDER BY team")?;
    let teams = statement.query_map([user_id], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(teams)
}

// ---------------------------------------------------------------- flows and snapshots

#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub id: String,
    pub team: String,
    pub name: String,
    pub definition: Value,
    /// The newest snapshot's number (tagged `latest`).
    pub latest_snapshot: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
}

const FLOW_COLUMNS: &str = "f.id, f.team, f.name, f.definition, f.created_ms, f.updated_ms, (SELECT MAX(number) FROM snapshots s WHERE s.flow_id = f.id)";

fn flow_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Flow> {
    Ok(Flow {
        id: row.get(0)?,
        team: row.get(1)?,
        name: row.get(2)?,
        definition: json_column(row.get(3)?),
        created_at: ms_to_text(row.get(4)?),
        updated_at: ms_to_text(row.get(5)?),
        latest_snapshot: row.get(6)?,
    })
}

pub fn create_flow(connection: &Connection, team: &str, name: &str, definition: &Value) -> Result<Flow, ApiError> {
    let id = new_id("flw");
    let now = now_ms();
    let inserted = connection.execute(
        "INSERT INTO flows (id, team, name, definition, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (team, name) DO NOTHING",
        params![id, team, name, definition.to_string(), now],
    )?;
    if inserted == 0 {
        return Err(ApiError::Conflict(format!("team {team} already has a flow named {name:?}")));
    }
    flow(connection, team, &id)
}

/// A flow of `team` by its name.
pub fn flow_by_name(connection: &Connection, team: &str, name: &str) -> Result<Flow, ApiError> {
    connection
        .query_row(&format!("SELECT {FLOW_COLUMNS} FROM flows f WHERE f.team = ?1 AND f.name = ?2"), params![team, name], flow_row)
        .optional()?
        .ok_or_else(|| ApiError::NotFound(format!("flow named {name:?}")))
}

pub fn update_flow(connection: &Connection, team: &str, id: &str, definition: &Value) -> Result<Flow, ApiError> {
    let changed = connection.execute("UPDATE flows SET definition = ?1, updated_ms = ?2 WHERE team = ?3 AND id = ?4", params![definition.to_string(), now_ms(), team, id])?;
    if changed == 0 {
        return Err(ApiError::NotFound(format!("flow {id}")));
    }
    flow(connection, team, id)
}

/// A flow of `team`; another team's flow is not found, never shown.
pub fn flow(connection: &Connection, team: &str, id: &str) -> Result<Flow, ApiError> {
    connection
        .query_row(&format!("SELECT {FLOW_COLUMNS} FROM flows f WHERE f.team = ?1 AND f.id = ?2"), params![team, id], flow_row)
        .optional()?
        .ok_or_else(|| ApiError::NotFound(format!("flow {id}")))
}

/// Deletes a flow of `team` and its snapshots. Refused while a deployment serves it or a run
/// of it is running or paused (a paused run resumes from its snapshot); its finished runs stay
/// in history.
pub fn delete_flow(connection: &mut Connection, team: &str, id: &str) -> Result<(), ApiError> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    flow(&transaction, team, id)?;
    let paths: Vec<String> = transaction.prepare("SELECT path FROM deployments WHERE team = ?1 AND flow_id = ?2 ORDER BY path")?.query_map(params![team, id], |row| row.get(0))?.collect::<Result<_, _>>()?;
    if !paths.is_empty() {
        return Err(ApiError::Conflict(format!("flow {id} is deployed at {}; delete those deployments first", paths.join(", "))));
    }
    let live: i64 = transaction.query_row("SELECT COUNT(*) FROM run_history WHERE team = ?1 AND flow_id = ?2 AND status IN ('running', 'paused')", params![team, id], |row| row.get(0))?;
    if live > 0 {
        return Err(ApiError::Conflict(format!("flow {id} has {live} run(s) running or paused; let them finish or cancel them first")));
    }
    transaction.execute("DELETE FROM snapshots WHERE flow_id = ?1", [id])?;
    transaction.execute("DELETE FROM flows WHERE team = ?1 AND id = ?2", params![team, id])?;
    Ok(transaction.commit()?)
}

pub fn flows(connection: &Connection, team: &str, page: &PageRequest) -> Result<Page<Flow>, ApiError> {
    let mut statement = connection.prepare(&format!("SELECT {FLOW_COLUMNS} FROM flows f WHERE f.team = ?1 AND f.id > ?2 ORDER BY f.id LIMIT ?3"))?;
    let rows = statement.query_map(params![team, page.after.as_deref().unwrap_or(""), page.limit + 1], flow_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |flow| flow.id.clone()))
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub flow_id: String,
    pub number: u32,
    pub latest: bool,
    pub definition: Value,
    pub created_at: String,
}

/// Freezes the flow's current definition as the next numbered snapshot. With a per-flow limit
/// (Free plans), the snapshot past it is refused and nothing is deleted.
pub fn create_snapshot(connection: &mut Connection, team: &str, flow_id: &str, snapshots_max: Option<u32>) -> Result<Snapshot, ApiError> {
    // Immediate: reads then writes, while the history writer commits to the same file.
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current = flow(&tx, team, flow_id)?;
    let count: u32 = tx.query_row("SELECT COUNT(*) FROM snapshots WHERE flow_id = ?1", [flow_id], |row| row.get(0))?;
    if let Some(max) = snapshots_max.filter(|max| count >= *max) {
        return Err(ApiError::LimitReached(format!("flow {flow_id} already has {count} snapshots, the most this team's plan keeps ({max}); upgrade the plan to keep more")));
    }
    let number = current.latest_snapshot.unwrap_or(0) + 1;
    let created = now_ms();
    tx.execute("INSERT INTO snapshots (flow_id, number, definition, created_ms) VALUES (?1, ?2, ?3, ?4)", params![flow_id, number, current.definition.to_string(), created])?;
    tx.commit()?;
    Ok(Snapshot { flow_id: flow_id.to_owned(), number, latest: true, definition: current.definition, created_at: ms_to_text(created) })
}

/// Snapshot `number` of a flow of `team`, or its newest with `None`.
pub fn snapshot(connection: &Connection, team: &str, flow_id: &str, number: Option<u32>) -> Result<Snapshot, ApiError> {
    let current = flow(connection, team, flow_id)?;
    let latest = current.latest_snapshot.ok_or_else(|| ApiError::NotFoundBecause(format!("flow {flow_id} has no snapshot yet: take one with POST /v1/teams/{team}/flows/{flow_id}/snapshots")))?;
    let number = number.unwrap_or(latest);
    connection
        .query_row("SELECT definition, created_ms FROM snapshots WHERE flow_id = ?1 AND number = ?2", params![flow_id, number], |row| {
            Ok(Snapshot { flow_id: flow_id.to_owned(), number, latest: number == latest, definition: json_column(row.get(0)?), created_at: ms_to_text(row.get(1)?) })
        })
        .optional()?
        .ok_or_else(|| ApiError::NotFoundBecause(format!("flow {flow_id} has no snapshot {number}; its latest is {latest} (GET /v1/teams/{team}/flows/{flow_id}/snapshots lists those it keeps)")))
}

/// The definition a run of a flow uses: snapshot `number`, or the working definition.
pub fn definition(connection: &Connection, team: &str, flow_id: &str, number: Option<u32>) -> Result<Value, ApiError> {
    match number {
        Some(number) => Ok(snapshot(connection, team, flow_id, Some(number))?.definition),
        None => Ok(flow(connection, team, flow_id)?.definition),
    }
}

pub fn snapshots(connection: &Connection, team: &str, flow_id: &str) -> Result<Vec<Snapshot>, ApiError> {
    let current = flow(connection, team, flow_id)?;
    let mut statement = connection.prepare("SELECT number, definition, created_ms FROM snapshots WHERE flow_id = ?1 ORDER BY number")?;
    let rows = statement.query_map([flow_id], |row| {
        let number: u32 = row.get(0)?;
        Ok(Snapshot { flow_id: flow_id.to_owned(), number, latest: Some(number) == current.latest_snapshot, definition: json_column(row.get(1)?), created_at: ms_to_text(row.get(2)?) })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------- deployments

#[derive(Clone, Debug, Serialize)]
pub struct Deployment {
    pub id: String,
    pub team: String,
    pub path: String,
    pub flow_id: String,
    pub snapshot: u32,
    /// `api` (an HTTP hook) or `mcp` (a tool on the team's MCP endpoint).
    pub trigger: String,
    /// Runs on a schedule every this many seconds, when set.
    pub schedule_every_s: Option<u32>,
    /// Runs at the minutes this cron expression names (UTC), when set (see [`flowcredits_engine::cron`]).
    pub schedule_cron: Option<String>,
    /// Where its runs execute: `cloud` (this server) or `private` (the team's private runners).
    pub runs_on: RunsOn,
    pub created_at: String,
}

/// Where a deployment's runs execute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunsOn {
    #[default]
    Cloud,
    /// Queued as jobs for the team's private runners (Enterprise).
    Private,
}

impl RunsOn {
    pub fn as_str(self) -> &'static str {
        match self {
            RunsOn::Cloud => "cloud",
            RunsOn::Private => "private",
        }
    }

    pub fn parse(text: &str) -> Option<RunsOn> {
        [RunsOn::Cloud, RunsOn::Private].into_iter().find(|runs_on| runs_on.as_str() == text)
    }
}

fn deployment_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: row.get(0)?,
        team: row.get(1)?,
        path: row.get(2)?,
        flow_id: row.get(3)?,
        snapshot: row.get(4)?,
        trigger: row.get(5)?,
        schedule_every_s: row.get(6)?,
        created_at: ms_to_text(row.get(7)?),
        runs_on: RunsOn::parse(&row.get::<_, String>(8)?).unwrap_or_default(),
        schedule_cron: row.get(9)?,
    })
}

const DEPLOYMENT_COLUMNS: &str = "id, team, path, flow_id, snapshot, trigger, schedule_every_s, created_ms, runs_on, schedule_cron";

/// Records `deployment`, made at `created_ms` (what its `created_at` says).
pub fn create_deployment(connection: &Connection, deployment: &Deployment, created_ms: i64) -> Result<(), ApiError> {
    let inserted = connection.execute(
        "INSERT INTO deployments (id, team, path, flow_id, snapshot, trigger, schedule_every_s, created_ms, runs_on, schedule_cron) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (team, path) DO NOTHING",
        params![deployment.id, deployment.team, deployment.path, deployment.flow_id, deployment.snapshot, deployment.trigger, deployment.schedule_every_s, created_ms, deployment.runs_on.as_str(), deployment.schedule_cron],
    )?;
    if inserted == 0 {
        let existing: Option<String> = connection.query_row("SELECT id FROM deployments WHERE team = ?1 AND path = ?2", params![deployment.team, deployment.path], |row| row.get(0)).optional()?;
        let existing = existing.unwrap_or_else(|| "{deployment}".to_owned());
        return Err(ApiError::Conflict(format!(
            "team {} already deploys something at path {:?} ({existing}); choose another path, or change that deployment with PATCH /v1/teams/{}/deployments/{existing}",
            deployment.team, deployment.path, deployment.team
        )));
    }
    Ok(())
}

pub fn deployment_by_path(connection: &Connection, team: &str, path: &str) -> Result<Option<Deployment>, ApiError> {
    Ok(connection.query_row(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE team = ?1 AND path = ?2"), params![team, path], deployment_row).optional()?)
}

/// A deployment of `team` by its id; another team's is not found.
pub fn deployment(connection: &Connection, team: &str, id: &str) -> Result<Deployment, ApiError> {
    connection
        .query_row(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE team = ?1 AND id = ?2"), params![team, id], deployment_row)
        .optional()?
        .ok_or_else(|| ApiError::NotFound(format!("deployment {id}")))
}

pub fn deployments(connection: &Connection, team: &str, page: &PageRequest) -> Result<Page<Deployment>, ApiError> {
    let mut statement = connection.prepare(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE team = ?1 AND id > ?2 ORDER BY id LIMIT ?3"))?;
    let rows = statement.query_map(params![team, page.after.as_deref().unwrap_or(""), page.limit + 1], deployment_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |deployment| deployment.id.clone()))
}

/// A team's deployments with the `mcp` trigger (its MCP tools), after `page.after`, oldest first.
pub fn mcp_deployments(connection: &Connection, team: &str, page: &PageRequest) -> Result<Page<Deployment>, ApiError> {
    let mut statement = connection.prepare_cached(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE team = ?1 AND trigger = 'mcp' AND id > ?2 ORDER BY id LIMIT ?3"))?;
    let rows = statement.query_map(params![team, page.after.as_deref().unwrap_or(""), page.limit + 1], deployment_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |deployment| deployment.id.clone()))
}

/// The team's `mcp` deployment whose tool name (its path with `/` as `_`) is `name`; the oldest
/// if, from before names were kept unique, several have it.
pub fn mcp_deployment_by_tool(connection: &Connection, team: &str, name: &str) -> Result<Option<Deployment>, ApiError> {
    let mut statement = connection.prepare_cached(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE team = ?1 AND trigger = 'mcp' AND replace(path, '/', '_') = ?2 ORDER BY id LIMIT 1"))?;
    Ok(statement.query_row(params![team, name], deployment_row).optional()?)
}

/// Every deployment that runs on a schedule, across teams (for the scheduler).
pub fn scheduled_deployments(connection: &Connection) -> Result<Vec<Deployment>, ApiError> {
    let mut statement = connection.prepare(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE schedule_every_s IS NOT NULL OR schedule_cron IS NOT NULL ORDER BY id"))?;
    Ok(statement.query_map([], deployment_row)?.collect::<Result<_, _>>()?)
}

/// Points a deployment of `team` at another snapshot of its flow.
/// Stores a deployment's snapshot and schedule (its path, flow and trigger never change).
pub fn update_deployment(connection: &Connection, deployment: &Deployment) -> Result<(), ApiError> {
    let Deployment { team, id, snapshot, schedule_every_s, schedule_cron, .. } = deployment;
    match connection.execute("UPDATE deployments SET snapshot = ?3, schedule_every_s = ?4, schedule_cron = ?5 WHERE team = ?1 AND id = ?2", params![team, id, snapshot, schedule_every_s, schedule_cron])? {
        0 => Err(ApiError::NotFound(format!("deployment {id}"))),
        _ => Ok(()),
    }
}

pub fn delete_deployment(connection: &Connection, team: &str, id: &str) -> Result<(), ApiError> {
    match connection.execute("DELETE FROM deployments WHERE team = ?1 AND id = ?2", params![team, id])? {
        0 => Err(ApiError::NotFound(format!("deployment {id}"))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- alerts

/// Sets (or with `None` clears) where a team's alerts go. The first URL set also makes the
/// team's signing secret, which later URLs keep.
pub fn set_alert_webhook(connection: &Connection, team: &str, url: Option<&str>) -> Result<(), ApiError> {
    let secret = url.map(|_| crate::auth::new_token("whsec_").0);
    connection.execute(
        "INSERT INTO team_settings (team, alert_webhook_url, alert_signing_secret) VALUES (?1, ?2, ?3)
         ON CONFLICT (team) DO UPDATE SET alert_webhook_url = excluded.alert_webhook_url, alert_signing_secret = coalesce(team_settings.alert_signing_secret, excluded.alert_signing_secret)",
        params![team, url, secret],
    )?;
    Ok(())
}

/// Where a team's alerts go, and the secret they are signed with.
pub struct AlertWebhook {
    pub url: String,
    pub signing_secret: Option<String>,
}

pub fn alert_webhook(connection: &Connection, team: &str) -> Result<Option<AlertWebhook>, ApiError> {
    let row: Option<(Option<String>, Option<String>)> = connection.query_row("SELECT alert_webhook_url, alert_signing_secret FROM team_settings WHERE team = ?1", [team], |row| Ok((row.get(0)?, row.get(1)?))).optional()?;
    Ok(row.and_then(|(url, signing_secret)| Some(AlertWebhook { url: url?, signing_secret })))
}

#[derive(Clone, Debug, Serialize)]
pub struct AlertRecord {
    pub id: String,
    /// `included_<percent>_of_<included credits>` (75 or 100 percent) or `payg_<dollars>`.
    pub alert: String,
    pub period_start: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Records an alert of a period, once: the new alert's id and what its deliveries send, or
/// `None` when it was recorded before.
pub fn insert_alert(connection: &Connection, team: &str, alert: &str, period_start: flowcredits_core::Timestamp, detail: &Value) -> Result<Option<(String, Value)>, ApiError> {
    let id = new_id("alr");
    let payload = serde_json::json!({"team": team, "alert": alert, "period_start": period_start.to_string(), "detail": detail, "id": id});
    let inserted = connection.execute(
        "INSERT INTO alert_deliveries (id, team, alert, period_start_ms, created_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        params![id, team, alert, period_start.as_millisecond(), now_ms(), payload.to_string()],
    )?;
    Ok((inserted == 1).then_some((id, payload)))
}

pub fn record_alert_attempt(connection: &Connection, id: &str, error: Option<&str>) -> Result<(), ApiError> {
    connection.execute(
        "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?2, last_attempt_ms = ?3, delivered_ms = CASE WHEN ?2 IS NULL THEN ?3 ELSE delivered_ms END WHERE id = ?1",
        params![id, error, now_ms()],
    )?;
    Ok(())
}

/// Undelivered alerts due another attempt at `now_ms`: tried at least `first_later` times and
/// fewer than `attempts_max`, the last attempt `first_wait_ms` × 2^(attempts − first_later)
/// ago or more, and not refused outright (whose error says the webhook was not called).
/// Returns (id, team, body to send), oldest first, at most 100.
pub fn alerts_to_retry(connection: &Connection, now_ms: i64, first_later: u32, attempts_max: u32, first_wait_ms: i64) -> Result<Vec<(String, String, String)>, ApiError> {
    let mut statement = connection.prepare_cached(
        "SELECT id, team, payload FROM alert_deliveries
         WHERE delivered_ms IS NULL AND payload IS NOT NULL AND attempts >= ?2 AND attempts < ?3
           AND coalesce(last_error, '') NOT LIKE 'the webhook was not called%'
           AND last_attempt_ms <= ?1 - (?4 << min(attempts - ?2, 20))
         ORDER BY id LIMIT 100",
    )?;
    let rows = statement.query_map(params![now_ms, first_later, attempts_max, first_wait_ms], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn alerts(connection: &Connection, team: &str, page: &PageRequest) -> Result<Page<AlertRecord>, ApiError> {
    let mut statement = connection.prepare(
        "SELECT id, alert, period_start_ms, created_ms, delivered_ms, attempts, last_error FROM alert_deliveries WHERE team = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = statement
        .query_map(params![team, page.after.as_deref().unwrap_or(""), page.limit + 1], |row| {
            Ok(AlertRecord {
                id: row.get(0)?,
                alert: row.get(1)?,
                period_start: ms_to_text(row.get(2)?),
                created_at: ms_to_text(row.get(3)?),
                delivered_at: row.get::<_, Option<i64>>(4)?.map(ms_to_text),
                attempts: row.get(5)?,
                last_error: row.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |alert| alert.id.clone()))
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// Opens the catalog at `path` as a build that knew only the first `version` migrations
    /// left it (undoing `undo` first), then as this build: the later migrations run on it.
    fn reopen_from_version(path: &Path, version: i64, undo: &str) -> Catalog {
        let connection = Catalog::connect(path).unwrap();
        connection.execute_batch(undo).unwrap();
        connection.execute("DELETE FROM catalog_migrations WHERE version > ?1", [version]).unwrap();
        drop(connection);
        Catalog::open(path).unwrap()
    }

    #[test]
    fn alert_deliveries_from_before_allowances_are_renamed_and_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let catalog = Catalog::open(&path).unwrap();
        let period = flowcredits_core::Timestamp::from_millisecond(1_772_323_200_000).unwrap();
        let detail = serde_json::json!({"percent": 75, "included": 100, "used": 80});
        catalog.call_here(|connection| insert_alert(connection, "acme", "included_75", period, &detail)).unwrap().expect("a new delivery");
        drop(catalog);
        let catalog = reopen_from_version(&path, 12, "");
        // This build names the same threshold `included_75_of_100`: already delivered.
        let again = catalog.call_here(|connection| insert_alert(connection, "acme", "included_75_of_100", period, &detail)).unwrap();
        assert!(again.is_none(), "the renamed delivery stands for it: {again:?}");
        let names: Vec<String> = catalog.call_here(|connection| Ok(connection.prepare("SELECT alert FROM alert_deliveries")?.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?)).unwrap();
        assert_eq!(names, ["included_75_of_100"]);
    }

    #[test]
    fn usage_by_flow_is_filled_from_the_history_kept_when_the_rollup_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let catalog = Catalog::open(&path).unwrap();
        let day_ms: i64 = 86_400_000;
        catalog
            .call_here(|connection| {
                let insert = "INSERT INTO run_history (id, team, flow_id, trigger, location, status, created_ms, credits, input) VALUES (?1, ?2, ?3, 'api', 'cloud', ?4, ?5, ?6, 'null')";
                for (id, team, flow, status, day, credits) in [("run_a", "acme", "flw_1", "succeeded", 20_000, 3), ("run_b", "acme", "flw_1", "failed", 20_000, 2), ("run_c", "acme", "flw_1", "succeeded", 20_001, 5), ("run_d", "acme", "", "succeeded", 20_001, 1), ("run_e", "acme", "flw_1", "running", 20_001, 4), ("run_f", "beta", "flw_1", "succeeded", 20_000, 7)] {
                    connection.execute(insert, params![id, team, flow, status, day * day_ms + 5, credits])?;
                }
                Ok(())
            })
            .unwrap();
        drop(catalog);
        // As a build before migration 11 left it: no rollup table.
        let catalog = reopen_from_version(&path, 10, "DROP TABLE flow_usage;");
        let rows: Vec<(String, i64, String, i64, i64)> = catalog
            .call_here(|connection| Ok(connection.prepare("SELECT team, day, flow_id, runs, credits FROM flow_usage ORDER BY team, day, flow_id")?.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))?.collect::<rusqlite::Result<_>>()?))
            .unwrap();
        // Finished runs only (a running one is added when it ends), by team, day and flow; a
        // run recorded from the ledger alone counts under the placeholder flow (migration 12).
        let expected = [("acme", 20_000, "flw_1", 2, 5), ("acme", 20_001, "(ledger)", 1, 1), ("acme", 20_001, "flw_1", 1, 5), ("beta", 20_000, "flw_1", 1, 7)];
        assert_eq!(rows, expected.map(|(team, day, flow, runs, credits)| (team.to_owned(), day, flow.to_owned(), runs, credits)));
    }
}
