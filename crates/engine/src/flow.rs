//! A loaded flow: every block checked, every edge resolved to ports, loop bodies worked out.
//! Nothing about a [`Flow`] can fail at run time for reasons visible in the file.
//!
//! Loop bodies: the blocks reachable from a loop's iteration ports (`item`, `index`) belong to
//! its body and run once per iteration; a `collect` reached at the body's own nesting level
//! closes the body and hands the gathered list back to the loop's scope. A nested loop opens a
//! deeper level and its own `collect` closes it. Values from outside a body are read as they
//! were when the loop started (the loop waits for them).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flowcredits_core::BlockKind;
use serde_json::{Map, Value};

use crate::config::is_identifier;
use crate::error::{EngineError, Problem, Problems};
use crate::format::{FlowFile, Syntax, split_endpoint};
use crate::op::{BlockSpec, Op};

/// Most blocks one flow may have.
pub const FLOW_BLOCKS_MAX: usize = 100_000;
/// Most edges one flow may have.
pub const FLOW_EDGES_MAX: usize = 400_000;

pub type BlockIx = usize;
pub type ScopeIx = usize;
/// The flow as a whole, outside every loop.
pub const ROOT_SCOPE: ScopeIx = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// An input of a block in the same scope.
    Local,
    /// The `item` input of a collect owned by the loop of the sending scope.
    Collect,
    /// The `stop` input of the loop of the sending scope.
    Stop,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub block: BlockIx,
    pub port: usize,
    pub kind: TargetKind,
}

/// One output port's routing.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutRoute {
    pub targets: Vec<Target>,
    /// Loops in the sender's scope whose bodies read this port; each waits for it.
    pub waiters: Vec<BlockIx>,
}

#[derive(Clone, Debug)]
pub(crate) struct Scope {
    /// The loop whose body this is; `None` for the root.
    pub owner: Option<BlockIx>,
    /// Blocks that execute in this scope, in file order.
    pub members: Vec<BlockIx>,
    /// Edges from outside the body into it: (to block, to port, from block, from port).
    pub inherited: Vec<(BlockIx, usize, BlockIx, usize)>,
    /// Collect blocks this body feeds.
    pub collects: Vec<BlockIx>,
    /// Input slots of all members together.
    pub slots: usize,
}

#[derive(Debug)]
pub struct Flow {
    pub name: String,
    pub description: Option<String>,
    pub config: Map<String, Value>,
    pub blocks: Vec<BlockSpec>,
    pub(crate) routes: Vec<Vec<OutRoute>>,
    /// Per block and input port: the edges ending there, as (from block, from port).
    pub(crate) sources: Vec<Vec<Vec<(BlockIx, usize)>>>,
    pub(crate) scope_of: Vec<ScopeIx>,
    /// For a loop block, the scope of its body.
    pub(crate) body_of: Vec<Option<ScopeIx>>,
    pub(crate) scopes: Vec<Scope>,
    /// The index of each block among its scope's members.
    pub(crate) local: Vec<usize>,
    /// Where each block's input slots start among its scope's slots.
    pub(crate) slot: Vec<usize>,
    /// Inputs a block waits for before it runs (connected ports, a multi port once, plus the
    /// outside values a loop's body reads).
    pub(crate) waits: Vec<u32>,
    /// For a collect, the loop that owns it.
    pub(crate) collect_owner: Vec<Option<BlockIx>>,
}

impl Flow {
    /// Parses and checks a flow file. Every problem found is reported together.
    pub fn load(text: &str, syntax: Syntax) -> Result<Flow, EngineError> {
        let file = FlowFile::parse(text, syntax).map_err(|problems| EngineError::Invalid { flow: String::new(), problems })?;
        Flow::from_file(file)
    }

    pub fn from_file(file: FlowFile) -> Result<Flow, EngineError> {
        let name = file.name.clone();
        Builder::default().build(file).map_err(|problems| EngineError::Invalid { flow: name, problems: Problems(problems) })
    }

