//! The flowcredits server: a JSON API under `/v1`, deployed-flow hooks under `/hooks`, an MCP
//! endpoint, the usage dashboard, metrics and health. Handlers are thin: they authorize, parse,
//! and call the ledger (credits), the catalog (configuration, history) or the runner.

pub mod auth;
mod cache;
pub mod catalog;
pub mod client;
mod dashboard;
pub mod error;
pub mod history;
pub mod history_log;
pub mod jobs;
pub mod ledger;
mod mcp;
pub mod metrics;
mod openapi;
mod routes_billing;
mod routes_flows;
mod routes_runs;
mod routes_teams;
pub mod runner;
pub mod runners;
mod scheduler;
pub mod serve;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post, put};
use flowcredits_core::Rules;

pub use error::ApiError;

/// Everything a request handler can reach: one shared [`AppParts`], so that the clone every
/// extractor and spawned task makes is one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// Changing a part (tests tune timeouts before serving) gives this handle parts of its own;
/// handles cloned before keep the parts they had.
impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut AppParts {
        Arc::make_mut(&mut self.0)
    }
}

impl AppParts {
    /// At `now`, the instant (Unix milliseconds) before which finished runs leave history;
    /// `None` when history is kept forever. Pruning deletes by it, and start-up's restore of
    /// lost history looks no further back, so the two agree on what was pruned.
    pub fn history_cutoff_ms(&self, now: jiff::Timestamp) -> Option<i64> {
        let retention = self.history_retention?;
        Some(now.as_millisecond().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)))
    }
}

/// The parts of [`AppState`]. Each is itself cheap to clone.
#[derive(Clone)]
pub struct AppParts {
    pub rules: Arc<Rules>,
    pub catalog: catalog::Catalog,
    /// Run history, written behind the runs.
    pub history: history_log::HistoryLog,
    pub ledger: ledger::Ledger,
    pub runner: runner::Runner,
    pub metrics: Arc<metrics::Metrics>,
    /// Outgoing HTTP (alert webhooks), kept to the same destinations as flows' requests.
    pub http: flowcredits_engine::http::HttpClient,
    /// How long a synchronous call waits for a run's answer before 408 (30 s; shorter in tests).
    pub sync_wait: std::time::Duration,
    /// A run still going after this long is stopped and recorded as timed out (60 minutes).
    pub run_duration_max: std::time::Duration,
    /// Finished runs older than this leave run history (`None`: kept forever). The ledger keeps
    /// every charge whatever this says.
    pub history_retention: Option<std::time::Duration>,
    /// API key digest to its user (briefly: a lookup every request repeats).
    pub keys: Arc<cache::TtlCache<Vec<u8>, catalog::User>>,
    /// `(team, user)` to the member's role (briefly; this node forgets a role it changes).
    pub roles: Arc<cache::TtlCache<(String, String), auth::Role>>,
    /// `(team, path)` to the deployment there and its parsed snapshot.
    pub hooks: Arc<cache::TtlCache<(String, String), routes_runs::HookTarget>>,
    /// Teams with an alert check due soon.
    pub alert_checks_pending: Arc<cache::TtlCache<String, ()>>,
    /// `(team, alert, period start)` already recorded by this node.
    pub alerts_fired: Arc<cache::TtlCache<(String, String, i64), ()>>,
    /// Private-runner jobs: wakes waiting claims, holds the callers waiting for job runs.
    pub jobs: jobs::JobHub,
}

