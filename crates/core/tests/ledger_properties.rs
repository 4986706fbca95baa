//! Ledger invariants under random command sequences: whatever a team does, the books balance.

use std::collections::HashMap;

use flowcredits_core::{BlockKind, BlockUsage, CloudRun, Command, Credits, ExecutionId, LedgerEvent, PlanId, RunContext, RunId, RunStatus, Rules, TeamLedger, TeamSettings, Timestamp, Trigger};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Wait { seconds: i64 },
    Start { run: u8, context: u8, needs_credits: bool },
    Charge { run: u8, block: u8, tools: u8 },
    End { run: u8 },
    Cancel { run: u8 },
    SetPayg { enabled: bool },
    SetCap { cap_credits: Option<u16> },
    Purchase { credits: u16, days: Option<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0i64..40 * 86_400).prop_map(|seconds| Op::Wait { seconds }),
        3 => (0u8..8, 0u8..4, any::<bool>()).prop_map(|(run, context, needs_credits)| Op::Start { run, context, needs_credits }),
        8 => (0u8..8, 0u8..6, 0u8..4).prop_map(|(run, block, tools)| Op::Charge { run, block, tools }),
        1 => (0u8..8).prop_map(|run| Op::End { run }),
        1 => (0u8..8).prop_map(|run| Op::Cancel { run }),
        1 => any::<bool>().prop_map(|enabled| Op::SetPayg { enabled }),
        1 => proptest::option::of(0u16..200).prop_map(|cap_credits| Op::SetCap { cap_credits }),
        1 => (1u16..300, proptest::option::of(1u8..60)).prop_map(|(credits, days)| Op::Purchase { credits, days }),
    ]
}

fn plan() -> impl Strategy<Value = PlanId> {
    prop_oneof![Just(PlanId::Free), Just(PlanId::Solo), Just(PlanId::Team), Just(PlanId::Enterprise)]
}

const CONTEXTS: [fn() -> RunContext; 4] = [
    || RunContext::manual(CloudRun::Off),
    || RunContext::manual(CloudRun::On),
    || RunContext::automated(Trigger::Api).unwrap(),
    || RunContext::automated(Trigger::Mcp).unwrap(),
];

fn usage(block: u8, tools: u8) -> BlockUsage {
    match block {
        0 => BlockUsage::of_kind(BlockKind::HttpRequest),
        1 => BlockUsage::of_kind(BlockKind::Integration),
        2 => BlockUsage::of_kind(BlockKind::EvaluateWithPackages),
        3 => BlockUsage::of_kind(BlockKind::Select),
        4 => BlockUsage::with_model(BlockKind::AiMedia, "gpt-image-1-mini"),
        _ => BlockUsage { external_mcp_tools: (0..tools).map(|tool| format!("tool{}", tool % 3)).collect(), ..BlockUsage::with_model(BlockKind::AiAgent, "gpt-5-mini") },
    }
}