    pub fn block_index(&self, id: &str) -> Option<BlockIx> {
        self.blocks.iter().position(|block| block.id == id)
    }

    /// Names of the flows this one runs through `flow` blocks.
    /// Whether `arguments` satisfy the input schema of the flow's `mcp` trigger block (true
    /// when it has none): what a tool call is checked against before it starts a run, with the
    /// same words the block uses when the run checks them.
    pub fn check_tool_arguments(&self, arguments: &Value) -> Result<(), String> {
        let Some(schema) = self.blocks.iter().find_map(|block| match &block.op {
            Op::Mcp { schema } => Some(schema),
            _ => None,
        }) else {
            return Ok(());
        };
        let errors = crate::exec::schema_errors(schema, arguments);
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    pub fn subflows(&self) -> impl Iterator<Item = &str> {
        self.blocks.iter().filter_map(|block| match &block.op {
            Op::Flow { name } => Some(name.as_str()),
            _ => None,
        })
    }

    fn is_within(&self, mut scope: ScopeIx, ancestor: ScopeIx) -> bool {
        loop {
            if scope == ancestor {
                return true;
            }
            match self.scopes[scope].owner {
                None => return false,
                Some(owner) => scope = self.scope_of[owner],
            }
        }
    }
}

#[derive(Default)]
struct Builder {
    problems: Vec<Problem>,
}

impl Builder {
    fn build(mut self, file: FlowFile) -> Result<Flow, Vec<Problem>> {
        if file.blocks.len() > FLOW_BLOCKS_MAX {
            self.problems.push(Problem::file("blocks", format!("{} blocks is more than the limit of {FLOW_BLOCKS_MAX}", file.blocks.len())));
        }
        if file.edges.len() > FLOW_EDGES_MAX {
            self.problems.push(Problem::file("edges", format!("{} edges is more than the limit of {FLOW_EDGES_MAX}", file.edges.len())));
        }
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        let blocks = self.blocks(&file);
        let mut flow = Flow {
            name: file.name.clone(),
            description: file.description.clone(),
            config: file.config.clone(),
            routes: blocks.iter().map(|block| vec![OutRoute::default(); block.outputs.len()]).collect(),
            sources: blocks.iter().map(|block| vec![Vec::new(); block.inputs.len()]).collect(),
            scope_of: vec![ROOT_SCOPE; blocks.len()],
            body_of: vec![None; blocks.len()],
            scopes: Vec::new(),
            local: vec![0; blocks.len()],
            slot: vec![0; blocks.len()],
            waits: vec![0; blocks.len()],
            collect_owner: vec![None; blocks.len()],
            blocks,
        };
        self.edges(&file, &mut flow);
        self.required_inputs(&flow);
        // Loop bodies are worked out on any graph without cycles, so their problems are
        // reported beside config and edge problems; edge routing needs consistent bodies.
        if let Some(order) = self.cycles(&flow) {
            let before = self.problems.len();
            self.scopes(&mut flow, &order);
            if self.problems.len() == before {
                self.routes(&mut flow);
            }
        }
        if self.problems.is_empty() { Ok(flow) } else { Err(self.problems) }
    }

    fn blocks(&mut self, file: &FlowFile) -> Vec<BlockSpec> {
        let mut seen = BTreeSet::new();
        let mut blocks = Vec::with_capacity(file.blocks.len());
        for (index, block) in file.blocks.iter().enumerate() {
            if !is_identifier(&block.id) {
                self.problems.push(Problem::file(format!("blocks[{index}].id"), format!("`{}` is not a block id (1 to {} letters, digits, `_` or `-`)", block.id, crate::config::ID_BYTES_MAX)));
            } else if !seen.insert(block.id.as_str()) {
                self.problems.push(Problem::block(&block.id, "id", format!("block id `{}` is used twice", block.id)));
            }
            let (kind, known) = match block.kind.parse::<BlockKind>() {
                Ok(kind) => (kind, true),
                Err(_) => {
                    self.problems.push(Problem::block(&block.id, "kind", format!("unknown block kind `{}`", block.kind)));
                    (BlockKind::Null, false)
                }
            };
            let (spec, problems) = BlockSpec::parse(&block.id, kind, &block.config);
            // The config of an unknown kind cannot be judged: only the kind is reported.
            if known {
                self.problems.extend(problems);
            }
            blocks.push(spec);
        }
        blocks
    }

