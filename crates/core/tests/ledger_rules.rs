//! The ledger's rules, one behaviour per test: draw-down order, admission, pausing and resuming,
//! pay-as-you-go and its cap, purchases, alerts, plan changes and refusals.

use flowcredits_core::ledger::PAUSED_RUNS_MAX;
use flowcredits_core::{Alert, BlockKind, BlockUsage, CloudRun, Command, CoreError, Credits, ExecutionId, LedgerEvent, MicroUsd, PlanId, RunContext, RunId, RunStatus, Rules, TeamLedger, TeamSettings, Timestamp, Trigger};

struct Team {
    rules: Rules,
    ledger: TeamLedger,
    executions: u64,
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn run(id: &str) -> RunId {
    RunId::new(id).unwrap()
}

impl Team {
    fn new(plan: PlanId) -> Team {
        Team { rules: Rules::shipped(), ledger: TeamLedger::new(TeamSettings::new(plan)), executions: 0 }
    }

    fn step(&mut self, at: &str, command: Command) -> Result<Vec<LedgerEvent>, CoreError> {
        let at = ts(at);
        let mut events = self.ledger.advance_to(&self.rules, at)?;
        events.extend(self.ledger.apply(&self.rules, at, command)?);
        Ok(events)
    }

    fn start(&mut self, at: &str, id: &str) -> RunStatus {
        let command = Command::StartRun { run: run(id), context: RunContext::automated(Trigger::Api).unwrap(), needs_credits: true };
        self.step(at, command).unwrap();
        self.status(id)
    }

    /// Charges an integration block (2 credits anywhere) `times` times.
    fn charge(&mut self, at: &str, id: &str, times: usize) -> Vec<LedgerEvent> {
        let mut events = Vec::new();
        for _ in 0..times {
            self.executions += 1;
            let execution = ExecutionId::new(format!("e{}", self.executions)).unwrap();
            events.extend(self.step(at, Command::ChargeBlock { run: run(id), execution, usage: BlockUsage::of_kind(BlockKind::Integration) }).unwrap());
        }
        events
    }

    fn status(&self, id: &str) -> RunStatus {
        self.ledger.run(&run(id)).unwrap().status
    }

