//! Private runners: a team's own machines that execute its `runs_on: private` deployments
//! (Enterprise only). Owners and admins register a runner and get its token once (256 random
//! bits behind `fcr_`, stored as SHA-256 like API keys); the token then authenticates that
//! runner on its own team's job endpoints (`jobs.rs`) and nowhere else. API keys never work on
//! the job endpoints, and runner tokens never work on the rest of the API.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{self, Action, Caller};
use crate::catalog::{self, Page, PageRequest, ms_to_text, now_ms};
use crate::{ApiError, AppState, JsonBody, PageQuery, Query};

/// Every runner token starts with this, so it is told apart from an API key (`fck_`) at once,
/// in logs and by secret scanners.
pub const RUNNER_TOKEN_PREFIX: &str = "fcr_";
/// Most runners one team may register.
pub const RUNNERS_PER_TEAM_MAX: u32 = 100;
/// Longest runner name, in bytes.
pub const RUNNER_NAME_BYTES_MAX: usize = 200;

/// A registered runner as the API shows it (never its token).
#[derive(Clone, Debug, Serialize)]
pub struct RunnerView {
    pub id: String,
    pub team: String,
    pub name: String,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    /// Jobs leased to it right now.
    pub jobs_running: u32,
}

/// Refuses a team whose plan has no private runner, naming the plan.
pub async fn require_entitlement(state: &AppState, team: &str) -> Result<(), ApiError> {
    let plan = state.ledger.team(team).await?.plan;
    if state.rules.plans.get(plan).private_runner {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "private runners are available on the Enterprise plan only; team {team} is on plan {}: ask an operator to move it to enterprise, or run in the cloud",
        plan.as_str()
    )))
}

// ---------------------------------------------------------------- catalog rows

/// `jobs_running` counts leases still held, by the database's clock: it is for display only.
const RUNNER_COLUMNS: &str = "r.id, r.team, r.name, r.created_ms, r.last_seen_ms,
    (SELECT COUNT(*) FROM runner_jobs j WHERE j.runner_id = r.id AND j.lease_until_ms >= CAST(unixepoch('subsec') * 1000 AS INTEGER))";

fn runner_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunnerView> {
    Ok(RunnerView {
        id: row.get(0)?,
        team: row.get(1)?,
        name: row.get(2)?,
        created_at: ms_to_text(row.get(3)?),
        last_seen_at: row.get::<_, Option<i64>>(4)?.map(ms_to_text),
        jobs_running: row.get(5)?,
    })
}

/// Runners of a team, by id.
fn runners(connection: &Connection, team: &str, page: &PageRequest) -> Result<Page<RunnerView>, ApiError> {
    let mut statement = connection.prepare(&format!("SELECT {RUNNER_COLUMNS} FROM runners r WHERE r.team = ?1 AND r.id > ?2 ORDER BY r.id LIMIT ?3"))?;
    let rows = statement.query_map(params![team, page.after.as_deref().unwrap_or(""), page.limit + 1], runner_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |runner| runner.id.clone()))
}

/// The runner a token belongs to; its sighting is recorded.
fn runner_by_token(connection: &Connection, token_sha256: &[u8]) -> Result<Option<RunnerView>, ApiError> {
    connection.execute("UPDATE runners SET last_seen_ms = ?2 WHERE token_sha256 = ?1", params![token_sha256, now_ms()])?;
    Ok(connection.query_row(&format!("SELECT {RUNNER_COLUMNS} FROM runners r WHERE r.token_sha256 = ?1"), [token_sha256], runner_row).optional()?)
}

fn register(connection: &mut Connection, team: &str, name: &str, token_sha256: &[u8]) -> Result<RunnerView, ApiError> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let count: u32 = tx.query_row("SELECT COUNT(*) FROM runners WHERE team = ?1", [team], |row| row.get(0))?;
    if count >= RUNNERS_PER_TEAM_MAX {
        return Err(ApiError::LimitReached(format!("team {team} has {count} runners, the most a team may register ({RUNNERS_PER_TEAM_MAX}); deregister one first")));
    }
    let id = catalog::new_id("rnr");
    let created = now_ms();
    let inserted = tx.execute(
        "INSERT INTO runners (id, team, name, token_sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (team, name) DO NOTHING",
        params![id, team, name, token_sha256, created],
    )?;
    if inserted == 0 {
        return Err(ApiError::Conflict(format!("team {team} already has a runner named {name:?}; pick another name or deregister that one")));
    }
    tx.commit()?;
    Ok(RunnerView { id, team: team.to_owned(), name: name.to_owned(), created_at: ms_to_text(created), last_seen_at: None, jobs_running: 0 })
}