    fn edges(&mut self, file: &FlowFile, flow: &mut Flow) {
        let index: HashMap<&str, BlockIx> = flow.blocks.iter().enumerate().map(|(ix, block)| (block.id.as_str(), ix)).collect();
        for (number, edge) in file.edges.iter().enumerate() {
            let from = self.endpoint(&index, flow, number, "from", &edge.from);
            let to = self.endpoint(&index, flow, number, "to", &edge.to);
            let (Some((from_block, from_port)), Some((to_block, to_port))) = (from, to) else { continue };
            let from_spec = &flow.blocks[from_block];
            let to_spec = &flow.blocks[to_block];
            let field = format!("edges[{number}]");
            let Some(out) = from_spec.output(from_port) else {
                let hint = if from_spec.input(from_port).is_some() { " (that is an input port; edges go from an output to an input)".to_owned() } else { String::new() };
                self.problems.push(Problem::block(&from_spec.id, format!("{field}.from"), format!("`{from_port}` is not an output port of this {} block{hint}; outputs: {}", from_spec.kind, names(from_spec.outputs.iter().map(|port| &port.name)))));
                continue;
            };
            let Some(input) = to_spec.input(to_port) else {
                self.problems.push(Problem::block(&to_spec.id, format!("{field}.to"), format!("`{to_port}` is not an input port of this {} block; inputs: {}", to_spec.kind, names(to_spec.inputs.iter().map(|port| &port.name)))));
                continue;
            };
            let (out_ty, in_port) = (from_spec.outputs[out].ty, &to_spec.inputs[input]);
            if !out_ty.fits(in_port.ty) {
                self.problems.push(Problem::block(&to_spec.id, format!("{field}.to"), format!("`{to_port}` takes {}, but `{}` gives {}", in_port.ty.as_str(), edge.from, out_ty.as_str())));
            }
            let sources = &mut flow.sources[to_block][input];
            if !sources.is_empty() && !in_port.multi && !in_port.stop {
                self.problems.push(Problem::block(&to_spec.id, format!("{field}.to"), format!("input `{to_port}` already has an edge; merge values with an `or` block")));
                continue;
            }
            sources.push((from_block, out));
        }
    }

    fn endpoint<'f>(&mut self, index: &HashMap<&str, BlockIx>, flow: &Flow, number: usize, side: &str, text: &'f str) -> Option<(BlockIx, &'f str)> {
        let field = format!("edges[{number}].{side}");
        let Some((block, port)) = split_endpoint(text) else {
            self.problems.push(Problem::file(field, format!("`{text}` is not `block.port`")));
            return None;
        };
        match index.get(block) {
            Some(&ix) => Some((ix, port)),
            None => {
                let _ = flow;
                let hint = if block.contains('.') { "; an end of an edge is `block.port`, one dot, and a block's id has none (to pick a field of a value, add a `select` block)" } else { "" };
                self.problems.push(Problem::file(field, format!("no block has the id `{block}`{hint}")));
                None
            }
        }
    }