    fn period(&self) -> &flowcredits_core::PeriodUsage {
        self.ledger.current_period().unwrap()
    }
}

fn charges(events: &[LedgerEvent]) -> Vec<&flowcredits_core::ChargeSplit> {
    events.iter().filter_map(|event| if let LedgerEvent::BlockCharged(charge) = event { Some(&charge.split) } else { None }).collect()
}

#[test]
fn charges_draw_included_then_purchased_by_earliest_expiry_then_payg() {
    let mut team = Team::new(PlanId::Enterprise);
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 249); // 498 of the 500 included
    team.step("2026-03-03T00:00:00Z", Command::Purchase { credits: Credits(3), expires_at: Some(ts("2026-06-01T00:00:00Z")) }).unwrap();
    team.step("2026-03-03T00:00:00Z", Command::Purchase { credits: Credits(2), expires_at: None }).unwrap(); // ends with the period: first
    team.step("2026-03-03T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    let events = team.charge("2026-03-04T00:00:00Z", "r1", 4);
    let splits = charges(&events);
    assert_eq!((splits[0].included, splits[0].purchased.clone()), (Credits(2), vec![]));
    assert_eq!(splits[1].purchased, vec![(2, Credits(2))], "the grant expiring first is drawn first");
    assert_eq!(splits[2].purchased, vec![(1, Credits(2))]);
    assert_eq!((splits[3].purchased.clone(), splits[3].payg), (vec![(1, Credits(1))], Credits(1)));
    let period = team.period();
    assert_eq!((period.included_used, period.purchased_used, period.payg_credits, period.unbilled_credits), (Credits(500), Credits(5), Credits(1), Credits(0)));
    assert_eq!(period.payg_amount().to_string(), "0.001");
}

#[test]
fn a_free_team_at_its_limit_finishes_running_runs_and_pauses_new_ones() {
    let mut team = Team::new(PlanId::Free);
    assert_eq!(team.start("2026-03-02T00:00:00Z", "r1"), RunStatus::Running);
    team.charge("2026-03-02T00:00:01Z", "r1", 12); // 24 of 25
    assert_eq!(team.start("2026-03-02T00:00:02Z", "r2"), RunStatus::Running, "one credit left is credits left");
    team.charge("2026-03-02T00:00:03Z", "r1", 2); // the run already running goes past the limit
    let period = team.period();
    assert_eq!((period.included_used, period.unbilled_credits, period.payg_credits), (Credits(25), Credits(3), Credits(0)));
    assert_eq!(team.start("2026-03-02T00:00:04Z", "r3"), RunStatus::Paused);
    // A paused run is never charged.
    let refused = team.step("2026-03-02T00:00:05Z", Command::ChargeBlock { run: run("r3"), execution: ExecutionId::new("x").unwrap(), usage: BlockUsage::of_kind(BlockKind::Integration) });
    assert_eq!(refused.unwrap_err().to_string(), "run r3 is paused");
    // A run that needs no credits always starts.
    let free_run = Command::StartRun { run: run("r4"), context: RunContext::manual(CloudRun::Off), needs_credits: false };
    team.step("2026-03-02T00:00:06Z", free_run).unwrap();
    assert_eq!(team.status("r4"), RunStatus::Running);
    // Free has no pay-as-you-go and cannot buy credits.
    assert_eq!(team.step("2026-03-02T00:00:07Z", Command::SetPayg { enabled: true }).unwrap_err().to_string(), "plan free has no pay-as-you-go");
    assert_eq!(team.step("2026-03-02T00:00:07Z", Command::Purchase { credits: Credits(10), expires_at: None }).unwrap_err().to_string(), "plan free cannot buy credits");
}

#[test]
fn past_the_most_paused_runs_a_run_that_would_wait_is_refused_and_changes_nothing() {
    let mut team = Team::new(PlanId::Free);
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 13); // past the 25 included
    for n in 0..PAUSED_RUNS_MAX {
        assert_eq!(team.start("2026-03-02T00:00:01Z", &format!("p{n}")), RunStatus::Paused);
    }
    let seq_before = team.ledger.next_run_seq();
    let one_more = Command::StartRun { run: run("late"), context: RunContext::automated(Trigger::Api).unwrap(), needs_credits: true };
    let refused = team.step("2026-03-02T00:00:02Z", one_more.clone()).unwrap_err();
    assert_eq!(refused, CoreError::TooManyPausedRuns { max: PAUSED_RUNS_MAX });
    assert!(refused.to_string().starts_with("the team already has 10000 runs waiting for credits"), "{refused}");
    assert!(team.ledger.run(&run("late")).is_none());
    assert_eq!((team.ledger.next_run_seq(), team.ledger.paused_runs().count()), (seq_before, PAUSED_RUNS_MAX));
    // A run that needs no credits is not one that waits: it starts.
    let free_run = Command::StartRun { run: run("free"), context: RunContext::manual(CloudRun::Off), needs_credits: false };
    team.step("2026-03-02T00:00:03Z", free_run).unwrap();
    assert_eq!(team.status("free"), RunStatus::Running);
    // A cancelled waiting run makes room for one more.
    team.step("2026-03-02T00:00:04Z", Command::CancelRun { run: run("p0") }).unwrap();
    team.step("2026-03-02T00:00:05Z", one_more).unwrap();
    assert_eq!(team.status("late"), RunStatus::Paused);
}

