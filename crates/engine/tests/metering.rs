//! Metering: admission, charges as blocks complete, runs past the limit, idempotency, AI and
//! connector blocks, nested flows and estimates.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use flowcredits_core::{BlockKind, BlockUsage, Credits, ExecutionId, PlanId, RunId, Rules, Timestamp, Trigger, RunContext};
use flowcredits_engine::{AiCall, AiFailure, AiOutcome, AiProvider, BlockCharge, Engine, EngineError, MapResolver, Meter, Providers, RunOutcome};
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

/// 30 `if` executions: 30 credits in the cloud, 0 locally.
const THIRTY_IFS: &str = r#"
name: thirty
blocks:
  - { id: loop, kind: repeat, config: { times: 30 } }
  - { id: check, kind: if, config: { test: { op: ge, value: 0 } } }
  - { id: show, kind: display }
edges:
  - { from: loop.index, to: check.value }
  - { from: loop.done, to: show.value }
"#;

#[tokio::test]
async fn a_running_run_finishes_past_the_limit_and_the_next_paid_run_is_paused() {
    let flow = flow(THIRTY_IFS);
    let meter = meter(PlanId::Free);
    let engine = Engine::default();
    let first = engine.run(&flow, request("r1", cloud(), Value::Null), &meter).await.unwrap();
    assert_eq!(first.outcome, RunOutcome::Completed);
    assert_eq!(first.total, Credits(30), "the run completes although Free includes 25");
    let usage = meter.ledger().current_period().unwrap().clone();
    assert_eq!((usage.included_used, usage.unbilled_credits), (Credits(25), Credits(5)));

    let second = engine.run(&flow, request("r2", cloud(), Value::Null), &meter).await.unwrap();
    assert_eq!(second.outcome, RunOutcome::Paused);
    assert!(second.executions.is_empty() && second.outputs.is_empty(), "a paused run executes nothing");

    let local_run = engine.run(&flow, request("r3", local(), Value::Null), &meter).await.unwrap();
    assert_eq!(local_run.outcome, RunOutcome::Completed, "a run that needs no credits always starts");
    assert_eq!(local_run.executions.len(), 30 + 2);
}

#[tokio::test]
async fn charges_are_idempotent_by_execution_id() {
    let meter = meter(PlanId::Team);
    let run = RunId::new("r1").unwrap();
    assert_eq!(meter.admit(&run, cloud(), &[BlockUsage::of_kind(BlockKind::HttpRequest)]).await.unwrap(), flowcredits_engine::Admission::Running);
    let charge = BlockCharge::new(ExecutionId::new("r1/fetch").unwrap(), BlockUsage::of_kind(BlockKind::HttpRequest));
    assert_eq!(meter.charge(&run, &mut [charge.clone(), charge.clone()]).await.unwrap(), vec![Credits(1), Credits(1)]);
    assert_eq!(meter.ledger().run(&run).unwrap().credits, Credits(1), "the same execution is counted once");
    let conflicting = BlockCharge { usage: BlockUsage::of_kind(BlockKind::Evaluate), ..charge };
    assert!(matches!(meter.charge(&run, &mut [conflicting]).await, Err(EngineError::ExecutionConflict { .. })));
}

const AGENT: &str = r#"
name: agent
blocks:
  - { id: start, kind: start }
  - { id: think, kind: ai_agent, config: { model: gpt-5, tools: [{ name: search }, { name: kb, internal: true }] } }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: think.prompt }
  - { from: think.response, to: show.value }
"#;

#[tokio::test]
async fn ai_blocks_without_a_provider_fail_clearly_and_are_charged() {
    let report = run(AGENT, local(), json!("hi")).await;
    let RunOutcome::Failed { error } = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(error.contains("`think`") && error.contains("no AI provider is configured"), "{error}");
    // The model's price applies on any run type, local too.
    assert_eq!(report.total, Credits(10));
}

struct FakeAgent;