/// The whole HTTP surface. Tests call it without a socket; `serve` binds it.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/me", get(routes_teams::me))
        .route("/users", post(routes_teams::create_user).get(routes_teams::list_users))
        .route("/users/{user}/keys", post(routes_teams::create_key).get(routes_teams::list_keys))
        .route("/users/{user}/keys/{key}", axum::routing::delete(routes_teams::revoke_key))
        .route("/teams", post(routes_teams::create_team).get(routes_teams::list_teams))
        .route("/teams/{team}", get(routes_teams::get_team))
        .route("/teams/{team}/plan", put(routes_teams::change_plan))
        .route("/teams/{team}/members", get(routes_teams::list_members))
        .route("/teams/{team}/members/{user}", put(routes_teams::set_member).delete(routes_teams::remove_member))
        .route("/teams/{team}/flows", post(routes_flows::create_flow).get(routes_flows::list_flows))
        .route("/teams/{team}/flows/{flow}", get(routes_flows::get_flow).put(routes_flows::update_flow).delete(routes_flows::delete_flow))
        .route("/teams/{team}/flows/{flow}/snapshots", post(routes_flows::create_snapshot).get(routes_flows::list_snapshots))
        .route("/teams/{team}/flows/{flow}/estimate", get(routes_flows::estimate))
        .route("/teams/{team}/deployments", post(routes_flows::create_deployment).get(routes_flows::list_deployments))
        .route("/teams/{team}/deployments/{deployment}", axum::routing::delete(routes_flows::delete_deployment).patch(routes_flows::redeploy))
        .route("/teams/{team}/deployments/{deployment}/runs", post(routes_runs::run_deployment))
        .route("/teams/{team}/runners", post(runners::create).get(runners::list))
        .route("/teams/{team}/runners/me", get(runners::me))
        .route("/teams/{team}/runners/{runner}", axum::routing::delete(runners::delete))
        .route("/teams/{team}/runners/{runner}/jobs/claim", post(jobs::claim))
        .route("/teams/{team}/runners/{runner}/jobs/{run}/charges", post(jobs::charge))
        .route("/teams/{team}/runners/{runner}/jobs/{run}/heartbeat", post(jobs::heartbeat))
        .route("/teams/{team}/runners/{runner}/jobs/{run}/complete", post(jobs::complete))
        .route("/teams/{team}/runs", post(routes_runs::start_run).get(routes_runs::list_runs))
        .route("/teams/{team}/runs/{run}", get(routes_runs::get_run))
        .route("/teams/{team}/runs/{run}/cancel", post(routes_runs::cancel_run))
        .route("/teams/{team}/local-runs", post(routes_runs::admit_local_run))
        .route("/teams/{team}/local-runs/{run}/charges", post(routes_runs::charge_local_run))
        .route("/teams/{team}/local-runs/{run}/end", post(routes_runs::end_local_run))
        .route("/teams/{team}/usage", get(routes_billing::usage))
        .route("/teams/{team}/usage/flows", get(routes_billing::usage_by_flow))
        .route("/teams/{team}/billing", get(routes_billing::get_billing).patch(routes_billing::update_billing))
        .route("/teams/{team}/purchases", post(routes_billing::purchase).get(routes_billing::purchases))
        .route("/teams/{team}/invoices", get(routes_billing::invoices))
        .route("/teams/{team}/alerts", get(routes_billing::alerts));
    Router::new()
        .nest("/v1", v1.method_not_allowed_fallback(method_not_allowed))
        .route("/hooks/{team}/{*path}", any(routes_runs::call_hook))
        .route("/mcp", post(mcp::handle).get(mcp::reject_get))
        .route("/dashboard", get(dashboard::page))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(read_request_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track_requests))
        .with_state(state)
}

