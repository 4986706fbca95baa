//! The block catalog as the engine sees it: what each kind reads from its config, its input and
//! output ports, and the typed operation it becomes once loaded.

use std::sync::Arc;

use flowcredits_core::BlockKind;
use serde_json::{Map, Value};

use crate::config::Cfg;
use crate::error::Problem;
use crate::http::HttpSpec;
use crate::js::Script;
use crate::path::{Path, Template, Test};
use crate::provider::{AiSpec, ConnectorSpec};

/// Longest a `delay` block may wait, in milliseconds.
pub const DELAY_MS_MAX: u64 = 5 * 60 * 1000;
/// Most iterations one `repeat` or `for` block may run, per execution.
pub const LOOP_ITERATIONS_MAX: u64 = 1_000_000;
/// Schedules fire every minute at most and once a year at least.
pub const SCHEDULE_MINUTES_MIN: u64 = 1;
pub const SCHEDULE_MINUTES_MAX: u64 = 366 * 24 * 60;
/// Most branches one `condition` block may have.
pub const CONDITION_BRANCHES_MAX: u64 = 64;

/// What travels on a port, as far as loading can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Any,
    Text,
    Number,
    Bool,
    List,
    Record,
}

impl Ty {
    pub fn as_str(self) -> &'static str {
        match self {
            Ty::Any => "any value",
            Ty::Text => "text",
            Ty::Number => "a number",
            Ty::Bool => "a bool",
            Ty::List => "a list",
            Ty::Record => "a record",
        }
    }

    /// Whether a value of type `self` may arrive where `to` is expected.
    pub fn fits(self, to: Ty) -> bool {
        self == Ty::Any || to == Ty::Any || self == to
    }
}

#[derive(Clone, Debug)]
pub struct InPort {
    pub name: String,
    pub ty: Ty,
    /// The block cannot run without an edge into this port.
    pub required: bool,
    /// Several edges may end here (`or`); the first value to arrive wins.
    pub multi: bool,
    /// A loop's `stop` port: an edge from the loop's own body ends the loop after the current
    /// iteration. The only cycle a flow may contain.
    pub stop: bool,
}

#[derive(Clone, Debug)]
pub struct OutPort {
    pub name: String,
    pub ty: Ty,
    /// Only some executions emit here (routing ports such as `then` / `else`).
    pub routed: bool,
    /// Emits once per loop iteration, into the loop's body.
    pub iteration: bool,
}

fn input(name: &str, ty: Ty, required: bool) -> InPort {
    InPort { name: name.to_owned(), ty, required, multi: false, stop: false }
}

fn output(name: &str, ty: Ty) -> OutPort {
    OutPort { name: name.to_owned(), ty, routed: false, iteration: false }
}

fn routed(name: &str, ty: Ty) -> OutPort {
    OutPort { routed: true, ..output(name, ty) }
}

fn iteration(name: &str, ty: Ty) -> OutPort {
    OutPort { iteration: true, ..output(name, ty) }
}

fn stop_port() -> InPort {
    InPort { stop: true, ..input("stop", Ty::Any, false) }
}

/// The statuses a `response` block may answer with: a final HTTP status. An informational
/// (1xx) answer is not a response a caller can read, so it is refused like any other.
pub const RESPONSE_STATUS_MIN: u64 = 200;
pub const RESPONSE_STATUS_MAX: u64 = 599;

/// A loaded block's operation, its config already checked.
#[derive(Clone, Debug)]
pub enum Op {
    Start,
    Request,
    Response { status: u16 },
    /// Runs the flow every so many minutes or at a cron expression's minutes (the server's
    /// scheduler reads which from the config); emits the time it fired.
    Schedule,
    Mcp { schema: Arc<jsonschema::Validator> },
    Http(Arc<HttpSpec>),
    Integration(Arc<ConnectorSpec>),
    Flow { name: String },
    Ai(Arc<AiSpec>),
    If { test: Option<Test> },
    Condition { branches: Vec<(String, Test)> },
    Or,
    Validate { schema: Arc<jsonschema::Validator> },
    Evaluate(Arc<Script>),
    Delay { ms: u64 },
    Repeat { times: Option<u64> },
    For,
    Collect,
    Const(Value),
    List { items: Vec<Value>, inputs: Vec<String> },
    Record { fields: Map<String, Value>, inputs: Vec<String> },
    Select { path: Path, default: Option<Value> },
    Template(Template),
    Now,
    Date { add_ms: i64 },
    SetVariable { name: String },
    GetVariable { name: String, default: Option<Value> },
    GetConfig { key: String, default: Option<Value> },
    Display { label: Option<String> },
    Log { label: Option<String> },
}

