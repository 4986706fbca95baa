//! Usage, billing settings, purchases, invoices and alerts.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use flowcredits_core::ledger::{PAYG_ALERTS_MAX, PAYG_CAP_MICRO_USD_MAX};
use flowcredits_core::{Credits, MicroUsd};
use flowcredits_store::{BillingChange, IdempotencyKey, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Action, Caller};
use crate::catalog;
use crate::{ApiError, AppState, JsonBody, PageQuery, Query};

/// Longest alert webhook URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// `YYYY-MM` of the period's start; the current period when absent.
    period: Option<String>,
}

pub async fn usage(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(query): Query<UsageQuery>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    Ok(Json(state.ledger.usage(&team, query.period.as_deref()).await?))
}

/// Where a period's credits went by flow, from run history: each run counts in the period it
/// started in (the ledger's usage counts each charge when it happened).
pub async fn usage_by_flow(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(query): Query<UsageQuery>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let period = state.ledger.period(&team, query.period.as_deref()).await?;
    let (start_ms, end_ms) = (period.start.as_millisecond(), period.end.as_millisecond());
    let flows = state.history.read(&state.catalog, move |connection| crate::history::usage_by_flow(connection, &team, start_ms, end_ms)).await?;
    Ok(Json(json!({"period": crate::ledger::period_json(period), "flows": flows})))
}

pub async fn get_billing(State(state): State<AppState>, caller: Caller, Path(team): Path<String>) -> Result<Json<Value>, ApiError> {
    let role = caller.authorize(&state, &team, Action::Read).await?;
    billing_view(&state, &team, role.allows(Action::Bill)).await.map(Json)
}

