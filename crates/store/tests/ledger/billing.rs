//! Billing changes sent together are decided and committed as one.

use flowcredits_core::{CoreError, MicroUsd, PlanId};
use flowcredits_store::{BillingChange, LedgerStore, StoreError};

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