/// Charges taken back to a savepoint leave the ledger as it was, alerts and grants included;
/// no savepoint is given when the charges could open the next period.
#[test]
fn charges_rolled_back_to_a_savepoint_leave_the_ledger_as_it_was() {
    let mut team = Team::new(PlanId::Enterprise);
    team.step("2026-03-02T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.step("2026-03-02T00:00:00Z", Command::Purchase { credits: Credits(30), expires_at: None }).unwrap();
    team.start("2026-03-02T00:00:00Z", "r1");
    team.start("2026-03-02T00:00:00Z", "r2");
    team.charge("2026-03-02T00:00:01Z", "r1", 180); // 360 of the 500 included, past 75%
    let (clock, usage, grants) = (team.ledger.clock(), team.period().clone(), team.ledger.grants().to_vec());
    let savepoint = team.ledger.charge_savepoint([&run("r1"), &run("r2")], ts("2026-03-20T00:00:00Z")).unwrap();
    // Past the included credits, through the grant, into pay-as-you-go, firing the 100% alert.
    let events = [team.charge("2026-03-03T00:00:00Z", "r1", 60), team.charge("2026-03-04T00:00:00Z", "r2", 30)].concat();
    assert!(events.iter().any(|event| matches!(event, LedgerEvent::AlertCrossed { alert: Alert::IncludedPercent { percent: 100, .. }, .. })));
    assert!(team.period().payg_credits > Credits(0) && team.ledger.grants()[0].remaining == Credits(0));
    team.ledger.roll_back_charges(savepoint);
    assert_eq!((team.ledger.clock(), team.period(), team.ledger.grants()), (clock, &usage, &grants[..]));
    assert_eq!((team.ledger.run(&run("r1")).unwrap().credits, team.ledger.run(&run("r2")).unwrap().credits), (Credits(360), Credits(0)));
    // The same charges again give the same events: nothing of them was left behind.
    let again = [team.charge("2026-03-03T00:00:00Z", "r1", 60), team.charge("2026-03-04T00:00:00Z", "r2", 30)].concat();
    assert_eq!(charges(&again), charges(&events));
    // Charges that may reach the next period (April 1st) get no savepoint.
    assert!(team.ledger.charge_savepoint([&run("r1")], ts("2026-04-01T00:00:00Z")).is_none());
}

#[test]
fn paused_runs_resume_oldest_first_when_payg_is_turned_on() {
    let mut team = Team::new(PlanId::Solo);
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 25); // all 50
    for id in ["p1", "p2", "p3"] {
        assert_eq!(team.start("2026-03-02T00:00:01Z", id), RunStatus::Paused);
    }
    team.step("2026-03-02T00:00:02Z", Command::CancelRun { run: run("p2") }).unwrap();
    let events = team.step("2026-03-02T00:00:03Z", Command::SetPayg { enabled: true }).unwrap();
    let resumed: Vec<String> = events.iter().filter_map(|event| if let LedgerEvent::RunResumed { run, .. } = event { Some(run.to_string()) } else { None }).collect();
    assert_eq!(resumed, ["p1", "p3"]);
    assert_eq!(team.status("p2"), RunStatus::Cancelled);
    // Cancelling twice, or a completed run, is refused.
    assert_eq!(team.step("2026-03-02T00:00:04Z", Command::CancelRun { run: run("p2") }).unwrap_err().to_string(), "run p2 is cancelled");
    team.step("2026-03-02T00:00:04Z", Command::EndRun { run: run("p1") }).unwrap();
    assert_eq!(team.step("2026-03-02T00:00:05Z", Command::CancelRun { run: run("p1") }).unwrap_err().to_string(), "run p1 is completed");
}

#[test]
fn a_new_period_restores_included_credits_and_resumes_paused_runs_at_its_start() {
    let mut team = Team::new(PlanId::Team);
    team.start("2026-03-30T00:00:00Z", "r1");
    team.charge("2026-03-30T00:00:00Z", "r1", 50);
    assert_eq!(team.start("2026-03-31T00:00:00Z", "p1"), RunStatus::Paused);
    let events = team.ledger.advance_to(&team.rules, ts("2026-04-01T08:00:00Z")).unwrap();
    assert!(matches!(&events[0], LedgerEvent::PeriodOpened { included, .. } if *included == Credits(100)));
    assert!(matches!(&events[1], LedgerEvent::RunResumed { run, at } if run.as_str() == "p1" && *at == ts("2026-04-01T00:00:00Z")));
    // The old period keeps its usage; nothing carries over.
    let periods: Vec<_> = team.ledger.periods().map(|usage| (usage.included_used, usage.included)).collect();
    assert_eq!(periods, [(Credits(100), Credits(100)), (Credits(0), Credits(100))]);
}

