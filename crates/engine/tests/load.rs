//! Loading flow files: every problem is reported at once, with its block and field.

use flowcredits_engine::{EngineError, Flow, Syntax};

/// Loads `text` and returns its problems, one string each (empty when the flow is valid).
fn problems(text: &str, syntax: Syntax) -> Vec<String> {
    match Flow::load(text, syntax) {
        Ok(_) => Vec::new(),
        Err(EngineError::Invalid { problems, .. }) => problems.0.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("{other}"),
    }
}

fn check(yaml: &str, expect: &[&str]) {
    let found = problems(yaml, Syntax::Yaml);
    assert_eq!(found.len(), expect.len(), "expected {expect:#?}\nfound {found:#?}");
    for (found, expect) in found.iter().zip(expect) {
        assert!(found.contains(expect), "`{found}` should contain `{expect}`\nall: {:#?}", problems(yaml, Syntax::Yaml));
    }
}

#[test]
fn every_problem_is_reported_with_block_and_field() {
    check(r#"
name: broken
blocks:
  - { id: start, kind: start }
  - { id: fetch, kind: http_request, config: { method: FETCH, timeout_ms: 999999 } }
  - { id: magic, kind: teleport }
  - { id: pick, kind: select, config: { path: "a[", colour: red } }
  - { id: n, kind: number, config: { value: "seven" } }
  - { id: each, kind: for }
  - { id: show, kind: display }
edges:
  - { from: start.input, to: fetch.nope }
  - { from: n.value, to: each.list }
  - { from: ghost.value, to: show.value }
  - { from: show.value, to: pick.value }
"#, &[
        "block `fetch`, config.method: `FETCH` is not one of GET",
        "block `fetch`, config.url: missing",
        "block `fetch`, config.timeout_ms: must be a whole number of milliseconds from 1 to 60000",
        "block `magic`, kind: unknown block kind `teleport`",
        "block `pick`, config.path: `a[` has an unclosed `[`",
        "block `pick`, config.colour: unknown field (expected path, default)",
        "block `n`, config.value: expected a number, found \"seven\"",
        "block `fetch`, edges[0].to: `nope` is not an input port of this http_request block; inputs: input, body",
        "block `each`, edges[1].to: `list` takes a list, but `n.value` gives a number",
        "edges[2].from: no block has the id `ghost`",
        "block `show`, edges[3].from: `value` is not an output port of this display block (that is an input port",
        "block `pick`, inputs.value: required input has no edge",
        "block `show`, inputs.value: required input has no edge",
    ]);
}