    fn required_inputs(&mut self, flow: &Flow) {
        for (ix, block) in flow.blocks.iter().enumerate() {
            for (port, spec) in block.inputs.iter().enumerate() {
                if spec.required && flow.sources[ix][port].is_empty() {
                    self.problems.push(Problem::block(&block.id, format!("inputs.{}", spec.name), "required input has no edge"));
                }
            }
            // A config value given but refused is reported already: it is not also "missing".
            let reported = |problems: &[Problem], field: &str| problems.iter().any(|problem| problem.block.as_deref() == Some(block.id.as_str()) && problem.field.starts_with(field));
            let test_missing = matches!(block.op, Op::If { test: None }) && flow.sources[ix][block.input("condition").expect("if has a condition port")].is_empty();
            if test_missing && !reported(&self.problems, "config.test") {
                self.problems.push(Problem::block(&block.id, "config.test", "missing; give a test like {\"path\": \"ok\", \"op\": \"truthy\"} or connect the `condition` input"));
            }
            let times_missing = matches!(block.op, Op::Repeat { times: None }) && flow.sources[ix][block.input("times").expect("repeat has a times port")].is_empty();
            if times_missing && !reported(&self.problems, "config.times") {
                self.problems.push(Problem::block(&block.id, "config.times", "missing; give the number of iterations or connect the `times` input"));
            }
            if matches!(block.op, Op::Repeat { times: Some(_) }) && !flow.sources[ix][block.input("times").expect("repeat has a times port")].is_empty() {
                self.problems.push(Problem::block(&block.id, "config.times", "given twice: both in config and through the `times` input"));
            }
            if let Op::Http(spec) = &block.op
                && spec.body.is_some()
                && !flow.sources[ix][block.input("body").expect("http_request has a body port")].is_empty()
            {
                self.problems.push(Problem::block(&block.id, "config.body", "given twice: both in config and through the `body` input; keep one"));
            }
        }
    }