/// 200 while the server can take runs; 503 once the ledger refuses every write (the disk did
/// not confirm a commit), saying why and what to do: a load balancer or orchestrator should
/// stop sending work here, and an operator must fix the disk and restart.
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    state.catalog.call(|connection| Ok(connection.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?)).await?;
    if let Some(cause) = state.ledger.write_failure() {
        let body = serde_json::json!({
            "status": "failing",
            "problem": "ledger_not_writable",
            "message": format!("the ledger refuses every write: the disk did not confirm a commit ({cause}), so what the file holds past it is unknown"),
            "action": "check the disk holding the ledger database (space, errors), then restart the server; it reads back what the disk holds",
            "runs_in_flight": state.runner.in_flight(),
        });
        return Ok((axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    Ok(axum::Json(serde_json::json!({"status": "ok", "runs_in_flight": state.runner.in_flight()})).into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route (see /openapi.json)".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Largest request body read at all, in bytes: the largest any plan accepts for a hook.
pub const REQUEST_BODY_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Most bytes of an oversized body read and thrown away before answering 413, so that a client
/// still sending gets the answer instead of a broken connection.
pub const OVERSIZED_BODY_DRAIN_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Reads every request body before routing, so no answer (a refused key, a 404) leaves body
/// bytes unread: an unread body makes the server close the connection, and a client already
/// reusing it gets a broken request. Bodies over [`REQUEST_BODY_BYTES_MAX`] get 413.
async fn read_request_body(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let (parts, mut body) = request.into_parts();
    let mut kept = Vec::new();
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return ApiError::invalid("body", "the request body could not be read").into_response();
        };
        // Trailers carry no body bytes.
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen <= REQUEST_BODY_BYTES_MAX {
            kept.extend_from_slice(&data);
        } else if seen > OVERSIZED_BODY_DRAIN_BYTES_MAX {
            break;
        }
    }
    if seen > REQUEST_BODY_BYTES_MAX {
        return ApiError::PayloadTooLarge { limit: REQUEST_BODY_BYTES_MAX as u64 }.into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(kept))).await
}

/// JSON bodies with errors that name the field, instead of axum's plain-text rejections.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<JsonBody<T>, ApiError> {
        // `read_request_body` already bounded the body.
        let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await.map_err(|_| ApiError::invalid("body", "the request body could not be read"))?;
        // Serde would read an array into a struct's fields by position; every body here is an
        // object of named fields.
        let bytes: &[u8] = match bytes.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'[') => return Err(ApiError::invalid("body", "must be a JSON object, not an array")),
            // No body is an object of no fields: right where every field is optional, and
            // otherwise refused by name like any missing field. A JSON `null` says the same
            // (clients that post "nothing" as JSON send it).
            None => b"{}",
            Some(_) if bytes.trim_ascii() == b"null" => b"{}",
            Some(_) => &bytes,
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let not_json = |err: serde_json::Error| ApiError::invalid("body", format!("is not valid JSON: {err}"));
        let value = serde_path_to_error::deserialize(&mut deserializer).map(JsonBody).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            // Broken JSON is about the body as a whole: the path where the parser stopped names
            // no field (`?` inside an unfinished object).
            if matches!(inner.classify(), serde_json::error::Category::Syntax | serde_json::error::Category::Eof) {
                return not_json(inner);
            }
            let mut message = inner.to_string();
            let field = field_of(&path, &message, "body");
            // Money is exact: dollar amounts are decimal strings, never JSON numbers.
            if field.contains("_usd") && message.contains("expected a string") {
                message.push_str("; write dollars as a string with at most three decimals, such as \"0.200\"");
            }
            ApiError::invalid(field, message)
        })?;
        // Text after the value is refused, not ignored.
        deserializer.end().map_err(not_json)?;
        Ok(value)
    }
}

/// The body of an action that takes no fields (take a snapshot, cancel a run, …): none, `{}` or
/// `null`. A field is refused by name rather than ignored, so a client that expected it to
/// mean something learns that it does not.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with no fields, or no body")]
pub struct NoFields {}

/// For an `Option<Option<T>>` field with `#[serde(default)]`: tells "absent" (`None`) from
/// "null" (`Some(None)`), so that a change can clear a setting as well as leave it alone.
pub(crate) fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// The field a deserialization error is about: its path, completed by the name of a missing
/// field (serde reports those at the enclosing object), or `whole` for the input as a whole.
fn field_of(path: &str, message: &str, whole: &str) -> String {
    let named = |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split_once('`')).map(|(name, _)| name);
    // A missing field's path stops at the object that lacks it; a field given twice at the
    // top (`?team=a&team=b`) is named only by the message.
    let missing = named("missing field `");
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => named("duplicate field `").unwrap_or(whole).to_owned(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// Query strings with errors that name the parameter.
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Query<T>, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Query).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            ApiError::invalid(field_of(&path, &message, "query"), message)
        })
    }
}

/// `?after=…&limit=…` on every list.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: Option<u32>,
}

impl PageQuery {
    pub fn request(&self) -> Result<catalog::PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(catalog::PAGE_ITEMS_DEFAULT);
        if !(1..=catalog::PAGE_ITEMS_MAX).contains(&limit) {
            return Err(ApiError::invalid("limit", format!("must be from 1 to {}", catalog::PAGE_ITEMS_MAX)));
        }
        Ok(catalog::PageRequest { after: self.after.clone(), limit })
    }

    /// A page of a list ordered by ids that start with `prefix`: a cursor that is no such id
    /// (not one this list gave) is refused rather than read as an empty page.
    pub fn request_by_id(&self, prefix: &str) -> Result<catalog::PageRequest, ApiError> {
        catalog::check_id_cursor(prefix, self.after.as_deref())?;
        self.request()
    }
}
