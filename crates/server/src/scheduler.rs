//! Background work: scheduled deployments, the period tick that resumes paused runs when a new
//! billing period starts, and alert delivery.

use std::collections::HashMap;
use std::time::Duration;

use flowcredits_core::{Alert, RunContext, Trigger};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::catalog;
use crate::history;
use crate::runner::StartRequest;
use crate::AppState;

/// How often the scheduler looks for due work.
pub const TICK: Duration = Duration::from_secs(1);
/// Waits between alert delivery attempts; one attempt more than there are waits.
pub const ALERT_RETRY_WAITS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)];
/// Periods whose alerts a check looks at, newest first: the current one and the one before
/// (a period can end between a charge and its check).
pub const ALERT_PERIODS_CHECKED: usize = 2;
/// How long one alert delivery may take.
pub const ALERT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut next_due: HashMap<String, Timestamp> = HashMap::new();
    let mut ticks: u64 = 0;
    let mut last_tick = Timestamp::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        ticks += 1;
        let now = Timestamp::now();
        // A new billing period may have started for a team with paused runs: looked at on the
        // tick a period can begin (before that tick's scheduled runs, so the paused ones go
        // first), and once a minute as a safety net (a clock that jumped).
        if (periods_may_have_begun(last_tick, now) || ticks.is_multiple_of(60))
            && let Err(err) = resume_for_new_periods(&state).await
        {
            tracing::warn!(error = %err, "resuming paused runs for new periods failed");
        }
        last_tick = now;
        if let Err(err) = run_due_schedules(&state, &mut next_due, now).await {
            tracing::warn!(error = %err, "running scheduled deployments failed");
        }
        if ticks.is_multiple_of(60) {
            if let Err(err) = check_every_teams_alerts(&state).await {
                tracing::warn!(error = %err, "checking usage alerts failed");
            }
            // Off the tick: a slow webhook must not hold up schedules.
            let retrying = state.clone();
            tokio::spawn(async move {
                if let Err(err) = retry_alerts(&retrying, Timestamp::now()).await {
                    tracing::warn!(error = %err, "retrying alert deliveries failed");
                }
            });
            // Private-runner jobs no runner will finish are given up, even with no runner polling.
            if let Err(err) = crate::jobs::sweep(&state, None).await {
                tracing::warn!(error = %err, "giving up stale private-runner jobs failed");
            }
            if let Err(err) = prune_history(&state, Timestamp::now()).await {
                tracing::warn!(error = %err, "pruning old run history failed");
            }
        }
    }
}

/// Whether a billing period may have begun after `previous` and by `now`: every period starts at
/// 00:00 UTC (on its team's anchor day), so only ticks that cross a midnight need to look.
fn periods_may_have_begun(previous: Timestamp, now: Timestamp) -> bool {
    catalog::utc_day(previous.as_millisecond()) != catalog::utc_day(now.as_millisecond())
}

/// When a scheduled deployment next runs after `now`: its cron expression's next minute, or
/// the next step of its interval counted from when it was deployed. That grid, not "an interval
/// from now", keeps a server that restarts more often than the interval from putting the run
/// off each time. `None`: it never runs (an expression that names no coming day).
fn next_run(deployment: &catalog::Deployment, now: Timestamp) -> Option<Timestamp> {
    match (&deployment.schedule_cron, deployment.schedule_every_s) {
        // Checked when deployed; a stored expression that no longer parses runs never.
        (Some(cron), _) => flowcredits_engine::cron::Cron::parse(cron).ok()?.next_after(now),
        (None, Some(every)) => {
            let every_ns = i128::from(every.max(1)) * 1_000_000_000;
            let anchor_ns = deployment.created_at.parse::<Timestamp>().unwrap_or(now).as_nanosecond();
            let steps = (now.as_nanosecond() - anchor_ns).div_euclid(every_ns) + 1;
            Timestamp::from_nanosecond(anchor_ns.checked_add(steps.checked_mul(every_ns)?)?).ok()
        }
        (None, None) => None,
    }
}