impl AiProvider for FakeAgent {
    fn call<'a>(&'a self, call: AiCall<'a>) -> BoxFuture<'a, Result<AiOutcome, AiFailure>> {
        let outcome = AiOutcome { output: json!(format!("answer to {}", call.prompt)), external_mcp_tools: vec!["search".into(), "fetch".into(), "search".into()], internal_mcp_tools: vec!["kb".into()] };
        async move { Ok(outcome) }.boxed()
    }
}

#[tokio::test]
async fn ai_agent_usage_from_the_provider_sets_the_price() {
    let engine = Engine::new(Providers::default().with_ai("fake", Arc::new(FakeAgent)), Arc::new(MapResolver::default()));
    let report = engine.run(&flow(AGENT), request("r1", local(), json!("q")), &meter(PlanId::Team)).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.outputs[0].value, json!("answer to \"q\""));
    // gpt-5 (10) + 2 unique external tools (2 each); internal tools are free.
    assert_eq!(report.total, Credits(14));
}

#[tokio::test]
async fn an_unknown_model_is_a_problem_of_its_block() {
    let flow = flow(&AGENT.replace("gpt-5", "gpt-99"));
    let err = Engine::default().run(&flow, request("r1", local(), Value::Null), &meter(PlanId::Team)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("block `think`, config.model: unknown model `gpt-99`"), "{message}");
}