/// What the test itself remembers, independently of the ledger, to check it against.
#[derive(Default)]
struct Witness {
    charged_per_run: HashMap<RunId, Credits>,
    charged_per_period: HashMap<Timestamp, Credits>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_books_balance(plan in plan(), ops in proptest::collection::vec(op(), 1..120)) {
        let rules = Rules::shipped();
        let mut ledger = TeamLedger::new(TeamSettings::new(plan));
        let mut at: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let mut witness = Witness::default();
        let mut executions = 0u64;

        for op in ops {
            let payg_on_before = ledger.settings().payg_enabled;
            let cap_before = ledger.settings().payg_cap;
            let command = match op {
                Op::Wait { seconds } => {
                    at = at.checked_add(jiff::SignedDuration::from_secs(seconds)).unwrap();
                    ledger.advance_to(&rules, at).unwrap();
                    continue;
                }
                Op::Start { run, context, needs_credits } => Command::StartRun { run: run_id(run), context: CONTEXTS[context as usize](), needs_credits },
                Op::Charge { run, block, tools } => {
                    executions += 1;
                    Command::ChargeBlock { run: run_id(run), execution: ExecutionId::new(format!("e{executions}")).unwrap(), usage: usage(block, tools) }
                }
                Op::End { run } => Command::EndRun { run: run_id(run) },
                Op::Cancel { run } => Command::CancelRun { run: run_id(run) },
                Op::SetPayg { enabled } => Command::SetPayg { enabled },
                Op::SetCap { cap_credits } => Command::SetPaygCap { cap: cap_credits.map(|credits| Credits(u64::from(credits)).payg_price()) },
                Op::Purchase { credits, days } => Command::Purchase {
                    credits: Credits(u64::from(credits)),
                    expires_at: days.map(|days| at.checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days))).unwrap()),
                },
            };
            ledger.advance_to(&rules, at).unwrap();
            let charged_run = match &command { Command::ChargeBlock { run, usage, .. } => Some((run.clone(), usage.clone())), _ => None };
            let status_before = charged_run.as_ref().and_then(|(run, _)| ledger.run(run).map(|record| record.status));
            let snapshot = format!("{ledger:?}");
            match ledger.apply(&rules, at, command) {
                Err(_) => prop_assert_eq!(format!("{ledger:?}"), snapshot, "a refused command changed the ledger"),
                Ok(events) => {
                    for event in &events {
                        let LedgerEvent::BlockCharged(charge) = event else { continue };
                        let (run, usage) = charged_run.clone().unwrap();
                        // A paused (or finished) run is never charged.
                        prop_assert_eq!(status_before, Some(RunStatus::Running));
                        // A charge is exactly the block's price, split over the sources.
                        let context = ledger.run(&run).unwrap().context;
                        prop_assert_eq!(charge.split.total(), rules.block_price(at, context, &usage).unwrap());
                        // Nothing is billed while pay-as-you-go is off.
                        if !payg_on_before {
                            prop_assert_eq!(charge.split.payg, Credits::ZERO);
                        }
                        // Pay-as-you-go never bills past the cap in force.
                        if let (Some(cap), false) = (cap_before, charge.split.payg.is_zero()) {
                            prop_assert!(ledger.current_period().unwrap().payg_amount() <= cap);
                        }
                        *witness.charged_per_run.entry(run).or_default() += charge.split.total();
                        *witness.charged_per_period.entry(charge.period_start).or_default() += charge.split.total();
                    }
                }
            }
        }

        let included = rules.plans.get(plan).included_credits;
        for usage in ledger.periods() {
            // used = included_used + purchased_used + payg + unbilled, and equals what was charged.
            prop_assert_eq!(usage.used(), usage.included_used + usage.purchased_used + usage.payg_credits + usage.unbilled_credits);
            prop_assert_eq!(usage.used(), witness.charged_per_period.get(&usage.period.start).copied().unwrap_or_default());
            // Included credits never carry into the next period: each gets the plan's amount, no more.
            prop_assert_eq!(usage.included, included);
            prop_assert!(usage.included_used <= usage.included);
            prop_assert_eq!(usage.payg_amount(), usage.payg_credits.payg_price());
            if !rules.plans.get(plan).has_payg() {
                prop_assert_eq!(usage.payg_credits, Credits::ZERO);
            }
        }
        // Credits of a run equal the sum of its blocks.
        for (run, record) in ledger.runs() {
            prop_assert_eq!(record.credits, witness.charged_per_run.get(run).copied().unwrap_or_default(), "run {}", run);
        }
        // Purchased credits drawn equal what the grants lost.
        let drawn: Credits = ledger.periods().map(|usage| usage.purchased_used).sum();
        let granted: Credits = ledger.grants().iter().map(|grant| grant.credits - grant.remaining).sum();
        prop_assert_eq!(drawn, granted);
        // Paused runs are exactly the runs with status paused, oldest first.
        let paused: Vec<&RunId> = ledger.paused_runs().collect();
        let mut expected: Vec<(&RunId, u64)> = ledger.runs().filter(|(_, record)| record.status == RunStatus::Paused).map(|(run, record)| (run, record.seq)).collect();
        expected.sort_by_key(|(_, seq)| *seq);
        prop_assert_eq!(paused, expected.into_iter().map(|(run, _)| run).collect::<Vec<_>>());
    }
}

fn run_id(index: u8) -> RunId {
    RunId::new(format!("r{index}")).unwrap()
}