/// What the scheduler knows a deployment's next run by: its id and schedule, so that a deployment
/// given a new schedule (`PATCH`) is first seen again and follows the new one at once.
fn schedule_key(deployment: &catalog::Deployment) -> String {
    format!("{} {:?} {:?}", deployment.id, deployment.schedule_every_s, deployment.schedule_cron)
}

/// Starts the scheduled deployments due at `now`. A deployment first seen is due at its next
/// run after `now`; one that ran is due at its next run after it. Runs missed while the server
/// was down are not made up.
async fn run_due_schedules(state: &AppState, next_due: &mut HashMap<String, Timestamp>, now: Timestamp) -> Result<(), crate::ApiError> {
    let deployments = state.catalog.call(|connection| catalog::scheduled_deployments(connection)).await?;
    let keys: std::collections::HashSet<String> = deployments.iter().map(schedule_key).collect();
    next_due.retain(|key, _| keys.contains(key));
    for deployment in deployments {
        let key = schedule_key(&deployment);
        let due = match next_due.get(&key) {
            Some(due) => *due,
            None => {
                if let Some(due) = next_run(&deployment, now) {
                    next_due.insert(key, due);
                }
                continue;
            }
        };
        if due > now {
            continue;
        }
        match next_run(&deployment, now) {
            Some(next) => next_due.insert(key, next),
            None => next_due.remove(&key),
        };
        // A team out of credits keeps at most one paused run per schedule.
        let id = deployment.id.clone();
        if state.history.read(&state.catalog, move |connection| history::deployment_has_paused_run(connection, &id)).await? {
            continue;
        }
        let (team, flow_id, snapshot) = (deployment.team.clone(), deployment.flow_id.clone(), deployment.snapshot);
        let definition = state.catalog.call(move |connection| Ok(catalog::snapshot(connection, &team, &flow_id, Some(snapshot))?.definition)).await?;
        let request = StartRequest {
            team: deployment.team.clone(),
            flow_id: deployment.flow_id.clone(),
            snapshot: Some(deployment.snapshot),
            deployment_id: Some(deployment.id.clone()),
            flow: std::sync::Arc::new(crate::runner::load_flow(&definition)?),
            input: json!({"scheduled_at": jiff::Timestamp::now().to_string()}),
            context: RunContext::automated(Trigger::Api).expect("api is automated"),
            http: None,
            answer_on_response: true,
        };
        if let Err(err) = crate::jobs::start_deployed(state, deployment.runs_on, request).await {
            tracing::warn!(deployment = %deployment.id, error = %err, "a scheduled run could not start");
        }
    }
    Ok(())
}

/// Rows deleted per statement when pruning history: each batch holds the catalog briefly.
const PRUNE_BATCH_ROWS: u32 = 2_000;
/// Batches per pruning round (once a minute): a long backlog is worked off over several
/// minutes instead of holding the catalog for long.
const PRUNE_BATCHES_MAX: u32 = 50;

/// Deletes finished runs older than the retention from run history; returns how many.
async fn prune_history(state: &AppState, now: Timestamp) -> Result<usize, crate::ApiError> {
    let Some(before_ms) = state.history_cutoff_ms(now) else { return Ok(0) };
    let mut pruned = 0;
    for _ in 0..PRUNE_BATCHES_MAX {
        let deleted = state.catalog.call(move |connection| history::prune(connection, before_ms, PRUNE_BATCH_ROWS)).await?;
        pruned += deleted;
        if deleted < PRUNE_BATCH_ROWS as usize {
            break;
        }
    }
    if pruned > 0 {
        tracing::info!(runs = pruned, "pruned run history past its retention");
    }
    Ok(pruned)
}

async fn resume_for_new_periods(state: &AppState) -> Result<(), crate::ApiError> {
    for team in state.ledger.team_names().await? {
        let name = team.clone();
        if state.history.read(&state.catalog, move |connection| history::paused_runs(connection, &name)).await?.is_empty() {
            continue;
        }
        state.ledger.advance_clock(&team).await?;
        state.runner.dispatch_resumed(state, &team).await?;
    }
    Ok(())
}