    /// Every edge except those into a loop's `stop` port must go forward.
    /// The blocks in topological order, or `None` (and a problem) when there is a cycle.
    fn cycles(&mut self, flow: &Flow) -> Option<Vec<BlockIx>> {
        let count = flow.blocks.len();
        let mut indegree = vec![0usize; count];
        let mut next: Vec<Vec<BlockIx>> = vec![Vec::new(); count];
        for (to, ports) in flow.sources.iter().enumerate() {
            for (port, sources) in ports.iter().enumerate() {
                if flow.blocks[to].inputs[port].stop {
                    continue;
                }
                for &(from, _) in sources {
                    indegree[to] += 1;
                    next[from].push(to);
                }
            }
        }
        let mut ready: Vec<BlockIx> = (0..count).filter(|&ix| indegree[ix] == 0).collect();
        let mut order = Vec::with_capacity(count);
        while let Some(ix) = ready.pop() {
            order.push(ix);
            for &to in &next[ix] {
                indegree[to] -= 1;
                if indegree[to] == 0 {
                    ready.push(to);
                }
            }
        }
        if order.len() < count {
            // What sorting left holds the cycles and what they feed; blocks that feed nothing
            // left are peeled off from the end, so the message names the cycle's blocks.
            let mut on_cycle: Vec<bool> = indegree.iter().map(|&left| left > 0).collect();
            let mut previous: Vec<Vec<BlockIx>> = vec![Vec::new(); count];
            for (from, targets) in next.iter().enumerate() {
                for &to in targets {
                    previous[to].push(from);
                }
            }
            let mut outdegree: Vec<usize> = next.iter().map(|targets| targets.iter().filter(|&&to| on_cycle[to]).count()).collect();
            let mut sinks: Vec<BlockIx> = (0..count).filter(|&ix| on_cycle[ix] && outdegree[ix] == 0).collect();
            while let Some(ix) = sinks.pop() {
                on_cycle[ix] = false;
                for &from in &previous[ix] {
                    if on_cycle[from] {
                        outdegree[from] -= 1;
                        if outdegree[from] == 0 {
                            sinks.push(from);
                        }
                    }
                }
            }
            let stuck: Vec<&str> = (0..count).filter(|&ix| on_cycle[ix]).map(|ix| flow.blocks[ix].id.as_str()).collect();
            let message = format!("is part of a cycle among {}; only an edge into a loop's `stop` port may point back", stuck.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", "));
            self.problems.push(Problem::block(stuck[0], "edges", message));
        }
        (order.len() == count).then_some(order)
    }

    /// Works out loop bodies and gives every block its scope.
    fn scopes(&mut self, flow: &mut Flow, order: &[BlockIx]) {
        let count = flow.blocks.len();
        let loops: Vec<BlockIx> = (0..count).filter(|&ix| flow.blocks[ix].is_loop()).collect();
        // body[l] = blocks in loop l's body at any depth; owned collects separately.
        let mut bodies: BTreeMap<BlockIx, BTreeSet<BlockIx>> = BTreeMap::new();
        for &l in &loops {
            let depth_of = loop_depths(flow, l, order);
            for (&b, _) in depth_of.iter().filter(|(b, depth)| flow.blocks[**b].op_is_collect() && **depth == 0) {
                match flow.collect_owner[b] {
                    Some(owner) if owner != l => self.problems.push(Problem::block(&flow.blocks[b].id, "inputs.item", format!("is fed by both loop `{}` and loop `{}`; give each loop its own collect", flow.blocks[owner].id, flow.blocks[l].id))),
                    _ => flow.collect_owner[b] = Some(l),
                }
            }
            bodies.insert(l, depth_of.into_iter().filter(|(b, depth)| !(flow.blocks[*b].op_is_collect() && *depth == 0)).map(|(b, _)| b).collect());
        }
        // Scopes: the root, then one per loop. A block's scope is the smallest body holding it.
        flow.scopes.push(Scope { owner: None, members: Vec::new(), inherited: Vec::new(), collects: Vec::new(), slots: 0 });
        for &l in &loops {
            flow.body_of[l] = Some(flow.scopes.len());
            flow.scopes.push(Scope { owner: Some(l), members: Vec::new(), inherited: Vec::new(), collects: Vec::new(), slots: 0 });
        }
        for b in 0..count {
            let holders: Vec<BlockIx> = loops.iter().copied().filter(|l| bodies[l].contains(&b)).collect();
            let innermost = holders.iter().copied().min_by_key(|l| bodies[l].len());
            if let Some(inner) = innermost {
                if let Some(&other) = holders.iter().find(|&&other| other != inner && !bodies[&other].contains(&inner)) {
                    self.problems.push(Problem::block(&flow.blocks[b].id, "edges", format!("is in the bodies of loops `{}` and `{}`, which are not nested", flow.blocks[inner].id, flow.blocks[other].id)));
                }
                flow.scope_of[b] = flow.body_of[inner].expect("loops have bodies");
            }
        }
        for b in 0..count {
            if flow.blocks[b].op_is_collect() {
                match flow.collect_owner[b] {
                    Some(owner) => {
                        flow.scope_of[b] = flow.scope_of[owner];
                        let body = flow.body_of[owner].expect("loops have bodies");
                        flow.scopes[body].collects.push(b);
                    }
                    None => self.problems.push(Problem::block(&flow.blocks[b].id, "inputs.item", "is not fed from inside a loop (`repeat` or `for`); a collect gathers one value per iteration")),
                }
            }
        }
        for b in 0..count {
            let scope = flow.scope_of[b];
            flow.local[b] = flow.scopes[scope].members.len();
            flow.slot[b] = flow.scopes[scope].slots;
            flow.scopes[scope].members.push(b);
            flow.scopes[scope].slots += flow.blocks[b].inputs.len();
        }
    }

    /// Classifies every edge by the scopes it joins, and counts what each block waits for.
    fn routes(&mut self, flow: &mut Flow) {
        for to in 0..flow.blocks.len() {
            for port in 0..flow.blocks[to].inputs.len() {
                let spec = flow.blocks[to].inputs[port].clone();
                let sources = flow.sources[to][port].clone();
                if !sources.is_empty() && !spec.stop && !flow.blocks[to].op_is_collect() {
                    flow.waits[to] += if spec.multi { 1 } else { sources.len() as u32 };
                }
                for (from, out) in sources {
                    self.route(flow, from, out, to, port, spec.stop);
                }
            }
        }
    }

    fn route(&mut self, flow: &mut Flow, from: BlockIx, out: usize, to: BlockIx, port: usize, stop: bool) {
        let (from_scope, to_scope) = (flow.scope_of[from], flow.scope_of[to]);
        let sender_scope = if flow.blocks[from].outputs[out].iteration { flow.body_of[from].expect("only loops have iteration ports") } else { from_scope };
        let kind = if stop {
            let body = flow.body_of[to].expect("only loops have stop ports");
            if !flow.is_within(sender_scope, body) {
                self.problems.push(Problem::block(&flow.blocks[to].id, "inputs.stop", format!("the edge from `{}` comes from outside this loop's body; only blocks inside it can stop it", flow.blocks[from].id)));
                return;
            }
            if sender_scope != body {
                self.problems.push(Problem::block(&flow.blocks[to].id, "inputs.stop", format!("the edge from `{}` comes from a nested loop; stop the nested loop, or collect and stop from this body", flow.blocks[from].id)));
                return;
            }
            TargetKind::Stop
        } else if flow.blocks[to].op_is_collect() {
            let owner = flow.collect_owner[to].expect("collects without a loop were reported");
            if flow.body_of[owner] != Some(sender_scope) {
                self.problems.push(Problem::block(&flow.blocks[to].id, "inputs.item", format!("the edge from `{}` comes from another loop level than loop `{}`'s body; give each level its own collect", flow.blocks[from].id, flow.blocks[owner].id)));
                return;
            }
            TargetKind::Collect
        } else if sender_scope == to_scope {
            TargetKind::Local
        } else {
            // From an enclosing scope into a loop body: read when the body starts. The loop
            // (in the sender's scope) whose body holds the receiver waits for the value.
            let mut scope = to_scope;
            let waiter = loop {
                let owner = flow.scopes[scope].owner.expect("a receiver in another scope is inside a loop");
                if flow.scope_of[owner] == sender_scope {
                    break owner;
                }
                scope = flow.scope_of[owner];
            };
            let waiters = &mut flow.routes[from][out].waiters;
            if !waiters.contains(&waiter) {
                waiters.push(waiter);
                flow.waits[waiter] += 1;
            }
            let mut scope = to_scope;
            while scope != sender_scope {
                flow.scopes[scope].inherited.push((to, port, from, out));
                scope = flow.scope_of[flow.scopes[scope].owner.expect("inside a loop")];
            }
            return;
        };
        flow.routes[from][out].targets.push(Target { block: to, port, kind });
    }
}