#[tokio::test]
async fn integrations_without_a_connector_fail_and_cost_two_credits_even_locally() {
    let report = run(r#"
name: notify
blocks:
  - { id: post, kind: integration, config: { connector: slack, action: post, params: { channel: ops } } }
"#, local(), Value::Null).await;
    let RunOutcome::Failed { error } = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(error.contains("no connector named `slack`"), "{error}");
    assert_eq!(report.total, Credits(2));
}

fn resolver_with(flows: &[&str]) -> MapResolver {
    MapResolver(flows.iter().map(|yaml| { let flow = flow(yaml); (flow.name.clone(), Arc::new(flow)) }).collect::<BTreeMap<_, _>>())
}

const DOUBLE: &str = r#"
name: double
blocks:
  - { id: start, kind: start }
  - { id: twice, kind: list, config: { inputs: [a, b] } }
  - { id: check, kind: if, config: { test: { op: truthy } } }
  - { id: reply, kind: response }
edges:
  - { from: start.input, to: twice.a }
  - { from: start.input, to: twice.b }
  - { from: twice.list, to: check.value }
  - { from: check.then, to: reply.body }
"#;

#[tokio::test]
async fn a_flow_block_runs_another_flow_charged_in_this_run() {
    let engine = Engine::new(Providers::default(), Arc::new(resolver_with(&[DOUBLE])));
    let parent = flow(r#"
name: parent
blocks:
  - { id: start, kind: start }
  - { id: sub, kind: flow, config: { flow: double } }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: sub.input }
  - { from: sub.result, to: show.value }
"#);
    let report = engine.run(&parent, request("r1", cloud(), json!(7)), &meter(PlanId::Team)).await.unwrap();
    assert_eq!(shown(&report), vec![("show".to_owned(), json!([7, 7]))]);
    assert_eq!(receipt(&report), vec![("show".into(), 0), ("start".into(), 0), ("sub".into(), 0), ("sub/check".into(), 1), ("sub/reply".into(), 0), ("sub/start".into(), 0), ("sub/twice".into(), 0)]);
    assert_eq!(report.total, Credits(1));
}

#[tokio::test]
async fn a_flow_that_runs_itself_is_refused_before_it_starts() {
    let looping = r#"
name: ouroboros
blocks:
  - { id: again, kind: flow, config: { flow: ouroboros } }
"#;
    let engine = Engine::new(Providers::default(), Arc::new(resolver_with(&[looping])));
    let err = engine.run(&flow(looping), request("r1", local(), Value::Null), &meter(PlanId::Team)).await.unwrap_err();
    assert!(err.to_string().contains("ouroboros -> ouroboros"), "{err}");
}

fn estimate(yaml: &str, context: RunContext) -> flowcredits_engine::Estimate {
    flowcredits_engine::estimate(&Rules::shipped(), Timestamp::now(), context, &flow(yaml), &resolver_with(&[DOUBLE])).unwrap()
}

#[test]
fn estimates_are_exact_when_the_graph_fixes_the_cost() {
    let api = RunContext::automated(Trigger::Api).unwrap();
    let fixed = estimate(THIRTY_IFS, api);
    assert!(fixed.needs_credits);
    assert_eq!((fixed.exact, fixed.maximum), (Some(Credits(30)), Some(Credits(30))));
    let local_run = estimate(THIRTY_IFS, local());
    assert!(!local_run.needs_credits);
    assert_eq!(local_run.exact, Some(Credits(0)));
    let nested = estimate("name: n\nblocks:\n  - { id: sub, kind: flow, config: { flow: double } }\n", api);
    // The nested flow's `if` always runs; the branch after it holds only free blocks.
    assert_eq!(nested.exact, Some(Credits(1)));
}

#[test]
fn estimates_give_a_minimum_and_the_cost_per_iteration_otherwise() {
    let open = estimate(r#"
name: open
blocks:
  - { id: start, kind: start }
  - { id: first, kind: evaluate, config: { code: "return input" } }
  - { id: each, kind: for }
  - { id: fetch, kind: http_request, config: { url: "http://127.0.0.1:9/{{input}}" } }
  - { id: ok, kind: validate, config: { schema: { type: object } } }
  - { id: route, kind: if, config: { test: { path: body } } }
edges:
  - { from: start.input, to: first.input }
  - { from: first.result, to: each.list }
  - { from: each.item, to: fetch.input }
  - { from: fetch.success, to: ok.value }
  - { from: first.result, to: route.value }
"#, cloud());
    assert!(open.needs_credits);
    assert_eq!(open.exact, None);
    assert_eq!(open.minimum, Credits(2), "evaluate and if always run");
    assert_eq!(open.per_iteration, vec![flowcredits_engine::estimate::LoopCost { at: "each".into(), credits: Credits(2) }]);
    assert_eq!(open.maximum, None, "a loop of unknown length has no most");
    // A nested flow in a loop of unknown length costs, per iteration, at most all of its blocks.
    let nested = estimate("name: nl\nblocks:\n  - { id: start, kind: start }\n  - { id: each, kind: for }\n  - { id: sub, kind: flow, config: { flow: double } }\nedges:\n  - { from: start.input, to: each.list }\n  - { from: each.item, to: sub.input }\n", cloud());
    assert_eq!((nested.exact, nested.minimum), (None, Credits(0)));
    assert_eq!(nested.per_iteration, vec![flowcredits_engine::estimate::LoopCost { at: "each".into(), credits: Credits(1) }], "{:?}", nested.notes);
}

#[tokio::test]
async fn a_flow_whose_fixed_loops_pass_the_execution_limit_is_refused_before_it_is_charged() {
    let nested = r#"
name: too-many
blocks:
  - { id: outer, kind: repeat, config: { times: 3000 } }
  - { id: inner, kind: repeat, config: { times: 1000 } }
  - { id: n, kind: if, config: { test: { op: ge, value: 0 } } }
  - { id: m, kind: if, config: { test: { op: ge, value: 0 } } }
edges:
  - { from: outer.index, to: inner.after }
  - { from: inner.index, to: n.value }
  - { from: inner.index, to: m.value }
"#;
    let ledger = meter(PlanId::Team);
    let err = Engine::default().run(&flow(nested), request("r1", cloud(), Value::Null), &ledger).await.unwrap_err();
    // 1 + 3,000 + 6,000,000: the loops' own starts and both `if`s in every iteration.
    assert!(err.to_string().contains("at least 6003001 block executions") && err.to_string().contains("stopped at 5000000, so it could never finish"), "{err}");
    let estimated = flowcredits_engine::estimate(&Rules::shipped(), Timestamp::now(), cloud(), &flow(nested), &resolver_with(&[])).unwrap();
    assert!(estimated.notes.iter().any(|note| note.contains("runs are refused before they start")), "{:?}", estimated.notes);
    // Under the limit (2 × 1,000 × 1,000 + 1,001), the same shape is not refused up front.
    let fits = nested.replace("times: 3000", "times: 1000").replace("too-many", "fits");
    let admitted = flowcredits_engine::estimate(&Rules::shipped(), Timestamp::now(), cloud(), &flow(&fits), &resolver_with(&[])).unwrap();
    assert_eq!(admitted.exact, Some(Credits(2_000_000)));
    assert!(admitted.notes.is_empty(), "{:?}", admitted.notes);
}

#[test]
fn a_nested_flow_with_open_costs_leaves_each_iteration_open() {
    let children = [
        "name: child-loop\nblocks:\n  - { id: s, kind: start }\n  - { id: inner, kind: for }\n  - { id: e, kind: evaluate, config: { code: \"return input\" } }\nedges:\n  - { from: s.input, to: inner.list }\n  - { from: inner.item, to: e.input }\n",
        AGENT,
    ];
    let resolver = resolver_with(&children);
    let estimate_with = |yaml: &str| flowcredits_engine::estimate(&Rules::shipped(), Timestamp::now(), cloud(), &flow(yaml), &resolver).unwrap();
    let parent = |child: &str| format!("name: parent\nblocks:\n  - {{ id: s, kind: start }}\n  - {{ id: each, kind: for }}\n  - {{ id: sub, kind: flow, config: {{ flow: {child} }} }}\nedges:\n  - {{ from: s.input, to: each.list }}\n  - {{ from: each.item, to: sub.input }}\n");
    // The child's own loop has no length: no per-iteration figure, and no most, rather than a
    // bound of 0 that a run of [[1, 2, 3], [4, 5]] (5 credits) would pass.
    let nested_loop = estimate_with(&parent("child-loop"));
    assert_eq!((nested_loop.exact, nested_loop.minimum, nested_loop.maximum), (None, Credits(0), None), "{:?}", nested_loop.notes);
    assert!(nested_loop.per_iteration.is_empty(), "{:?}", nested_loop.per_iteration);
    assert!(nested_loop.notes.iter().any(|note| note.contains("whose cost has no upper bound")), "{:?}", nested_loop.notes);
    // An agent's tools are open too.
    let agent_name = flow(AGENT).name.clone();
    let nested_agent = estimate_with(&parent(&agent_name));
    assert_eq!((nested_agent.maximum, nested_agent.per_iteration.is_empty()), (None, true), "{:?}", nested_agent.notes);
    assert!(nested_agent.notes.iter().any(|note| note.contains("per unique external MCP tool")), "{:?}", nested_agent.notes);
    // One iteration of a loop costs the same whether the loops around it are written inline or
    // behind a flow block: those loops multiply its iterations, not their cost.
    let inline = estimate_with("name: inline\nblocks:\n  - { id: s, kind: start }\n  - { id: outer, kind: repeat, config: { times: 3 } }\n  - { id: inner, kind: for }\n  - { id: e, kind: evaluate, config: { code: \"return input\" } }\nedges:\n  - { from: s.input, to: inner.list }\n  - { from: outer.index, to: inner.after }\n  - { from: inner.item, to: e.input }\n");
    let behind = estimate_with("name: behind\nblocks:\n  - { id: outer, kind: repeat, config: { times: 3 } }\n  - { id: sub, kind: flow, config: { flow: child-loop } }\nedges:\n  - { from: outer.index, to: sub.input }\n");
    assert_eq!(inline.per_iteration.iter().map(|line| line.credits).collect::<Vec<_>>(), vec![Credits(1)], "{:?}", inline.per_iteration);
    assert_eq!(behind.per_iteration.iter().map(|line| line.credits).collect::<Vec<_>>(), vec![Credits(1)], "{:?}", behind.per_iteration);
}

#[test]
fn estimates_bound_a_cost_that_only_branches_leave_open() {
    let branches = estimate(r#"
name: branches
blocks:
  - { id: start, kind: start }
  - { id: route, kind: if, config: { test: { path: n, op: gt, value: 1 } } }
  - { id: big, kind: validate, config: { schema: { type: object } } }
  - { id: small, kind: evaluate, config: { code: "return input" } }
  - { id: tail, kind: if, config: { test: { path: n } } }
edges:
  - { from: start.input, to: route.value }
  - { from: route.then, to: big.value }
  - { from: route.else, to: small.input }
  - { from: big.pass, to: tail.value }
"#, cloud());
    // `route` always runs; one of `big` and `small` runs, and `tail` only after `big`: 2 (route
    // and small) to 3 (route, big and tail), not 1 to 4 (all branches taken at once).
    assert_eq!((branches.exact, branches.minimum, branches.maximum), (None, Credits(2), Some(Credits(3))), "{:?}", branches.notes);
    // A loop whose body reads a value from a branch waits for it: when the branch is not taken,
    // neither the loop nor what follows it runs, so the cost is not fixed.
    let waiting = estimate(r#"
name: wait2
blocks:
  - { id: s, kind: start }
  - { id: g, kind: if, config: { test: { op: truthy } } }
  - { id: r, kind: repeat, config: { times: 2 } }
  - { id: rec, kind: record, config: { inputs: [i, v] } }
  - { id: after, kind: evaluate, config: { code: "return 'done ' + input" } }
  - { id: show, kind: display }
edges:
  - { from: s.input, to: g.value }
  - { from: r.index, to: rec.i }
  - { from: g.then, to: rec.v }
  - { from: r.done, to: after.input }
  - { from: after.result, to: show.value }
"#, cloud());
    assert_eq!((waiting.exact, waiting.minimum, waiting.maximum), (None, Credits(1), Some(Credits(2))), "{:?}", waiting.notes);
    // An agent's tool charges are known only when it runs: no most.
    let agent = estimate(AGENT, cloud());
    assert_eq!((agent.exact, agent.maximum), (None, None), "{:?}", agent.notes);
}

#[test]
fn the_run_future_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let flow = flow(THIRTY_IFS);
    let meter = meter(PlanId::Team);
    let engine = Engine::default();
    let future = engine.run(&flow, request("r1", local(), Value::Null), &meter);
    assert_send(&future);
}

#[test]
fn nested_flows_are_refused_past_their_depth_and_a_flow_may_not_run_itself() {
    let chain = |name: String, child: Option<String>| match child {
        Some(child) => format!("name: {name}\nblocks:\n  - {{ id: sub, kind: flow, config: {{ flow: {child} }} }}\n"),
        None => format!("name: {name}\nblocks:\n  - {{ id: s, kind: start }}\n"),
    };
    let depth = flowcredits_engine::FLOW_NESTING_MAX + 1;
    let files: Vec<String> = (0..=depth).map(|level| chain(format!("l{level}"), (level < depth).then(|| format!("l{}", level + 1)))).collect();
    let resolver = resolver_with(&files.iter().map(String::as_str).collect::<Vec<_>>());
    let err = flowcredits_engine::resolve_all(&flow(&files[0]), &resolver).unwrap_err().to_string();
    assert!(err.contains(&format!("more than {} flows deep", flowcredits_engine::FLOW_NESTING_MAX)) && !err.contains("cannot be found"), "{err}");
    let looped = resolver_with(&["name: a\nblocks:\n  - { id: sub, kind: flow, config: { flow: b } }\n", "name: b\nblocks:\n  - { id: sub, kind: flow, config: { flow: a } }\n"]);
    let err = flowcredits_engine::resolve_all(&flow("name: a\nblocks:\n  - { id: sub, kind: flow, config: { flow: b } }\n"), &looped).unwrap_err().to_string();
    assert!(err.contains("includes itself"), "{err}");
}

#[test]
fn a_flow_directory_finds_a_nested_flow_by_its_file_or_by_the_name_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("renamed.yaml"), "name: realname\nblocks:\n  - { id: s, kind: start }\n").unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "name: [").unwrap();
    let resolver = flowcredits_engine::DirResolver::new(dir.path());
    // As the server finds flows (by name), and as files are named.
    for parent in ["name: p\nblocks:\n  - { id: sub, kind: flow, config: { flow: realname } }\n", "name: p\nblocks:\n  - { id: sub, kind: flow, config: { flow: renamed } }\n"] {
        let flows = flowcredits_engine::resolve_all(&flow(parent), &resolver).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(flows.values().map(|child| child.name.as_str()).collect::<Vec<_>>(), ["realname"]);
    }
    let err = flowcredits_engine::resolve_all(&flow("name: p\nblocks:\n  - { id: sub, kind: flow, config: { flow: ghost } }\n"), &resolver).unwrap_err().to_string();
    assert!(err.contains("ghost") && err.contains("nor a flow file there whose name is `ghost`") && err.contains("block `sub`, config.flow"), "{err}");
    // Two files holding the same name: refused, not whichever the directory lists first.
    std::fs::write(dir.path().join("again.yaml"), "name: realname
blocks:
  - { id: t, kind: start }
").unwrap();
    let err = flowcredits_engine::resolve_all(&flow("name: p
blocks:
  - { id: sub, kind: flow, config: { flow: realname } }
"), &resolver).unwrap_err().to_string();
    assert!(err.contains("again.yaml") && err.contains("renamed.yaml") && err.contains("all hold a flow named `realname`"), "{err}");
}

/// An `if` whose two branches cost the same, and a `condition` with three exits (2, 1 and 0
/// credits behind them): one branch runs, never all of them.
const EXCLUSIVE_BRANCHES: &str = r#"
name: exclusive
blocks:
  - { id: start, kind: start }
  - { id: big, kind: if, config: { test: { path: n, op: gt, value: 5 } } }
  - { id: calc, kind: evaluate, config: { code: "return input.n * 2" } }
  - { id: check, kind: validate, config: { schema: { type: object } } }
  - { id: route, kind: condition, config: { branches: [ { name: pkg, test: { path: k, op: eq, value: a } }, { name: js, test: { path: k, op: eq, value: b } } ] } }
  - { id: chunk, kind: evaluate_with_packages, config: { code: "return 1" } }
  - { id: plain, kind: evaluate, config: { code: "return 2" } }
edges:
  - { from: start.input, to: big.value }
  - { from: big.then, to: calc.input }
  - { from: big.else, to: check.value }
  - { from: start.input, to: route.value }
  - { from: route.pkg, to: chunk.input }
  - { from: route.js, to: plain.input }
"#;

#[tokio::test]
async fn estimates_of_branches_that_exclude_each_other_are_the_costs_a_run_can_have() {
    let estimated = estimate(EXCLUSIVE_BRANCHES, cloud());
    // if 1 + calc or check 1 + condition 1 + chunk 2, plain 1 or nothing: 3 to 5, never 6 (every branch taken).
    assert_eq!((estimated.exact, estimated.minimum, estimated.maximum), (None, Credits(3), Some(Credits(5))), "{:?}", estimated.notes);
    let engine = Engine::default();
    let mut charged = Vec::new();
    for (run, input) in [("r1", json!({"n": 9, "k": "a"})), ("r2", json!({"n": 1, "k": "b"})), ("r3", json!({"n": 1, "k": "c"}))] {
        let report = engine.run(&flow(EXCLUSIVE_BRANCHES), request(run, cloud(), input), &meter(PlanId::Team)).await.unwrap();
        assert_eq!(report.outcome, RunOutcome::Completed);
        charged.push(report.total);
    }
    assert_eq!(charged, vec![Credits(5), Credits(4), Credits(3)], "the runs reach the estimate's least and most");
    // Only the `if` part: both branches cost 1, so the graph fixes the cost.
    let fixed = estimate(&EXCLUSIVE_BRANCHES.replace("  - { from: start.input, to: route.value }\n", "").replace("  - { id: route, kind: condition, config: { branches: [ { name: pkg, test: { path: k, op: eq, value: a } }, { name: js, test: { path: k, op: eq, value: b } } ] } }\n", "").replace("  - { from: route.pkg, to: chunk.input }\n  - { from: route.js, to: plain.input }\n", "").replace("  - { id: chunk, kind: evaluate_with_packages, config: { code: \"return 1\" } }\n  - { id: plain, kind: evaluate, config: { code: \"return 2\" } }\n", ""), cloud());
    assert_eq!((fixed.exact, fixed.minimum, fixed.maximum), (Some(Credits(2)), Credits(2), Some(Credits(2))), "{:?}", fixed.notes);
    assert!(fixed.notes.is_empty(), "{:?}", fixed.notes);
}