/// A safety net behind the per-charge checks: every team's alerts, once a minute.
async fn check_every_teams_alerts(state: &AppState) -> Result<(), crate::ApiError> {
    for team in state.ledger.team_names().await? {
        check_alerts_now(state, &team).await?;
    }
    Ok(())
}

/// How long after a charge a team's alerts are checked; charges in between share one check.
pub const ALERT_CHECK_DELAY: Duration = Duration::from_millis(100);

/// Asks for a check of the team's usage alerts soon. Many runs finishing together cause one
/// check, not one each. The pending mark is cleared before the check reads usage, so a charge
/// that lands while a check runs asks for another: no crossing is missed.
pub async fn check_alerts(state: &AppState, team: &str) {
    if state.alert_checks_pending.get(&team.to_owned()).is_some() {
        return;
    }
    state.alert_checks_pending.insert(team.to_owned(), ());
    let (state, team) = (state.clone(), team.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(ALERT_CHECK_DELAY).await;
        state.alert_checks_pending.remove(&team);
        if let Err(err) = check_alerts_now(&state, &team).await {
            tracing::warn!(team = %team, error = %err, "checking usage alerts failed");
        }
    });
}

/// Records the alerts a billing or plan change made pass before its answer, so that the alerts
/// list read right after it shows them; a failure is logged (the change itself stands, and the
/// minute's check records them later).
pub async fn check_alerts_before_answering(state: &AppState, team: &str) {
    if let Err(err) = check_alerts_now(state, team).await {
        tracing::warn!(team = %team, error = %err, "checking usage alerts failed");
    }
}

/// Records the alerts a team's usage has crossed this period (each once) and delivers the new
/// ones to the team's webhook in the background.
pub async fn check_alerts_now(state: &AppState, team: &str) -> Result<(), crate::ApiError> {
    // The ledger decided which thresholds were crossed as it charged; this only records and
    // delivers them. Older periods' alerts were delivered when those periods were current.
    let periods = state.ledger.periods(team).await?;
    for usage in periods.iter().rev().take(ALERT_PERIODS_CHECKED) {
        let period_start = usage.period.start;
        for alert in usage.alerts_fired() {
            let (name, detail) = match *alert {
                // The allowance is in the name: after a plan change to another allowance, its
                // thresholds are new alerts of the same period.
                Alert::IncludedPercent { percent, of } => (format!("included_{percent}_of_{}", of.0), json!({"percent": percent, "included": of.0, "used": usage.used().0})),
                Alert::PaygAmount(amount) => (format!("payg_{amount}"), json!({"threshold_usd": amount.to_string(), "payg_amount_usd": usage.payg_amount().to_string()})),
            };
            // Already recorded by this node: no need to ask the database again.
            let fired = (team.to_owned(), name.clone(), period_start.as_millisecond());
            if state.alerts_fired.get(&fired).is_some() {
                continue;
            }
            state.alerts_fired.insert(fired, ());
            let (team_name, kind) = (team.to_owned(), name.clone());
            let Some((id, payload)) = state.catalog.call(move |connection| catalog::insert_alert(connection, &team_name, &kind, period_start, &detail)).await? else { continue };
            tracing::info!(team = %team, alert = %name, "usage alert crossed");
            tokio::spawn(deliver(state.clone(), team.to_owned(), id, payload));
        }
    }
    Ok(())
}

/// The header an alert delivery's signature travels in.
pub const SIGNATURE_HEADER: &str = "x-flowcredits-signature";

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the team's signing secret: a
/// receiver recomputes it over the body it got, and may refuse an old `t` (a replay).
pub fn signature(secret: &str, at: Timestamp, body: &str) -> String {
    let seconds = at.as_second();
    format!("t={seconds},v1={}", crate::auth::hmac_sha256_hex(secret.as_bytes(), format!("{seconds}.{body}").as_bytes()))
}

