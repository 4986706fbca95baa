//! Many threads start runs and charge blocks for one team at its limit. The store serializes
//! them; replaying the operations sequentially, in the order the store recorded them, through
//! the core ledger gives the same runs, charges and balances.

use std::collections::HashMap;
use std::sync::Arc;

use flowcredits_core::{BlockKind, BlockUsage, Command, Credits, ExecutionId, PlanId, RunStatus, Rules, TeamLedger, TeamSettings};
use flowcredits_store::{LedgerStore, SqliteStore};

use crate::support::*;

const THREADS: usize = 16;
const RUNS_PER_THREAD: usize = 4;
const CHARGES_PER_RUN: usize = 3;
const AT: &str = "2026-03-02T10:00:00Z";

fn worker(store: &SqliteStore, thread: usize) {
    let t = team("hot");
    for r in 0..RUNS_PER_THREAD {
        let id = format!("t{thread}-r{r}");
        let admission = store.start_run(&t, start(&id, AT)).unwrap();
        for n in 0..CHARGES_PER_RUN {
            let charged = store.charge(&t, vec![integration(&format!("{id}-e{n}"), &id, AT)]);
            assert_eq!(charged.is_ok(), admission.status == RunStatus::Running, "{id}: {charged:?}");
        }
        match admission.status {
            RunStatus::Running => store.end_run(&t, &run(&id), ts(AT)).unwrap(),
            _ => store.cancel_run(&t, &run(&id), ts(AT)).unwrap(),
        }
    }
}

#[derive(Debug)]
enum Recorded {
    Start(String),
    Charge(String, String),
    End(String, RunStatus),
}

/// Starts, charges and ends in the order of the store's op numbers.
fn recorded_order(path: &std::path::Path) -> Vec<Recorded> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut ops: Vec<(i64, Recorded)> = Vec::new();
    let mut runs = conn.prepare("SELECT run_key, start_op, end_op, status FROM runs").unwrap();
    let mut rows = runs.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        let key: String = row.get(0).unwrap();
        ops.push((row.get(1).unwrap(), Recorded::Start(key.clone())));
        let status = if row.get::<_, i64>(3).unwrap() == 2 { RunStatus::Completed } else { RunStatus::Cancelled };
        ops.push((row.get(2).unwrap(), Recorded::End(key, status)));
    }
    let mut executions = conn.prepare("SELECT x.op, x.key, r.run_key FROM executions x JOIN runs r ON r.id = x.run_id").unwrap();
    let mut rows = executions.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        // Ids that are not UUIDs are stored as 0xFF followed by their text.
        let key: Vec<u8> = row.get(1).unwrap();
        ops.push((row.get(0).unwrap(), Recorded::Charge(row.get(2).unwrap(), String::from_utf8(key[1..].to_vec()).unwrap())));
    }
    ops.sort_by_key(|(op, _)| *op);
    ops.into_iter().map(|(_, op)| op).collect()
}

#[test]
fn concurrent_starts_and_charges_match_a_sequential_replay() {
    let dir = TempDir::new("concurrency");
    let store = open(&dir.db());
    create(&store, "hot", PlanId::Free);
    let store = Arc::new(store);
    let threads: Vec<_> = (0..THREADS).map(|thread| {
        let store = Arc::clone(&store);
        std::thread::spawn(move || worker(&store, thread))
    }).collect();
    for thread in threads {
        thread.join().unwrap();
    }

    let rules = Rules::shipped();
    let mut ledger = TeamLedger::new(TeamSettings::new(PlanId::Free));
    let at = ts(AT);
    let mut splits = HashMap::new();
    for op in recorded_order(&dir.db()) {
        ledger.advance_to(&rules, at).unwrap();
        let command = match &op {
            Recorded::Start(id) => Command::StartRun { run: run(id), context: api(), needs_credits: true },
            Recorded::Charge(id, execution) => Command::ChargeBlock { run: run(id), execution: ExecutionId::new(execution.as_str()).unwrap(), usage: BlockUsage::of_kind(BlockKind::Integration) },
            Recorded::End(id, RunStatus::Completed) => Command::EndRun { run: run(id) },
            Recorded::End(id, _) => Command::CancelRun { run: run(id) },
        };
        for event in ledger.apply(&rules, at, command).unwrap_or_else(|err| panic!("{op:?}: {err}")) {
            if let flowcredits_core::LedgerEvent::BlockCharged(charge) = event {
                splits.insert(charge.execution.to_string(), [charge.split.included.0, charge.split.payg.0, charge.split.unbilled.0]);
            }
        }
    }
    let paused = ledger.runs().filter(|(_, record)| record.status == RunStatus::Cancelled).count();
    assert!(paused > 0, "the team ran out of credits, so some runs waited");
    assert_eq!(ledger.runs().count(), THREADS * RUNS_PER_THREAD);
    for (id, record) in ledger.runs() {
        let stored = store.run(&team("hot"), id).unwrap().unwrap();
        assert_eq!((stored.status, stored.credits), (record.status, record.credits), "run {id}");
    }
    assert_eq!(store.periods(&team("hot")).unwrap(), ledger.periods().cloned().collect::<Vec<_>>());
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let mut entries = conn.prepare("SELECT x.key, e.included, e.payg, e.unbilled FROM entries e JOIN executions x ON x.op = e.id").unwrap();
    let stored: HashMap<String, [u64; 3]> = entries
        .query_map([], |row| Ok((String::from_utf8(row.get::<_, Vec<u8>>(0)?[1..].to_vec()).unwrap(), [row.get(1)?, row.get(2)?, row.get(3)?])))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, splits);
    let usage = store.usage(&team("hot"), None, ts(CREATED)).unwrap();
    assert_eq!(usage.included_used, Credits(25));
    assert_verified(&store);
}