/// A loaded block: kind, operation and ports.
#[derive(Clone, Debug)]
pub struct BlockSpec {
    pub id: String,
    pub kind: BlockKind,
    pub op: Op,
    pub inputs: Vec<InPort>,
    pub outputs: Vec<OutPort>,
}

impl BlockSpec {
    /// Reads one block's config. Problems are returned with whatever could be built, so the
    /// loader can go on checking edges.
    pub fn parse(id: &str, kind: BlockKind, config: &Map<String, Value>) -> (BlockSpec, Vec<Problem>) {
        let mut cfg = Cfg::new(id, config);
        let (op, inputs, outputs) = parse_op(kind, &mut cfg);
        (BlockSpec { id: id.to_owned(), kind, op, inputs, outputs }, cfg.finish())
    }

    pub fn input(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|port| port.name == name)
    }

    pub fn output(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|port| port.name == name)
    }

    pub fn is_loop(&self) -> bool {
        matches!(self.op, Op::Repeat { .. } | Op::For)
    }
}

type Parsed = (Op, Vec<InPort>, Vec<OutPort>);

fn parse_op(kind: BlockKind, cfg: &mut Cfg<'_>) -> Parsed {
    use BlockKind as K;
    match kind {
        K::Start => (Op::Start, vec![], vec![output("input", Ty::Any)]),
        K::Request => (Op::Request, vec![], vec![output("body", Ty::Any), output("headers", Ty::Record), output("query", Ty::Record), output("method", Ty::Text), output("path", Ty::Text)]),
        K::Response => {
            let status = cfg.integer("status", RESPONSE_STATUS_MIN, RESPONSE_STATUS_MAX, "HTTP status").unwrap_or(200) as u16;
            (Op::Response { status }, vec![input("body", Ty::Any, true), input("status", Ty::Number, false)], vec![])
        }
        K::Schedule => {
            let every_minutes = cfg.value("every_minutes").is_some().then(|| cfg.integer("every_minutes", SCHEDULE_MINUTES_MIN, SCHEDULE_MINUTES_MAX, "minutes"));
            let cron = cfg.text("cron");
            if let Some(problem) = cron.as_deref().and_then(|cron| crate::cron::Cron::parse(cron).err().map(|problem| format!("`{cron}` {problem}"))) {
                cfg.problem("cron", problem);
            }
            match (every_minutes.is_some(), cron.is_some()) {
                (true, true) => cfg.problem("cron", "give every_minutes or cron, not both"),
                (false, false) => cfg.problem("every_minutes", "missing; give how often the flow runs, in minutes, or `cron`, a cron expression (UTC) such as `0 9 * * 1-5`"),
                _ => {}
            }
            (Op::Schedule, vec![], vec![output("time", Ty::Text)])
        }
        K::Mcp => {
            let schema = cfg.required("input_schema", "the JSON Schema of the tool's arguments").and_then(|schema| compile_schema(cfg, "input_schema", schema));
            (Op::Mcp { schema: schema.unwrap_or_else(accept_all) }, vec![], vec![output("arguments", Ty::Record)])
        }
        K::HttpRequest => {
            let spec = HttpSpec::parse(cfg);
            let outputs = vec![routed("status", Ty::Number), routed("headers", Ty::Record), routed("body", Ty::Any), routed("success", Ty::Record), routed("failure", Ty::Record)];
            (Op::Http(Arc::new(spec)), vec![input("input", Ty::Any, false), input("body", Ty::Any, false)], outputs)
        }
        K::Integration => (Op::Integration(Arc::new(ConnectorSpec::parse(cfg))), vec![input("input", Ty::Any, false)], vec![output("result", Ty::Any)]),
        K::Flow => {
            let name = cfg.required_text("flow", "the name of the flow to run").unwrap_or_default();
            (Op::Flow { name }, vec![input("input", Ty::Any, false)], vec![output("result", Ty::Any)])
        }
        K::AiRequest | K::AiAgent | K::AiMedia => {
            let spec = AiSpec::parse(kind, cfg);
            let out = if kind == K::AiMedia { "media" } else { "response" };
            (Op::Ai(Arc::new(spec)), vec![input("prompt", Ty::Any, true)], vec![output(out, Ty::Any)])
        }
        K::If => {
            let test = cfg.value("test").and_then(|spec| Test::parse(spec).map_err(|message| cfg.problem("test", message)).ok());
            (Op::If { test }, vec![input("value", Ty::Any, true), input("condition", Ty::Any, false)], vec![routed("then", Ty::Any), routed("else", Ty::Any)])
        }
        K::Condition => parse_condition(cfg),
        K::Or => (Op::Or, vec![InPort { multi: true, ..input("value", Ty::Any, true) }], vec![output("value", Ty::Any)]),
        K::Validate => {
            let schema = cfg.required("schema", "the JSON Schema values must match").and_then(|schema| compile_schema(cfg, "schema", schema));
            let outputs = vec![routed("pass", Ty::Any), routed("fail", Ty::Any), routed("errors", Ty::List)];
            (Op::Validate { schema: schema.unwrap_or_else(accept_all) }, vec![input("value", Ty::Any, true)], outputs)
        }
        K::Evaluate | K::EvaluateWithPackages => {
            let script = Script::parse(cfg, kind == K::EvaluateWithPackages);
            (Op::Evaluate(Arc::new(script)), vec![input("input", Ty::Any, false)], vec![output("result", Ty::Any)])
        }
        K::Delay => {
            let ms = cfg.required("ms", "how long to wait, in milliseconds").and(cfg.integer("ms", 0, DELAY_MS_MAX, "milliseconds"));
            (Op::Delay { ms: ms.unwrap_or(0) }, vec![input("value", Ty::Any, false)], vec![output("value", Ty::Any)])
        }
        K::Repeat => {
            let times = cfg.integer("times", 0, LOOP_ITERATIONS_MAX, "iterations");
            let inputs = vec![input("times", Ty::Number, false), stop_port(), input("after", Ty::Any, false)];
            (Op::Repeat { times }, inputs, vec![iteration("index", Ty::Number), output("done", Ty::Number)])
        }
        K::For => (Op::For, vec![input("list", Ty::List, true), stop_port(), input("after", Ty::Any, false)], vec![iteration("item", Ty::Any), iteration("index", Ty::Number), output("done", Ty::Number)]),
        K::Collect => (Op::Collect, vec![input("item", Ty::Any, true)], vec![output("list", Ty::List)]),
        K::String | K::Number | K::Bool | K::Null => parse_const(kind, cfg),
        K::List => {
            let items = match cfg.value("items") {
                None => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => {
                    cfg.problem("items", "must be a list");
                    Vec::new()
                }
            };
            let inputs = cfg.port_names("inputs", &[]);
            let ports = inputs.iter().map(|name| input(name, Ty::Any, true)).collect();
            (Op::List { items, inputs }, ports, vec![output("list", Ty::List)])
        }
        K::Record => {
            let fields = cfg.object("fields").cloned().unwrap_or_default();
            let inputs = cfg.port_names("inputs", &[]);
            let ports = inputs.iter().map(|name| input(name, Ty::Any, true)).collect();
            (Op::Record { fields, inputs }, ports, vec![output("record", Ty::Record)])
        }
        K::Select => {
            let path = cfg.required_text("path", "the path to pick, like `items[0].name`").and_then(|text| Path::parse(&text).map_err(|message| cfg.problem("path", message)).ok());
            let default = cfg.value("default").cloned();
            (Op::Select { path: path.unwrap_or_default(), default }, vec![input("value", Ty::Any, true)], vec![output("value", Ty::Any)])
        }
        K::Template => {
            let template = cfg.required_text("template", "the text with {{input.x}} / {{config.x}} placeholders").and_then(|text| Template::parse(&text).map_err(|message| cfg.problem("template", message)).ok());
            let template = template.unwrap_or_else(|| Template::parse("").expect("empty template parses"));
            (Op::Template(template), vec![input("input", Ty::Any, false)], vec![output("text", Ty::Text)])
        }
        K::Now => (Op::Now, vec![input("after", Ty::Any, false)], vec![output("time", Ty::Text), output("epoch_ms", Ty::Number)]),
        K::Date => {
            let add_ms = cfg.value("add_ms").map_or(0, |value| value.as_i64().unwrap_or_else(|| {
                cfg.problem("add_ms", "must be a whole number of milliseconds (negative goes back)");
                0
            }));
            (Op::Date { add_ms }, vec![input("value", Ty::Any, true)], vec![output("iso", Ty::Text), output("epoch_ms", Ty::Number), output("date", Ty::Text)])
        }
        K::SetVariable => {
            let name = cfg.required_text("name", "the variable's name").unwrap_or_default();
            (Op::SetVariable { name }, vec![input("value", Ty::Any, true)], vec![output("value", Ty::Any)])
        }
        K::GetVariable => {
            let name = cfg.required_text("name", "the variable's name").unwrap_or_default();
            let default = cfg.value("default").cloned();
            (Op::GetVariable { name, default }, vec![input("after", Ty::Any, false)], vec![output("value", Ty::Any)])
        }
        K::GetConfig => {
            let key = cfg.required_text("key", "the key in the flow's config").unwrap_or_default();
            let default = cfg.value("default").cloned();
            (Op::GetConfig { key, default }, vec![input("after", Ty::Any, false)], vec![output("value", Ty::Any)])
        }
        K::Display | K::Log => {
            let label = cfg.text("label");
            let op = if kind == K::Display { Op::Display { label } } else { Op::Log { label } };
            (op, vec![input("value", Ty::Any, true)], vec![])
        }
    }
}

