//! Billing changes sent together are decided and committed as one; purchases under an
//! idempotency key buy once, however often they are retried, across restarts.

use flowcredits_core::{CoreError, Credits, MicroUsd, PlanId};
use flowcredits_store::{BillingChange, IdempotencyKey, LedgerStore, Purchase, StoreError};

use crate::support::*;

fn dollars(amount: u64) -> MicroUsd {
    MicroUsd(amount * 1_000_000)
}

/// A batch whose second change is refused leaves its first unapplied: no setting, no audit
/// line, no row of any table changes, and the refusal says which change it was.
#[test]
fn a_billing_batch_with_a_refused_change_changes_nothing() {
    let dir = TempDir::new("billing-batch");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    let t = team("t");
    // Opens the period, so that the refused batches below have nothing of time's to write.
    store.start_run(&t, start("r1", "2026-03-02T10:00:00Z")).unwrap();
    let before = dump(&dir.db());

    let changes = vec![BillingChange::SetPaygCap { cap: Some(dollars(5)) }, BillingChange::SetPaygAlerts { amounts: vec![MicroUsd(0)] }];
    let err = store.change_billing_all(&t, &actor(), ts("2026-03-02T10:00:05Z"), changes).unwrap_err();
    assert!(matches!(&err, StoreError::Change { index: 1, .. }), "{err:?}");
    assert!(matches!(err.root(), StoreError::Refused(CoreError::AmountOutOfRange { .. })), "{err:?}");
    assert_eq!(dump(&dir.db()), before, "the cap, decided before the refusal, was not kept");
    assert_eq!(store.team(&t).unwrap().settings.payg_cap, None);

    // Another admin moves the team to a plan without pay-as-you-go between someone's checks
    // and their change: the change is refused whole, the cap before the switch included.
    store.change_billing(&t, &actor(), ts("2026-03-02T10:00:06Z"), BillingChange::ChangePlan { plan: PlanId::Free }).unwrap();
    let before = dump(&dir.db());
    let changes = vec![BillingChange::SetPaygCap { cap: Some(dollars(5)) }, BillingChange::SetPaygAlerts { amounts: vec![dollars(2)] }, BillingChange::SetPayg { enabled: true }];
    let err = store.change_billing_all(&t, &actor(), ts("2026-03-02T10:00:07Z"), changes).unwrap_err();
    assert!(matches!(&err, StoreError::Change { index: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("plan free has no pay-as-you-go"), "{err}");
    assert_eq!(dump(&dir.db()), before);
    let settings = store.team(&t).unwrap().settings;
    assert_eq!((settings.payg_cap, settings.payg_alerts.len(), settings.payg_enabled), (None, 0, false));
    assert_verified(&store);
}

/// A batch that is taken applies every change, in order, each with its own audit line, and
/// survives reopening the file.
#[test]
fn a_billing_batch_applies_every_change_with_an_audit_line_each() {
    let dir = TempDir::new("billing-all");
    {
        let store = open(&dir.db());
        create(&store, "t", PlanId::Team);
        let changes = vec![BillingChange::SetPaygCap { cap: Some(dollars(25)) }, BillingChange::SetPaygAlerts { amounts: vec![dollars(10), dollars(5)] }, BillingChange::SetPayg { enabled: true }];
        let grants = store.change_billing_all(&team("t"), &actor(), ts("2026-03-02T10:00:00Z"), changes).unwrap();
        assert_eq!(grants, [None, None, None]);
    }
    let store = open(&dir.db());
    let settings = store.team(&team("t")).unwrap().settings;
    assert_eq!((settings.payg_cap, settings.payg_alerts, settings.payg_enabled), (Some(dollars(25)), vec![dollars(5), dollars(10)], true));
    let log = store.audit_log(&team("t")).unwrap();
    let lines: Vec<(&str, &str)> = log.iter().skip(1).map(|entry| (entry.action.as_str(), entry.detail.as_str())).collect();
    assert_eq!(lines, [("payg_cap_set", "$25.000 per period"), ("payg_alerts_set", "$5.000, $10.000"), ("payg_enabled", "")]);
    assert!(log.iter().all(|entry| entry.actor == "ana@example.com"));
    let err = store.change_billing_all(&team("t"), &actor(), ts("2026-03-02T10:00:01Z"), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("changes: 0 billing changes"), "{err}");
    assert_verified(&store);
}

fn purchase(credits: u64, expires_at: Option<&str>, key: &str) -> Purchase {
    Purchase { credits: Credits(credits), expires_at: expires_at.map(ts), key: Some(IdempotencyKey::new(key).unwrap()) }
}

/// A purchase retried with its key is answered with the first one's grant and buys nothing
/// more, also after the store is reopened; the key with another purchase is refused, naming
/// what differs; another key buys again.
#[test]
fn a_purchase_retried_with_its_key_buys_once_across_restarts() {
    let dir = TempDir::new("purchase-key");
    let big = team("big");
    let first = {
        let store = open(&dir.db());
        create(&store, "big", PlanId::Enterprise);
        let first = store.purchase(&big, &actor(), ts("2026-03-02T10:00:00Z"), purchase(1_000, Some("2027-01-01T00:00:00Z"), "order-1")).unwrap();
        assert!(!first.replayed);
        let again = store.purchase(&big, &actor(), ts("2026-03-02T10:00:30Z"), purchase(1_000, Some("2027-01-01T00:00:00Z"), "order-1")).unwrap();
        assert_eq!((again.grant.clone(), again.replayed), (first.grant.clone(), true));
        first
    };
    let store = open(&dir.db());
    let again = store.purchase(&big, &actor(), ts("2026-03-03T10:00:00Z"), purchase(1_000, Some("2027-01-01T00:00:00Z"), "order-1")).unwrap();
    assert_eq!((again.grant, again.replayed), (first.grant.clone(), true), "the key outlives the process");
    assert_eq!(store.grants(&big).unwrap().len(), 1, "bought once");

    let before = dump(&dir.db());
    for (other, difference) in [(purchase(999, Some("2027-01-01T00:00:00Z"), "order-1"), "credits"), (purchase(1_000, None, "order-1"), "expires_at")] {
        let err = store.purchase(&big, &actor(), ts("2026-03-03T10:00:01Z"), other).unwrap_err();
        assert!(matches!(&err, StoreError::IdempotencyConflict { key, difference: found } if key == "order-1" && *found == difference), "{err:?}");
        assert_eq!(dump(&dir.db()), before);
    }
    // Keys are the team's: another key, or the same key on another team, is a new purchase.
    let second = store.purchase(&big, &actor(), ts("2026-03-03T10:00:02Z"), purchase(1_000, Some("2027-01-01T00:00:00Z"), "order-2")).unwrap();
    assert_eq!((second.grant.id, second.replayed), (2, false));
    create(&store, "other", PlanId::Enterprise);
    assert!(!store.purchase(&team("other"), &actor(), ts("2026-03-03T10:00:03Z"), purchase(5, None, "order-1")).unwrap().replayed);
    // A refused purchase keeps no key: the same key buys once the refusal is mended.
    create(&store, "small", PlanId::Team);
    let err = store.purchase(&team("small"), &actor(), ts("2026-03-03T10:00:04Z"), purchase(5, None, "order-3")).unwrap_err();
    assert!(err.to_string().contains("plan team cannot buy credits"), "{err}");
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM purchase_keys"), 3);
    assert_verified(&store);
}

/// Retries racing each other (a client that timed out and tried again while the first was
/// still queued) buy once.
#[test]
fn concurrent_retries_of_a_keyed_purchase_buy_once() {
    let dir = TempDir::new("purchase-race");
    let store = open(&dir.db());
    create(&store, "big", PlanId::Enterprise);
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| store.purchase(&team("big"), &actor(), ts("2026-03-02T10:00:00Z"), purchase(50, None, "retry-me")).unwrap())).collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    assert_eq!(answers.iter().filter(|answer| !answer.replayed).count(), 1);
    assert!(answers.iter().all(|answer| answer.grant.id == 1));
    assert_eq!(store.grants(&team("big")).unwrap().len(), 1);
}

