//! What a run of a flow will cost, before it runs: whether it needs credits, and its price:
//! exact when the graph fixes it, otherwise a minimum plus the cost of each iteration of the
//! loops whose length is only known at run time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flowcredits_core::{BlockKind, Credits, RunContext, Rules, Timestamp};
use serde_json::{Value, json};

use crate::error::EngineError;
use crate::exec::planned_usage;
use crate::flow::{BlockIx, Flow};
use crate::op::Op;
use crate::resolve::{FlowResolver, resolve_all};

/// What a run will cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub needs_credits: bool,
    /// The cost, when every paid block's number of executions is fixed by the graph.
    pub exact: Option<Credits>,
    /// The least the run can cost.
    pub minimum: Credits,
    /// The most it can cost, when that is bounded: every branch taken, and no loop of unknown
    /// length or agent's MCP tools adding to it. Equal to `exact` when that is known.
    pub maximum: Option<Credits>,
    /// Loops whose iteration count is known only at run time, and what one iteration of each
    /// costs at most (its paid blocks, taken branches or not).
    pub per_iteration: Vec<LoopCost>,
    /// Paid blocks whose price is not fixed by the graph, and why.
    pub notes: Vec<String>,
}

impl Estimate {
    /// The estimate as the CLI and the API print it.
    pub fn to_json(&self, flow: &Flow, context: RunContext) -> Value {
        let loops: Vec<Value> = self.per_iteration.iter().map(|line| json!({"loop": line.at, "credits": line.credits.0})).collect();
        json!({
            "flow": flow.name,
            "trigger": context.trigger().as_str(),
            "location": context.location().as_str(),
            "needs_credits": self.needs_credits,
            "exact": self.exact.map(|credits| credits.0),
            "minimum": self.minimum.0,
            "maximum": self.maximum.map(|credits| credits.0),
            "per_iteration": loops,
            "notes": self.notes,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopCost {
    /// The loop block's id, behind the flow blocks it sits in (`sub/each`).
    pub at: String,
    pub credits: Credits,
}

/// Estimates a run of `flow` in `context`, priced at `at`.
pub fn estimate(rules: &Rules, at: Timestamp, context: RunContext, flow: &Flow, resolver: &dyn FlowResolver) -> Result<Estimate, EngineError> {
    let flows = resolve_all(flow, resolver)?;
    crate::exec::check_models_of(rules, at, flow, &flows)?;
    let needs_credits = rules.run_needs_credits(at, context, &planned_usage(flow, &flows)).map_err(|err| crate::exec::name_model_problem(EngineError::Meter(err), flow, &flows))?;
    let mut walk = Walk { rules, at, context, flows: &flows, estimate: Estimate { needs_credits, exact: None, minimum: Credits::ZERO, maximum: None, per_iteration: Vec::new(), notes: Vec::new() }, exact: true, bounded: true };
    walk.flow(flow, "", 1, true)?;
    let maximum = if walk.exact {
        Some(walk.estimate.minimum)
    } else if walk.bounded && walk.estimate.per_iteration.is_empty() {
        // Only branches are left open: the most is every branch taken.
        Some(walk.upper_bound(flow, "")?)
    } else {
        None
    };
    let mut estimate = walk.estimate;
    estimate.exact = walk.exact.then_some(estimate.minimum);
    estimate.maximum = maximum;
    Ok(estimate)
}

struct Walk<'a> {
    rules: &'a Rules,
    at: Timestamp,
    context: RunContext,
    flows: &'a BTreeMap<String, Arc<Flow>>,
    estimate: Estimate,
    exact: bool,
    /// No agent adds tool charges (their number is known only at run time).
    bounded: bool,
}

impl Walk<'_> {
    /// Adds one flow's blocks, each run `times` times (when `certain`) per run.
    fn flow(&mut self, flow: &Flow, at: &str, times: u64, certain: bool) -> Result<(), EngineError> {
        let mut memo = HashMap::new();
        for (b, block) in flow.blocks.iter().enumerate() {
            let usage = match &block.op {
                Op::Ai(spec) => spec.planned_usage(),
                _ => flowcredits_core::BlockUsage::of_kind(block.kind),
            };
            let price = self.rules.block_price(self.at, self.context, &usage)?;
            if block.kind == BlockKind::AiAgent {
                self.estimate.notes.push(format!("{at}{}: plus 2 credits per unique external MCP tool the agent uses", block.id));
                self.exact = false;
                self.bounded = false;
            }
            let is_flow = matches!(block.op, Op::Flow { .. });
            if price.is_zero() && !is_flow {
                continue;
            }
            let runs_surely = certain && is_certain(flow, b, &mut memo) && flow_loops_certain(flow, b, &mut memo);
            let (known, unknown_loop) = multiplicity(flow, b);
            let count = times.saturating_mul(known);
            if let Op::Flow { name } = &block.op {
                let child = Arc::clone(&self.flows[name]);
                let inner_at = format!("{at}{}/", block.id);
                match unknown_loop {
                    None => self.flow(&child, &inner_at, count, runs_surely)?,
                    Some(l) => {
                        // Each iteration runs the whole child at most once over.
                        self.exact = false;
                        let bound = self.upper_bound(&child, &inner_at)?;
                        self.per_iteration(format!("{at}{}", flow.blocks[l].id), Credits(bound.0.saturating_mul(count)));
                        self.estimate.notes.push(format!("{at}{}: runs flow `{name}` (at most {}) once per iteration of a loop of unknown length", block.id, bound.with_unit()));
                    }
                }
                continue;
            }
            match unknown_loop {
                Some(l) => {
                    self.exact = false;
                    self.per_iteration(format!("{at}{}", flow.blocks[l].id), Credits(price.0.saturating_mul(count)));
                }
                None if runs_surely => self.estimate.minimum += Credits(price.0.saturating_mul(count)),
                None => {
                    self.exact = false;
                    self.estimate.notes.push(format!("{at}{}: {} per execution, when its branch is taken", block.id, price.with_unit()));
                }
            }
        }
        Ok(())
    }

    /// Adds `cost` to what one iteration of the loop at `loop_at` costs.
    fn per_iteration(&mut self, loop_at: String, cost: Credits) {
        match self.estimate.per_iteration.iter_mut().find(|line| line.at == loop_at) {
            Some(line) => line.credits += cost,
            None => self.estimate.per_iteration.push(LoopCost { at: loop_at, credits: cost }),
        }
    }

    /// The most one run of `flow` costs when every branch is taken: each priced block times its
    /// loops of known length. A loop of unknown length inside it has no bound: it is noted.
    fn upper_bound(&mut self, flow: &Flow, at: &str) -> Result<Credits, EngineError> {
        let mut total = Credits::ZERO;
        for (b, block) in flow.blocks.iter().enumerate() {
            let (known, unknown_loop) = multiplicity(flow, b);
            if let Some(l) = unknown_loop {
                let usage = match &block.op {
                    Op::Ai(spec) => spec.planned_usage(),
                    _ => flowcredits_core::BlockUsage::of_kind(block.kind),
                };
                if matches!(block.op, Op::Flow { .. }) || !self.rules.block_price(self.at, self.context, &usage)?.is_zero() {
                    self.estimate.notes.push(format!("{at}{}: inside loop `{at}{}` of unknown length, so it has no upper bound", block.id, flow.blocks[l].id));
                }
                continue;
            }
            let once = match &block.op {
                Op::Flow { name } => {
                    let child = Arc::clone(&self.flows[name]);
                    self.upper_bound(&child, &format!("{at}{}/", block.id))?
                }
                Op::Ai(spec) => self.rules.block_price(self.at, self.context, &spec.planned_usage())?,
                _ => self.rules.block_price(self.at, self.context, &flowcredits_core::BlockUsage::of_kind(block.kind))?,
            };
            total += Credits(once.0.saturating_mul(known));
        }
        Ok(total)
    }
}

/// Whether a block runs every time its scope runs: nothing upstream of it (in its flow) is a
/// routing port that might not fire.
fn is_certain(flow: &Flow, b: BlockIx, memo: &mut HashMap<BlockIx, bool>) -> bool {
    if let Some(&known) = memo.get(&b) {
        return known;
    }
    let block = &flow.blocks[b];
    let certain = if let Some(owner) = flow.collect_owner[b] {
        is_certain(flow, owner, memo)
    } else {
        let mut ports = block.inputs.iter().enumerate().filter(|(port, spec)| !spec.stop && !flow.sources[b][*port].is_empty()).peekable();
        let mut all = true;
        let mut any = false;
        let multi = ports.peek().is_some_and(|(_, spec)| spec.multi);
        for (port, _) in ports {
            for &(from, out) in &flow.sources[b][port] {
                let sure = !flow.blocks[from].outputs[out].routed && is_certain(flow, from, memo);
                all &= sure;
                any |= sure;
            }
        }
        if multi { any } else { all }
    };
    // A loop starts only once every outside value its body reads has arrived: one from a
    // branch that may not fire may keep it (and all after it) from running.
    let certain = certain && body_reads_are_certain(flow, b, memo);
    memo.insert(b, certain);
    certain
}

/// Whether every outside value a loop's body reads surely arrives (true for other blocks).
fn body_reads_are_certain(flow: &Flow, l: BlockIx, memo: &mut HashMap<BlockIx, bool>) -> bool {
    if flow.body_of[l].is_none() {
        return true;
    }
    let read: Vec<(BlockIx, usize)> = flow
        .routes
        .iter()
        .enumerate()
        .flat_map(|(from, ports)| ports.iter().enumerate().filter(|(_, route)| route.waiters.contains(&l)).map(move |(out, _)| (from, out)))
        .collect();
    read.into_iter().all(|(from, out)| !flow.blocks[from].outputs[out].routed && is_certain(flow, from, memo))
}

/// Whether every loop enclosing a block surely runs.
fn flow_loops_certain(flow: &Flow, b: BlockIx, memo: &mut HashMap<BlockIx, bool>) -> bool {
    let mut scope = flow.scope_of[b];
    while let Some(owner) = flow.scopes[scope].owner {
        if !is_certain(flow, owner, memo) {
            return false;
        }
        scope = flow.scope_of[owner];
    }
    true
}

/// How many times a block runs per run of its flow, as far as the graph fixes it, and the
/// innermost enclosing loop whose length it does not fix.
fn multiplicity(flow: &Flow, b: BlockIx) -> (u64, Option<BlockIx>) {
    let mut count = 1u64;
    let mut unknown = None;
    let mut scope = flow.scope_of[b];
    while let Some(owner) = flow.scopes[scope].owner {
        match iterations(flow, owner) {
            Some(n) => count = count.saturating_mul(n),
            None => {
                unknown.get_or_insert(owner);
            }
        }
        scope = flow.scope_of[owner];
    }
    if unknown.is_some() {
        // Count only the fixed loops inside the unknown one: the cost of one of its iterations.
        count = 1;
        let mut scope = flow.scope_of[b];
        while let Some(owner) = flow.scopes[scope].owner {
            if Some(owner) == unknown {
                break;
            }
            count = count.saturating_mul(iterations(flow, owner).unwrap_or(1));
            scope = flow.scope_of[owner];
        }
    }
    (count, unknown)
}

/// A loop's iteration count when the graph fixes it: `repeat` with `times` configured, or `for`
/// over a `list` block with no inputs; and no `stop` edge that could end it early.
fn iterations(flow: &Flow, l: BlockIx) -> Option<u64> {
    let block = &flow.blocks[l];
    let stop = block.input("stop").expect("loops have a stop port");
    if !flow.sources[l][stop].is_empty() {
        return None;
    }
    match &block.op {
        Op::Repeat { times } => *times,
        Op::For => {
            let &[(from, _)] = flow.sources[l][block.input("list").expect("for has a list port")].as_slice() else { return None };
            match &flow.blocks[from].op {
                Op::List { items, inputs } if inputs.is_empty() => Some(items.len() as u64),
                Op::Const(Value::Array(items)) => Some(items.len() as u64),
                _ => None,
            }
        }
        _ => None,
    }
}