#[test]
fn the_payg_cap_bounds_billing_and_admission() {
    let mut team = Team::new(PlanId::Team);
    team.step("2026-03-02T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.step("2026-03-02T00:00:00Z", Command::SetPaygCap { cap: Some(MicroUsd::parse_usd("0.005").unwrap()) }).unwrap();
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 53); // 106: 100 included, 5 payg (the cap), 1 unbilled
    let period = team.period();
    assert_eq!((period.payg_credits, period.unbilled_credits), (Credits(5), Credits(1)));
    assert_eq!(period.payg_amount().to_string(), "0.005");
    assert_eq!(team.start("2026-03-02T00:00:01Z", "r2"), RunStatus::Paused, "a reached cap is out of credits");
    let events = team.step("2026-03-02T00:00:02Z", Command::SetPaygCap { cap: None }).unwrap();
    assert!(events.iter().any(|event| matches!(event, LedgerEvent::RunResumed { run, .. } if run.as_str() == "r2")));
}

#[test]
fn purchased_credits_expire() {
    let mut team = Team::new(PlanId::Enterprise);
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 250);
    team.step("2026-03-03T00:00:00Z", Command::Purchase { credits: Credits(10), expires_at: Some(ts("2026-03-10T00:00:00Z")) }).unwrap();
    assert_eq!(team.start("2026-03-09T23:59:59Z", "r2"), RunStatus::Running);
    assert_eq!(team.start("2026-03-10T00:00:00Z", "r3"), RunStatus::Paused, "the grant expired unused");
    let split = charges(&team.charge("2026-03-10T00:00:00Z", "r1", 1))[0].clone();
    assert_eq!((split.purchased_total(), split.unbilled), (Credits(0), Credits(2)));
    let past = team.step("2026-03-11T00:00:00Z", Command::Purchase { credits: Credits(1), expires_at: Some(ts("2026-03-11T00:00:00Z")) });
    assert!(past.unwrap_err().to_string().contains("must expire after"));
    let zero = team.step("2026-03-11T00:00:00Z", Command::Purchase { credits: Credits(0), expires_at: None });
    assert!(zero.unwrap_err().to_string().contains("credits is 0"));
}

