//! Retries: an execution id is charged once, whatever the number of deliveries.

use flowcredits_core::{BlockKind, BlockUsage, Credits, PlanId, RunStatus};
use flowcredits_store::{LedgerStore, StoreError, UsageEvent};

use crate::support::*;

/// A stream over three teams: starts, charges in batches of several sizes, ends.
fn stream(store: &flowcredits_store::SqliteStore) -> Vec<Result<String, StoreError>> {
    let mut results = Vec::new();
    for t in ["a", "b", "c"] {
        for r in 0..4 {
            let id = format!("{t}-r{r}");
            let admitted = store.start_run(&team(t), start(&id, "2026-03-02T10:00:00Z"));
            results.push(admitted.map(|admission| if admission.replayed { "replayed".into() } else { format!("{:?}", admission.status) }));
            let batch = (0..r * 7 + 1).map(|n| integration(&format!("{id}-e{n}"), &id, "2026-03-02T10:00:01Z")).collect();
            results.push(store.charge(&team(t), batch).map(|outcomes| format!("{}", outcomes.iter().map(|o| o.credits).sum::<Credits>())));
            results.push(store.end_run(&team(t), &run(&id), ts("2026-03-02T10:00:02Z")).map(|()| "ended".into()));
        }
    }
    results
}

#[test]
fn replaying_a_whole_stream_twice_leaves_the_ledger_unchanged() {
    let dir = TempDir::new("replay");
    let store = open(&dir.db());
    for (t, plan) in [("a", PlanId::Free), ("b", PlanId::Team), ("c", PlanId::Solo)] {
        create(&store, t, plan);
    }
    let first = stream(&store);
    assert!(first.iter().any(|result| matches!(result, Ok(status) if status == "Paused")), "team a runs out of credits: {first:?}");
    let before = dump(&dir.db());
    let second = stream(&store);
    assert_eq!(dump(&dir.db()), before);
    for (one, two) in first.iter().zip(&second) {
        match (one, two) {
            // A paused run cannot be charged or ended, the first time or the second.
            (Err(one), Err(two)) => assert_eq!(one.to_string(), two.to_string()),
            // Ending a run twice is refused: it is completed.
            (Ok(ended), Err(err)) if ended == "ended" => assert!(err.to_string().contains("is completed"), "{err}"),
            (Ok(_), Ok(two)) if two == "replayed" => {}
            (Ok(one), Ok(two)) => assert_eq!(one, two),
            other => panic!("replay differs: {other:?}"),
        }
    }
    // And across a restart.
    drop(store);
    let store = open(&dir.db());
    stream(&store);
    assert_eq!(dump(&dir.db()), before);
    assert_verified(&store);
}

