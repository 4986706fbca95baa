//! Runs, charges, pausing and resuming, period close and invoices, the audit log, and state that
//! survives reopening the file.

use flowcredits_core::{BlockKind, CloudRun, Command, Credits, ExecutionId, MicroUsd, PlanId, RunContext, RunStatus, Rules, TeamLedger, TeamSettings, Timestamp, Trigger};
use flowcredits_store::{BillingChange, LedgerStore, StoreError};

use crate::support::*;

#[test]
fn a_run_is_admitted_charged_and_ended() {
    let dir = TempDir::new("lifecycle");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    let admission = store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    assert_eq!((admission.status, admission.replayed), (RunStatus::Running, false));
    let events = (0..3).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:01Z")).collect();
    let outcomes = store.charge(&team("acme"), events).unwrap();
    assert_eq!(outcomes.iter().map(|outcome| outcome.credits).sum::<Credits>(), Credits(6));
    store.end_run(&team("acme"), &run("r1"), ts("2026-03-02T10:00:02Z")).unwrap();

    let info = store.run(&team("acme"), &run("r1")).unwrap().unwrap();
    assert_eq!((info.status, info.credits), (RunStatus::Completed, Credits(6)));
    let usage = store.usage(&team("acme"), None, ts(CREATED)).unwrap();
    assert_eq!((usage.included, usage.used(), usage.remaining()), (Credits(100), Credits(6), Credits(94)));
    assert_eq!(usage.period.start, ts("2026-03-01T00:00:00Z"));
    let line = &usage.breakdown[0];
    assert_eq!((line.kind, line.trigger, line.executions, line.credits), (BlockKind::Integration, Trigger::Api, 3, Credits(6)));
    assert_eq!(store.usage(&team("acme"), Some("2026-03"), ts(CREATED)).unwrap(), usage);
    let april = store.usage(&team("acme"), Some("2026-04"), ts(CREATED)).unwrap();
    assert_eq!((april.used(), april.included), (Credits(0), Credits(100)), "a period not begun yet has the plan's allowance");
    assert_verified(&store);
}

/// The same commands, sent to a store that is closed and reopened between every two of them,
/// leave the same ledger as the core state machine kept in memory.
#[test]
fn reopened_store_decides_like_the_in_memory_ledger() {
    let rules = Rules::shipped();
    let dir = TempDir::new("reopen");
    let context = RunContext::manual(CloudRun::On);
    let charge = |id: &str, n: u32| Command::ChargeBlock { run: run(id), execution: ExecutionId::new(format!("{id}-{n}")).unwrap(), usage: flowcredits_core::BlockUsage::of_kind(BlockKind::EvaluateWithPackages) };
    let mut script: Vec<(&str, Command)> = vec![("2026-03-02T10:00:00Z", Command::StartRun { run: run("a"), context, needs_credits: true })];
    script.extend((0..26).map(|n| ("2026-03-02T10:00:01Z", charge("a", n))));
    script.extend([
        ("2026-03-02T11:00:00Z", Command::StartRun { run: run("b"), context, needs_credits: true }),
        ("2026-03-02T11:00:00Z", Command::StartRun { run: run("c"), context, needs_credits: false }),
        ("2026-03-03T09:00:00Z", Command::SetPaygCap { cap: Some(MicroUsd(3_000)) }),
        ("2026-03-03T09:00:01Z", Command::SetPayg { enabled: true }),
        ("2026-03-03T09:00:02Z", charge("b", 0)),
        ("2026-03-03T09:00:03Z", charge("b", 1)),
        ("2026-03-03T09:00:04Z", Command::EndRun { run: run("a") }),
        ("2026-03-03T09:00:05Z", Command::StartRun { run: run("d"), context, needs_credits: true }),
        ("2026-04-01T00:00:00Z", charge("b", 2)),
        ("2026-04-02T00:00:00Z", Command::CancelRun { run: run("d") }),
    ]);
    let mut memory = TeamLedger::new(TeamSettings::new(PlanId::Solo));
    {
        let store = open(&dir.db());
        create(&store, "t", PlanId::Solo);
    }
    for (at, command) in script {
        let at = ts(at);
        let expected = memory.advance_to(&rules, at).and_then(|_| memory.apply(&rules, at, command.clone()));
        let store = open(&dir.db());
        let got = send(&store, at, command);
        assert_eq!(got.is_ok(), expected.is_ok(), "{got:?} vs {expected:?}");
    }
    let store = open(&dir.db());
    assert_eq!(store.periods(&team("t")).unwrap(), memory.periods().cloned().collect::<Vec<_>>());
    for (id, record) in memory.runs() {
        let info = store.run(&team("t"), id).unwrap().unwrap();
        assert_eq!((info.status, info.credits), (record.status, record.credits), "run {id}");
    }
    assert_verified(&store);
}

