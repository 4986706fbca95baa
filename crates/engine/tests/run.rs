//! Running flows: data flow, routing, loops, variables, nested flows and metering.

mod common;

use common::*;
use flowcredits_engine::RunOutcome;
use serde_json::json;

#[tokio::test]
async fn data_flows_along_edges_into_a_display() {
    let report = run(r#"
name: greet
config: { greeting: Hello }
blocks:
  - { id: start, kind: start }
  - { id: name, kind: select, config: { path: user.name } }
  - { id: text, kind: template, config: { template: "{{config.greeting}}, {{input}}!" } }
  - { id: show, kind: display, config: { label: greeting } }
edges:
  - { from: start.input, to: name.value }
  - { from: name.value, to: text.input }
  - { from: text.text, to: show.value }
"#, local(), json!({"user": {"name": "Ada"}})).await;
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(shown(&report), vec![("greeting".to_owned(), json!("Hello, Ada!"))]);
    assert_eq!(receipt(&report), vec![("name".into(), 0), ("show".into(), 0), ("start".into(), 0), ("text".into(), 0)]);
}

#[tokio::test]
async fn if_routes_and_only_the_taken_branch_runs_and_is_charged() {
    let yaml = r#"
name: route
blocks:
  - { id: start, kind: start }
  - { id: check, kind: if, config: { test: { path: n, op: gt, value: 10 } } }
  - { id: big, kind: display, config: { label: big } }
  - { id: small, kind: display, config: { label: small } }
edges:
  - { from: start.input, to: check.value }
  - { from: check.then, to: big.value }
  - { from: check.else, to: small.value }
"#;
    let report = run(yaml, cloud(), json!({"n": 11})).await;
    assert_eq!(shown(&report), vec![("big".to_owned(), json!({"n": 11}))]);
    assert_eq!(receipt(&report), vec![("big".into(), 0), ("check".into(), 1), ("start".into(), 0)]);
    assert_eq!(report.total.0, 1);
    let report = run(yaml, local(), json!({"n": 3})).await;
    assert_eq!(shown(&report), vec![("small".to_owned(), json!({"n": 3}))]);
    assert_eq!(report.total.0, 0);
}

#[tokio::test]
async fn condition_takes_the_first_true_branch_else_default() {
    let yaml = r#"
name: grade
blocks:
  - { id: start, kind: start }
  - id: grade
    kind: condition
    config:
      branches:
        - { name: top, test: { op: ge, value: 90 } }
        - { name: pass, test: { op: ge, value: 50 } }
  - { id: top, kind: display, config: { label: top } }
  - { id: pass, kind: display, config: { label: pass } }
  - { id: fail, kind: display, config: { label: fail } }
edges:
  - { from: start.input, to: grade.value }
  - { from: grade.top, to: top.value }
  - { from: grade.pass, to: pass.value }
  - { from: grade.default, to: fail.value }
"#;
    for (score, label) in [(95, "top"), (90, "top"), (70, "pass"), (10, "fail")] {
        let report = run(yaml, local(), json!(score)).await;
        assert_eq!(shown(&report), vec![(label.to_owned(), json!(score))], "score {score}");
    }
}

#[tokio::test]
async fn for_loop_charges_each_iteration_and_collect_gathers_results() {
    let report = run(r#"
name: loop
blocks:
  - { id: start, kind: start }
  - { id: each, kind: for }
  - { id: keep, kind: if, config: { test: { path: ok } } }
  - { id: name, kind: select, config: { path: name } }
  - { id: gather, kind: collect }
  - { id: show, kind: display, config: { label: names } }
  - { id: count, kind: display, config: { label: iterations } }
edges:
  - { from: start.input, to: each.list }
  - { from: each.item, to: keep.value }
  - { from: keep.then, to: name.value }
  - { from: name.value, to: gather.item }
  - { from: gather.list, to: show.value }
  - { from: each.done, to: count.value }
"#, cloud(), json!([{"name": "a", "ok": true}, {"name": "b", "ok": false}, {"name": "c", "ok": true}])).await;
    assert_eq!(report.outcome, RunOutcome::Completed);
    let mut shown = shown(&report);
    shown.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(shown, vec![("iterations".to_owned(), json!(3)), ("names".to_owned(), json!(["a", "c"]))]);
    // `if` costs 1 in the cloud, once per iteration.
    assert_eq!(report.total.0, 3);
    let ids: Vec<String> = receipt(&report).into_iter().map(|(id, _)| id).collect();
    assert!(ids.contains(&"each#0/keep".to_owned()) && ids.contains(&"each#2/keep".to_owned()) && ids.contains(&"each#1/keep".to_owned()), "{ids:?}");
    assert!(ids.contains(&"each#0/name".to_owned()) && !ids.contains(&"each#1/name".to_owned()), "{ids:?}");
}

#[tokio::test]
async fn loop_bodies_read_outside_values_and_nested_loops_collect_per_level() {
    let report = run(r#"
name: nested
blocks:
  - { id: start, kind: start }
  - { id: rows, kind: select, config: { path: rows } }
  - { id: suffix, kind: select, config: { path: suffix } }
  - { id: outer, kind: for }
  - { id: inner, kind: for }
  - { id: cell, kind: record, config: { inputs: [value, suffix] } }
  - { id: cells, kind: collect }
  - { id: table, kind: collect }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: rows.value }
  - { from: start.input, to: suffix.value }
  - { from: rows.value, to: outer.list }
  - { from: outer.item, to: inner.list }
  - { from: inner.item, to: cell.value }
  - { from: suffix.value, to: cell.suffix }
  - { from: cell.record, to: cells.item }
  - { from: cells.list, to: table.item }
  - { from: table.list, to: show.value }
"#, local(), json!({"rows": [[1, 2], [3]], "suffix": "!"})).await;
    assert_eq!(report.outcome, RunOutcome::Completed, "{:?}", report.outcome);
    assert_eq!(shown(&report), vec![("show".to_owned(), json!([[{"value": 1, "suffix": "!"}, {"value": 2, "suffix": "!"}], [{"value": 3, "suffix": "!"}]]))]);
}

#[tokio::test]
async fn repeat_stops_when_its_body_says_so() {
    let report = run(r#"
name: until-three
blocks:
  - { id: loop, kind: repeat, config: { times: 10 } }
  - { id: enough, kind: if, config: { test: { op: ge, value: 2 } } }
  - { id: seen, kind: collect }
  - { id: show, kind: display }
edges:
  - { from: loop.index, to: enough.value }
  - { from: enough.then, to: loop.stop }
  - { from: loop.index, to: seen.item }
  - { from: seen.list, to: show.value }
"#, local(), json!(null)).await;
    assert_eq!(shown(&report), vec![("show".to_owned(), json!([0, 1, 2]))]);
}

/// A repeat's `times` input takes a whole number however JSON writes it (`3`, `3.0`, `3e0`) and
/// refuses a fraction or a negative number, naming `times`.
#[tokio::test]
async fn repeat_times_from_input_takes_whole_numbers_however_written() {
    let flow = r#"
name: times-from-input
blocks:
  - { id: start, kind: start }
  - { id: loop, kind: repeat }
  - { id: seen, kind: collect }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: loop.times }
  - { from: loop.index, to: seen.item }
  - { from: seen.list, to: show.value }
"#;
    for times in [json!(3), serde_json::from_str("3.0").unwrap(), serde_json::from_str("3e0").unwrap()] {
        let report = run(flow, local(), times.clone()).await;
        assert_eq!(shown(&report), vec![("show".to_owned(), json!([0, 1, 2]))], "times {times}");
    }
    for times in [json!(2.5), json!(-1)] {
        let report = run(flow, local(), times.clone()).await;
        assert!(format!("{:?}", report.outcome).contains("`times` must be a whole number"), "times {times}: {:?}", report.outcome);
    }
}

#[tokio::test]
async fn variables_and_or_and_constants() {
    let report = run(r#"
name: vars
blocks:
  - { id: start, kind: start }
  - { id: set, kind: set_variable, config: { name: who } }
  - { id: get, kind: get_variable, config: { name: who } }
  - { id: two, kind: number, config: { value: 2 } }
  - { id: either, kind: or }
  - { id: pair, kind: list, config: { items: [first], inputs: [a, b] } }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: set.value }
  - { from: set.value, to: get.after }
  - { from: get.value, to: either.value }
  - { from: two.value, to: either.value }
  - { from: either.value, to: pair.a }
  - { from: two.value, to: pair.b }
  - { from: pair.list, to: show.value }
"#, local(), json!("ada")).await;
    let shown = shown(&report);
    assert_eq!(shown.len(), 1);
    // `or` passes whichever value arrives first: the constant runs before the variable chain.
    assert_eq!(shown[0].1, json!(["first", 2, 2]));
}

#[tokio::test]
async fn a_failing_block_fails_the_run_and_is_charged() {
    let report = run(r#"
name: fails
blocks:
  - { id: start, kind: start }
  - { id: pick, kind: select, config: { path: missing } }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: pick.value }
  - { from: pick.value, to: show.value }
"#, local(), json!({})).await;
    let RunOutcome::Failed { error } = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(error.contains("`pick`") && error.contains("path"), "{error}");
    let pick = report.executions.iter().find(|execution| execution.block() == "pick").unwrap();
    assert!(!pick.ok);
    assert!(report.outputs.is_empty());
}

#[tokio::test]
async fn dates_config_and_the_http_trigger_blocks() {
    let report = run(r#"
name: misc
config: { region: eu }
blocks:
  - { id: request, kind: request }
  - { id: when, kind: select, config: { path: at } }
  - { id: later, kind: date, config: { add_ms: 86400000 } }
  - { id: region, kind: get_config, config: { key: region } }
  - { id: missing, kind: get_config, config: { key: nope, default: fallback } }
  - { id: reply, kind: record, config: { inputs: [day, region, other] } }
  - { id: code, kind: number, config: { value: 201 } }
  - { id: answer, kind: response }
edges:
  - { from: request.body, to: when.value }
  - { from: when.value, to: later.value }
  - { from: later.date, to: reply.day }
  - { from: region.value, to: reply.region }
  - { from: missing.value, to: reply.other }
  - { from: reply.record, to: answer.body }
  - { from: code.value, to: answer.status }
"#, local(), json!({"at": "2026-03-31T23:00:00Z"})).await;
    assert_eq!(report.outcome, RunOutcome::Completed, "{:?}", report.outcome);
    let response = report.response.unwrap();
    assert_eq!((response.status, response.body), (201, json!({"day": "2026-04-01", "region": "eu", "other": "fallback"})));
}

#[tokio::test]
async fn an_mcp_trigger_checks_the_arguments_against_its_schema() {
    let yaml = r#"
name: tool
blocks:
  - { id: tool, kind: mcp, config: { input_schema: { type: object, required: [city] } } }
  - { id: show, kind: display }
edges:
  - { from: tool.arguments, to: show.value }
"#;
    assert_eq!(run(yaml, local(), json!({"city": "Oslo"})).await.outputs[0].value, json!({"city": "Oslo"}));
    let RunOutcome::Failed { error } = run(yaml, local(), json!({})).await.outcome else { panic!("expected a failure") };
    assert!(error.contains("`tool`") && error.contains("city"), "{error}");
}

#[tokio::test]
async fn a_run_stops_at_its_execution_limit() {
    let engine = flowcredits_engine::Engine::default().with_limits(flowcredits_engine::Limits { run_executions_max: 10 });
    // The loop's length comes with the input, so only the run can find it too long (a fixed
    // count past the limit is refused before the run starts: the `metering` tests).
    let flow = flow(r#"
name: long
blocks:
  - { id: start, kind: start }
  - { id: loop, kind: for }
  - { id: pick, kind: select, config: { path: $ } }
edges:
  - { from: start.input, to: loop.list }
  - { from: loop.item, to: pick.value }
"#);
    let items: Vec<u32> = (0..100).collect();
    let report = engine.run(&flow, request("r1", local(), json!(items)), &meter(flowcredits_core::PlanId::Team)).await.unwrap();
    let RunOutcome::Failed { error } = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(error.contains("limit of 10 block executions"), "{error}");
    // The ten executions that reached the limit (`start` and nine picks) are charged, and the
    // loop's own, which ended there.
    assert_eq!(report.executions.iter().filter(|execution| execution.block() == "pick").count(), 9);
    assert_eq!(report.executions.len(), 11);
}

#[tokio::test]
async fn an_inner_loop_reads_the_outer_loops_item() {
    // `after` puts the inner loop in the outer one's body although its list comes from outside.
    let report = run(r#"
name: pairs
blocks:
  - { id: start, kind: start }
  - { id: rows, kind: for }
  - { id: cols, kind: list, config: { items: [x, y] } }
  - { id: each-col, kind: for }
  - { id: pair, kind: record, config: { inputs: [row, col] } }
  - { id: row-pairs, kind: collect }
  - { id: all, kind: collect }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: rows.list }
  - { from: cols.list, to: each-col.list }
  - { from: rows.item, to: each-col.after }
  - { from: rows.item, to: pair.row }
  - { from: each-col.item, to: pair.col }
  - { from: pair.record, to: row-pairs.item }
  - { from: row-pairs.list, to: all.item }
  - { from: all.list, to: show.value }
"#, local(), json!([1, 2])).await;
    assert_eq!(report.outcome, RunOutcome::Completed, "{:?}", report.outcome);
    assert_eq!(report.outputs[0].value, json!([[{"row": 1, "col": "x"}, {"row": 1, "col": "y"}], [{"row": 2, "col": "x"}, {"row": 2, "col": "y"}]]));
}

#[tokio::test]
async fn a_response_status_input_must_be_a_final_http_status() {
    let yaml = r#"
name: status
blocks:
  - { id: start, kind: start }
  - { id: code, kind: select, config: { path: s } }
  - { id: answer, kind: response }
edges:
  - { from: start.input, to: code.value }
  - { from: start.input, to: answer.body }
  - { from: code.value, to: answer.status }
"#;
    for (status, answered) in [(json!(200), Some(200)), (json!(404), Some(404)), (json!(599), Some(599)), (json!(999), None), (json!(101), None), (json!(199), None), (json!(-1), None), (json!(2.5e2), None), (json!("abc"), None)] {
        let report = run(yaml, local(), json!({"s": status})).await;
        match answered {
            Some(code) => {
                assert_eq!(report.outcome, RunOutcome::Completed, "{status}: {:?}", report.outcome);
                assert_eq!(report.response.map(|response| response.status), Some(code), "{status}");
            }
            None => {
                let RunOutcome::Failed { error } = &report.outcome else { panic!("{status}: {:?}", report.outcome) };
                assert!(error.contains("`answer`") && error.contains("input `status`") && error.contains("200 to 599"), "{status}: {error}");
                assert!(report.response.is_none(), "{status}");
            }
        }
    }
}