/// Posts an alert to the team's webhook, retrying with waits ([`ALERT_RETRY_WAITS`]); every
/// attempt is recorded. What still fails is tried again later by [`retry_alerts`].
async fn deliver(state: AppState, team: String, id: String, payload: Value) {
    let body = payload.to_string();
    for (attempt, wait) in std::iter::once(Duration::ZERO).chain(ALERT_RETRY_WAITS).enumerate() {
        tokio::time::sleep(wait).await;
        match attempt_delivery(&state, &team, &id, &body).await {
            Delivery::Done | Delivery::Refused => return,
            Delivery::Failed(error) if attempt < ALERT_RETRY_WAITS.len() => tracing::warn!(team = %team, alert = %id, error = %error, "alert delivery failed; retrying"),
            Delivery::Failed(error) => tracing::warn!(team = %team, alert = %id, error = %error, "alert delivery failed; it is tried again later, less and less often"),
        }
    }
}

/// Most delivery attempts of one alert: the first few seconds' and then the later ones'.
pub const ALERT_ATTEMPTS_MAX: u32 = 12;
/// The wait before the first later attempt; each next one waits twice as long (about 21 hours
/// in all).
const ALERT_LATER_WAIT_FIRST: Duration = Duration::from_secs(5 * 60);

/// Tries once more each alert whose deliveries all failed and whose wait has passed: 5 minutes
/// after the first few attempts, then 10, 20, … until [`ALERT_ATTEMPTS_MAX`]. A webhook that
/// was down for a while still gets the alert; one refused outright is not retried.
pub async fn retry_alerts(state: &AppState, now: Timestamp) -> Result<usize, crate::ApiError> {
    let first_later = ALERT_RETRY_WAITS.len() as u32 + 1;
    let due = state.catalog.call(move |connection| catalog::alerts_to_retry(connection, now.as_millisecond(), first_later, ALERT_ATTEMPTS_MAX, ALERT_LATER_WAIT_FIRST.as_millis() as i64)).await?;
    let count = due.len();
    // Together: one webhook's timeout does not delay the others' attempts.
    futures_util::future::join_all(due.into_iter().map(|(id, team, body)| async move {
        if let Delivery::Failed(error) = attempt_delivery(state, &team, &id, &body).await {
            tracing::warn!(team = %team, alert = %id, error = %error, "a later alert delivery failed");
        }
    }))
    .await;
    Ok(count)
}

enum Delivery {
    Done,
    /// The URL is one this server may not call: trying again would change nothing.
    Refused,
    Failed(String),
}