#[test]
fn a_replayed_charge_is_acknowledged_with_its_original_credits() {
    let dir = TempDir::new("ack");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    store.start_run(&team("t"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    let event = integration("e1", "r1", "2026-03-02T10:00:01Z");
    let first = store.charge(&team("t"), vec![event.clone()]).unwrap();
    // Late retries, even after the run ended and months later, are still acknowledged.
    store.end_run(&team("t"), &run("r1"), ts("2026-03-02T10:00:02Z")).unwrap();
    let again = store.charge(&team("t"), vec![UsageEvent { at: ts("2026-09-01T00:00:00Z"), ..event }]).unwrap();
    assert_eq!((first[0].credits, first[0].replayed), (Credits(2), false));
    assert_eq!((again[0].credits, again[0].replayed), (Credits(2), true));
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM entries"), 1);
    assert_eq!(store.run(&team("t"), &run("r1")).unwrap().unwrap().status, RunStatus::Completed);
}

#[test]
fn the_same_id_with_other_content_is_refused() {
    let dir = TempDir::new("conflict");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    for id in ["r1", "r2"] {
        store.start_run(&team("t"), start(id, "2026-03-02T10:00:00Z")).unwrap();
    }
    let event = integration("e1", "r1", "2026-03-02T10:00:01Z");
    store.charge(&team("t"), vec![event.clone()]).unwrap();
    let before = dump(&dir.db());
    let variants = [
        (UsageEvent { run: run("r2"), ..event.clone() }, "run"),
        (UsageEvent { usage: BlockUsage::of_kind(BlockKind::HttpRequest), ..event.clone() }, "block kind"),
        (UsageEvent { usage: BlockUsage::with_model(BlockKind::AiMedia, "gpt-image-1"), ..event.clone() }, "block kind"),
    ];
    for (variant, difference) in variants {
        let err = store.charge(&team("t"), vec![variant]).unwrap_err();
        assert!(matches!(err.root(), StoreError::ExecutionConflict { difference: found, .. } if *found == difference), "{err}");
        assert!(err.to_string().contains("e1"), "{err}");
    }
    assert_eq!(dump(&dir.db()), before, "a conflicting event writes nothing");
    let agent = |tools: &[&str]| UsageEvent { execution: flowcredits_core::ExecutionId::new("agent-1").unwrap(), usage: BlockUsage { external_mcp_tools: tools.iter().map(|t| t.to_string()).collect(), ..BlockUsage::with_model(BlockKind::AiAgent, "gpt-5") }, ..event.clone() };
    store.charge(&team("t"), vec![agent(&["search"])]).unwrap();
    let err = store.charge(&team("t"), vec![agent(&["search", "fetch"])]).unwrap_err();
    assert!(err.to_string().contains("model or tools"), "{err}");
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM entries"), 2);
}

#[test]
fn a_batch_is_all_or_nothing() {
    let dir = TempDir::new("batch");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    store.start_run(&team("t"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    let before = dump(&dir.db());
    let mut batch: Vec<_> = (0..10).map(|n| integration(&format!("e{n}"), "r1", "2026-03-02T10:00:01Z")).collect();
    batch.push(integration("e10", "ghost", "2026-03-02T10:00:01Z"));
    let err = store.charge(&team("t"), batch.clone()).unwrap_err();
    assert_eq!(err.to_string(), "event 10 of the batch: run ghost is not known");
    assert_eq!(dump(&dir.db()), before);
    // The good part of the batch alone goes through, and the in-memory state was not touched.
    batch.pop();
    let outcomes = store.charge(&team("t"), batch).unwrap();
    assert!(outcomes.iter().all(|outcome| outcome.credits == Credits(2) && !outcome.replayed));
    assert_eq!(store.usage(&team("t"), None, ts(CREATED)).unwrap().used(), Credits(20));
    // An id twice in one batch is charged once.
    let twice = vec![integration("x", "r1", "2026-03-02T10:00:03Z"), integration("x", "r1", "2026-03-02T10:00:03Z")];
    let outcomes = store.charge(&team("t"), twice).unwrap();
    assert_eq!(outcomes.iter().map(|outcome| outcome.replayed).collect::<Vec<_>>(), [false, true]);
    assert_eq!(store.usage(&team("t"), None, ts(CREATED)).unwrap().used(), Credits(22));
    assert_verified(&store);
}

#[test]
fn an_id_twice_in_one_batch_is_charged_once_in_any_order() {
    let dir = TempDir::new("order");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    store.start_run(&team("t"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("t"), vec![integration("m", "r1", "2026-03-02T10:00:01Z")]).unwrap();
    let ids = ["b", "a", "m", "c", "a", "b", "z", "m"];
    let batch = ids.iter().map(|id| integration(id, "r1", "2026-03-02T10:00:02Z")).collect();
    let replayed: Vec<bool> = store.charge(&team("t"), batch).unwrap().iter().map(|outcome| outcome.replayed).collect();
    assert_eq!(replayed, [false, false, true, false, true, true, false, true]);
    assert_eq!(count(&dir.db(), "SELECT count(*) FROM entries"), 5, "m before the batch, then b, a, c and z");
    assert_verified(&store);
}