/// The blocks a loop's iteration ports reach, each with its nesting depth inside the loop: 0 in
/// the loop's own body, 1 inside a loop nested in it, and so on. A block runs at the deepest
/// level any of its inputs comes from (shallower values are read as they were when the inner
/// loop started). A collect at depth 0 closes the body: the loop owns it and it is not
/// followed further. Computed over the blocks in topological order, so every input's depth is
/// known when a block is reached.
fn loop_depths(flow: &Flow, l: BlockIx, order: &[BlockIx]) -> HashMap<BlockIx, usize> {
    let mut depth_of: HashMap<BlockIx, usize> = HashMap::new();
    for &b in order {
        if b == l {
            continue;
        }
        let mut deepest: Option<usize> = None;
        for (port, sources) in flow.sources[b].iter().enumerate() {
            if flow.blocks[b].inputs[port].stop {
                continue;
            }
            for &(from, out) in sources {
                let iteration = flow.blocks[from].outputs[out].iteration;
                let depth = if from == l {
                    iteration.then_some(0)
                } else {
                    match depth_of.get(&from) {
                        None => None,
                        Some(&0) if flow.blocks[from].op_is_collect() => None,
                        Some(&depth) if flow.blocks[from].op_is_collect() => Some(depth - 1),
                        Some(&depth) if iteration => Some(depth + 1),
                        Some(&depth) => Some(depth),
                    }
                };
                deepest = deepest.max(depth);
            }
        }
        if let Some(depth) = deepest {
            depth_of.insert(b, depth);
        }
    }
    depth_of
}

impl BlockSpec {
    fn op_is_collect(&self) -> bool {
        matches!(self.op, Op::Collect)
    }
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() { "none".to_owned() } else { list.join(", ") }
}