/// One signed POST of an alert's body to the team's webhook, recorded as an attempt.
async fn attempt_delivery(state: &AppState, team: &str, id: &str, body: &str) -> Delivery {
    let name = team.to_owned();
    let webhook = match state.catalog.call(move |connection| catalog::alert_webhook(connection, &name)).await {
        Ok(webhook) => webhook,
        Err(err) => return Delivery::Failed(format!("the team's webhook could not be read: {err}")),
    };
    // A team without a webhook is told nothing: its alerts are listed in the API.
    let Some(catalog::AlertWebhook { url, signing_secret }) = webhook else { return Delivery::Refused };
    let (outcome, error) = match state.http.refusal(&url) {
        Some(reason) => (Delivery::Refused, Some(format!("the webhook was not called: {reason}"))),
        None => {
            let mut request = state.http.client.post(&url).timeout(ALERT_DELIVERY_TIMEOUT).header("content-type", "application/json");
            if let Some(secret) = &signing_secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, Timestamp::now(), body));
            }
            match request.body(body.to_owned()).send().await {
                Ok(response) if response.status().is_success() => (Delivery::Done, None),
                Ok(response) => {
                    let error = format!("the webhook answered {}", response.status());
                    (Delivery::Failed(error.clone()), Some(error))
                }
                Err(err) => {
                    let reason = flowcredits_engine::http::describe(&err);
                    // A name that resolves to no address this server may call is refused, as
                    // an address written in the URL is: trying again changes nothing.
                    if reason.contains(flowcredits_engine::http::NO_PUBLIC_ADDRESS) {
                        (Delivery::Refused, Some(format!("the webhook was not called: {reason}")))
                    } else {
                        let error = format!("the webhook could not be reached: {reason}");
                        (Delivery::Failed(error.clone()), Some(error))
                    }
                }
            }
        }
    };
    if let Delivery::Refused = outcome {
        tracing::warn!(team = %team, alert = %id, error = ?error, "alert not delivered; its webhook URL is refused");
    }
    let alert_id = id.to_owned();
    if let Err(err) = state.catalog.call(move |connection| catalog::record_alert_attempt(connection, &alert_id, error.as_deref())).await {
        tracing::warn!(alert = %id, error = %err, "recording an alert delivery failed");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    /// Paused runs are resumed on the first tick past 00:00 UTC, when periods begin, not up to
    /// a minute later; ticks within a day do not look.
    #[test]
    fn only_ticks_that_cross_midnight_utc_look_for_new_periods() {
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        assert!(periods_may_have_begun(at("2026-03-31T23:59:59.600Z"), at("2026-04-01T00:00:00.600Z")));
        assert!(periods_may_have_begun(at("2026-03-31T23:59:59Z"), at("2026-04-01T00:00:00Z")));
        assert!(!periods_may_have_begun(at("2026-04-01T00:00:00Z"), at("2026-04-01T00:00:01Z")));
        assert!(!periods_may_have_begun(at("2026-04-01T11:59:59Z"), at("2026-04-01T12:00:00Z")));
        // A tick late by more than a day still crosses.
        assert!(periods_may_have_begun(at("2026-04-01T23:00:00Z"), at("2026-04-03T01:00:00Z")));
    }
    use crate::catalog::Deployment;
    use crate::history::RunState;

    /// 24 evaluate executions in a loop and a validate: 25 credits per automated run.
    fn flow_costing_25() -> Value {
        json!({
            "name": "tick",
            "blocks": [
                {"id": "loop", "kind": "repeat", "config": {"times": 24}},
                {"id": "double", "kind": "evaluate", "config": {"code": "return input * 2;"}},
                {"id": "check", "kind": "validate", "config": {"schema": {"type": "number"}}}
            ],
            "edges": [{"from": "loop.index", "to": "double.input"}, {"from": "loop.done", "to": "check.value"}]
        })
    }

    async fn runs_by_state(state: &AppState) -> Vec<RunState> {
        let page = catalog::PageRequest { after: None, limit: 100 };
        let runs = state.history.read(&state.catalog, move |connection| history::runs(connection, "acme", &history::RunFilter::default(), &page)).await.unwrap();
        runs.items.into_iter().map(|run| run.status).collect()
    }

    async fn wait_until_finished(state: &AppState) {
        for _ in 0..400 {
            if runs_by_state(state).await.iter().all(|run| *run != RunState::Running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("scheduled runs did not finish");
    }

    /// A fresh server state with team `acme` on `plan` (and an owner), and the flow above
    /// deployed at `tick` on the schedule given.
    async fn deployed_on_schedule(plan: flowcredits_core::PlanId, runs_on: catalog::RunsOn, schedule_every_s: Option<u32>, schedule_cron: Option<&str>) -> (tempfile::TempDir, AppState, Deployment) {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::serve::open_state(&dir.path().join("db"), flowcredits_core::Rules::shipped()).unwrap();
        state.ledger.create_team("acme", plan, flowcredits_core::AnchorDay::FIRST, "test").await.unwrap();
        let schedule_cron = schedule_cron.map(str::to_owned);
        let deployment = state
            .catalog
            .call(move |connection| {
                let user = catalog::create_user(connection, "owner", false)?;
                catalog::set_member(connection, "acme", &user.id, Role::Owner)?;
                let flow = catalog::create_flow(connection, "acme", "tick", &flow_costing_25())?;
                let snapshot = catalog::create_snapshot(connection, "acme", &flow.id, None)?;
                let deployment = Deployment { id: catalog::new_id("dep"), team: "acme".into(), path: "tick".into(), flow_id: flow.id, snapshot: snapshot.number, trigger: "api".into(), schedule_every_s, schedule_cron, runs_on, created_at: String::new() };
                catalog::create_deployment(connection, &deployment, catalog::now_ms())?;
                Ok(deployment)
            })
            .await
            .unwrap();
        (dir, state, deployment)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_due_schedule_of_a_private_deployment_queues_a_job_instead_of_running_here() {
        let (_dir, state, deployment) = deployed_on_schedule(flowcredits_core::PlanId::Enterprise, catalog::RunsOn::Private, Some(60), None).await;
        let now = Timestamp::now();
        let mut next_due = HashMap::from([(schedule_key(&deployment), now)]);
        run_due_schedules(&state, &mut next_due, now).await.unwrap();
        let page = catalog::PageRequest { after: None, limit: 10 };
        let runs = state.catalog.call(move |connection| history::runs(connection, "acme", &history::RunFilter::default(), &page)).await.unwrap();
        assert_eq!(runs.items.len(), 1);
        let run = &runs.items[0];
        assert_eq!((run.status, run.location.as_str(), run.trigger.as_str()), (RunState::Running, "private", "api"), "{run:?}");
        let queued: i64 = state.catalog.call(|connection| Ok(connection.query_row("SELECT COUNT(*) FROM runner_jobs", [], |row| row.get(0))?)).await.unwrap();
        assert_eq!((queued, state.runner.in_flight()), (1, 0), "queued for a runner, not executed here");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_schedules_run_and_a_team_out_of_credits_keeps_one_paused_run_per_schedule() {
        let (_dir, state, deployment) = deployed_on_schedule(flowcredits_core::PlanId::Team, catalog::RunsOn::Cloud, Some(60), None).await;
        let mut next_due = HashMap::new();
        // First sight of a schedule: due one period from now, nothing runs yet.
        let now = Timestamp::now();
        run_due_schedules(&state, &mut next_due, now).await.unwrap();
        assert!(runs_by_state(&state).await.is_empty());
        let due = next_due[&schedule_key(&deployment)];
        assert!(due > now && due <= now.checked_add(jiff::SignedDuration::from_secs(60)).unwrap(), "the next minute-step: {due}");

        // Four due ticks use the 100 included credits.
        for _ in 0..4 {
            next_due.insert(schedule_key(&deployment), now);
            run_due_schedules(&state, &mut next_due, now).await.unwrap();
            wait_until_finished(&state).await;
        }
        assert_eq!(runs_by_state(&state).await, vec![RunState::Succeeded; 4]);
        // Not due again until its period passes.
        run_due_schedules(&state, &mut next_due, now).await.unwrap();
        assert_eq!(runs_by_state(&state).await.len(), 4);

        // Out of credits: the next tick pauses a run; later ticks add no more paused runs.
        for _ in 0..3 {
            next_due.insert(schedule_key(&deployment), now);
            run_due_schedules(&state, &mut next_due, now).await.unwrap();
        }
        let states = runs_by_state(&state).await;
        assert_eq!(states.iter().filter(|run| **run == RunState::Paused).count(), 1, "{states:?}");
        assert_eq!(states.len(), 5);
    }

    #[test]
    fn an_interval_counts_from_the_deployment_not_from_the_last_start() {
        let deployment = |created_at: &str| Deployment { id: "dep_1".into(), team: "acme".into(), path: "tick".into(), flow_id: "flw_1".into(), snapshot: 1, trigger: "api".into(), schedule_every_s: Some(60), schedule_cron: None, runs_on: catalog::RunsOn::Cloud, created_at: created_at.into() };
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let made = deployment("2026-03-02T10:00:20Z");
        // A server started at any moment finds the same next minute-step: restarts do not
        // push it back.
        for (now, next) in [("2026-03-02T10:05:30Z", "2026-03-02T10:06:20Z"), ("2026-03-02T10:06:19.999Z", "2026-03-02T10:06:20Z"), ("2026-03-02T10:06:20Z", "2026-03-02T10:07:20Z"), ("2026-03-02T10:00:00Z", "2026-03-02T10:00:20Z")] {
            assert_eq!(next_run(&made, at(now)), Some(at(next)), "after {now}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cron_schedule_runs_at_the_minutes_it_names() {
        let (_dir, state, deployment) = deployed_on_schedule(flowcredits_core::PlanId::Team, catalog::RunsOn::Cloud, None, Some("0 9 * * 1-5")).await;
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let mut next_due = HashMap::new();
        // Friday 2026-03-06, 08:30 UTC: first sight, due at 09:00.
        run_due_schedules(&state, &mut next_due, at("2026-03-06T08:30:00Z")).await.unwrap();
        assert_eq!(next_due[&schedule_key(&deployment)], at("2026-03-06T09:00:00Z"));
        run_due_schedules(&state, &mut next_due, at("2026-03-06T08:59:59Z")).await.unwrap();
        assert!(runs_by_state(&state).await.is_empty(), "not due yet");
        run_due_schedules(&state, &mut next_due, at("2026-03-06T09:00:00Z")).await.unwrap();
        wait_until_finished(&state).await;
        assert_eq!(runs_by_state(&state).await, vec![RunState::Succeeded]);
        // Next: Monday, past the weekend.
        assert_eq!(next_due[&schedule_key(&deployment)], at("2026-03-09T09:00:00Z"));
        run_due_schedules(&state, &mut next_due, at("2026-03-07T09:00:00Z")).await.unwrap();
        assert_eq!(runs_by_state(&state).await.len(), 1, "Saturday runs nothing");
    }

    /// An alert whose first attempts all failed is tried again later, less and less often,
    /// and stops once delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undelivered_alerts_are_tried_again_later_with_growing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::serve::open_state_with(&dir.path().join("db"), flowcredits_core::Rules::shipped(), flowcredits_engine::http::Destinations::Any).unwrap();
        // A receiver that is down (503) until told otherwise, counting what it got.
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (up_seen, got_seen) = (std::sync::Arc::clone(&up), std::sync::Arc::clone(&got));
        let receiver = axum::Router::new().route("/alerts", axum::routing::post(move || {
            let (up, got) = (std::sync::Arc::clone(&up_seen), std::sync::Arc::clone(&got_seen));
            async move {
                got.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if up.load(std::sync::atomic::Ordering::SeqCst) { axum::http::StatusCode::NO_CONTENT } else { axum::http::StatusCode::SERVICE_UNAVAILABLE }
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, receiver).into_future());
        let detail = json!({"percent": 75});
        let (id, _) = state
            .catalog
            .call(move |connection| {
                catalog::set_alert_webhook(connection, "acme", Some(&url))?;
                let inserted = catalog::insert_alert(connection, "acme", "included_75_of_100", Timestamp::now(), &detail)?.expect("a new alert");
                // As if its first attempts had all failed, the last one just now.
                connection.execute("UPDATE alert_deliveries SET attempts = 4, last_attempt_ms = ?2 WHERE id = ?1", rusqlite::params![inserted.0, Timestamp::now().as_millisecond()])?;
                Ok(inserted)
            })
            .await
            .unwrap();
        let later = |minutes: i64| Timestamp::now().checked_add(jiff::SignedDuration::from_mins(minutes)).unwrap();
        assert_eq!(retry_alerts(&state, later(4)).await.unwrap(), 0, "not before 5 minutes");
        assert_eq!(retry_alerts(&state, later(6)).await.unwrap(), 1, "tried again after 5 minutes");
        assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Attempts are stamped with the real time: the next is due 10 minutes after it.
        assert_eq!(retry_alerts(&state, later(9)).await.unwrap(), 0, "the next wait is 10 minutes");
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(retry_alerts(&state, later(11)).await.unwrap(), 1);
        assert_eq!(retry_alerts(&state, later(24 * 60)).await.unwrap(), 0, "delivered: never again");
        let page = catalog::PageRequest { after: None, limit: 10 };
        let listed = state.catalog.call(move |connection| catalog::alerts(connection, "acme", &page)).await.unwrap();
        let alert = listed.items.iter().find(|alert| alert.id == id).unwrap();
        assert_eq!((alert.attempts, alert.delivered_at.is_some(), alert.last_error.clone()), (6, true, None), "{alert:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_schedule_is_followed_from_the_next_tick() {
        let (_dir, state, mut deployment) = deployed_on_schedule(flowcredits_core::PlanId::Team, catalog::RunsOn::Cloud, None, Some("0 9 * * 1-5")).await;
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let mut next_due = HashMap::new();
        run_due_schedules(&state, &mut next_due, at("2026-03-06T08:30:00Z")).await.unwrap();
        assert_eq!(next_due.values().copied().collect::<Vec<_>>(), [at("2026-03-06T09:00:00Z")]);
        // Every two minutes instead (as `PATCH` stores it): due at the next two-minute step
        // (counted from when it was deployed) after the change is seen.
        (deployment.schedule_every_s, deployment.schedule_cron) = (Some(120), None);
        let changed = deployment.clone();
        state.catalog.call(move |connection| catalog::update_deployment(connection, &changed)).await.unwrap();
        run_due_schedules(&state, &mut next_due, at("2026-03-06T08:31:00Z")).await.unwrap();
        let due: Vec<Timestamp> = next_due.values().copied().collect();
        assert!(due.len() == 1 && due[0] > at("2026-03-06T08:31:00Z") && due[0] <= at("2026-03-06T08:33:00Z"), "the old schedule is forgotten: {due:?}");
        run_due_schedules(&state, &mut next_due, at("2026-03-06T08:33:00Z")).await.unwrap();
        wait_until_finished(&state).await;
        assert_eq!(runs_by_state(&state).await, vec![RunState::Succeeded]);
        // Unscheduled: nothing is due any more.
        (deployment.schedule_every_s, deployment.schedule_cron) = (None, None);
        state.catalog.call(move |connection| catalog::update_deployment(connection, &deployment)).await.unwrap();
        run_due_schedules(&state, &mut next_due, at("2026-03-06T09:00:00Z")).await.unwrap();
        assert!(next_due.is_empty(), "{next_due:?}");
        assert_eq!(runs_by_state(&state).await.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_runs_past_the_retention_leave_history_and_paused_runs_stay() {
        let (_dir, mut state, deployment) = deployed_on_schedule(flowcredits_core::PlanId::Team, catalog::RunsOn::Cloud, Some(60), None).await;
        let now = Timestamp::now();
        let mut next_due = HashMap::new();
        // Four runs use the 100 included credits; the fifth pauses.
        for _ in 0..5 {
            next_due.insert(schedule_key(&deployment), now);
            run_due_schedules(&state, &mut next_due, now).await.unwrap();
            wait_until_finished(&state).await;
        }
        let mut expected = vec![RunState::Succeeded; 4];
        expected.insert(0, RunState::Paused);
        assert_eq!(runs_by_state(&state).await, expected, "newest first");
        assert_eq!(prune_history(&state, now).await.unwrap(), 0, "no retention: history is kept");
        state.history_retention = Some(Duration::from_secs(90 * 24 * 3600));
        assert_eq!(prune_history(&state, now).await.unwrap(), 0, "nothing is 90 days old yet");
        let later = now.checked_add(jiff::SignedDuration::from_hours(100 * 24)).unwrap();
        assert_eq!(prune_history(&state, later).await.unwrap(), 4);
        assert_eq!(runs_by_state(&state).await, vec![RunState::Paused], "a paused run stays whatever its age");
        let blocks: i64 = state.catalog.call(|connection| Ok(connection.query_row("SELECT COUNT(*) FROM run_history_batches", [], |row| row.get(0))?)).await.unwrap();
        assert_eq!(blocks, 0, "the pruned runs' blocks went with them");
    }
}
