//! The server's view of the durable ledger: async wrappers over a [`LedgerStore`] (whose calls
//! block until committed, so they run on the blocking pool), with store errors mapped to API
//! errors. Every credit decision is the store's (and so the domain's); nothing is cached here.

use std::sync::Arc;

use flowcredits_core::{AnchorDay, CoreError, Credits, MicroUsd, PlanId, Rules, RunContext, RunId, RunStatus, TeamSettings, Timestamp};
use flowcredits_engine::BlockCharge;
use flowcredits_store::{Actor, BillingChange, Done, IdempotencyKey, LedgerStore, NewTeam, Purchase, Purchased, StartRun, StoreError, TeamInfo, TeamName, UsageEvent, UsageReport};
use serde_json::{Value, json};

use crate::error::ApiError;

/// How long a team's settings are served from memory. Only display and entitlement checks read
/// them; every credit decision is made by the store on its own data.
const TEAM_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
const TEAM_CACHE_ENTRIES_MAX: usize = 10_000;

#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    teams: Arc<crate::cache::TtlCache<String, TeamView>>,
}

/// A team as the API shows it.
#[derive(Clone, Debug)]
pub struct TeamView {
    pub name: String,
    pub plan: PlanId,
    pub anchor_day: AnchorDay,
    pub payg_enabled: bool,
    pub payg_cap: Option<MicroUsd>,
    pub payg_alerts: Vec<MicroUsd>,
    pub created_at: Timestamp,
}

impl TeamView {
    fn from_info(info: TeamInfo) -> TeamView {
        let TeamSettings { plan, anchor_day, payg_enabled, payg_cap, payg_alerts } = info.settings;
        TeamView { name: info.name.to_string(), plan, anchor_day, payg_enabled, payg_cap, payg_alerts, created_at: info.created_at }
    }

    pub fn to_json(&self, rules: &Rules) -> Value {
        let plan = rules.plans.get(self.plan);
        json!({
            "name": self.name,
            "plan": self.plan.as_str(),
            "anchor_day": self.anchor_day.get(),
            "payg_enabled": self.payg_enabled,
            "created_at": self.created_at.to_string(),
            "entitlements": {
                "included_credits": plan.included_credits.0,
                "payg_flows_credits": plan.payg_flows_credits,
                "payg_ai_credits": plan.payg_ai_credits,
                "rbac": plan.rbac,
                "private_runner": plan.private_runner,
                "snapshots_per_flow": plan.snapshots_per_flow,
                "can_purchase_credits": plan.can_purchase_credits,
                "request_body_bytes_max": plan.request_body_bytes_max,
            },
        })
    }
}

fn store_error(err: StoreError) -> ApiError {
    match err.root() {
        StoreError::Refused(core) => match core {
            CoreError::PlanHasNoPayg { .. } | CoreError::PlanCannotPurchase { .. } => ApiError::Forbidden(err.to_string()),
            CoreError::AmountOutOfRange { field, .. } => ApiError::invalid(*field, core.to_string()),
            CoreError::ExpiryNotAfterPurchase { .. } => ApiError::invalid("expires_at", core.to_string()),
            CoreError::UnknownRun { run } => ApiError::NotFound(format!("run {run}")),
            CoreError::TooManyPausedRuns { .. } => ApiError::LimitReached(err.to_string()),
            CoreError::UnknownModel { .. } | CoreError::MissingModel { .. } | CoreError::TooManyTools { .. } | CoreError::UnknownBlockKind { .. } => ApiError::invalid("usage", core.to_string()),
            _ => ApiError::Conflict(err.to_string()),
        },
        StoreError::Invalid { field, problem } => ApiError::invalid(*field, problem.clone()),
        StoreError::BadPeriod { .. } => ApiError::invalid("period", err.to_string()),
        StoreError::UnknownTeam { team } => ApiError::NotFound(format!("team {team}")),
        StoreError::TeamExists { .. } | StoreError::ExecutionConflict { .. } | StoreError::RunConflict { .. } => ApiError::Conflict(err.to_string()),
        StoreError::IdempotencyConflict { .. } => ApiError::ConflictOn { field: IDEMPOTENCY_KEY_HEADER.into(), message: format!("{IDEMPOTENCY_KEY_HEADER}: {err}") },
        _ => ApiError::internal(err),
    }
}