fn parse_condition(cfg: &mut Cfg<'_>) -> Parsed {
    let mut branches = Vec::new();
    match cfg.required("branches", "a list of {\"name\": ..., \"test\": {...}}") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() as u64 <= CONDITION_BRANCHES_MAX => {
            for (index, item) in items.iter().enumerate() {
                let field = format!("branches[{index}]");
                let name = item.get("name").and_then(Value::as_str).filter(|name| crate::config::is_identifier(name) && *name != "default");
                let Some(name) = name else {
                    cfg.problem(&field, "needs a `name` (letters, digits, `_`, `-`; not `default`)");
                    continue;
                };
                if branches.iter().any(|(seen, _): &(String, Test)| seen == name) {
                    cfg.problem(&field, format!("branch name `{name}` is used twice"));
                    continue;
                }
                match Test::parse(item.get("test").unwrap_or(&Value::Null)) {
                    Ok(test) => branches.push((name.to_owned(), test)),
                    Err(message) => cfg.problem(&format!("{field}.test"), message),
                }
            }
        }
        Some(_) => cfg.problem("branches", format!("must be a list of 1 to {CONDITION_BRANCHES_MAX} branches")),
        None => {}
    }
    let mut outputs: Vec<OutPort> = branches.iter().map(|(name, _)| routed(name, Ty::Any)).collect();
    outputs.push(routed("default", Ty::Any));
    (Op::Condition { branches }, vec![input("value", Ty::Any, true)], outputs)
}