#[test]
fn idempotency_keys_are_1_to_255_visible_ascii_bytes() {
    for good in ["a", "0b8e4c5e-6f1a-4c1e-9a77-8d6f0c1e2b3a", &"k".repeat(255), "!~"] {
        assert!(IdempotencyKey::new(good).is_ok(), "{good:?}");
    }
    for (bad, problem) in [("", "is empty"), (&"k".repeat(256) as &str, "256 bytes long"), ("a b", "' '"), ("naïve", "'ï'"), ("tab\t", "'\\t'")] {
        let err = IdempotencyKey::new(bad).unwrap_err().to_string();
        assert!(err.starts_with("idempotency key: ") && err.contains(problem), "{bad:?}: {err}");
    }
}

/// A ledger written by a build before purchase keys (schema version 1) is brought up to date
/// when opened: its teams and grants stay, and keyed purchases work on it.
#[test]
fn a_ledger_from_before_purchase_keys_is_migrated_on_open() {
    let dir = TempDir::new("purchase-key-upgrade");
    {
        let store = open(&dir.db());
        create(&store, "big", PlanId::Enterprise);
        store.purchase(&team("big"), &actor(), ts("2026-03-02T10:00:00Z"), Purchase { credits: Credits(10), expires_at: None, key: None }).unwrap();
    }
    // What a version-1 build left: no purchase_keys table, user_version 1.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch("DROP TABLE purchase_keys; PRAGMA user_version = 1;").unwrap();
    drop(conn);
    assert_eq!(flowcredits_store::migrate(&dir.db()).unwrap() as i64, flowcredits_store::SCHEMA_VERSION - 1, "the migrations after version 1 applied");
    assert_eq!(count(&dir.db(), "PRAGMA user_version"), flowcredits_store::SCHEMA_VERSION);
    let store = open(&dir.db());
    let bought = store.purchase(&team("big"), &actor(), ts("2026-03-02T10:00:01Z"), purchase(20, None, "after-upgrade")).unwrap();
    assert_eq!((bought.grant.id, bought.replayed), (2, false));
    assert!(store.purchase(&team("big"), &actor(), ts("2026-03-02T10:00:02Z"), purchase(20, None, "after-upgrade")).unwrap().replayed);
    assert_verified(&store);
}