#[test]
fn alerts_fire_once_per_period_at_75_and_100_percent_and_at_payg_amounts() {
    let mut team = Team::new(PlanId::Team);
    team.step("2026-03-01T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.step("2026-03-01T00:00:00Z", Command::SetPaygAlerts { amounts: vec![MicroUsd(4_000), MicroUsd(2_000)] }).unwrap();
    team.start("2026-03-01T00:00:00Z", "r1");
    let alerts = |events: Vec<LedgerEvent>| -> Vec<Alert> { events.into_iter().filter_map(|event| if let LedgerEvent::AlertCrossed { alert, .. } = event { Some(alert) } else { None }).collect() };
    assert_eq!(alerts(team.charge("2026-03-02T00:00:00Z", "r1", 37)), []); // 74
    assert_eq!(alerts(team.charge("2026-03-02T00:00:00Z", "r1", 1)), [Alert::IncludedPercent { percent: 75, of: Credits(100) }]); // 76
    assert_eq!(alerts(team.charge("2026-03-02T00:00:00Z", "r1", 12)), [Alert::IncludedPercent { percent: 100, of: Credits(100) }]); // 100
    assert_eq!(alerts(team.charge("2026-03-02T00:00:00Z", "r1", 1)), [Alert::PaygAmount(MicroUsd(2_000))]); // $0.002
    assert_eq!(alerts(team.charge("2026-03-02T00:00:00Z", "r1", 3)), [Alert::PaygAmount(MicroUsd(4_000))]); // $0.008
    assert_eq!(alerts(team.charge("2026-03-03T00:00:00Z", "r1", 10)), []);
    // Spending is $0.028 now: amounts already passed fire when they are set (once), a higher one
    // when it is reached.
    let set = |amounts: Vec<u64>| Command::SetPaygAlerts { amounts: amounts.into_iter().map(MicroUsd).collect() };
    assert_eq!(alerts(team.step("2026-03-03T00:00:00Z", set(vec![10_000, 4_000, 28_000, 30_000])).unwrap()), [Alert::PaygAmount(MicroUsd(10_000)), Alert::PaygAmount(MicroUsd(28_000))]);
    assert_eq!(alerts(team.step("2026-03-03T00:00:00Z", set(vec![10_000, 28_000, 30_000])).unwrap()), []);
    assert_eq!(alerts(team.charge("2026-03-03T00:00:00Z", "r1", 1)), [Alert::PaygAmount(MicroUsd(30_000))]);
    // A new period fires again.
    assert_eq!(alerts(team.charge("2026-04-02T00:00:00Z", "r1", 38)), [Alert::IncludedPercent { percent: 75, of: Credits(100) }]);
}

#[test]
fn a_smaller_allowance_already_used_fires_its_alerts_at_the_plan_change() {
    let mut team = Team::new(PlanId::Team);
    team.start("2026-03-01T00:00:00Z", "r1");
    team.charge("2026-03-01T00:00:00Z", "r1", 10);
    let alerts = |events: &[LedgerEvent]| events.iter().filter_map(|event| if let LedgerEvent::AlertCrossed { alert, .. } = event { Some(*alert) } else { None }).collect::<Vec<_>>();
    // 20 of Team's 100 credits: no alert. On Free, the same 20 are 80% of 25.
    let events = team.step("2026-03-02T00:00:00Z", Command::ChangePlan { plan: PlanId::Free }).unwrap();
    assert_eq!(alerts(&events), [Alert::IncludedPercent { percent: 75, of: Credits(25) }]);
    let events = team.charge("2026-03-02T00:00:00Z", "r1", 3);
    assert_eq!(alerts(&events), [Alert::IncludedPercent { percent: 100, of: Credits(25) }], "26 of 25: the running run finishes and the 100% alert fires");
    // Back up and down again within the period: each alert fired once already.
    team.step("2026-03-03T00:00:00Z", Command::ChangePlan { plan: PlanId::Team }).unwrap();
    let events = team.step("2026-03-04T00:00:00Z", Command::ChangePlan { plan: PlanId::Free }).unwrap();
    assert_eq!(alerts(&events), []);
}

#[test]
fn a_larger_allowance_after_its_alerts_warns_again_at_75_and_100_percent_of_it() {
    let mut team = Team::new(PlanId::Team);
    team.step("2026-03-01T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.start("2026-03-01T00:00:00Z", "r1");
    let alerts = |events: &[LedgerEvent]| events.iter().filter_map(|event| if let LedgerEvent::AlertCrossed { alert, .. } = event { Some(*alert) } else { None }).collect::<Vec<_>>();
    // 100 of Team's 100 credits (50 integration blocks): both alerts.
    assert_eq!(alerts(&team.charge("2026-03-02T00:00:00Z", "r1", 50)), [Alert::IncludedPercent { percent: 75, of: Credits(100) }, Alert::IncludedPercent { percent: 100, of: Credits(100) }]);
    // Enterprise's 500 for the rest of the period: 100 used is 20% of it, nothing yet.
    assert_eq!(alerts(&team.step("2026-03-03T00:00:00Z", Command::ChangePlan { plan: PlanId::Enterprise }).unwrap()), []);
    // 75% and 100% of the new allowance are new thresholds: the team hears before it runs out.
    assert_eq!(alerts(&team.charge("2026-03-04T00:00:00Z", "r1", 200)), [Alert::IncludedPercent { percent: 75, of: Credits(500) }, Alert::IncludedPercent { percent: 100, of: Credits(500) }]);
    assert_eq!(team.period().alerts_fired().count(), 4, "each threshold once: {:?}", team.period().alerts_fired().collect::<Vec<_>>());
}

#[test]
fn changing_plan_changes_the_allowance_and_payg() {
    let mut team = Team::new(PlanId::Solo);
    team.step("2026-03-01T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.step("2026-03-01T00:00:00Z", Command::SetPaygCap { cap: Some(MicroUsd(0)) }).unwrap();
    team.start("2026-03-01T00:00:00Z", "r1");
    team.charge("2026-03-01T00:00:00Z", "r1", 25);
    assert_eq!(team.start("2026-03-01T00:00:01Z", "p1"), RunStatus::Paused);
    let events = team.step("2026-03-02T00:00:00Z", Command::ChangePlan { plan: PlanId::Team }).unwrap();
    assert!(events.iter().any(|event| matches!(event, LedgerEvent::RunResumed { run, .. } if run.as_str() == "p1")));
    assert_eq!((team.period().included, team.period().included_remaining()), (Credits(100), Credits(50)));
    let events = team.step("2026-03-03T00:00:00Z", Command::ChangePlan { plan: PlanId::Free }).unwrap();
    assert!(events.contains(&LedgerEvent::PaygChanged { enabled: false, at: ts("2026-03-03T00:00:00Z") }), "Free has no pay-as-you-go");
    assert!(!team.ledger.settings().payg_enabled);
}

#[test]
fn refused_commands_change_nothing() {
    let mut team = Team::new(PlanId::Team);
    team.start("2026-03-02T00:00:00Z", "r1");
    team.charge("2026-03-02T00:00:00Z", "r1", 3);
    team.step("2026-03-02T00:00:00Z", Command::EndRun { run: run("r1") }).unwrap();
    let before = format!("{:?}", team.ledger);
    let refusals = [
        Command::StartRun { run: run("r1"), context: RunContext::manual(CloudRun::Off), needs_credits: false },
        Command::EndRun { run: run("r1") },
        Command::EndRun { run: run("nobody") },
        Command::ChargeBlock { run: run("r1"), execution: ExecutionId::new("late").unwrap(), usage: BlockUsage::of_kind(BlockKind::Integration) },
        Command::Purchase { credits: Credits(5), expires_at: None },
        Command::SetPaygCap { cap: Some(MicroUsd(u64::MAX)) },
        Command::SetPaygAlerts { amounts: vec![MicroUsd(0)] },
    ];
    for command in refusals {
        let description = format!("{command:?}");
        assert!(team.ledger.apply(&team.rules, ts("2026-03-02T00:00:00Z"), command).is_err(), "{description}");
        assert_eq!(format!("{:?}", team.ledger), before, "{description} changed the ledger");
    }
    let backwards = team.ledger.advance_to(&team.rules, ts("2026-03-01T23:59:59Z")).unwrap_err();
    assert!(backwards.to_string().contains("earlier than"), "{backwards}");
    assert_eq!(format!("{:?}", team.ledger), before);
    // The calendar ends in 9999; an instant whose period would run past it is refused.
    for late in ["9999-01-01T00:00:00Z", "9999-12-30T00:00:00Z"] {
        let refused = team.ledger.advance_to(&team.rules, ts(late)).unwrap_err();
        assert_eq!(refused, CoreError::AfterLatestInstant { at: ts(late), latest: flowcredits_core::LATEST_INSTANT }, "{late}");
        assert_eq!(format!("{:?}", team.ledger), before);
    }
    assert!(team.ledger.advance_to(&team.rules, ts("9998-12-31T23:59:59Z")).is_ok());
}

#[test]
fn ai_credits_use_the_ai_payg_entitlement() {
    let plans = flowcredits_core::PlanCatalog::shipped();
    let mut text = String::from("[plans.free]\nincluded_credits = 1\npayg_flows_credits = false\npayg_ai_credits = false\nrbac = false\nprivate_runner = false\ncan_purchase_credits = false\nrequest_body_bytes_max = 1\n");
    for plan in ["solo", "team", "enterprise"] {
        let ai = plan != "solo";
        text.push_str(&format!("[plans.{plan}]\nincluded_credits = 0\npayg_flows_credits = true\npayg_ai_credits = {ai}\nrbac = false\nprivate_runner = false\ncan_purchase_credits = false\nrequest_body_bytes_max = 1\n"));
    }
    let custom = flowcredits_core::PlanCatalog::from_toml(&text).unwrap();
    assert_ne!(custom, plans);
    let mut team = Team { rules: Rules { plans: custom, prices: flowcredits_core::PriceBook::shipped() }, ledger: TeamLedger::new(TeamSettings::new(PlanId::Solo)), executions: 0 };
    team.step("2026-03-01T00:00:00Z", Command::SetPayg { enabled: true }).unwrap();
    team.start("2026-03-01T00:00:00Z", "r1");
    team.charge("2026-03-01T00:00:00Z", "r1", 1);
    let agent = BlockUsage::with_model(BlockKind::AiAgent, "gpt-5-nano");
    team.step("2026-03-01T00:00:00Z", Command::ChargeBlock { run: run("r1"), execution: ExecutionId::new("ai").unwrap(), usage: agent }).unwrap();
    let period = team.period();
    assert_eq!((period.payg_credits, period.unbilled_credits), (Credits(2), Credits(1)), "flows credits billed, AI credits not");
}
