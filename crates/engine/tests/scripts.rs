//! evaluate and evaluate_with_packages: results, the sandbox, and the limits.

mod common;

use common::*;
use flowcredits_engine::{EngineError, RunOutcome, RunReport};
use serde_json::{Value, json};

/// Runs `start -> script -> display` with the script block given as YAML flow-style config.
async fn script(kind: &str, config: &str, input: Value) -> RunReport {
    let yaml = format!(
        "name: script\nblocks:\n  - {{ id: start, kind: start }}\n  - {{ id: js, kind: {kind}, config: {config} }}\n  - {{ id: show, kind: display }}\nedges:\n  - {{ from: start.input, to: js.input }}\n  - {{ from: js.result, to: show.value }}\n"
    );
    run(&yaml, cloud(), input).await
}

fn result(report: &RunReport) -> Value {
    assert_eq!(report.outcome, RunOutcome::Completed, "{:?}", report.outcome);
    report.outputs[0].value.clone()
}

fn error(report: &RunReport) -> String {
    match &report.outcome {
        RunOutcome::Failed { error } => error.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn javascript_reads_input_and_returns_json() {
    let report = script("evaluate", r#"{ code: "return { sum: input.a + input.b, list: [1, 2].map(x => x * 2) };" }"#, json!({"a": 2, "b": 3})).await;
    assert_eq!(result(&report), json!({"sum": 5, "list": [2, 4]}));
    // evaluate costs 1 credit in the cloud.
    assert_eq!(receipt(&report).iter().find(|(id, _)| id == "js").unwrap().1, 1);
}

#[tokio::test]
async fn typescript_runs_with_its_types_stripped() {
    let code = r#""interface Row { n: number }\nconst rows: Row[] = input;\nconst total: number = rows.reduce((sum: number, row: Row) => sum + row.n, 0);\nreturn total as number;""#;
    let report = script("evaluate", &format!("{{ language: typescript, code: {code} }}"), json!([{"n": 1}, {"n": 41}])).await;
    assert_eq!(result(&report), json!(42));
}

#[tokio::test]
async fn a_runaway_script_is_stopped_at_its_time_limit_and_still_charged() {
    let report = script("evaluate", r#"{ code: "while (true) {}", timeout_ms: 50 }"#, json!(null)).await;
    let error = error(&report);
    assert!(error.contains("`js`") && error.contains("50 ms"), "{error}");
    let js = report.executions.iter().find(|execution| execution.block() == "js").unwrap();
    assert!(!js.ok);
    assert_eq!(js.credits.0, 1);
}

#[tokio::test]
async fn a_script_that_allocates_without_bound_hits_the_memory_limit() {
    // Large strings, many small ones, a growing map: however the heap fills, the message is the
    // memory limit's (a failed allocation in a string operation throws no error value).
    for code in ["const a = []; while (true) { a.push('x'.repeat(1 << 16)); }", "let a = []; while (true) { a.push('y' + a.length); }", "const m = new Map(); let i = 0; while (true) { m.set('k' + i, i++); }"] {
        let report = script("evaluate", &format!("{{ code: \"{code}\", timeout_ms: 10000 }}"), json!(null)).await;
        let error = error(&report);
        let limit = flowcredits_engine::js::EVALUATE_MEMORY_BYTES_MAX.to_string();
        assert!(error.contains("memory") && error.contains(&limit), "{code}: {error}");
    }
    // Some failed allocations throw no error value, as `throw null` does: the message says both.
    let error = error(&script("evaluate", r#"{ code: "throw null" }"#, json!(null)).await);
    assert!(error.contains("no error value") && error.contains("memory"), "{error}");
}

#[tokio::test]
async fn thrown_errors_name_the_block() {
    let error = error(&script("evaluate", r#"{ code: "throw new Error('bad row')" }"#, json!(null)).await);
    assert!(error.contains("`js`") && error.contains("bad row"), "{error}");
}

#[tokio::test]
async fn the_sandbox_has_no_modules_files_or_network() {
    for code in ["return typeof require", "return typeof fetch", "return typeof std", "return typeof os", "return typeof XMLHttpRequest"] {
        let report = script("evaluate", &format!("{{ code: {code:?} }}"), json!(null)).await;
        assert_eq!(result(&report), json!("undefined"), "{code}");
    }
}

#[tokio::test]
async fn packages_come_from_the_vetted_set() {
    let code = r#""import _ from 'lodash';\nconst dayjs = require('dayjs');\nreturn { chunks: _.chunk(input, 2), day: dayjs('2026-03-02T10:00:00Z').add(1, 'day').toISOString().slice(0, 10) };""#;
    let report = script("evaluate_with_packages", &format!("{{ code: {code} }}"), json!([1, 2, 3])).await;
    assert_eq!(result(&report), json!({"chunks": [[1, 2], [3]], "day": "2026-03-03"}));
    // evaluate_with_packages costs 2 credits in the cloud.
    assert_eq!(receipt(&report).iter().find(|(id, _)| id == "js").unwrap().1, 2);
}

#[test]
fn imports_are_checked_when_the_flow_loads() {
    let load = |kind: &str, code: &str| {
        let yaml = format!("name: s\nblocks:\n  - {{ id: js, kind: {kind}, config: {{ code: {code:?} }} }}\n");
        match flowcredits_engine::Flow::load(&yaml, flowcredits_engine::Syntax::Yaml) {
            Err(EngineError::Invalid { problems, .. }) => problems.to_string(),
            Err(other) => panic!("{other}"),
            Ok(_) => String::new(),
        }
    };
    let plain = load("evaluate", "const _ = require('lodash'); return 1");
    assert!(plain.contains("block `js`, config.code") && plain.contains("evaluate_with_packages"), "{plain}");
    // A module that no block kind has is not offered from the vetted set to a plain evaluate.
    let module = load("evaluate", "const fs = require('fs'); return 1");
    assert!(module.contains("block `js`, config.code: imports `fs`, but evaluate runs without packages") && !module.contains("vetted"), "{module}");
    let unknown = load("evaluate_with_packages", "import x from 'left-pad'\nreturn 1");
    assert!(unknown.contains("left-pad") && unknown.contains("lodash, dayjs"), "{unknown}");
    assert_eq!(load("evaluate_with_packages", "import * as _ from 'lodash'\nreturn 1"), "");
    // A script that does not compile is a problem of the file, with its line: nothing runs.
    let broken = load("evaluate", "const s = input.status;\n\nreturn { ok: s == 'ok' ;");
    assert!(broken.contains("block `js`, config.code: does not compile, line 3"), "{broken}");
    let typed = format!("{{ code: {:?}, language: typescript }}", "const n: number = 1;\nreturn n +;");
    let yaml = format!("name: s\nblocks:\n  - {{ id: js, kind: evaluate, config: {typed} }}\n");
    let err = flowcredits_engine::Flow::load(&yaml, flowcredits_engine::Syntax::Yaml).err().map(|err| err.to_string()).unwrap_or_default();
    assert!(err.contains("does not compile, line 2"), "TypeScript keeps its lines: {err}");
    // A script cut off mid-expression is not sent to a line past its end.
    let unfinished = load("evaluate", "const a = 1;\nreturn a +");
    assert!(unfinished.contains("does not compile: the script ends before an expression, bracket or string in it is finished"), "{unfinished}");
    // Loading only compiles: code that closes the wrapper early is not run at load.
    assert_eq!(load("evaluate", "return 1});\nthrow new Error('ran at load');\n(function(){"), "", "nothing of the script ran while the flow loaded");
}

#[tokio::test]
async fn an_async_script_is_refused_with_a_reason() {
    let error = error(&script("evaluate", r#"{ code: "return (async () => 1)()" }"#, json!(null)).await);
    assert!(error.contains("returned a Promise") && !error.contains("threw"), "{error}");
}

#[tokio::test]
async fn a_script_returning_no_json_value_says_what_it_returned() {
    for (code, returned) in [("return function () {}", "returned a function"), ("return Symbol('x')", "returned a symbol")] {
        let error = error(&script("evaluate", &format!("{{ code: \"{code}\" }}"), json!(null)).await);
        assert!(error.contains(returned) && error.contains("not a JSON value") && !error.contains("threw"), "{code}: {error}");
    }
}

#[tokio::test]
async fn a_result_nested_too_deep_says_so() {
    let report = script("evaluate", r#"{ code: "let v = 1; for (let i = 0; i < 1000; i++) { v = [v]; } return v;" }"#, json!(null)).await;
    let error = error(&report);
    assert!(error.contains("the result is nested more than 128 levels deep"), "{error}");
}

/// Scripts from many runs at once take turns: never more than the process's limit run
/// together (each may use the whole memory limit), and every one still gets its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_from_many_runs_take_turns_within_the_process_limit() {
    let limit = flowcredits_engine::js::EVALUATE_CONCURRENT_MAX;
    let mut runs = tokio::task::JoinSet::new();
    for n in 0..3 * limit {
        // Busy for 200 ms, so that the runs overlap.
        let config = "{ code: 'const until = Date.now() + 200; while (Date.now() < until) {} return input + 1;', timeout_ms: 5000 }";
        runs.spawn(async move { (n, result(&script("evaluate", config, json!(n)).await)) });
    }
    let mut seen = 0;
    while let Some(joined) = runs.join_next().await {
        let (n, value) = joined.unwrap();
        assert_eq!(value, json!(n + 1));
        seen += 1;
    }
    assert_eq!(seen, 3 * limit);
    assert_eq!(flowcredits_engine::js::scripts_running_peak(), limit, "as many as the limit ran at once, and no more");
}