/// A ledger from before alerts named their allowance (schema version 2, an included-credit
/// alert stored as a bare percentage) keeps its fired alerts, now of the period's allowance:
/// they do not fire again, and the next threshold still does.
#[test]
fn alerts_fired_before_they_named_their_allowance_stay_fired_after_migration() {
    let dir = TempDir::new("alert-allowance-upgrade");
    let (t, at) = (team("busy"), "2026-03-02T10:00:00Z");
    {
        let store = open(&dir.db());
        create(&store, "busy", PlanId::Team);
        store.start_run(&t, start("r1", at)).unwrap();
        // 80 of Team's 100 credits: the 75% alert fired.
        store.charge(&t, (0..40).map(|n| integration(&format!("a{n}"), "r1", at)).collect()).unwrap();
    }
    // What a version-2 build wrote: kind 0, the percentage as the value.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    assert_eq!(conn.execute("UPDATE alerts SET kind = 0, value = kind - 1000 WHERE kind > 1000", []).unwrap(), 1);
    conn.execute_batch("PRAGMA user_version = 2;").unwrap();
    drop(conn);
    assert_eq!(flowcredits_store::migrate(&dir.db()).unwrap(), 1, "one migration applied");
    let store = open(&dir.db());
    let fired = |store: &flowcredits_store::SqliteStore| store.periods(&t).unwrap()[0].alerts_fired().copied().collect::<Vec<_>>();
    let of_100 = |percent| flowcredits_core::Alert::IncludedPercent { percent, of: Credits(100) };
    assert_eq!(fired(&store), [of_100(75)]);
    store.charge(&t, (0..10).map(|n| integration(&format!("b{n}"), "r1", at)).collect()).unwrap();
    assert_eq!(fired(&store), [of_100(75), of_100(100)], "100 of 100 used: only the 100% alert is new");
    assert_verified(&store);
}

/// An invoice says which plan its allowance is from and the plan changes during its period, so
/// a downgrade's `included_used` above `included` is explained on the bill itself.
#[test]
fn an_invoice_names_its_plan_and_the_plan_changes_in_its_period() {
    let dir = TempDir::new("invoice-plans");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    let t = team("t");
    store.start_run(&t, start("r1", "2026-03-02T10:00:00Z")).unwrap();
    // 40 of Team's 100 credits, then Free (25) for the rest of March, then Team again in April.
    store.charge(&t, (0..20).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:00Z")).collect()).unwrap();
    store.end_run(&t, &run("r1"), ts("2026-03-02T10:00:00Z")).unwrap();
    let change = |at: &str, plan| store.change_billing(&t, &actor(), ts(at), BillingChange::ChangePlan { plan }).unwrap();
    change("2026-03-15T09:00:00Z", PlanId::Free);
    change("2026-04-10T09:00:00Z", PlanId::Team);
    store.close_periods(ts("2026-05-01T00:00:00Z")).unwrap();
    let invoices = store.invoices(&t).unwrap();
    let summary: Vec<_> = invoices.iter().map(|invoice| (invoice.period.label(), invoice.plan, invoice.included, invoice.included_used, invoice.plan_changes.iter().map(|change| (change.at.to_string(), change.from, change.to)).collect::<Vec<_>>())).collect();
    assert_eq!(
        summary,
        [
            ("2026-03".to_owned(), PlanId::Free, Credits(25), Credits(40), vec![("2026-03-15T09:00:00Z".to_owned(), PlanId::Team, PlanId::Free)]),
            ("2026-04".to_owned(), PlanId::Team, Credits(100), Credits(0), vec![("2026-04-10T09:00:00Z".to_owned(), PlanId::Free, PlanId::Team)]),
        ]
    );
}