fn send(store: &flowcredits_store::SqliteStore, at: flowcredits_core::Timestamp, command: Command) -> Result<(), StoreError> {
    let t = team("t");
    match command {
        Command::StartRun { run, context, needs_credits } => store.start_run(&t, flowcredits_store::StartRun { run, context, needs_credits, at }).map(drop),
        Command::ChargeBlock { run, execution, usage } => store.charge(&t, vec![flowcredits_store::UsageEvent { execution, run, usage, at }]).map(drop),
        Command::EndRun { run } => store.end_run(&t, &run, at),
        Command::CancelRun { run } => store.cancel_run(&t, &run, at),
        Command::SetPayg { enabled } => store.change_billing(&t, &actor(), at, BillingChange::SetPayg { enabled }).map(drop),
        Command::SetPaygCap { cap } => store.change_billing(&t, &actor(), at, BillingChange::SetPaygCap { cap }).map(drop),
        other => panic!("not used here: {other:?}"),
    }
}

#[test]
fn period_close_issues_an_invoice_and_resumes_paused_runs() {
    let dir = TempDir::new("invoice");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    let acme = team("acme");
    store.start_run(&acme, start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&acme, (0..50).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:01Z")).collect()).unwrap();
    store.change_billing(&acme, &actor(), ts("2026-03-03T00:00:00Z"), BillingChange::SetPayg { enabled: true }).unwrap();
    store.charge(&acme, (50..551).map(|n| integration(&format!("e{n}"), "r1", "2026-03-03T00:00:01Z")).collect()).unwrap();
    store.change_billing(&acme, &actor(), ts("2026-03-04T00:00:00Z"), BillingChange::SetPayg { enabled: false }).unwrap();
    assert_eq!(store.start_run(&acme, start("r2", "2026-03-05T00:00:00Z")).unwrap().status, RunStatus::Paused);
    assert!(store.invoices(&acme).unwrap().is_empty(), "no period has ended yet");

    assert_eq!(store.close_periods(ts("2026-04-01T00:00:00Z")).unwrap(), 1);
    let invoices = store.invoices(&acme).unwrap();
    let invoice = &invoices[0];
    assert_eq!((invoice.period.start, invoice.period.end), (ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z")));
    assert_eq!((invoice.included_used, invoice.included_expired, invoice.payg_credits), (Credits(100), Credits(0), Credits(1_002)));
    assert_eq!(invoice.amount_due.to_string(), "1.002");
    assert_eq!(store.run(&acme, &run("r2")).unwrap().unwrap().status, RunStatus::Running, "the new period's credits resume r2");
    assert_eq!(store.close_periods(ts("2026-04-02T00:00:00Z")).unwrap(), 0, "each period is invoiced once");
    // A team idle for months still gets an invoice for each: nothing due, the allowance expired.
    assert_eq!(store.close_periods(ts("2026-07-15T00:00:00Z")).unwrap(), 3, "April, May and June");
    let invoices = store.invoices(&acme).unwrap();
    let idle: Vec<(Timestamp, Credits, Credits, String)> = invoices[1..].iter().map(|invoice| (invoice.period.start, invoice.included_used, invoice.included_expired, invoice.amount_due.to_string())).collect();
    let month = |start: &str| (ts(start), Credits(0), Credits(100), "0.000".to_owned());
    assert_eq!(idle, [month("2026-04-01T00:00:00Z"), month("2026-05-01T00:00:00Z"), month("2026-06-01T00:00:00Z")]);
    // An idle period's usage shows the allowance it was invoiced with, whatever the plan is now.
    store.change_billing(&acme, &actor(), ts("2026-07-16T00:00:00Z"), BillingChange::ChangePlan { plan: PlanId::Enterprise }).unwrap();
    let may = store.usage(&acme, Some("2026-05"), ts(CREATED)).unwrap();
    assert_eq!((may.included, may.used()), (Credits(100), Credits(0)), "{may:?}");
    assert_eq!(store.usage(&acme, Some("2026-07"), ts(CREATED)).unwrap().included, Credits(500), "the current period has the new plan's");
    // Its periods are still those in which something happened.
    let periods: Vec<Timestamp> = store.periods(&acme).unwrap().iter().map(|usage| usage.period.start).collect();
    assert_eq!(periods, [ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z"), ts("2026-07-01T00:00:00Z")]);
    assert_verified(&store);
}

#[test]
fn the_audit_log_records_billing_changes_and_cannot_be_rewritten() {
    let dir = TempDir::new("audit");
    let store = open(&dir.db());
    create(&store, "big", PlanId::Enterprise);
    let big = team("big");
    assert_eq!(store.change_billing(&big, &actor(), ts("2026-03-02T00:00:00Z"), BillingChange::SetPayg { enabled: true }).unwrap(), None, "only a purchase makes a grant");
    let grant = store.change_billing(&big, &actor(), ts("2026-03-02T00:00:01Z"), BillingChange::Purchase { credits: Credits(1_000), expires_at: None }).unwrap().expect("a purchase returns its grant");
    assert_eq!((grant.id, grant.credits, grant.remaining, grant.granted_at), (1, Credits(1_000), Credits(1_000), ts("2026-03-02T00:00:01Z")));
    store.change_billing(&big, &actor(), ts("2026-03-02T00:00:02Z"), BillingChange::ChangePlan { plan: PlanId::Free }).unwrap();
    let log = store.audit_log(&big).unwrap();
    let actions: Vec<&str> = log.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["team_created", "payg_enabled", "credits_purchased", "plan_changed", "payg_disabled"]);
    assert!(log.iter().all(|entry| entry.actor == "ana@example.com"));
    assert_eq!(log[3].detail, "enterprise to free");

    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let err = conn.execute("UPDATE audit_log SET actor = 'mallory'", []).unwrap_err().to_string();
    assert!(err.contains("append-only"), "{err}");
    let err = conn.execute("DELETE FROM audit_log", []).unwrap_err().to_string();
    assert!(err.contains("append-only"), "{err}");
}

#[test]
fn purchased_credits_are_drawn_and_balanced() {
    let dir = TempDir::new("grants");
    let store = open(&dir.db());
    create(&store, "big", PlanId::Enterprise);
    let big = team("big");
    store.start_run(&big, start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.change_billing(&big, &actor(), ts("2026-03-02T10:00:00Z"), BillingChange::Purchase { credits: Credits(10), expires_at: None }).unwrap();
    store.charge(&big, (0..253).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:01Z")).collect()).unwrap();
    let usage = store.usage(&big, None, ts(CREATED)).unwrap();
    assert_eq!((usage.included_used, usage.purchased_used, usage.unbilled_credits, usage.purchased_remaining), (Credits(500), Credits(6), Credits(0), Credits(4)));
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM grant_draws"), 3);
    assert_verified(&store);
}

/// Usage of a period counts the purchased credits usable in it: for a period not begun yet,
/// those still valid at its start; for the current period and an ended one, those valid when
/// the report is read (not when the team's ledger last moved).
#[test]
fn purchased_credits_remaining_are_those_usable_in_the_period_read() {
    let dir = TempDir::new("grant-expiry");
    let store = open(&dir.db());
    create(&store, "big", PlanId::Enterprise);
    let big = team("big");
    for (credits, expires) in [(20, "2026-03-20T00:00:00Z"), (30, "2026-04-10T00:00:00Z"), (40, "2026-05-15T00:00:00Z")] {
        let purchase = BillingChange::Purchase { credits: Credits(credits), expires_at: Some(ts(expires)) };
        store.change_billing(&big, &actor(), ts("2026-03-02T00:00:00Z"), purchase).unwrap();
    }
    let purchased = |month: Option<&str>, at: &str| {
        let usage = store.usage(&big, month, ts(at)).unwrap();
        (usage.purchased_remaining, usage.remaining())
    };
    // The current period, before and after the first purchase expires: the team's clock is
    // still at the purchases, but the 20 cannot be drawn after March 20.
    assert_eq!(purchased(None, "2026-03-10T00:00:00Z"), (Credits(90), Credits(590)));
    assert_eq!(purchased(None, "2026-03-25T00:00:00Z"), (Credits(70), Credits(570)));
    assert_eq!(purchased(Some("2026-03"), "2026-03-25T00:00:00Z"), (Credits(70), Credits(570)));
    // Months to come: only what is still valid when each starts.
    assert_eq!(purchased(Some("2026-04"), "2026-03-10T00:00:00Z"), (Credits(70), Credits(570)));
    assert_eq!(purchased(Some("2026-05"), "2026-03-10T00:00:00Z"), (Credits(40), Credits(540)));
    assert_eq!(purchased(Some("2026-06"), "2026-03-10T00:00:00Z"), (Credits(0), Credits(500)));
    // An ended period: what is usable now, as read in April.
    store.close_periods(ts("2026-04-02T00:00:00Z")).unwrap();
    assert_eq!(store.usage(&big, Some("2026-03"), ts("2026-04-05T00:00:00Z")).unwrap().purchased_remaining, Credits(70));
    assert_eq!(store.usage(&big, Some("2026-03"), ts("2026-04-12T00:00:00Z")).unwrap().purchased_remaining, Credits(40));
    // A read earlier than the team's clock is read at the clock: the ledger does not go back.
    assert_eq!(store.usage(&big, None, ts(CREATED)).unwrap().period.start, ts("2026-04-01T00:00:00Z"));
}

#[test]
fn verify_reports_a_balance_that_disagrees_with_the_entries() {
    let dir = TempDir::new("tamper");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("acme"), vec![integration("e1", "r1", "2026-03-02T10:00:01Z")]).unwrap();
    assert_verified(&store);
    rusqlite::Connection::open(dir.db()).unwrap().execute("UPDATE periods SET included_used = included_used + 1", []).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.mismatches.len(), 1, "{:#?}", report.mismatches);
    assert!(report.mismatches[0].starts_with("period"), "{}", report.mismatches[0]);
}

#[test]
fn crossed_alerts_are_kept_once_per_period() {
    // A charge that crosses 75% and 100% of the included credits fires both alerts once.
    let dir = TempDir::new("alerts");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Free);
    store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("acme"), (0..13).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:01Z")).collect()).unwrap();
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM alerts"), 2);
    let periods = store.periods(&team("acme")).unwrap();
    assert_eq!(periods[0].alerts_fired().count(), 2);
}

#[test]
fn one_writer_per_database_file() {
    let dir = TempDir::new("lock");
    let store = open(&dir.db());
    let err = flowcredits_store::SqliteStore::open(dir.db(), Rules::shipped()).err().expect("a second writer is refused");
    assert!(err.to_string().contains("open in another process"), "{err}");
    // Nor under another name: a symbolic link to it is the same database.
    #[cfg(unix)]
    {
        let alias = dir.db().with_file_name("alias.db");
        std::os::unix::fs::symlink(dir.db(), &alias).unwrap();
        let err = flowcredits_store::SqliteStore::open(&alias, Rules::shipped()).err().expect("a writer through a link is refused");
        assert!(err.to_string().contains("open in another process"), "{err}");
        // A hard link too: another name for the same file, in another directory.
        let other_dir = dir.db().with_file_name("elsewhere");
        std::fs::create_dir(&other_dir).unwrap();
        let hard = other_dir.join("copy.db");
        std::fs::hard_link(dir.db(), &hard).unwrap();
        let err = flowcredits_store::SqliteStore::open(&hard, Rules::shipped()).err().expect("a writer through a hard link is refused");
        assert!(err.to_string().contains("open in another process"), "{err}");
        assert!(flowcredits_store::migrate(&hard).is_err(), "nor migrated through it");
    }
    drop(store);
    let reopened = open(&dir.db());
    create(&reopened, "after", PlanId::Team);
    drop(reopened);
    // Once the writer closed, the file is free under any name.
    #[cfg(unix)]
    {
        let hard = dir.db().with_file_name("elsewhere").join("copy.db");
        let store = open(&hard);
        assert!(store.team(&team("after")).is_ok(), "the same database through its other name");
    }
}

/// Through a symbolic link, SQLite writes the WAL beside the real file; the syncer must sync
/// that one. (It used to look beside the link, find nothing, and confirm writes unsynced.)
#[cfg(unix)]
#[test]
fn a_ledger_opened_through_a_link_syncs_the_real_wal() {
    let dir = TempDir::new("link-wal");
    let real = dir.db();
    drop(open(&real));
    let linked_dir = real.parent().unwrap().join("linked");
    std::fs::create_dir(&linked_dir).unwrap();
    let alias = linked_dir.join("alias.db");
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    let store = open(&alias);
    create(&store, "acme", PlanId::Team);
    store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).expect("a write through the link is confirmed");
    assert!(store.write_failure().is_none());
    assert!(store.writer_stats().syncs >= 2, "{:?}", store.writer_stats());
    assert!(!linked_dir.join("alias.db-wal").exists(), "the WAL sits beside the real file");
}

fn charge_and_end(store: &flowcredits_store::SqliteStore, run_id: &str, events: Vec<flowcredits_store::UsageEvent>, at: &str) -> flowcredits_store::ChargedAndEnded {
    let (answer, answered) = std::sync::mpsc::channel();
    store.submit_charge_and_end(&team("acme"), &run(run_id), events, ts(at), Box::new(move |result| answer.send(result).unwrap()));
    answered.recv().unwrap().expect("both were decided")
}

/// A run's last charges and its end go to the ledger as one request: the charge is decided
/// first, and the run ends whether or not the charge was accepted.
#[test]
fn the_last_charges_and_the_end_are_decided_together() {
    let dir = TempDir::new("charge-and-end");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    for id in ["r1", "r2", "r3"] {
        store.start_run(&team("acme"), start(id, "2026-03-02T10:00:00Z")).unwrap();
    }

    let events = (0..2).map(|n| integration(&format!("r1-e{n}"), "r1", "2026-03-02T10:00:01Z")).collect();
    let (charged, ended) = charge_and_end(&store, "r1", events, "2026-03-02T10:00:02Z");
    assert_eq!(charged.unwrap().iter().map(|outcome| outcome.credits).sum::<Credits>(), Credits(4));
    ended.unwrap();
    let info = store.run(&team("acme"), &run("r1")).unwrap().unwrap();
    assert_eq!((info.status, info.credits), (RunStatus::Completed, Credits(4)));

    // No charges: only the end.
    let (charged, ended) = charge_and_end(&store, "r2", Vec::new(), "2026-03-02T10:00:03Z");
    assert!(charged.unwrap().is_empty());
    ended.unwrap();
    assert_eq!(store.run(&team("acme"), &run("r2")).unwrap().unwrap().status, RunStatus::Completed);

    // A charge naming another run's execution with other content is refused; the run still ends
    // and nothing of the refused batch is counted.
    let conflicting = vec![integration("r3-e0", "r3", "2026-03-02T10:00:04Z"), integration("r1-e0", "r3", "2026-03-02T10:00:04Z")];
    let (charged, ended) = charge_and_end(&store, "r3", conflicting, "2026-03-02T10:00:05Z");
    assert!(charged.is_err(), "the conflicting batch is refused: {charged:?}");
    ended.unwrap();
    let info = store.run(&team("acme"), &run("r3")).unwrap().unwrap();
    assert_eq!((info.status, info.credits), (RunStatus::Completed, Credits(0)));

    // An ended run is ended: a second request is refused for both parts.
    let (charged, ended) = charge_and_end(&store, "r1", vec![integration("r1-e9", "r1", "2026-03-02T10:00:06Z")], "2026-03-02T10:00:06Z");
    assert!(charged.is_err() && ended.is_err(), "{charged:?} {ended:?}");
    assert_eq!(store.usage(&team("acme"), None, ts(CREATED)).unwrap().used(), Credits(4));
    assert_verified(&store);
}

#[test]
fn runs_since_lists_recent_runs_of_every_team_and_status_oldest_first() {
    let dir = TempDir::new("runs-since");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    create(&store, "free", PlanId::Free);
    store.start_run(&team("acme"), start("old", "2026-03-02T09:00:00Z")).unwrap();
    store.end_run(&team("acme"), &run("old"), ts("2026-03-02T09:00:01Z")).unwrap();
    store.start_run(&team("acme"), start("done", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("acme"), vec![integration("d1", "done", "2026-03-02T10:00:01Z")]).unwrap();
    store.end_run(&team("acme"), &run("done"), ts("2026-03-02T10:00:02Z")).unwrap();
    store.start_run(&team("free"), start("going", "2026-03-02T10:00:03Z")).unwrap();

    let runs = store.runs_since(ts("2026-03-02T10:00:00Z"), 100).unwrap();
    let listed: Vec<(&str, &str, RunStatus, Credits)> = runs.iter().map(|listed| (listed.team.as_str(), listed.run.as_str(), listed.info.status, listed.info.credits)).collect();
    assert_eq!(listed, vec![("acme", "done", RunStatus::Completed, Credits(2)), ("free", "going", RunStatus::Running, Credits(0))]);
    assert_eq!((runs[0].created_at, runs[0].ended_at), (ts("2026-03-02T10:00:00Z"), Some(ts("2026-03-02T10:00:02Z"))));
    assert_eq!(runs[1].ended_at, None);
    // The limit keeps the newest.
    let newest = store.runs_since(ts("2026-03-01T00:00:00Z"), 1).unwrap();
    assert_eq!(newest.iter().map(|listed| listed.run.as_str()).collect::<Vec<_>>(), vec!["going"]);
}

/// Where a run cut off by a crash was last: its last charge among the executions named after
/// it, not another run's whose id merely starts the same.
#[test]
fn run_times_say_when_a_run_was_admitted_ended_and_last_charged() {
    let dir = TempDir::new("run-times");
    let store = open(&dir.db());
    create(&store, "acme", PlanId::Team);
    store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.start_run(&team("acme"), start("r10", "2026-03-02T10:00:00Z")).unwrap();
    store.start_run(&team("acme"), start("r2", "2026-03-02T10:00:00Z")).unwrap();
    let charges = vec![integration("r1/a", "r1", "2026-03-02T10:00:01Z"), integration("r1/loop#2/b", "r1", "2026-03-02T10:00:03Z"), integration("r10/a", "r10", "2026-03-02T10:00:09Z")];
    store.charge(&team("acme"), charges).unwrap();
    store.end_run(&team("acme"), &run("r10"), ts("2026-03-02T10:00:10Z")).unwrap();

    let times = store.run_times(&team("acme"), &run("r1")).unwrap().unwrap();
    assert_eq!((times.created_at, times.ended_at, times.last_charge_at), (ts("2026-03-02T10:00:00Z"), None, Some(ts("2026-03-02T10:00:03Z"))));
    let times = store.run_times(&team("acme"), &run("r10")).unwrap().unwrap();
    assert_eq!((times.ended_at, times.last_charge_at), (Some(ts("2026-03-02T10:00:10Z")), Some(ts("2026-03-02T10:00:09Z"))));
    assert_eq!(store.run_times(&team("acme"), &run("r2")).unwrap().unwrap().last_charge_at, None, "never charged");
    assert_eq!(store.run_times(&team("acme"), &run("nope")).unwrap(), None);
}

#[test]
fn writer_stats_count_every_request_commit_and_sync() {
    let dir = TempDir::new("stats");
    let store = open(&dir.db());
    // Nothing counted yet (the WAL already holds the schema, which its size says).
    let fresh = store.writer_stats();
    assert!(fresh.wal_bytes > 0, "{fresh:?}");
    assert_eq!(flowcredits_store::WriterStats { wal_bytes: 0, ..fresh }, flowcredits_store::WriterStats::default());
    create(&store, "acme", PlanId::Team);
    store.start_run(&team("acme"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("acme"), vec![integration("e1", "r1", "2026-03-02T10:00:01Z")]).unwrap();
    store.end_run(&team("acme"), &run("r1"), ts("2026-03-02T10:00:02Z")).unwrap();
    // A refused request is decided too, in a group of its own.
    assert!(store.end_run(&team("acme"), &run("r1"), ts("2026-03-02T10:00:03Z")).is_err());
    let stats = store.writer_stats();
    // One caller waiting for each answer: every request is a group of one, synced before the next.
    assert_eq!((stats.requests, stats.commits, stats.syncs), (5, 5, 5), "{stats:?}");
    assert!(stats.commit_ns > 0 && stats.sync_ns > 0, "{stats:?}");
}