/// The request header that makes a purchase safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// A billing change the plan does not allow, said with the API field that asked for it.
pub(crate) fn plan_lacks(field: &str, refusal: &CoreError, team: &str) -> ApiError {
    ApiError::Forbidden(format!("{field}: {refusal}; it needs a plan that has it, which an operator sets with PUT /v1/teams/{team}/plan"))
}

/// A refused change of a billing batch, said in terms of the API field it came from.
fn billing_refusal(err: StoreError, fields: &[&str], team: &str) -> ApiError {
    let field = match &err {
        StoreError::Change { index, .. } => fields.get(*index).copied(),
        _ => None,
    };
    let Some(field) = field else { return store_error(err) };
    match err.root() {
        StoreError::Refused(core @ (CoreError::PlanHasNoPayg { .. } | CoreError::PlanCannotPurchase { .. })) => plan_lacks(field, core, team),
        StoreError::Refused(core @ CoreError::AmountOutOfRange { .. }) => ApiError::invalid(field, core.to_string()),
        StoreError::Invalid { problem, .. } => ApiError::invalid(field, problem.clone()),
        StoreError::Refused(core) => ApiError::Conflict(format!("{field}: {core}")),
        _ => store_error(err),
    }
}

/// Now, to the millisecond, as the ledger keeps instants: what a billing change or purchase
/// answers is what its lists show later.
fn now_to_the_millisecond() -> Result<Timestamp, ApiError> {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).map_err(ApiError::internal)
}

fn team_name(team: &str) -> Result<TeamName, ApiError> {
    // An impossible team name cannot name an existing team.
    TeamName::new(team).map_err(|_| ApiError::NotFound(format!("team {team}")))
}

fn run_id(run: &str) -> Result<RunId, ApiError> {
    RunId::new(run).map_err(|_| ApiError::NotFound(format!("run {run}")))
}

fn usage_events(run: &RunId, charges: &[BlockCharge]) -> Vec<UsageEvent> {
    let at = Timestamp::now();
    charges.iter().map(|charge| UsageEvent { execution: charge.execution.clone(), run: run.clone(), usage: charge.usage.clone(), at }).collect()
}

fn actor(user_id: &str) -> Result<Actor, ApiError> {
    Actor::new(user_id).map_err(store_error)
}

