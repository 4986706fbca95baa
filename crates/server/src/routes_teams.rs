//! Users, API keys, teams and members.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flowcredits_core::{AnchorDay, PlanId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, Action, Caller, Role};
use crate::catalog;
use crate::{ApiError, AppState, JsonBody, PageQuery, Query};

/// Longest user or key label, in bytes.
pub const NAME_BYTES_MAX: usize = 200;

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(field, "is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid(field, format!("is longer than {NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let user_id = caller.user.id.clone();
    let teams = state.catalog.call(move |connection| catalog::teams_of(connection, &user_id)).await?;
    Ok(Json(json!({"user": caller.user, "teams": teams})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    #[serde(default)]
    operator: bool,
}

pub async fn create_user(State(state): State<AppState>, caller: Caller, JsonBody(body): JsonBody<NewUser>) -> Result<(StatusCode, Json<catalog::User>), ApiError> {
    caller.require_operator()?;
    check_name("name", &body.name)?;
    let user = state.catalog.call(move |connection| catalog::create_user(connection, &body.name, body.operator)).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Every user of the platform, for operators (a member sees their teammates in `members`).
pub async fn list_users(State(state): State<AppState>, caller: Caller, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::User>>, ApiError> {
    caller.require_operator()?;
    let page = page.request_by_id("usr")?;
    Ok(Json(state.catalog.call(move |connection| catalog::users(connection, &page)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    label: String,
}

/// Creates an API key for a user: an operator for anyone, a user for themself. The key is in
/// this response only.
pub async fn create_key(State(state): State<AppState>, caller: Caller, Path(user_id): Path<String>, JsonBody(body): JsonBody<NewKey>) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_own_keys(&caller, &user_id)?;
    check_name("label", &body.label)?;
    let (token, digest) = auth::new_key();
    let info = state
        .catalog
        .call(move |connection| {
            catalog::user(connection, &user_id)?;
            catalog::create_key(connection, &user_id, &body.label, &digest)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"key": info, "token": token, "note": "store this token now: it is shown only once"}))))
}

/// Who may create, see and revoke a user's keys: the user, or an operator.
fn check_own_keys(caller: &Caller, user_id: &str) -> Result<(), ApiError> {
    if caller.user.id == user_id { Ok(()) } else { caller.require_operator() }
}

pub async fn list_keys(State(state): State<AppState>, caller: Caller, Path(user_id): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::ApiKeyInfo>>, ApiError> {
    check_own_keys(&caller, &user_id)?;
    let page = page.request_by_id("key")?;
    Ok(Json(
        state
            .catalog
            .call(move |connection| {
                catalog::user(connection, &user_id)?;
                catalog::keys(connection, &user_id, &page)
            })
            .await?,
    ))
}

/// Revokes a key at once on this server (its cached lookup is dropped with it).
pub async fn revoke_key(State(state): State<AppState>, caller: Caller, Path((user_id, key_id)): Path<(String, String)>) -> Result<Json<catalog::ApiKeyInfo>, ApiError> {
    check_own_keys(&caller, &user_id)?;
    let (key, digest) = state.catalog.call(move |connection| catalog::revoke_key(connection, &user_id, &key_id)).await?;
    state.keys.remove(&digest);
    Ok(Json(key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    name: String,
    plan: String,
    anchor_day: Option<i64>,
    /// A user to make the team's owner.
    owner: Option<String>,
}

pub async fn create_team(State(state): State<AppState>, caller: Caller, JsonBody(body): JsonBody<NewTeam>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_operator()?;
    let plan: PlanId = body.plan.parse().map_err(|err: flowcredits_core::CoreError| ApiError::invalid("plan", err.to_string()))?;
    let anchor_day = AnchorDay::new(body.anchor_day.unwrap_or(1)).map_err(|err| ApiError::invalid("anchor_day", err.to_string()))?;
    if let Some(owner) = body.owner.clone() {
        state.catalog.call(move |connection| catalog::user(connection, &owner).map(drop)).await.map_err(|_| ApiError::invalid("owner", "no such user"))?;
    }
    let team = state.ledger.create_team(&body.name, plan, anchor_day, &caller.user.id).await?;
    if let Some(owner) = body.owner {
        let name = team.name.clone();
        state.catalog.call(move |connection| catalog::set_member(connection, &name, &owner, Role::Owner)).await?;
    }
    Ok((StatusCode::CREATED, Json(team.to_json(&state.rules))))
}

/// Teams the caller can see: all of them for an operator, else the caller's own.
pub async fn list_teams(State(state): State<AppState>, caller: Caller, Query(page): Query<PageQuery>) -> Result<Json<Value>, ApiError> {
    let page = page.request()?;
    // The cursor is the last team name of a page: anything that cannot name a team was not
    // given by this list, and compared as text it would start the page somewhere arbitrary.
    if let Some(after) = &page.after
        && flowcredits_store::TeamName::new(after.as_str()).is_err()
    {
        return Err(ApiError::invalid("after", format!("`{after}` is not a cursor this list gave (a team name: 1 to 64 letters, digits, '-', '_' or '.')")));
    }
    let mut names = if caller.user.is_operator {
        state.ledger.team_names().await?
    } else {
        let user_id = caller.user.id.clone();
        state.catalog.call(move |connection| catalog::teams_of(connection, &user_id)).await?
    };
    names.sort();
    let names = catalog::Page::of_sorted(names, &page, Clone::clone);
    let mut items = Vec::with_capacity(names.items.len());
    for name in &names.items {
        items.push(state.ledger.team(name).await?.to_json(&state.rules));
    }
    Ok(Json(json!({"items": items, "next": names.next})))
}

pub async fn get_team(State(state): State<AppState>, caller: Caller, Path(team): Path<String>) -> Result<Json<Value>, ApiError> {
    let role = caller.authorize(&state, &team, Action::Read).await?;
    let mut body = state.ledger.team(&team).await?.to_json(&state.rules);
    body["your_role"] = json!(role);
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    plan: String,
}

/// Moves a team to another plan (an operator's action: plans are sold, not self-assigned).
pub async fn change_plan(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<PlanChange>) -> Result<Json<Value>, ApiError> {
    caller.require_operator()?;
    let plan: PlanId = body.plan.parse().map_err(|err: flowcredits_core::CoreError| ApiError::invalid("plan", err.to_string()))?;
    state.ledger.change_billing(&team, &caller.user.id, flowcredits_store::BillingChange::ChangePlan { plan }).await?;
    state.runner.dispatch_resumed(&state, &team).await?;
    // A smaller allowance may already be 75% or all used.
    crate::scheduler::check_alerts_before_answering(&state, &team).await;
    Ok(Json(state.ledger.team(&team).await?.to_json(&state.rules)))
}

pub async fn list_members(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::Member>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let page = page.request_by_id("usr")?;
    let members = state.catalog.call(move |connection| catalog::members(connection, &team)).await?;
    Ok(Json(catalog::Page::of_sorted(members, &page, |member| member.user_id.clone())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRole {
    role: String,
}

pub async fn set_member(State(state): State<AppState>, caller: Caller, Path((team, user_id)): Path<(String, String)>, JsonBody(body): JsonBody<MemberRole>) -> Result<Json<Value>, ApiError> {
    let own_role = caller.authorize(&state, &team, Action::ManageMembers).await?;
    let role: Role = body.role.parse().map_err(|err: String| ApiError::invalid("role", err))?;
    let member = (team.clone(), user_id.clone());
    let members = state
        .catalog
        .call(move |connection| {
            catalog::change_member(connection, &team, &user_id, Some(role), own_role)?;
            catalog::members(connection, &team)
        })
        .await?;
    state.roles.remove(&member);
    Ok(Json(json!({"items": members})))
}

pub async fn remove_member(State(state): State<AppState>, caller: Caller, Path((team, user_id)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let own_role = caller.authorize(&state, &team, Action::ManageMembers).await?;
    let member = (team.clone(), user_id.clone());
    state.catalog.call(move |connection| catalog::change_member(connection, &team, &user_id, None, own_role)).await?;
    state.roles.remove(&member);
    Ok(StatusCode::NO_CONTENT)
}
