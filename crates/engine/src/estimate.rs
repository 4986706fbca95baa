//! What a run of a flow will cost, before it runs: whether it needs credits, and its price:
//! exact when the graph fixes it, otherwise a minimum plus the cost of each iteration of the
//! loops whose length is only known at run time.

use std::collections::BTreeMap;
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
    /// The most it can cost, when that is bounded: no loop of unknown length or agent's MCP
    /// tools adding to it. The most over the ways the routing blocks can emit (every branch
    /// taken at once when there are too many ways to try). Equal to `exact` when that is known.
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
        // Only branches are left open: the least and the most over the ways they can go (a
        // routing block emits on one of its ports, never on all of them), or, for a flow with
        // too many ways to try, the most with every branch taken.
        match walk.branch_bounds(flow)? {
            Some((least, most)) => {
                walk.estimate.minimum = least;
                walk.exact = least == most;
                Some(most)
            }
            None => walk.upper_bound(flow, "")?,
        }
    } else {
        None
    };
    let mut estimate = walk.estimate;
    if estimate.maximum.is_none() && walk.exact {
        // The branches left open all cost the same: nothing about them needs a note.
        estimate.notes.retain(|note| !note.ends_with("when its branch is taken"));
    }
    let certain = certain_executions(flow, &flows);
    if certain >= crate::exec::RUN_EXECUTIONS_MAX {
        estimate.notes.push(format!("every run makes at least {certain} block executions and a run is stopped at {}: runs are refused before they start", crate::exec::RUN_EXECUTIONS_MAX));
    }
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
        let mut memo = vec![None; flow.blocks.len()];
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
            let runs_surely = certain && surely_runs(flow, b, &mut memo);
            let (known, unknown_loop) = multiplicity(flow, b);
            let count = times.saturating_mul(known);
            if let Op::Flow { name } = &block.op {
                let child = Arc::clone(&self.flows[name]);
                let inner_at = format!("{at}{}/", block.id);
                match unknown_loop {
                    None => self.flow(&child, &inner_at, count, runs_surely)?,
                    Some(l) => {
                        // Each iteration runs the whole child `known` times at most (the fixed
                        // loops inside the unknown one).
                        self.exact = false;
                        let loop_at = format!("{at}{}", flow.blocks[l].id);
                        match self.upper_bound(&child, &inner_at)? {
                            Some(bound) => {
                                self.per_iteration(loop_at, Credits(bound.0.saturating_mul(known)));
                                self.estimate.notes.push(format!("{at}{}: runs flow `{name}` (at most {}) once per iteration of a loop of unknown length", block.id, bound.with_unit()));
                            }
                            None => {
                                // The child's own cost is open: so is each iteration's.
                                self.bounded = false;
                                self.estimate.notes.push(format!("{at}{}: runs flow `{name}`, whose cost has no upper bound, once per iteration of loop `{loop_at}`", block.id));
                            }
                        }
                    }
                }
                continue;
            }
            match unknown_loop {
                Some(l) => {
                    // What one iteration of `l` costs: the block's price times the fixed loops
                    // inside `l` (the loops around `l` multiply its iterations, not their cost).
                    self.exact = false;
                    self.per_iteration(format!("{at}{}", flow.blocks[l].id), Credits(price.0.saturating_mul(known)));
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

    /// The least and the most one run of `flow` costs over every way its routing blocks can
    /// emit, when no loop of unknown length nor agent is in it (the caller checks). A routing
    /// block inside a loop of fixed length is given one way for all its iterations: every
    /// iteration costs the same function of the ways, so the extremes are reached that way too.
    /// Nested flows add their own extremes (their routing does not depend on the caller's).
    /// `None` when the flow has too many ways to try them all.
    fn branch_bounds(&mut self, flow: &Flow) -> Result<Option<(Credits, Credits)>, EngineError> {
        let mut costs: Vec<(Credits, Credits)> = Vec::with_capacity(flow.blocks.len());
        for (b, block) in flow.blocks.iter().enumerate() {
            let (known, _) = multiplicity(flow, b);
            let once = match &block.op {
                Op::Flow { name } => {
                    let child = Arc::clone(&self.flows[name]);
                    match self.branch_bounds(&child)? {
                        Some(bounds) => bounds,
                        None => return Ok(None),
                    }
                }
                Op::Ai(spec) => {
                    let price = self.rules.block_price(self.at, self.context, &spec.planned_usage())?;
                    (price, price)
                }
                _ => {
                    let price = self.rules.block_price(self.at, self.context, &flowcredits_core::BlockUsage::of_kind(block.kind))?;
                    (price, price)
                }
            };
            costs.push((Credits(once.0.0.saturating_mul(known)), Credits(once.1.0.saturating_mul(known))));
        }
        let routers: Vec<(BlockIx, Vec<Vec<usize>>)> = (0..flow.blocks.len()).filter_map(|b| ways(flow, b).map(|ways| (b, ways))).collect();
        let mut scenarios = 1usize;
        for (_, ways) in &routers {
            scenarios = scenarios.saturating_mul(ways.len());
        }
        if scenarios > BRANCH_SCENARIOS_MAX || scenarios.saturating_mul(flow.blocks.len().max(1)) > BRANCH_WORK_MAX {
            return Ok(None);
        }
        let mut chosen: Vec<Option<&[usize]>> = vec![None; flow.blocks.len()];
        let mut bounds: Option<(Credits, Credits)> = None;
        for scenario in 0..scenarios {
            let mut rest = scenario;
            for (b, ways) in &routers {
                chosen[*b] = Some(ways[rest % ways.len()].as_slice());
                rest /= ways.len();
            }
            let mut memo = vec![None; flow.blocks.len()];
            let (mut least, mut most) = (Credits::ZERO, Credits::ZERO);
            for (b, (low, high)) in costs.iter().enumerate() {
                if runs_in(flow, b, &chosen, &mut memo) {
                    least += *low;
                    most += *high;
                }
            }
            bounds = Some(match bounds {
                None => (least, most),
                Some((low, high)) => (low.min(least), high.max(most)),
            });
        }
        Ok(bounds)
    }

    /// Adds `cost` to what one iteration of the loop at `loop_at` costs.
    fn per_iteration(&mut self, loop_at: String, cost: Credits) {
        match self.estimate.per_iteration.iter_mut().find(|line| line.at == loop_at) {
            Some(line) => line.credits += cost,
            None => self.estimate.per_iteration.push(LoopCost { at: loop_at, credits: cost }),
        }
    }

    /// The most one run of `flow` costs when every branch is taken: each priced block times its
    /// loops of known length. `None` when nothing bounds it: a priced block (or a nested flow) in
    /// a loop of unknown length, or an agent, whose MCP tools add to its price; each is noted.
    fn upper_bound(&mut self, flow: &Flow, at: &str) -> Result<Option<Credits>, EngineError> {
        let mut total = Some(Credits::ZERO);
        for (b, block) in flow.blocks.iter().enumerate() {
            let (known, unknown_loop) = multiplicity(flow, b);
            let usage = match &block.op {
                Op::Ai(spec) => spec.planned_usage(),
                _ => flowcredits_core::BlockUsage::of_kind(block.kind),
            };
            if let Some(l) = unknown_loop {
                if matches!(block.op, Op::Flow { .. }) || !self.rules.block_price(self.at, self.context, &usage)?.is_zero() {
                    self.estimate.notes.push(format!("{at}{}: inside loop `{at}{}` of unknown length, so it has no upper bound", block.id, flow.blocks[l].id));
                    total = None;
                }
                continue;
            }
            let once = match &block.op {
                Op::Flow { name } => {
                    let child = Arc::clone(&self.flows[name]);
                    self.upper_bound(&child, &format!("{at}{}/", block.id))?
                }
                _ if block.kind == BlockKind::AiAgent => {
                    self.estimate.notes.push(format!("{at}{}: plus 2 credits per unique external MCP tool the agent uses", block.id));
                    None
                }
                _ => Some(self.rules.block_price(self.at, self.context, &usage)?),
            };
            total = total.zip(once).map(|(total, once)| total + Credits(once.0.saturating_mul(known)));
        }
        Ok(total)
    }
}

/// Most combinations of routing choices `estimate` tries to bound a flow's cost tightly, and
/// most blocks visited doing it; past either it takes every branch as taken.
const BRANCH_SCENARIOS_MAX: usize = 4096;
const BRANCH_WORK_MAX: usize = 4_000_000;

/// The ways a routing block can emit: for each, its routed outputs that fire. `None` for a
/// block that always emits on all its outputs.
fn ways(flow: &Flow, b: BlockIx) -> Option<Vec<Vec<usize>>> {
    let block = &flow.blocks[b];
    let port = |name: &str| block.output(name).expect("routing blocks have their ports");
    match &block.op {
        Op::If { .. } => Some(vec![vec![port("then")], vec![port("else")]]),
        Op::Condition { .. } => Some((0..block.outputs.len()).map(|out| vec![out]).collect()),
        Op::Validate { .. } => Some(vec![vec![port("pass")], vec![port("fail"), port("errors")]]),
        Op::Http(_) => {
            let answered = [port("status"), port("headers"), port("body")];
            Some(vec![[&answered[..], &[port("success")]].concat(), [&answered[..], &[port("failure")]].concat(), vec![port("failure")]])
        }
        _ if block.outputs.iter().any(|out| out.routed) => {
            // A routing block this walk does not know: its ports may all fire, or none.
            Some(vec![block.outputs.iter().enumerate().filter(|(_, out)| out.routed).map(|(out, _)| out).collect(), Vec::new()])
        }
        _ => None,
    }
}

/// Whether block `b` runs when each routing block emits on the ports `chosen` for it (a
/// routing block not in `chosen` fires none of its routed ports): every input it takes has
/// arrived (one of a multi-input's), every outside value its loop body reads too, and its
/// enclosing loop runs.
fn runs_in(flow: &Flow, b: BlockIx, chosen: &[Option<&[usize]>], memo: &mut Vec<Option<bool>>) -> bool {
    if let Some(known) = memo[b] {
        return known;
    }
    // Settled first, so that a `stop` edge back into a loop cannot recurse forever.
    memo[b] = Some(false);
    let fires = |from: BlockIx, out: usize, memo: &mut Vec<Option<bool>>| {
        let port_fires = !flow.blocks[from].outputs[out].routed || chosen.get(from).copied().flatten().is_some_and(|ports| ports.contains(&out));
        port_fires && runs_in(flow, from, chosen, memo)
    };
    let block = &flow.blocks[b];
    let mut runs = if let Some(owner) = flow.collect_owner[b] {
        runs_in(flow, owner, chosen, memo)
    } else {
        let ports: Vec<usize> = block.inputs.iter().enumerate().filter(|(port, spec)| !spec.stop && !flow.sources[b][*port].is_empty()).map(|(port, _)| port).collect();
        let multi = ports.first().is_some_and(|&port| block.inputs[port].multi);
        let mut all = true;
        let mut any = false;
        for port in ports {
            for &(from, out) in &flow.sources[b][port] {
                let fired = fires(from, out, memo);
                all &= fired;
                any |= fired;
            }
        }
        if multi { any } else { all }
    };
    if runs && flow.body_of[b].is_some() {
        // A loop waits for every outside value its body reads.
        for (from, ports) in flow.routes.iter().enumerate() {
            for (out, route) in ports.iter().enumerate() {
                if route.waiters.contains(&b) && !fires(from, out, memo) {
                    runs = false;
                }
            }
        }
    }
    if runs && let Some(owner) = flow.scopes[flow.scope_of[b]].owner {
        runs = runs_in(flow, owner, chosen, memo);
    }
    memo[b] = Some(runs);
    runs
}

/// How many block executions every run of `flow` surely makes, as far as the graph fixes it
/// (blocks that always run, times the loops of known length around them, nested flows
/// included). A run is stopped when it reaches its execution limit, so a flow whose fixed
/// count reaches it can never finish: it is refused before it is admitted and charged anything.
pub(crate) fn certain_executions(flow: &Flow, flows: &BTreeMap<String, Arc<Flow>>) -> u64 {
    let mut memo = vec![None; flow.blocks.len()];
    let mut total = 0u64;
    for (b, block) in flow.blocks.iter().enumerate() {
        let (known, unknown_loop) = multiplicity(flow, b);
        if unknown_loop.is_some() || !surely_runs(flow, b, &mut memo) {
            continue;
        }
        let once = match &block.op {
            Op::Flow { name } => flows.get(name).map_or(1, |child| 1u64.saturating_add(certain_executions(child, flows))),
            _ => 1,
        };
        total = total.saturating_add(once.saturating_mul(known));
    }
    total
}

/// Whether block `b` runs in every run of its flow, as far as the graph fixes it: no routed
/// port is known to fire.
fn surely_runs(flow: &Flow, b: BlockIx, memo: &mut Vec<Option<bool>>) -> bool {
    runs_in(flow, b, &[], memo)
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