impl Ledger {
    pub fn new(store: Arc<dyn LedgerStore>) -> Ledger {
        Ledger { store, teams: Arc::new(crate::cache::TtlCache::new(TEAM_CACHE_TTL, TEAM_CACHE_ENTRIES_MAX)) }
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&dyn LedgerStore) -> Result<T, StoreError> + Send + 'static) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(&*store)).await.map_err(ApiError::internal)?.map_err(store_error)
    }

    pub async fn create_team(&self, name: &str, plan: PlanId, anchor_day: AnchorDay, user_id: &str) -> Result<TeamView, ApiError> {
        let name = TeamName::new(name).map_err(|err| match err {
            StoreError::Invalid { problem, .. } => ApiError::invalid("name", problem),
            other => store_error(other),
        })?;
        let new = NewTeam { name, settings: TeamSettings { anchor_day, ..TeamSettings::new(plan) }, actor: actor(user_id)?, at: Timestamp::now() };
        // Creating a team that exists is refused here, even with the same settings: a name
        // names one team.
        if self.team(new.name.as_str()).await.is_ok() {
            return Err(ApiError::Conflict(format!("team {} already exists", new.name)));
        }
        self.blocking(move |store| store.create_team(new)).await.map(TeamView::from_info)
    }

    pub async fn team(&self, team: &str) -> Result<TeamView, ApiError> {
        if let Some(view) = self.teams.get(&team.to_owned()) {
            return Ok(view);
        }
        let name = team_name(team)?;
        let view = self.blocking(move |store| store.team(&name)).await.map(TeamView::from_info)?;
        self.teams.insert(team.to_owned(), view.clone());
        Ok(view)
    }

    pub async fn team_names(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.blocking(|store| store.teams()).await?.into_iter().map(|info| info.name.to_string()).collect())
    }

    /// Submits a write at once and returns the wait for its answer, which holds no thread.
    fn written<T: Send + 'static>(submit: impl FnOnce(Done<T>)) -> impl Future<Output = Result<T, ApiError>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        submit(Box::new(move |result| {
            // A caller that stopped waiting (a dropped request) has nobody to tell.
            let _ = answer.send(result);
        }));
        async move { answered.await.map_err(|_| ApiError::internal("the ledger closed before answering"))?.map_err(store_error) }
    }

    pub async fn start_run(&self, team: &str, run: &str, context: RunContext, needs_credits: bool) -> Result<RunStatus, ApiError> {
        let (name, run) = (team_name(team)?, RunId::new(run).map_err(|err| ApiError::invalid("run", err.to_string()))?);
        let start = StartRun { run, context, needs_credits, at: Timestamp::now() };
        Ok(Self::written(|done| self.store.submit_start_run(&name, start, done)).await?.status)
    }

    /// Charges executions of a running run in one all-or-nothing batch; returns each one's credits.
    /// Each charge's credits, and whether it was a retry of one already recorded (acknowledged
    /// with its first answer, counted once).
    pub async fn charge(&self, team: &str, run: &str, charges: &[BlockCharge]) -> Result<Vec<(Credits, bool)>, ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        let events = usage_events(&run, charges);
        let outcomes = Self::written(|done| self.store.submit_charge(&name, events, done)).await?;
        Ok(outcomes.into_iter().map(|outcome| (outcome.credits, outcome.replayed)).collect())
    }

    pub async fn end_run(&self, team: &str, run: &str) -> Result<(), ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        Self::written(|done| self.store.submit_end_run(&name, &run, Timestamp::now(), done)).await
    }

    /// A run's last charges (possibly none) and its end, decided together by the ledger; the
    /// run ends even when the charge is refused. Returns the charge's answer and the end's.
    pub async fn charge_and_end(&self, team: &str, run: &str, charges: &[BlockCharge]) -> Result<(Result<Vec<Credits>, ApiError>, Result<(), ApiError>), ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        let events = usage_events(&run, charges);
        let (charged, ended) = Self::written(|done| self.store.submit_charge_and_end(&name, &run, events, Timestamp::now(), done)).await?;
        let charged = charged.map(|outcomes| outcomes.into_iter().map(|outcome| outcome.credits).collect()).map_err(store_error);
        Ok((charged, ended.map_err(store_error)))
    }

    pub async fn cancel_run(&self, team: &str, run: &str) -> Result<(), ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        self.blocking(move |store| store.cancel_run(&name, &run, Timestamp::now())).await
    }

    async fn run_info(&self, team: &str, run: &str) -> Result<Option<flowcredits_store::RunInfo>, ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        self.blocking(move |store| store.run(&name, &run)).await
    }

    /// When the ledger admitted, ended and last charged a run; `None` when it holds no such run.
    pub async fn run_times(&self, team: &str, run: &str) -> Result<Option<flowcredits_store::RunTimes>, ApiError> {
        let (name, run) = (team_name(team)?, run_id(run)?);
        self.blocking(move |store| store.run_times(&name, &run)).await
    }

    /// Every run the ledger holds as running, across teams: `(team, run)`.
    pub async fn running_runs(&self) -> Result<Vec<(String, String)>, ApiError> {
        let runs = self.blocking(|store| store.running_runs()).await?;
        Ok(runs.into_iter().map(|(team, run)| (team.to_string(), run.to_string())).collect())
    }

    /// What the ledger's writer has done since it opened (for `/metrics`).
    pub fn writer_stats(&self) -> flowcredits_store::WriterStats {
        self.store.writer_stats()
    }

    /// Why the ledger refuses every write until the server restarts, if it does (for
    /// `/healthz` and `/metrics`).
    pub fn write_failure(&self) -> Option<String> {
        self.store.write_failure()
    }

    /// Runs admitted at or after `since`, across teams, oldest first: at most the newest `limit`.
    pub async fn runs_since(&self, since: Timestamp, limit: usize) -> Result<Vec<flowcredits_store::LedgerRun>, ApiError> {
        self.blocking(move |store| store.runs_since(since, limit)).await
    }

    pub async fn run_status(&self, team: &str, run: &str) -> Result<Option<RunStatus>, ApiError> {
        Ok(self.run_info(team, run).await?.map(|info| info.status))
    }

    pub async fn run_context(&self, team: &str, run: &str) -> Result<RunContext, ApiError> {
        self.run_info(team, run).await?.map(|info| info.context).ok_or_else(|| ApiError::NotFound(format!("run {run}")))
    }

    pub async fn run_credits(&self, team: &str, run: &str) -> Result<Credits, ApiError> {
        Ok(self.run_info(team, run).await?.map_or(Credits::ZERO, |info| info.credits))
    }

    /// Applies one billing change; a purchase returns the grant it made.
    pub async fn change_billing(&self, team: &str, user_id: &str, change: BillingChange) -> Result<Option<flowcredits_core::Grant>, ApiError> {
        let (name, actor) = (team_name(team)?, actor(user_id)?);
        let now = now_to_the_millisecond()?;
        let changed = self.blocking(move |store| store.change_billing(&name, &actor, now, change)).await;
        self.teams.remove(&team.to_owned());
        changed
    }

    /// Applies a PATCH's billing changes as one ledger request, decided and committed together:
    /// all of them, or none when one is refused (by a plan changed meanwhile, say). Each change
    /// comes with the API field it was sent in, which a refusal names.
    pub async fn change_billing_all(&self, team: &str, user_id: &str, changes: Vec<(&'static str, BillingChange)>) -> Result<(), ApiError> {
        let (name, actor) = (team_name(team)?, actor(user_id)?);
        let now = now_to_the_millisecond()?;
        let (fields, changes): (Vec<&'static str>, Vec<BillingChange>) = changes.into_iter().unzip();
        let store = Arc::clone(&self.store);
        let changed = tokio::task::spawn_blocking(move || store.change_billing_all(&name, &actor, now, changes)).await.map_err(ApiError::internal)?;
        self.teams.remove(&team.to_owned());
        changed.map(drop).map_err(|err| billing_refusal(err, &fields, team))
    }

    /// Buys credits; with an idempotency key, a retry of a purchase the ledger already made is
    /// answered with its grant (`replayed`) instead of buying again.
    pub async fn purchase(&self, team: &str, user_id: &str, credits: Credits, expires_at: Option<Timestamp>, key: Option<IdempotencyKey>) -> Result<Purchased, ApiError> {
        let (name, actor) = (team_name(team)?, actor(user_id)?);
        let now = now_to_the_millisecond()?;
        let purchased = self.blocking(move |store| store.purchase(&name, &actor, now, Purchase { credits, expires_at, key })).await;
        self.teams.remove(&team.to_owned());
        purchased
    }

    /// Lets the ledger see the time pass: closes ended periods (issuing invoices) and opens the
    /// current one, which resumes paused runs.
    pub async fn advance_clock(&self, _team: &str) -> Result<(), ApiError> {
        self.blocking(|store| store.close_periods(Timestamp::now()).map(drop)).await
    }

    async fn usage_report(&self, team: &str, period: Option<&str>) -> Result<UsageReport, ApiError> {
        let (name, period) = (team_name(team)?, period.map(str::to_owned));
        self.blocking(move |store| store.usage(&name, period.as_deref(), Timestamp::now())).await
    }

    /// Every billing period the team's ledger has opened, oldest first, with the alerts each fired.
    pub async fn periods(&self, team: &str) -> Result<Vec<flowcredits_core::PeriodUsage>, ApiError> {
        let name = team_name(team)?;
        self.blocking(move |store| store.periods(&name)).await
    }

    /// The billing period named `YYYY-MM`, or the team's current one.
    pub async fn period(&self, team: &str, period: Option<&str>) -> Result<flowcredits_core::Period, ApiError> {
        Ok(self.usage_report(team, period).await?.period)
    }

    pub async fn usage(&self, team: &str, period: Option<&str>) -> Result<Value, ApiError> {
        Ok(usage_json(&self.usage_report(team, period).await?))
    }

    /// Credits the team bought, oldest first, as the API shows them.
    pub async fn purchases(&self, team: &str) -> Result<Vec<Value>, ApiError> {
        let name = team_name(team)?;
        let grants = self.blocking(move |store| store.grants(&name)).await?;
        let now = Timestamp::now();
        Ok(grants.iter().map(|grant| purchase_json(grant, now)).collect())
    }

    pub async fn invoices(&self, team: &str) -> Result<Vec<Value>, ApiError> {
        let name = team_name(team)?;
        Ok(self.blocking(move |store| store.invoices(&name)).await?.iter().map(invoice_json).collect())
    }
}

/// A purchase (a grant of credits) as the API shows it at `now`.
pub(crate) fn purchase_json(grant: &flowcredits_core::Grant, now: Timestamp) -> Value {
    let expired = grant.expires_at <= now;
    json!({"id": grant.id, "credits": grant.credits.0, "remaining": grant.remaining.0, "bought_at": grant.granted_at.to_string(), "expires_at": grant.expires_at.to_string(), "expired": expired})
}

pub(crate) fn period_json(period: flowcredits_core::Period) -> Value {
    json!({"start": period.start.to_string(), "end": period.end.to_string(), "label": period.label()})
}

/// A team's usage in one period as the API and `flowcredits usage --json` show it. What is left
/// of an ended period's allowance expired with it (its invoice says `included_expired`), so
/// `remaining` is then only the purchased credits still usable ([`UsageReport::remaining`]).
pub fn usage_json(report: &UsageReport) -> Value {
    let breakdown: Vec<Value> = report
        .breakdown
        .iter()
        .map(|line| json!({"block": line.kind.as_str(), "trigger": line.trigger.as_str(), "executions": line.executions, "credits": line.credits.0}))
        .collect();
    json!({
        "team": report.team.to_string(),
        "period": period_json(report.period),
        "included": report.included.0,
        "used": report.used().0,
        "remaining": report.remaining().0,
        "included_used": report.included_used.0,
        "purchased_used": report.purchased_used.0,
        "purchased_remaining": report.purchased_remaining.0,
        "payg_credits": report.payg_credits.0,
        "payg_amount_usd": report.payg_amount().to_string(),
        "unbilled_credits": report.unbilled_credits.0,
        "breakdown": breakdown,
    })
}

/// An invoice as the API and `flowcredits invoices --json` show it.
pub fn invoice_json(invoice: &flowcredits_store::Invoice) -> Value {
    json!({
        "period": period_json(invoice.period),
        "included": invoice.included.0,
        "included_used": invoice.included_used.0,
        "included_expired": invoice.included_expired.0,
        "purchased_used": invoice.purchased_used.0,
        "payg_credits": invoice.payg_credits.0,
        "unbilled_credits": invoice.unbilled_credits.0,
        "amount_due_usd": invoice.amount_due.to_string(),
        "issued_at": invoice.issued_at.to_string(),
        "plan": invoice.plan.as_str(),
        "plan_changes": invoice.plan_changes.iter().map(|change| json!({"at": change.at.to_string(), "from": change.from.as_str(), "to": change.to.as_str()})).collect::<Vec<_>>(),
    })
}