#[test]
fn a_cycle_is_refused_unless_it_goes_into_a_loops_stop_port() {
    check(r#"
name: cycle
blocks:
  - { id: a, kind: or }
  - { id: b, kind: select, config: { path: x } }
edges:
  - { from: a.value, to: b.value }
  - { from: b.value, to: a.value }
"#, &["block `a`, edges: is part of a cycle among `a`, `b`"]);
    // A block the cycle feeds is not named as part of it.
    check(r#"
name: fed
blocks:
  - { id: a, kind: template, config: { template: "x" } }
  - { id: b, kind: select, config: { path: x } }
  - { id: c, kind: display }
edges:
  - { from: a.text, to: b.value }
  - { from: b.value, to: a.input }
  - { from: a.text, to: c.value }
"#, &["block `a`, edges: is part of a cycle among `a`, `b`; only"]);
    check(r#"
name: stop-from-outside
blocks:
  - { id: start, kind: start }
  - { id: loop, kind: repeat, config: { times: 2 } }
  - { id: log, kind: log }
edges:
  - { from: start.input, to: loop.stop }
  - { from: loop.index, to: log.value }
"#, &["block `loop`, inputs.stop: the edge from `start` comes from outside this loop's body"]);
    // A config value given but refused is one problem, not also "missing".
    check(r#"
name: refused-not-missing
blocks:
  - { id: start, kind: start }
  - { id: many, kind: repeat, config: { times: 2000000 } }
  - { id: odd, kind: if, config: { test: { path: x, op: regex } } }
edges:
  - { from: start.input, to: odd.value }
"#, &[
        "block `many`, config.times: must be a whole number of iterations from 0 to 1000000, not 2000000",
        "block `odd`, config.test: unknown op `regex`",
    ]);
}

#[test]
fn loops_need_their_collects_and_inputs() {
    check(r#"
name: loops
blocks:
  - { id: start, kind: start }
  - { id: gather, kind: collect }
  - { id: again, kind: repeat }
  - { id: one, kind: repeat, config: { times: 2 } }
  - { id: both, kind: collect }
  - { id: two, kind: repeat, config: { times: 2 } }
  - { id: mix, kind: or }
edges:
  - { from: start.input, to: gather.item }
  - { from: one.index, to: mix.value }
  - { from: two.index, to: mix.value }
  - { from: mix.value, to: both.item }
"#, &[
        "block `again`, config.times: missing; give the number of iterations or connect the `times` input",
        "block `both`, inputs.item: is fed by both loop `one` and loop `two`",
        "block `mix`, edges: is in the bodies of loops `one` and `two`, which are not nested",
        "block `gather`, inputs.item: is not fed from inside a loop",
    ]);
}

#[test]
fn json_and_yaml_load_the_same_flow() {
    let json = r#"{"name": "j", "blocks": [{"id": "s", "type": "string", "config": {"value": "hi"}}, {"id": "d", "kind": "display"}], "edges": [{"from": "s.value", "to": "d.value"}]}"#;
    assert!(problems(json, Syntax::Json).is_empty());
    assert!(problems(json, Syntax::Yaml).is_empty(), "JSON is YAML too");
    let bad = problems(r#"{"name": "j", "blocks": [], "extra": 1}"#, Syntax::Json);
    assert!(bad[0].starts_with("file: unknown field `extra`"), "{bad:?}");
    let duplicate = problems("name: d\nblocks:\n  - { id: a, kind: start }\n  - { id: a, kind: start }\n  - { id: 'a.b', kind: start }\n", Syntax::Yaml);
    assert_eq!(duplicate.len(), 2, "{duplicate:?}");
    assert!(duplicate[0].contains("block id `a` is used twice") && duplicate[1].contains("blocks[2].id: `a.b` is not a block id"), "{duplicate:?}");
}

#[test]
fn schemas_are_checked_on_load_and_never_fetch_remote_references() {
    let found = problems(r#"
name: schemas
blocks:
  - { id: remote, kind: validate, config: { schema: { $ref: "http://127.0.0.1:9/schema.json" } } }
  - { id: wrong, kind: validate, config: { schema: { type: 12 } } }
"#, Syntax::Yaml);
    let found: Vec<&String> = found.iter().filter(|problem| problem.contains("config.schema")).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("block `remote`, config.schema: not a valid JSON Schema") && found[0].contains("never fetched"), "{found:#?}");
    assert!(found[1].starts_with("block `wrong`, config.schema: not a valid JSON Schema"), "{found:#?}");
}

#[test]
fn a_schedule_block_takes_minutes_or_a_cron_expression() {
    let flow = |config: &str| format!("name: tick\nblocks:\n  - {{ id: every, kind: schedule, config: {config} }}\n  - {{ id: show, kind: display }}\nedges:\n  - {{ from: every.time, to: show.value }}\n");
    check(&flow("{ every_minutes: 5 }"), &[]);
    check(&flow(r#"{ cron: "0 9 * * 1-5" }"#), &[]);
    check(&flow("{}"), &["block `every`, config.every_minutes: missing; give how often the flow runs, in minutes, or `cron`"]);
    check(&flow(r#"{ every_minutes: 5, cron: "0 9 * * *" }"#), &["block `every`, config.cron: give every_minutes or cron, not both"]);
    check(&flow(r#"{ cron: "0 9 * * 9" }"#), &["block `every`, config.cron: `0 9 * * 9` day of week field `9`: values must be from 0 to 7"]);
    check(&flow("{ every_minutes: 0 }"), &["block `every`, config.every_minutes: must be a whole number of minutes from 1 to 527040"]);
}

#[test]
fn an_edge_end_with_two_dots_says_how_ends_are_written() {
    check(r#"
name: dots
blocks:
  - { id: a, kind: start }
  - { id: b, kind: display }
edges:
  - { from: a.input.x, to: b.value }
"#, &[
        "edges[0].from: no block has the id `a.input`; an end of an edge is `block.port`, one dot",
        "block `b`, inputs.value: required input has no edge",
    ]);
}

#[test]
fn a_url_without_placeholders_is_checked_when_the_flow_loads() {
    check(r#"
name: urls
blocks:
  - { id: relative, kind: http_request, config: { url: "not a url" } }
  - { id: ftp, kind: http_request, config: { url: "ftp://127.0.0.1/x" } }
  - { id: good, kind: http_request, config: { url: "https://api.example.com/orders" } }
  - { id: filled, kind: http_request, config: { url: "{{config.base_url}}/orders" } }
  - { id: twice, kind: http_request, config: { url: "https://api.example.com/x", method: POST, body: { text: "hi" } } }
  - { id: payload, kind: record, config: { fields: { a: 1 } } }
edges:
  - { from: payload.record, to: twice.body }
"#, &[
        "block `relative`, config.url: `not a url` is not a URL",
        "block `ftp`, config.url: `ftp://127.0.0.1/x`: the scheme `ftp` is not allowed; use http or https",
        "block `twice`, config.body: given twice: both in config and through the `body` input",
    ]);
}

#[test]
fn yaml_nested_too_deep_is_refused_before_it_is_parsed() {
    let deep = format!("name: deep\nblocks:\n  - {{ id: l, kind: list, config: {{ items: {}{} }} }}\n", "[".repeat(129), "]".repeat(129));
    check(&deep, &["file: line 3: `[` and `{` nest more than 128 deep"]);
    // Brackets inside quoted strings and comments do not count.
    let quoted = format!("name: quoted # {}\nblocks:\n  - {{ id: t, kind: template, config: {{ template: \"{}\" }} }}\n", "[".repeat(200), "[".repeat(200));
    check(&quoted, &[]);
}