/// Removes a runner: its token stops working at once and its leased jobs wait for another runner.
fn deregister(connection: &mut Connection, team: &str, id: &str) -> Result<(), ApiError> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if tx.execute("DELETE FROM runners WHERE team = ?1 AND id = ?2", params![team, id])? == 0 {
        return Err(ApiError::NotFound(format!("runner {id}")));
    }
    tx.execute("UPDATE runner_jobs SET runner_id = NULL, lease_until_ms = NULL WHERE runner_id = ?1", [id])?;
    tx.commit()?;
    Ok(())
}

// ---------------------------------------------------------------- who is calling

/// The bearer of a request to a runner endpoint: a runner's token, or an API key (which the
/// job endpoints refuse, after the membership check so that outsiders learn nothing).
pub enum Bearer {
    Runner(Vec<u8>),
    Key(Caller),
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Bearer, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        let token = crate::auth::bearer_token(header).unwrap_or("");
        if token.starts_with(RUNNER_TOKEN_PREFIX) {
            return Ok(Bearer::Runner(auth::key_digest(token)));
        }
        Caller::from_request_parts(parts, state).await.map(Bearer::Key)
    }
}

impl Bearer {
    /// The runner this request acts as, which must be `runner` of `team` (any runner of the
    /// team when `runner` is `None`). Another team's token is answered "not found", like
    /// another team's key.
    pub async fn runner(self, state: &AppState, team: &str, runner: Option<&str>) -> Result<RunnerView, ApiError> {
        let digest = match self {
            Bearer::Runner(digest) => digest,
            Bearer::Key(caller) => {
                caller.authorize(state, team, Action::Read).await?;
                return Err(ApiError::Forbidden("runner endpoints take a runner token (fcr_…), not an API key; register a runner with POST /v1/teams/{team}/runners".into()));
            }
        };
        let found = state.catalog.call(move |connection| runner_by_token(connection, &digest)).await?;
        let found = found.ok_or_else(|| ApiError::UnknownRunnerToken { team: team.to_owned() })?;
        if found.team != team {
            return Err(ApiError::NotFound(format!("team {team}")));
        }
        if runner.is_some_and(|runner| runner != found.id) {
            return Err(ApiError::NotFound(format!("runner {}", runner.unwrap_or_default())));
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------- routes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRunner {
    name: String,
}

/// `POST /v1/teams/{team}/runners`: registers a runner; its token is in this answer only.
pub async fn create(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<NewRunner>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.authorize(&state, &team, Action::ManageRunners).await?;
    require_entitlement(&state, &team).await?;
    if body.name.trim().is_empty() || body.name.len() > RUNNER_NAME_BYTES_MAX {
        return Err(ApiError::invalid("name", format!("must be 1 to {RUNNER_NAME_BYTES_MAX} bytes")));
    }
    let (token, digest) = auth::new_token(RUNNER_TOKEN_PREFIX);
    let runner = state.catalog.call(move |connection| register(connection, &team, &body.name, &digest)).await?;
    Ok((StatusCode::CREATED, Json(json!({"runner": runner, "token": token, "note": "store this token now: it is shown only once; start the runner with `flowcredits runner --server URL --team TEAM --token TOKEN`"}))))
}

pub async fn list(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<Page<RunnerView>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let page = page.request_by_id("rnr")?;
    Ok(Json(state.catalog.call(move |connection| runners(connection, &team, &page)).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Path((team, runner)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    caller.authorize(&state, &team, Action::ManageRunners).await?;
    state.catalog.call(move |connection| deregister(connection, &team, &runner)).await?;
    // Its leased jobs are waiting again: a runner polling now can take them.
    state.jobs.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/teams/{team}/runners/me`: the runner a token belongs to, and the terms of its work.
pub async fn me(State(state): State<AppState>, bearer: Bearer, Path(team): Path<String>) -> Result<Json<Value>, ApiError> {
    let runner = bearer.runner(&state, &team, None).await?;
    Ok(Json(json!({"runner": runner, "lease_s": state.jobs.lease().as_secs(), "claim_wait_s_max": crate::jobs::CLAIM_WAIT_S_MAX})))
}
