//! Flows, their numbered snapshots, cost estimates and deployments.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flowcredits_core::{CloudRun, RunContext, Trigger};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Action, Caller};
use crate::catalog::{self, Deployment, RunsOn};
use crate::{ApiError, AppState, JsonBody, NoFields, PageQuery, Query, runner};

/// Longest flow name, in bytes.
pub const FLOW_NAME_BYTES_MAX: usize = 200;
/// Longest deployment path, in bytes.
pub const DEPLOYMENT_PATH_BYTES_MAX: usize = 200;
/// Schedules run at most every minute and at least once a year.
pub const SCHEDULE_EVERY_S_MIN: u32 = 60;
pub const SCHEDULE_EVERY_S_MAX: u32 = 366 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFlow {
    name: String,
    definition: Value,
}

pub async fn create_flow(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<NewFlow>) -> Result<(StatusCode, Json<catalog::Flow>), ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    if body.name.trim().is_empty() || body.name.len() > FLOW_NAME_BYTES_MAX {
        return Err(ApiError::invalid("name", format!("must be 1 to {FLOW_NAME_BYTES_MAX} bytes")));
    }
    runner::validate_flow(&state.rules, &body.definition)?;
    let flow = state.catalog.call(move |connection| catalog::create_flow(connection, &team, &body.name, &body.definition)).await?;
    Ok((StatusCode::CREATED, Json(flow)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowUpdate {
    definition: Value,
}

/// Replaces a flow's working definition; snapshots already taken never change.
pub async fn update_flow(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>, JsonBody(body): JsonBody<FlowUpdate>) -> Result<Json<catalog::Flow>, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    runner::validate_flow(&state.rules, &body.definition)?;
    Ok(Json(state.catalog.call(move |connection| catalog::update_flow(connection, &team, &flow, &body.definition)).await?))
}

pub async fn list_flows(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::Flow>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let page = page.request_by_id("flw")?;
    Ok(Json(state.catalog.call(move |connection| catalog::flows(connection, &team, &page)).await?))
}

pub async fn get_flow(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>) -> Result<Json<catalog::Flow>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    Ok(Json(state.catalog.call(move |connection| catalog::flow(connection, &team, &flow)).await?))
}