/// The team's billing settings. The alerts' webhook URL (a chat webhook's URL is itself a
/// credential: whoever has it can post there) and their signing secret only for those who
/// may change billing; everyone else sees only whether a webhook is set.
async fn billing_view(state: &AppState, team: &str, manages_billing: bool) -> Result<Value, ApiError> {
    let info = state.ledger.team(team).await?;
    let team_name = team.to_owned();
    let webhook = state.catalog.call(move |connection| catalog::alert_webhook(connection, &team_name)).await?;
    let webhook_set = webhook.is_some();
    let (webhook, secret) = webhook.filter(|_| manages_billing).map_or((None, None), |webhook| (Some(webhook.url), webhook.signing_secret));
    let plan = state.rules.plans.get(info.plan);
    Ok(json!({
        "plan": info.plan.as_str(),
        "payg_available": plan.has_payg(),
        "payg_enabled": info.payg_enabled,
        "payg_cap_usd": info.payg_cap.map(|cap| cap.to_string()),
        "payg_alerts_usd": info.payg_alerts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "can_purchase_credits": plan.can_purchase_credits,
        "alert_webhook_set": webhook_set,
        "alert_webhook_url": webhook,
        "alert_signing_secret": secret,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingUpdate {
    /// `null` is refused (see [`BillingUpdate::refuse_nulls`]), so it is told from absent.
    #[serde(default, deserialize_with = "crate::present")]
    payg_enabled: Option<Option<bool>>,
    /// Dollars as a decimal string; `null` removes the cap.
    #[serde(default, deserialize_with = "crate::present")]
    payg_cap_usd: Option<Option<String>>,
    /// `[]` removes every amount; `null` is refused.
    #[serde(default, deserialize_with = "crate::present")]
    payg_alerts_usd: Option<Option<Vec<String>>>,
    /// Where alerts are delivered; `null` stops delivery.
    #[serde(default, deserialize_with = "crate::present")]
    alert_webhook_url: Option<Option<String>>,
}

impl BillingUpdate {
    /// `null` clears the cap and the webhook; for the switch and the alert amounts it would be
    /// read as "leave alone" and answered 200 with nothing changed, so it is refused instead,
    /// saying what to send.
    fn refuse_nulls(&self) -> Result<(), ApiError> {
        if matches!(self.payg_enabled, Some(None)) {
            return Err(ApiError::invalid("payg_enabled", "is null; send true or false, or leave it out to keep the setting"));
        }
        if matches!(self.payg_alerts_usd, Some(None)) {
            return Err(ApiError::invalid("payg_alerts_usd", "is null; send [] to remove every alert amount, or leave it out to keep them"));
        }
        Ok(())
    }
}

/// A dollar amount as the API takes them: at most three decimals, since a credit is $0.001 and
/// every amount is shown with three.
fn usd(field: &str, text: &str) -> Result<MicroUsd, ApiError> {
    let amount = MicroUsd::parse_usd(text).ok_or_else(|| ApiError::invalid(field, format!("`{text}` is not a dollar amount such as \"25.000\"")))?;
    if amount.0 % flowcredits_core::MICRO_USD_PER_CREDIT != 0 {
        return Err(ApiError::invalid(field, format!("`{text}` is finer than $0.001, the price of one credit; use at most three decimals")));
    }
    Ok(amount)
}

/// Changes billing settings (owner, admin or billing) as one ledger request: every field's
/// change applies or none does, and each is in the ledger's audit log with the user who made
/// it. Turning pay-as-you-go on resumes paused runs.
pub async fn update_billing(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, JsonBody(body): JsonBody<BillingUpdate>) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, &team, Action::Bill).await?;
    body.refuse_nulls()?;
    let (payg_enabled, payg_alerts_usd) = (body.payg_enabled.flatten(), body.payg_alerts_usd.flatten());
    // Each change with the field it was sent in, for a refusal to name.
    let mut changes: Vec<(&'static str, BillingChange)> = Vec::new();
    // The ledger checks these bounds too; here they are said in the API's own terms (its
    // field names, dollars).
    let largest = MicroUsd(PAYG_CAP_MICRO_USD_MAX);
    if let Some(cap) = &body.payg_cap_usd {
        let cap = cap.as_deref().map(|text| usd("payg_cap_usd", text)).transpose()?;
        if let Some(cap) = cap.filter(|cap| *cap > largest) {
            return Err(ApiError::invalid("payg_cap_usd", format!("${cap} is more than the largest cap, ${largest}")));
        }
        changes.push(("payg_cap_usd", BillingChange::SetPaygCap { cap }));
    }
    if let Some(alerts) = &payg_alerts_usd {
        if alerts.len() > PAYG_ALERTS_MAX {
            return Err(ApiError::invalid("payg_alerts_usd", format!("{} amounts are more than the {PAYG_ALERTS_MAX} a team may set", alerts.len())));
        }
        let mut amounts = Vec::with_capacity(alerts.len());
        for (index, text) in alerts.iter().enumerate() {
            let field = format!("payg_alerts_usd[{index}]");
            let amount = usd(&field, text)?;
            if amount.0 == 0 || amount > largest {
                return Err(ApiError::invalid(field, format!("${amount} must be above $0.000 and at most ${largest}")));
            }
            amounts.push(amount);
        }
        changes.push(("payg_alerts_usd", BillingChange::SetPaygAlerts { amounts }));
    }
    if let Some(enabled) = payg_enabled {
        changes.push(("payg_enabled", BillingChange::SetPayg { enabled }));
    }
    // Turning pay-as-you-go on, or setting its cap or alerts, on a plan without it is refused
    // here first, in the API's terms. (Clearing them is always allowed.) The plan read here may
    // change before the ledger decides; the ledger then refuses the whole request.
    let plan = state.ledger.team(&team).await?.plan;
    let sets_payg = [(payg_enabled == Some(true), "payg_enabled"), (matches!(body.payg_cap_usd, Some(Some(_))), "payg_cap_usd"), (payg_alerts_usd.as_ref().is_some_and(|alerts| !alerts.is_empty()), "payg_alerts_usd")];
    if let Some((_, field)) = sets_payg.iter().find(|(sets, _)| *sets)
        && !state.rules.plans.get(plan).has_payg()
    {
        return Err(crate::ledger::plan_lacks(field, &flowcredits_core::CoreError::PlanHasNoPayg { plan }, &team));
    }
    if let Some(Some(url)) = &body.alert_webhook_url
        && (url.len() > WEBHOOK_URL_BYTES_MAX || !(url.starts_with("http://") || url.starts_with("https://")))
    {
        return Err(ApiError::invalid("alert_webhook_url", format!("must be an http(s) URL of at most {WEBHOOK_URL_BYTES_MAX} bytes")));
    }
    if let Some(reason) = body.alert_webhook_url.as_ref().and_then(|url| url.as_deref()).and_then(|url| state.http.refusal(url)) {
        return Err(ApiError::invalid("alert_webhook_url", format!("points at {reason}")));
    }
    // Everything is checked before anything is written; then the ledger decides every change
    // as one request (all or none), and only once it took them is the webhook (kept in the
    // catalog) changed.
    if !changes.is_empty() {
        state.ledger.change_billing_all(&team, &caller.user.id, changes).await?;
    }
    if let Some(url) = body.alert_webhook_url {
        let team_name = team.clone();
        state.catalog.call(move |connection| catalog::set_alert_webhook(connection, &team_name, url.as_deref())).await?;
    }
    state.runner.dispatch_resumed(&state, &team).await?;
    // An alert amount set below what the period has spent fires now.
    crate::scheduler::check_alerts_before_answering(&state, &team).await;
    billing_view(&state, &team, true).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purchase {
    credits: u64,
    expires_at: Option<String>,
}

/// The purchase's `Idempotency-Key` header, if it has one: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let header = crate::ledger::IDEMPOTENCY_KEY_HEADER;
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::invalid(header, "is sent more than once; send one key per purchase"));
    }
    let text = value.to_str().map_err(|_| ApiError::invalid(header, "must be 1 to 255 visible ASCII characters (`!` to `~`), such as a UUID"))?;
    IdempotencyKey::new(text).map(Some).map_err(|err| match err {
        StoreError::Invalid { problem, .. } => ApiError::invalid(header, format!("{problem}; it must be 1 to 255 visible ASCII characters (`!` to `~`), such as a UUID")),
        other => ApiError::internal(other),
    })
}

/// Buys credits (Enterprise). With an `Idempotency-Key` header a retry is safe: the same key
/// with the same body is answered with the first purchase (same grant, nothing bought again,
/// marked `Idempotent-Replayed: true`), also after a restart since the ledger keeps the key;
/// with another body it is refused (409 naming the header).
pub async fn purchase(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, headers: HeaderMap, JsonBody(body): JsonBody<Purchase>) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    caller.authorize(&state, &team, Action::Bill).await?;
    let key = idempotency_key(&headers)?;
    let expires_at = body.expires_at.as_deref().map(|text| text.parse::<jiff::Timestamp>().map_err(|err| ApiError::invalid("expires_at", format!("`{text}` is not an RFC 3339 time: {err}")))).transpose()?;
    if let Some(at) = expires_at {
        flowcredits_core::check_supported(at).map_err(|err| ApiError::invalid("expires_at", err.to_string()))?;
    }
    let purchased = state.ledger.purchase(&team, &caller.user.id, Credits(body.credits), expires_at, key).await?;
    // A replay dispatches too: the first answer may have been lost before its runs started.
    let resumed = state.runner.dispatch_resumed(&state, &team).await?;
    // The purchase as `GET …/purchases` lists it, and how many paused runs this request resumed.
    let mut answer = crate::ledger::purchase_json(&purchased.grant, flowcredits_core::Timestamp::now());
    answer["runs_resumed"] = json!(resumed);
    let mut answer_headers = HeaderMap::new();
    if purchased.replayed {
        answer_headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok((StatusCode::CREATED, answer_headers, Json(answer)))
}

pub async fn purchases(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<Value>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let mut page = page.request()?;
    // A purchase id as people write it (`after=1`) or as `next` gave it (zero-padded).
    if let Some(after) = &page.after {
        let id: u64 = after.parse().map_err(|_| ApiError::invalid("after", format!("`{after}` is not a purchase id")))?;
        page.after = Some(format!("{id:020}"));
    }
    let purchases = state.ledger.purchases(&team).await?;
    // Ids are numbers: the cursor is zero-padded so that it sorts as they do.
    Ok(Json(catalog::Page::of_sorted(purchases, &page, |purchase| format!("{:020}", purchase["id"].as_u64().unwrap_or_default()))))
}

pub async fn invoices(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<Value>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let mut page = page.request()?;
    // The cursor is a period's start as `next` gave it (RFC 3339, UTC); the same instant
    // written another way reads as that, and anything else is refused rather than compared as
    // text, which would start the page somewhere arbitrary.
    if let Some(after) = &page.after {
        let start: jiff::Timestamp = after.parse().map_err(|_| ApiError::invalid("after", format!("`{after}` is not a cursor this list gave (the start of an invoice's period, such as \"2026-03-01T00:00:00Z\")")))?;
        page.after = Some(start.to_string());
    }
    let invoices = state.ledger.invoices(&team).await?;
    Ok(Json(catalog::Page::of_sorted(invoices, &page, |invoice| invoice["period"]["start"].as_str().unwrap_or_default().to_owned())))
}

pub async fn alerts(State(state): State<AppState>, caller: Caller, Path(team): Path<String>, Query(page): Query<PageQuery>) -> Result<Json<catalog::Page<catalog::AlertRecord>>, ApiError> {
    caller.authorize(&state, &team, Action::Read).await?;
    let page = page.request_by_id("alr")?;
    Ok(Json(state.catalog.call(move |connection| catalog::alerts(connection, &team, &page)).await?))
}