fn parse_const(kind: BlockKind, cfg: &mut Cfg<'_>) -> Parsed {
    let (ty, fits): (Ty, fn(&Value) -> bool) = match kind {
        BlockKind::String => (Ty::Text, Value::is_string),
        BlockKind::Number => (Ty::Number, Value::is_number),
        BlockKind::Bool => (Ty::Bool, Value::is_boolean),
        _ => (Ty::Any, Value::is_null),
    };
    let value = if kind == BlockKind::Null {
        Value::Null
    } else {
        match cfg.required("value", &format!("the value, {}", ty.as_str())) {
            Some(value) if fits(value) => value.clone(),
            Some(value) => {
                cfg.problem("value", format!("expected {}, found {value}", ty.as_str()));
                Value::Null
            }
            None => Value::Null,
        }
    };
    (Op::Const(value), vec![input("after", Ty::Any, false)], vec![output("value", ty)])
}

/// Compiles a JSON Schema with remote references turned off (the crate is built without its
/// HTTP resolver), so a schema cannot make the engine fetch URLs.
pub(crate) fn compile_schema(cfg: &mut Cfg<'_>, key: &'static str, schema: &Value) -> Option<Arc<jsonschema::Validator>> {
    match jsonschema::validator_for(schema) {
        Ok(validator) => Some(Arc::new(validator)),
        Err(err) => {
            // The library's wording for a reference it would have to fetch names its own build
            // options; ours never fetch.
            let message = err.to_string();
            let problem = if message.contains("resolve-http") || message.contains("resolve-file") {
                "not a valid JSON Schema here: it refers to another document (`$ref` to a URL or file), and schemas are never fetched; put the definitions in the schema itself".to_owned()
            } else {
                format!("not a valid JSON Schema: {message}")
            };
            cfg.problem(key, problem);
            None
        }
    }
}

fn accept_all() -> Arc<jsonschema::Validator> {
    Arc::new(jsonschema::validator_for(&Value::Bool(true)).expect("`true` is a valid schema"))
}