/// Deletes a flow that nothing deploys or runs any more; its past runs stay in history.
pub async fn delete_flow(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    // Runs queued for history count as live until written.
    state.history.read(&state.catalog, move |connection| catalog::delete_flow(connection, &team, &flow)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_snapshot(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>, JsonBody(NoFields {}): JsonBody<NoFields>) -> Result<(StatusCode, Json<catalog::Snapshot>), ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    let plan = state.ledger.team(&team).await?.plan;
    let snapshots_max = state.rules.plans.get(plan).snapshots_per_flow;
    let snapshot = state.catalog.call(move |connection| catalog::create_snapshot(connection, &team, &flow, snapshots_max)).await?;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

pub async fn list_snapshots(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::Snapshot>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let mut page = page.request()?;
    // Numbers sort as text once padded; `after` may be a snapshot's number as people write it.
    if let Some(after) = &page.after {
        let number: u32 = after.parse().map_err(|_| ApiError::invalid("after", format!("`{after}` is not a snapshot number")))?;
        page.after = Some(format!("{number:010}"));
    }
    let snapshots = state.catalog.call(move |connection| catalog::snapshots(connection, &team, &flow)).await?;
    Ok(Json(catalog::Page::of_sorted(snapshots, &page, |snapshot| format!("{:010}", snapshot.number))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateQuery {
    trigger: Option<String>,
    cloud_run: Option<bool>,
    /// A snapshot number; the working definition when absent.
    snapshot: Option<u32>,
}

/// What a run of the flow would cost, before running it.
pub async fn estimate(State(state): State<AppState>, caller: Caller, Path((team, flow)): Path<(String, String)>, Query(query): Query<EstimateQuery>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let trigger: Trigger = query.trigger.as_deref().unwrap_or("api").parse().map_err(|err: flowcredits_core::CoreError| ApiError::invalid("trigger", err.to_string()))?;
    if query.cloud_run == Some(true) && trigger != Trigger::Manual {
        return Err(ApiError::invalid("cloud_run", format!("applies to manual runs only; {trigger} runs always execute in the cloud")));
    }
    let context = RunContext::for_trigger(trigger, CloudRun::from(query.cloud_run.unwrap_or(false)));
    let team_name = team.clone();
    let definition = state.catalog.call(move |connection| catalog::definition(connection, &team_name, &flow, query.snapshot)).await?;
    let flows = runner::TeamFlows { catalog: state.catalog.clone(), team };
    // Resolving nested flows reads the catalog; keep it off the async workers.
    let rules = std::sync::Arc::clone(&state.rules);
    let estimate = tokio::task::spawn_blocking(move || runner::estimate(&rules, &definition, context, &flows)).await.map_err(ApiError::internal)??;
    Ok(Json(estimate))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    flow_id: String,
    /// Snapshot number to deploy; the latest when absent.
    snapshot: Option<u32>,
    path: String,
    /// `api` (default) or `mcp`.
    trigger: Option<String>,
    schedule_every_s: Option<u32>,
    /// A cron expression (five fields, UTC) instead of `schedule_every_s`.
    schedule_cron: Option<String>,
    /// `cloud` (default: this server runs it) or `private` (the team's private runners; Enterprise).
    runs_on: Option<String>,
}

/// A deployment's path: segments that every HTTP client sends as written. An empty segment
/// (`a//b`, a trailing `/`) or a `.`/`..` segment is normalized away by clients, so such a hook
/// could never be called.
fn check_path(path: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '.');
    if path.is_empty() || path.len() > DEPLOYMENT_PATH_BYTES_MAX || !path.chars().all(allowed) {
        return Err(ApiError::invalid("path", format!("must be 1 to {DEPLOYMENT_PATH_BYTES_MAX} characters of letters, digits, '-', '_', '.', '/'")));
    }
    if let Some(segment) = path.split('/').find(|segment| segment.is_empty() || *segment == "." || *segment == "..") {
        let what = if segment.is_empty() { "an empty segment (a leading, trailing or doubled '/')".to_owned() } else { format!("a `{segment}` segment") };
        return Err(ApiError::invalid("path", format!("`{path}` has {what}, which HTTP clients remove before sending")));
    }
    Ok(())
}

/// A scheduled run of an MCP tool gives it `{"scheduled_at": …}` as its arguments; a tool whose
/// input schema refuses them would fail every run, so such a schedule is refused (`field`: the
/// request's field that set it).
fn check_scheduled_tool(definition: &Value, schedule: &(Option<u32>, Option<String>), field: &str) -> Result<(), ApiError> {
    if *schedule == (None, None) {
        return Ok(());
    }
    let flow = runner::load_flow(definition)?;
    flow.check_tool_arguments(&serde_json::json!({"scheduled_at": jiff::Timestamp::now().to_string()})).map_err(|problem| {
        ApiError::invalid(
            field,
            format!("a scheduled run gives the tool the arguments {{\"scheduled_at\": \"<time>\"}}, which its input schema refuses ({problem}), so every scheduled run would fail; let the schema take `scheduled_at`, or schedule the flow in a deployment with trigger api"),
        )
    })
}

/// The schedule a flow's `schedule` block gives a deployment that sets none: `(every_s, cron)`.
fn flow_block_schedule(definition: &Value) -> (Option<u32>, Option<String>) {
    match runner::flow_schedule(definition) {
        Some(runner::FlowSchedule::EverySeconds(every)) => (Some(every), None),
        Some(runner::FlowSchedule::Cron(cron)) => (None, Some(cron)),
        None => (None, None),
    }
}

/// A deployment's schedule: an interval of at least a minute, or a cron expression that names
/// a coming day; not both.
fn check_schedule(every_s: Option<u32>, cron: Option<&str>) -> Result<(), ApiError> {
    if let Some(every) = every_s.filter(|every| !(SCHEDULE_EVERY_S_MIN..=SCHEDULE_EVERY_S_MAX).contains(every)) {
        return Err(ApiError::invalid("schedule_every_s", format!("{every} is outside {SCHEDULE_EVERY_S_MIN} (every minute) to {SCHEDULE_EVERY_S_MAX} (yearly)")));
    }
    if let Some(cron) = cron {
        if every_s.is_some() {
            return Err(ApiError::invalid("schedule_cron", "give schedule_every_s or schedule_cron, not both"));
        }
        let parsed = flowcredits_engine::cron::Cron::parse(cron).map_err(|problem| ApiError::invalid("schedule_cron", format!("`{cron}` {problem}")))?;
        if parsed.next_after(jiff::Timestamp::now()).is_none() {
            return Err(ApiError::invalid("schedule_cron", format!("`{cron}` names no day in the next eight years")));
        }
    }
    Ok(())
}

pub async fn create_deployment(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<NewDeployment>) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    check_path(&body.path)?;
    let trigger = body.trigger.unwrap_or_else(|| "api".into());
    if trigger != "api" && trigger != "mcp" {
        return Err(ApiError::invalid("trigger", "must be `api` or `mcp`"));
    }
    check_schedule(body.schedule_every_s, body.schedule_cron.as_deref())?;
    let runs_on = match body.runs_on.as_deref() {
        None => RunsOn::Cloud,
        Some(text) => RunsOn::parse(text).ok_or_else(|| ApiError::invalid("runs_on", format!("`{text}` is not `cloud` or `private`")))?,
    };
    if runs_on == RunsOn::Private {
        crate::runners::require_entitlement(&state, &team).await?;
    }
    let deployment = state
        .catalog
        .call(move |connection| {
            // A snapshot named in the body that the flow lacks is that field's problem; with
            // none named, a flow without any snapshot is not found (nothing to deploy).
            let snapshot = catalog::snapshot(connection, &team, &body.flow_id, body.snapshot).map_err(|err| if body.snapshot.is_some() { snapshot_field_error(err) } else { err })?;
            // A flow with a `schedule` trigger runs on its own schedule unless the deployment sets one.
            let schedule_field = if body.schedule_cron.is_some() { "schedule_cron" } else if body.schedule_every_s.is_some() { "schedule_every_s" } else { "trigger" };
            let (schedule_every_s, schedule_cron) = match (body.schedule_every_s, body.schedule_cron) {
                (None, None) => flow_block_schedule(&snapshot.definition),
                given => given,
            };
            if trigger == "mcp" {
                runner::mcp_tool(&snapshot.definition, "trigger")?;
                check_scheduled_tool(&snapshot.definition, &(schedule_every_s, schedule_cron.clone()), schedule_field)?;
                // A tool is called by its name: two deployments may not share one.
                let name = crate::mcp::tool_name(&body.path);
                if name.len() > crate::mcp::TOOL_NAME_BYTES_MAX {
                    return Err(ApiError::invalid("path", format!("an mcp deployment's path is its tool's name, which MCP clients take up to {} characters long", crate::mcp::TOOL_NAME_BYTES_MAX)));
                }
                if let Some(taken) = catalog::mcp_deployment_by_tool(connection, &team, &name)? {
                    return Err(ApiError::Conflict(format!("tool `{name}` is already deployment {} (path `{}`); an mcp deployment's path, with `/` read as `_`, names its tool", taken.id, taken.path)));
                }
            }
            // Stored and answered alike, to the millisecond, as every time the API shows.
            let created_ms = catalog::now_ms();
            let deployment = Deployment {
                id: catalog::new_id("dep"),
                team,
                path: body.path,
                flow_id: body.flow_id,
                snapshot: snapshot.number,
                trigger,
                schedule_every_s,
                schedule_cron,
                runs_on,
                created_at: catalog::ms_to_text(created_ms),
            };
            catalog::create_deployment(connection, &deployment, created_ms)?;
            Ok(deployment)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

pub async fn list_deployments(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<Deployment>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let page = page.request_by_id("dep")?;
    Ok(Json(state.catalog.call(move |connection| catalog::deployments(connection, &team, &page)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeploy {
    /// The snapshot to serve from now on; the flow's latest when absent, unless the change is
    /// only to the schedule.
    snapshot: Option<u32>,
    /// A new schedule replaces the old one whole: giving one of these clears the other, and
    /// `null` for both leaves the deployment unscheduled.
    #[serde(default, deserialize_with = "crate::present")]
    schedule_every_s: Option<Option<u32>>,
    #[serde(default, deserialize_with = "crate::present")]
    schedule_cron: Option<Option<String>>,
}

/// Serves another snapshot of the deployment's flow, or runs it on another schedule, at the same
/// path, id and trigger: how a new snapshot goes live without the deployment's URL changing.
pub async fn redeploy(State(state): State<AppState>, caller: Caller, Path((team, id)): Path<(String, String)>, JsonBody(body): JsonBody<Redeploy>) -> Result<Json<Deployment>, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    let schedule_field = if body.schedule_cron.is_some() { "schedule_cron" } else if body.schedule_every_s.is_some() { "schedule_every_s" } else { "snapshot" };
    let reschedule = (body.schedule_every_s.is_some() || body.schedule_cron.is_some()).then(|| (body.schedule_every_s.flatten(), body.schedule_cron.flatten()));
    if let Some((every_s, cron)) = &reschedule {
        check_schedule(*every_s, cron.as_deref())?;
    }
    // A change of schedule alone keeps the snapshot served; otherwise the one named, or the latest.
    let resnapshot = body.snapshot.is_some() || reschedule.is_none();
    let team_name = team.clone();
    let deployment = state
        .catalog
        .call(move |connection| {
            let mut deployment = catalog::deployment(connection, &team_name, &id)?;
            if resnapshot {
                let snapshot = catalog::snapshot(connection, &team_name, &deployment.flow_id, body.snapshot).map_err(snapshot_field_error)?;
                if deployment.trigger == "mcp" {
                    runner::mcp_tool(&snapshot.definition, "snapshot")?;
                }
                // A schedule taken from the served flow's `schedule` block follows that block: the
                // new snapshot's block (or none) replaces it, unless this PATCH sets one itself.
                if reschedule.is_none() {
                    let served = catalog::snapshot(connection, &team_name, &deployment.flow_id, Some(deployment.snapshot))?;
                    let current = (deployment.schedule_every_s, deployment.schedule_cron.clone());
                    if current != (None, None) && current == flow_block_schedule(&served.definition) {
                        (deployment.schedule_every_s, deployment.schedule_cron) = flow_block_schedule(&snapshot.definition);
                    }
                }
                deployment.snapshot = snapshot.number;
            }
            if let Some((every_s, cron)) = reschedule {
                (deployment.schedule_every_s, deployment.schedule_cron) = (every_s, cron);
            }
            if deployment.trigger == "mcp" {
                let served = catalog::snapshot(connection, &team_name, &deployment.flow_id, Some(deployment.snapshot))?;
                check_scheduled_tool(&served.definition, &(deployment.schedule_every_s, deployment.schedule_cron.clone()), schedule_field)?;
            }
            // One statement: a refused snapshot changes no schedule, and the other way round.
            catalog::update_deployment(connection, &deployment)?;
            Ok(deployment)
        })
        .await?;
    // The path serves the new snapshot on this node now, on others within the cache's life.
    state.hooks.remove_where(|(hook_team, _)| *hook_team == team);
    Ok(Json(deployment))
}

pub async fn delete_deployment(State(state): State<AppState>, caller: Caller, Path((team, deployment)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    caller.authorize(&state, &team, Action::Build).await?;
    let (team_name, id) = (team.clone(), deployment.clone());
    state.catalog.call(move |connection| catalog::delete_deployment(connection, &team_name, &id)).await?;
    // The deleted path stops answering on this node now, on others within the cache's life.
    state.hooks.remove_where(|(hook_team, _)| *hook_team == team);
    // Its paused runs were waiting to run a deployment that is gone: they are cancelled rather
    // than left to run when credits return.
    let paused = state.history.read(&state.catalog, move |connection| crate::history::paused_runs_of_deployment(connection, &deployment)).await?;
    for run in paused {
        state.runner.cancel(&state, &team, &run, "cancelled: its deployment was deleted before credits returned").await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A missing snapshot, named by a request's `snapshot` field, as that field's error.
fn snapshot_field_error(err: ApiError) -> ApiError {
    match err {
        ApiError::NotFound(what) => ApiError::invalid("snapshot", format!("the flow has no {what}")),
        ApiError::NotFoundBecause(why) => ApiError::invalid("snapshot", why),
        other => other,
    }
}
