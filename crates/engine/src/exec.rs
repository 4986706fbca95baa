//! The executor. A run is one tokio task: each scope (the flow, one loop iteration, one nested
//! flow) is a [`Frame`] with a ready queue. Blocks whose work is pure run inline as soon as
//! their inputs arrive, with no task or allocation of their own; blocks that wait (HTTP,
//! delays, scripts, loops, nested flows, providers) become futures polled together, so
//! independent branches proceed concurrently. Every execution is charged through the
//! [`Meter`] as it completes; charges of inline blocks are batched until the frame next waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flowcredits_core::{BlockKind, BlockUsage, Credits, ExecutionId, RunContext, RunId, Timestamp};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::{EngineError, Problem, Problems};
use crate::flow::{BlockIx, Flow, ROOT_SCOPE, ScopeIx, TargetKind};
use crate::meter::{Admission, BlockCharge, BlockTrace, Meter};
use crate::op::{LOOP_ITERATIONS_MAX, Op, RESPONSE_STATUS_MAX, RESPONSE_STATUS_MIN};
use crate::path::{Scope as TemplateScope, truthy};
use crate::provider::{AiCall, Providers};
use crate::resolve::{FlowResolver, MapResolver, resolve_all};

/// Charges of inline blocks wait at most this many executions before they go to the meter.
pub const CHARGE_BATCH_MAX: usize = 1024;
/// Most `display` and `log` outputs one run keeps; later ones are counted, not kept.
pub const RUN_OUTPUTS_MAX: usize = 10_000;
/// Most variables one run may set.
pub const RUN_VARIABLES_MAX: usize = 10_000;

/// An HTTP request that triggered a deployed flow (for `request` blocks).
#[derive(Clone, Debug, Default)]
pub struct HttpTrigger {
    pub method: String,
    pub path: String,
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub run: RunId,
    pub context: RunContext,
    /// What trigger blocks emit: `start.input`, `request.body`, `mcp.arguments`.
    pub input: Value,
    /// Overrides of the flow's `config` values.
    pub config: Map<String, Value>,
    pub http: Option<HttpTrigger>,
    /// Told when the flow's `response` block answers, which may be well before the run ends
    /// (a deployed flow can reply and keep working).
    pub on_response: Option<ResponseHook>,
}

/// A callback for the `response` block's answer.
#[derive(Clone)]
pub struct ResponseHook(pub Arc<dyn Fn(&Response) + Send + Sync>);

impl std::fmt::Debug for ResponseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseHook")
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Completed,
    /// Not admitted: it needs credits the team lacks. Nothing executed.
    Paused,
    /// A block failed; blocks already started finished and were charged, nothing new started.
    Failed { error: String },
}

/// A value a `display` or `log` block showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Where: the block id, behind the loop iterations and nested flows it ran in
    /// (`each#2/show`).
    pub at: String,
    pub label: Option<String>,
    pub value: Value,
}

/// One charged block execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub id: ExecutionId,
    pub kind: BlockKind,
    pub credits: Credits,
    /// Whether the block succeeded; a failed block that started is charged all the same.
    pub ok: bool,
}

impl Execution {
    /// The block's id (the last part of the execution id).
    pub fn block(&self) -> &str {
        self.id.as_str().rsplit('/').next().unwrap_or_default()
    }
}

/// What a `response` block answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub run: RunId,
    pub outcome: RunOutcome,
    pub outputs: Vec<Output>,
    pub logs: Vec<Output>,
    pub response: Option<Response>,
    pub executions: Vec<Execution>,
    pub total: Credits,
}

/// Most block executions one run may perform by default: nested loops multiply, and every
/// execution is charged and kept for the receipt.
pub const RUN_EXECUTIONS_MAX: u64 = 5_000_000;

/// Limits an engine applies to every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A run that reaches this many block executions fails; blocks already running finish.
    pub run_executions_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { run_executions_max: RUN_EXECUTIONS_MAX }
    }
}

/// Runs flows. Cheap to share; one engine serves many runs.
pub struct Engine {
    http: crate::http::HttpClient,
    limits: Limits,
    /// Keep each block execution's inputs, outputs and timing (for run history). Off by
    /// default: it copies every value that flows.
    traces: bool,
    providers: Providers,
    resolver: Arc<dyn FlowResolver>,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new(Providers::default(), Arc::new(MapResolver::default()))
    }
}

impl Engine {
    pub fn new(providers: Providers, resolver: Arc<dyn FlowResolver>) -> Engine {
        Engine { http: crate::http::HttpClient::new(crate::http::Destinations::Any), limits: Limits::default(), traces: false, providers, resolver }
    }

    /// Keeps `http_request` blocks to `destinations` (a server: public hosts only).
    pub fn with_destinations(self, destinations: crate::http::Destinations) -> Engine {
        Engine { http: crate::http::HttpClient::new(destinations), ..self }
    }

    pub fn with_limits(self, limits: Limits) -> Engine {
        Engine { limits, ..self }
    }

    /// This engine (its HTTP client, limits and providers) finding the flows that `flow`
    /// blocks run with `resolver` instead: for a server, one resolver per team.
    pub fn with_resolver(&self, resolver: Arc<dyn FlowResolver>) -> Engine {
        Engine { http: self.http.clone(), limits: self.limits, traces: self.traces, providers: self.providers.clone(), resolver }
    }

    /// Attaches a [`BlockTrace`] to every charge, for run history.
    pub fn with_block_traces(self) -> Engine {
        Engine { traces: true, ..self }
    }

    pub fn resolver(&self) -> &dyn FlowResolver {
        &*self.resolver
    }

    /// Admits the run through the meter and, when admitted, runs it to the end.
    pub async fn run(&self, flow: &Flow, request: RunRequest, meter: &dyn Meter) -> Result<RunReport, EngineError> {
        let flows = resolve_all(flow, &*self.resolver)?;
        // Without loops or nested flows a run makes at most one execution per block, far under
        // the limit: the walk is left out of the hook path's common case.
        let multiplies = std::iter::once(flow).chain(flows.values().map(|child| &**child)).flat_map(|flow| flow.blocks.iter()).any(|block| matches!(block.op, Op::Repeat { .. } | Op::For | Op::Flow { .. }));
        let certain = if multiplies { crate::estimate::certain_executions(flow, &flows) } else { flow.blocks.len() as u64 };
        if certain >= self.limits.run_executions_max {
            let problem = format!(
                "every run makes at least {certain} block executions (its loops' fixed counts) and a run is stopped at {}, so it could never finish; make the loops shorter or split the work across runs",
                self.limits.run_executions_max
            );
            return Err(EngineError::Invalid { flow: flow.name.clone(), problems: Problems(vec![Problem::file("blocks", problem)]) });
        }
        let planned = planned_usage(flow, &flows);
        let admission = meter.admit(&request.run, request.context, &planned).await.map_err(|err| name_model_problem(err, flow, &flows))?;
        let mut config = flow.config.clone();
        config.extend(request.config.clone());
        let mut report = RunReport { run: request.run.clone(), outcome: RunOutcome::Completed, outputs: Vec::new(), logs: Vec::new(), response: None, executions: Vec::new(), total: Credits::ZERO };
        if admission == Admission::Paused {
            report.outcome = RunOutcome::Paused;
            return Ok(report);
        }
        let configs = flows.iter().map(|(name, child)| (name.clone(), Value::Object(child.config.clone()))).collect();
        let mut run = Run { engine: self, meter, request, flows, configs, state: Mutex::new(RunState::default()), failed: AtomicBool::new(false), queued: AtomicUsize::new(0), executions: AtomicU64::new(0) };
        let input = std::mem::take(&mut run.request.input);
        let mut instance = Instance::new(flow, Value::Object(config), input);
        instance.on_response = run.request.on_response.clone();
        let mut frame = Frame::new(&run, &instance, ROOT_SCOPE, format!("{}/", run.request.run), Arc::new(HashMap::new()));
        frame.start();
        frame.drive().await;
        drop(frame);
        let (flushed, ended) = run.flush_and_end().await;
        let state = run.state.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        flushed?;
        ended?;
        report.outcome = match state.failure {
            None => RunOutcome::Completed,
            Some(error) => RunOutcome::Failed { error },
        };
        report.total = state.executions.iter().map(|execution| execution.credits).sum();
        report.outputs = state.outputs;
        report.logs = state.logs;
        report.executions = state.executions;
        report.response = instance.response.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(report)
    }
}

/// The usage every block of a run may have, known before it starts (AI blocks by model).
pub fn planned_usage(flow: &Flow, flows: &BTreeMap<String, Arc<Flow>>) -> Vec<BlockUsage> {
    std::iter::once(flow).chain(flows.values().map(|child| &**child)).flat_map(|flow| flow.blocks.iter()).map(|block| match &block.op {
        Op::Ai(spec) => spec.planned_usage(),
        _ => BlockUsage::of_kind(block.kind),
    }).collect()
}

/// Refuses a flow whose AI blocks name a model the price book in force at `at` does not list,
/// naming the block: such a flow could never be admitted, so it is refused when it is saved
/// rather than on every call.
pub fn check_models(rules: &flowcredits_core::Rules, at: Timestamp, flow: &Flow) -> Result<(), EngineError> {
    check_models_of(rules, at, flow, &BTreeMap::new())
}

/// [`check_models`] over a flow and the flows `resolver` finds for its `flow` blocks.
pub fn check_models_nested(rules: &flowcredits_core::Rules, at: Timestamp, flow: &Flow, resolver: &dyn crate::resolve::FlowResolver) -> Result<(), EngineError> {
    check_models_of(rules, at, flow, &resolve_all(flow, resolver)?)
}

/// [`check_models`] over a flow and the flows it nests, reporting every block whose model the
/// price book does not list (the first flow that has one is named).
pub(crate) fn check_models_of(rules: &flowcredits_core::Rules, at: Timestamp, flow: &Flow, flows: &BTreeMap<String, Arc<Flow>>) -> Result<(), EngineError> {
    let context = RunContext::manual(flowcredits_core::CloudRun::On);
    for flow in std::iter::once(flow).chain(flows.values().map(|child| &**child)) {
        let mut problems = Vec::new();
        for block in &flow.blocks {
            if let Op::Ai(spec) = &block.op
                && let Err(flowcredits_core::CoreError::UnknownModel { model, .. }) = rules.block_price(at, context, &spec.planned_usage())
            {
                let known = rules.prices.version_at(at).ok().map(|prices| if block.kind == BlockKind::AiMedia { &prices.media_models } else { &prices.agent_models });
                let listed = known.map(|models| models.keys().map(String::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                problems.push(Problem::block(&block.id, "config.model", format!("unknown model `{model}` for {}; the price book lists: {listed}", block.kind)));
            }
        }
        if !problems.is_empty() {
            return Err(EngineError::Invalid { flow: flow.name.clone(), problems: Problems(problems) });
        }
    }
    Ok(())
}

/// An unknown model is a problem in the flow file: say which block has it.
pub(crate) fn name_model_problem(err: EngineError, flow: &Flow, flows: &BTreeMap<String, Arc<Flow>>) -> EngineError {
    let EngineError::Meter(flowcredits_core::CoreError::UnknownModel { model, .. }) = &err else { return err };
    for flow in std::iter::once(flow).chain(flows.values().map(|child| &**child)) {
        for block in &flow.blocks {
            if matches!(&block.op, Op::Ai(spec) if spec.model == *model) {
                let problem = Problem::block(&block.id, "config.model", format!("unknown model `{model}` for {}", block.kind));
                return EngineError::Invalid { flow: flow.name.clone(), problems: Problems(vec![problem]) };
            }
        }
    }
    err
}

struct Run<'a> {
    engine: &'a Engine,
    meter: &'a dyn Meter,
    request: RunRequest,
    flows: BTreeMap<String, Arc<Flow>>,
    configs: BTreeMap<String, Value>,
    state: Mutex<RunState>,
    /// Set with the first failure; read before every block, so kept outside the mutex.
    failed: AtomicBool,
    /// Charges waiting in `state.charges`, readable without the lock.
    queued: AtomicUsize,
    /// Block executions so far, against `Limits::run_executions_max`.
    executions: AtomicU64,
}

#[derive(Default)]
struct RunState {
    charges: Vec<BlockCharge>,
    charged_ok: Vec<bool>,
    executions: Vec<Execution>,
    outputs: Vec<Output>,
    logs: Vec<Output>,
    vars: HashMap<String, Value>,
    failure: Option<String>,
}

impl Run<'_> {
    fn state(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn fail(&self, message: String) {
        self.state().failure.get_or_insert(message);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn queued_charges(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues the charge of an execution that completed.
    fn executed(&self, execution: ExecutionId, usage: BlockUsage, ok: bool, trace: Option<Box<BlockTrace>>) {
        let max = self.engine.limits.run_executions_max;
        if self.executions.fetch_add(1, Ordering::Relaxed) + 1 == max {
            self.fail(format!("the run reached the limit of {max} block executions and was stopped; loops over fewer items, or fewer nested loops, stay under it"));
        }
        let mut state = self.state();
        state.charges.push(BlockCharge { execution, usage, trace });
        state.charged_ok.push(ok);
        self.queued.store(state.charges.len(), Ordering::Relaxed);
    }

    /// Sends queued charges to the meter. A meter failure fails the run.
    async fn flush(&self) -> Result<(), EngineError> {
        let Some((mut charges, oks)) = self.take_queued() else { return Ok(()) };
        let result = self.meter.charge(&self.request.run, &mut charges).await;
        self.charged(charges, oks, result)
    }

    /// Sends the last queued charges and the run's end together.
    async fn flush_and_end(&self) -> (Result<(), EngineError>, Result<(), EngineError>) {
        let (mut charges, oks) = self.take_queued().unwrap_or_default();
        let (result, ended) = self.meter.charge_and_end(&self.request.run, &mut charges).await;
        (self.charged(charges, oks, result), ended)
    }

    fn take_queued(&self) -> Option<(Vec<BlockCharge>, Vec<bool>)> {
        let mut state = self.state();
        if state.charges.is_empty() {
            return None;
        }
        self.queued.store(0, Ordering::Relaxed);
        Some((std::mem::take(&mut state.charges), std::mem::take(&mut state.charged_ok)))
    }

    /// Records what the meter answered for `charges`.
    fn charged(&self, charges: Vec<BlockCharge>, oks: Vec<bool>, result: Result<Vec<Credits>, EngineError>) -> Result<(), EngineError> {
        let mut state = self.state();
        match result {
            Ok(credits) => {
                let executions = charges.into_iter().zip(oks).zip(credits).map(|((charge, ok), credits)| Execution { id: charge.execution, kind: charge.usage.kind, credits, ok });
                state.executions.extend(executions);
                Ok(())
            }
            Err(err) => {
                state.failure.get_or_insert_with(|| format!("metering failed: {err}"));
                self.failed.store(true, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    fn show(&self, display: bool, at: String, label: Option<String>, value: Value) {
        let mut state = self.state();
        let list = if display { &mut state.outputs } else { &mut state.logs };
        if list.len() < RUN_OUTPUTS_MAX {
            list.push(Output { at, label, value });
        }
    }
}

/// One flow being run: the top-level flow, or a flow run by a `flow` block.
struct Instance<'a> {
    flow: &'a Flow,
    config: Value,
    /// What trigger blocks emit, and how many trigger blocks have yet to take it: the last
    /// one takes it without a copy (a run's input can be large).
    input: Mutex<(Value, usize)>,
    response: Mutex<Option<Response>>,
    /// Only the run's own flow answers its caller; flows it runs do not.
    on_response: Option<ResponseHook>,
}

impl<'a> Instance<'a> {
    fn new(flow: &'a Flow, config: Value, input: Value) -> Instance<'a> {
        let triggers = flow.blocks.iter().filter(|block| matches!(block.op, Op::Start | Op::Request | Op::Mcp { .. })).count();
        Instance { flow, config, input: Mutex::new((input, triggers)), response: Mutex::new(None), on_response: None }
    }

    fn trigger_input(&self) -> Value {
        let mut input = self.input.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        input.1 = input.1.saturating_sub(1);
        if input.1 == 0 { std::mem::take(&mut input.0) } else { input.0.clone() }
    }
}

/// Values from enclosing scopes that a loop body reads.
type Env = HashMap<(BlockIx, usize), Value>;

/// Outputs of one execution: (output port, value).
type Emits = Vec<(usize, Value)>;

/// A waiting block's completion.
struct Done {
    /// Executions to charge, in order: (block, usage, ok).
    executed: Vec<(BlockIx, BlockUsage, bool)>,
    /// Values to send: (block, output port, value).
    emits: Vec<(BlockIx, usize, Value)>,
    error: Option<(BlockIx, String)>,
}

struct Frame<'a> {
    run: &'a Run<'a>,
    instance: &'a Instance<'a>,
    flow: &'a Flow,
    scope: ScopeIx,
    /// Execution id prefix: `run/`, `run/loop#3/`, `run/subflow/`.
    prefix: String,
    env: Arc<Env>,
    slots: Vec<Option<Value>>,
    waits: Vec<u32>,
    fired: Vec<bool>,
    ready: VecDeque<BlockIx>,
    /// Outputs that loop bodies in this scope read.
    captured: Env,
    /// Per collect of this body: values gathered so far across iterations.
    collected: Vec<Vec<Value>>,
    stop: bool,
    /// With block traces on: inputs and start of blocks that are executing.
    started: foldhash::HashMap<BlockIx, (Box<RawValue>, Timestamp, Instant)>,
}

impl<'a> Frame<'a> {
    fn new(run: &'a Run<'a>, instance: &'a Instance<'a>, scope: ScopeIx, prefix: String, env: Arc<Env>) -> Frame<'a> {
        let flow = instance.flow;
        let info = &flow.scopes[scope];
        let waits: Vec<u32> = info.members.iter().map(|&b| flow.waits[b]).collect();
        Frame {
            run,
            instance,
            flow,
            scope,
            prefix,
            env,
            slots: vec![None; info.slots],
            waits,
            fired: vec![false; info.members.len()],
            ready: VecDeque::new(),
            captured: HashMap::new(),
            collected: vec![Vec::new(); info.collects.len()],
            stop: false,
            started: foldhash::HashMap::default(),
        }
    }

    /// Makes a loop body's frame ready for its next iteration, keeping its allocations.
    fn reset(&mut self, prefix_len: usize, iteration: u64) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        let info = &self.flow.scopes[self.scope];
        for (wait, &b) in self.waits.iter_mut().zip(&info.members) {
            *wait = self.flow.waits[b];
        }
        self.fired.iter_mut().for_each(|fired| *fired = false);
        self.ready.clear();
        self.captured.clear();
        self.stop = false;
        self.prefix.truncate(prefix_len);
        push_number(&mut self.prefix, iteration);
        self.prefix.push('/');
    }

    /// Queues the members with nothing to wait for, after filling values from outside.
    fn start(&mut self) {
        let info = &self.flow.scopes[self.scope];
        for &(to, port, from, out) in &info.inherited {
            if self.flow.scope_of[to] == self.scope {
                let value = self.env.get(&(from, out)).cloned().expect("a loop starts only once the values its body reads have arrived");
                self.deliver(to, port, value);
            }
        }
        for &b in &info.members {
            let local = self.flow.local[b];
            // Blocks that wait for nothing start now; the others are queued as their inputs
            // arrive (the inherited ones above, or a loop's iteration values).
            if self.flow.waits[b] == 0 && !matches!(self.flow.blocks[b].op, Op::Collect) && !self.fired[local] {
                self.ready.push_back(b);
            }
        }
    }

    /// Runs the frame until nothing is ready and nothing is waiting. Not boxed: recursion
    /// (loops, nested flows) goes through the boxed futures of waiting blocks.
    async fn drive(&mut self) {
        {
            // Created on the first waiting block: most loop iterations never wait.
            let mut waiting: Option<FuturesUnordered<BoxFuture<'a, Done>>> = None;
            loop {
                while let Some(b) = self.ready.pop_front() {
                    if self.run.failed() {
                        self.ready.clear();
                        break;
                    }
                    if let Some(future) = self.execute(b) {
                        waiting.get_or_insert_with(FuturesUnordered::new).push(future);
                    }
                    if self.run.queued_charges() >= CHARGE_BATCH_MAX {
                        let _ = self.run.flush().await;
                    }
                }
                let Some(futures) = waiting.as_mut().filter(|futures| !futures.is_empty()) else { break };
                let _ = self.run.flush().await;
                let done = futures.next().await.expect("not empty");
                self.complete(done);
            }
        }
    }

    fn execution_id(&self, b: BlockIx) -> Result<ExecutionId, String> {
        let block = &self.flow.blocks[b].id;
        let mut id = String::with_capacity(self.prefix.len() + block.len());
        id.push_str(&self.prefix);
        id.push_str(block);
        ExecutionId::new(id).map_err(|err| format!("its execution id is too long to record ({err}); nest fewer loops or flows, or use shorter block ids"))
    }

    /// Where a display shows up: the execution id without the run id.
    fn at(&self, b: BlockIx) -> String {
        let prefix = self.prefix.split_once('/').map_or("", |(_, rest)| rest);
        format!("{prefix}{}", self.flow.blocks[b].id)
    }

    fn fail(&self, b: BlockIx, message: &str) {
        let block = &self.flow.blocks[b];
        let err = EngineError::block(&self.at(b), block.kind, message);
        self.run.fail(err.to_string());
    }

    /// Runs an inline block now, or returns the future of a waiting one.
    fn execute(&mut self, b: BlockIx) -> Option<BoxFuture<'a, Done>> {
        let local = self.flow.local[b];
        self.fired[local] = true;
        let block = &self.flow.blocks[b];
        let base = self.flow.slot[b];
        let inputs = base..base + block.inputs.len();
        if self.run.engine.traces {
            let input = ports_json(block.inputs.iter().zip(&self.slots[inputs.clone()]).filter_map(|(port, value)| Some((port.name.as_str(), value.as_ref()?))));
            self.started.insert(b, (input, Timestamp::now(), Instant::now()));
        }
        // The slots are lent to the block rather than copied out: no allocation per block.
        let mut slots = std::mem::take(&mut self.slots);
        let outcome = self.inline(b, &mut slots[inputs.clone()]);
        self.slots = slots;
        match outcome {
            Inline::Done(result) => {
                self.slots[inputs].iter_mut().for_each(|slot| *slot = None);
                self.finish_inline(b, BlockUsage::of_kind(block.kind), result);
                None
            }
            Inline::Wait => {
                let owned = self.slots[inputs].iter_mut().map(Option::take).collect();
                Some(self.waiting(b, owned))
            }
        }
    }

    fn finish_inline(&mut self, b: BlockIx, usage: BlockUsage, result: Result<Emits, String>) {
        let id = match self.execution_id(b) {
            Ok(id) => id,
            Err(message) => return self.fail(b, &message),
        };
        let trace = self.trace(b, result.as_ref().map(|emits| emits.iter().map(|(port, value)| (*port, value))).map_err(String::as_str));
        self.run.executed(id, usage, result.is_ok(), trace);
        match result {
            Ok(emits) => {
                for (port, value) in emits {
                    self.emit(b, port, value);
                }
            }
            Err(message) => self.fail(b, &message),
        }
    }

    fn complete(&mut self, done: Done) {
        for (b, usage, ok) in done.executed {
            let error = done.error.as_ref().filter(|(failed, _)| *failed == b).map(|(_, message)| message.as_str());
            let sent = done.emits.iter().filter(|(from, _, _)| *from == b).map(|(_, port, value)| (*port, value));
            let trace = self.trace(b, if ok { Ok(sent) } else { Err(error.unwrap_or("failed")) });
            match self.execution_id(b) {
                Ok(id) => self.run.executed(id, usage, ok, trace),
                Err(message) => self.fail(b, &message),
            }
        }
        if let Some((b, message)) = done.error {
            return self.fail(b, &message);
        }
        for (b, port, value) in done.emits {
            self.emit(b, port, value);
        }
    }

    /// The trace of block `b`'s execution that just ended, when traces are on.
    fn trace<'v>(&mut self, b: BlockIx, result: Result<impl Iterator<Item = (usize, &'v Value)> + Clone, &str>) -> Option<Box<BlockTrace>> {
        if !self.run.engine.traces {
            return None;
        }
        let (input, started_at, started) = self.started.remove(&b).unwrap_or_else(|| (RawValue::NULL.to_owned(), Timestamp::now(), Instant::now()));
        let outputs = &self.flow.blocks[b].outputs;
        let (output, error) = match result {
            Ok(sent) => (ports_json(sent.map(|(port, value)| (outputs[port].name.as_str(), value))), None),
            Err(message) => (RawValue::NULL.to_owned(), Some(message.to_owned())),
        };
        let duration_us = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        Some(Box::new(BlockTrace { input, output, error, started_at, duration_us }))
    }

    /// Sends an output value along its edges.
    fn emit(&mut self, b: BlockIx, port: usize, value: Value) {
        let route = &self.flow.routes[b][port];
        if !route.waiters.is_empty() {
            self.captured.insert((b, port), value.clone());
            for &waiter in &route.waiters {
                self.arrived(waiter);
            }
        }
        let targets = &route.targets;
        let Some((last, rest)) = targets.split_last() else { return };
        for target in rest {
            self.send(target.kind, target.block, target.port, value.clone());
        }
        self.send(last.kind, last.block, last.port, value);
    }

    fn send(&mut self, kind: TargetKind, to: BlockIx, port: usize, value: Value) {
        match kind {
            TargetKind::Local => self.deliver(to, port, value),
            TargetKind::Collect => {
                let index = self.flow.scopes[self.scope].collects.iter().position(|&c| c == to).expect("a collect target belongs to this body");
                self.collected[index].push(value);
            }
            TargetKind::Stop => self.stop = true,
        }
    }

    fn deliver(&mut self, to: BlockIx, port: usize, value: Value) {
        let local = self.flow.local[to];
        let slot = self.flow.slot[to] + port;
        if self.flow.blocks[to].inputs[port].multi && (self.fired[local] || self.slots[slot].is_some()) {
            return;
        }
        self.slots[slot] = Some(value);
        self.arrived(to);
    }

    fn arrived(&mut self, to: BlockIx) {
        let local = self.flow.local[to];
        self.waits[local] -= 1;
        if self.waits[local] == 0 {
            self.ready.push_back(to);
        }
    }

    fn config(&self) -> &'a Value {
        &self.instance.config
    }

    /// The inline blocks: pure work on values in hand.
    fn inline(&mut self, b: BlockIx, inputs: &mut [Option<Value>]) -> Inline {
        let block = &self.flow.blocks[b];
        let first = |inputs: &mut [Option<Value>]| inputs.first_mut().and_then(Option::take).unwrap_or(Value::Null);
        let input = |inputs: &mut [Option<Value>], name: &str| block.input(name).and_then(|port| inputs[port].take());
        let out = |name: &str, value: Value| (block.output(name).expect("catalog port"), value);
        let result = match &block.op {
            Op::Start => Ok(vec![out("input", self.instance.trigger_input())]),
            Op::Request => {
                let http = self.run.request.http.clone().unwrap_or_else(|| HttpTrigger { method: "POST".into(), path: "/".into(), ..HttpTrigger::default() });
                Ok(vec![out("body", self.instance.trigger_input()), out("headers", Value::Object(http.headers)), out("query", Value::Object(http.query)), out("method", Value::String(http.method)), out("path", Value::String(http.path))])
            }
            Op::Schedule => Ok(vec![out("time", Value::String(jiff::Timestamp::now().to_string()))]),
            Op::Mcp { schema } => {
                let arguments = self.instance.trigger_input();
                let errors = schema_errors(schema, &arguments);
                if errors.is_empty() { Ok(vec![out("arguments", arguments)]) } else { Err(format!("the arguments do not match the tool's input schema: {}", errors.join("; "))) }
            }
            Op::Response { status } => {
                let status = match input(inputs, "status") {
                    None => *status,
                    Some(value) => match value.as_u64().filter(|code| (RESPONSE_STATUS_MIN..=RESPONSE_STATUS_MAX).contains(code)) {
                        Some(code) => code as u16,
                        None => return Inline::Done(Err(format!("input `status`: {value} is not an HTTP status from {RESPONSE_STATUS_MIN} to {RESPONSE_STATUS_MAX}"))),
                    },
                };
                let response = Response { status, body: first(inputs) };
                if let Some(hook) = &self.instance.on_response {
                    (hook.0)(&response);
                }
                *self.instance.response.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(response);
                Ok(vec![])
            }
            Op::If { test } => {
                let value = first(inputs);
                let holds = match (input(inputs, "condition"), test) {
                    (Some(condition), _) => truthy(&condition),
                    (None, Some(test)) => test.holds(&value),
                    (None, None) => false,
                };
                Ok(vec![out(if holds { "then" } else { "else" }, value)])
            }
            Op::Condition { branches } => {
                let value = first(inputs);
                let branch = branches.iter().position(|(_, test)| test.holds(&value)).unwrap_or(branches.len());
                Ok(vec![(branch, value)])
            }
            Op::Or | Op::Delay { ms: 0 } => Ok(vec![(0, inputs.iter_mut().find_map(Option::take).unwrap_or(Value::Null))]),
            Op::Validate { schema } => {
                let value = first(inputs);
                let errors = schema_errors(schema, &value);
                if errors.is_empty() { Ok(vec![out("pass", value)]) } else { Ok(vec![out("fail", value), out("errors", json!(errors))]) }
            }
            Op::Const(value) => Ok(vec![(0, value.clone())]),
            Op::List { items, inputs: names } => {
                let mut list = items.clone();
                list.extend(names.iter().filter_map(|name| input(inputs, name)));
                Ok(vec![(0, Value::Array(list))])
            }
            Op::Record { fields, inputs: names } => {
                let mut record = fields.clone();
                record.extend(names.iter().filter_map(|name| input(inputs, name).map(|value| (name.clone(), value))));
                Ok(vec![(0, Value::Object(record))])
            }
            Op::Select { path, default } => {
                let value = inputs[0].as_ref().expect("select's value is required");
                match path.get(value).or(default.as_ref()) {
                    Some(found) => Ok(vec![(0, found.clone())]),
                    None => Err(format!("the path `{path}` finds nothing in the value and no `default` is configured")),
                }
            }
            Op::Template(template) => {
                let value = first(inputs);
                template.render(&TemplateScope { input: &value, config: self.config() }).map(|text| vec![(0, Value::String(text))])
            }
            Op::Now => {
                let now = jiff::Timestamp::now();
                Ok(vec![out("time", Value::String(now.to_string())), out("epoch_ms", json!(now.as_millisecond()))])
            }
            Op::Date { add_ms } => date(&first(inputs), *add_ms).map(|(iso, epoch_ms)| vec![out("date", Value::String(iso[..10].to_owned())), out("iso", Value::String(iso)), out("epoch_ms", json!(epoch_ms))]),
            Op::SetVariable { name } => {
                let value = first(inputs);
                let mut state = self.run.state();
                if state.vars.len() >= RUN_VARIABLES_MAX && !state.vars.contains_key(name) {
                    Err(format!("a run may set at most {RUN_VARIABLES_MAX} variables"))
                } else {
                    state.vars.insert(name.clone(), value.clone());
                    Ok(vec![(0, value)])
                }
            }
            Op::GetVariable { name, default } => match self.run.state().vars.get(name).or(default.as_ref()) {
                Some(value) => Ok(vec![(0, value.clone())]),
                None => Err(format!("variable `{name}` is not set; set it first (connect this block's `after` input to the set_variable block) or configure a `default`")),
            },
            Op::GetConfig { key, default } => match self.config().get(key).or(default.as_ref()) {
                Some(value) => Ok(vec![(0, value.clone())]),
                None => Err(format!("config key `{key}` is not set; add it to the flow's `config` or pass it when running")),
            },
            Op::Display { label } | Op::Log { label } => {
                self.run.show(matches!(block.op, Op::Display { .. }), self.at(b), label.clone(), first(inputs));
                Ok(vec![])
            }
            Op::Http(_) | Op::Integration(_) | Op::Flow { .. } | Op::Ai(_) | Op::Evaluate(_) | Op::Delay { .. } | Op::Repeat { .. } | Op::For | Op::Collect => return Inline::Wait,
        };
        Inline::Done(result)
    }

    /// The waiting blocks, as futures that own what they need.
    fn waiting(&mut self, b: BlockIx, mut inputs: Vec<Option<Value>>) -> BoxFuture<'a, Done> {
        let (run, flow, config) = (self.run, self.flow, self.config());
        let block = &flow.blocks[b];
        let usage = BlockUsage::of_kind(block.kind);
        let single = move |result: Result<Emits, String>, usage: BlockUsage| match result {
            Ok(emits) => Done { executed: vec![(b, usage, true)], emits: emits.into_iter().map(|(port, value)| (b, port, value)).collect(), error: None },
            Err(message) => Done { executed: vec![(b, usage, false)], emits: Vec::new(), error: Some((b, message)) },
        };
        let mut input_named = |name: &str| block.input(name).and_then(|port| inputs[port].take());
        match &block.op {
            Op::Http(spec) => {
                let input = input_named("input").unwrap_or(Value::Null);
                let body = input_named("body");
                async move {
                    let scope = TemplateScope { input: &input, config };
                    let result = spec.send(&run.engine.http, &scope, body).await.map(|emits| emits.into_iter().map(|(name, value)| (block.output(name).expect("catalog port"), value)).collect());
                    single(result, usage)
                }
                .boxed()
            }
            Op::Delay { ms } => {
                let (ms, value) = (*ms, inputs.into_iter().flatten().next().unwrap_or(Value::Null));
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    single(Ok(vec![(0, value)]), usage)
                }
                .boxed()
            }
            Op::Evaluate(script) => {
                let (script, input) = (Arc::clone(script), input_named("input").unwrap_or(Value::Null));
                async move {
                    let result = script.run_in_turn(input).await;
                    single(result.map(|value| vec![(0, value)]), usage)
                }
                .boxed()
            }
            Op::Ai(spec) => {
                let prompt = input_named("prompt").unwrap_or(Value::Null);
                async move {
                    let provider = match run.engine.providers.ai(spec) {
                        Ok(provider) => provider,
                        Err(message) => return single(Err(message), spec.planned_usage()),
                    };
                    let (result, used) = match provider.call(AiCall { spec, prompt: &prompt }).await {
                        Ok(outcome) => (Ok(vec![(0, outcome.output.clone())]), outcome),
                        Err(failure) => (Err(failure.message), failure.used),
                    };
                    let mut usage = spec.planned_usage();
                    if spec.kind == BlockKind::AiAgent {
                        usage.external_mcp_tools = used.external_mcp_tools;
                        usage.internal_mcp_tools = used.internal_mcp_tools;
                    }
                    single(result, usage)
                }
                .boxed()
            }
            Op::Integration(spec) => {
                let input = input_named("input").unwrap_or(Value::Null);
                async move {
                    let result = match run.engine.providers.connector(spec) {
                        Ok(connector) => connector.invoke(spec, &input).await,
                        Err(message) => Err(message),
                    };
                    single(result.map(|value| vec![(0, value)]), usage)
                }
                .boxed()
            }
            Op::Flow { name } => {
                let input = input_named("input").unwrap_or(Value::Null);
                let prefix = format!("{}{}/", self.prefix, block.id);
                let child = run.flows.get(name).expect("resolved before the run started");
                let child_config = run.configs.get(name).expect("resolved before the run started").clone();
                async move {
                    let instance = Instance::new(child, child_config, input);
                    let mut frame = Frame::new(run, &instance, ROOT_SCOPE, prefix, Arc::new(HashMap::new()));
                    frame.start();
                    frame.drive().await;
                    drop(frame);
                    let result = instance.response.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()).map_or(Value::Null, |response| response.body);
                    single(Ok(vec![(0, result)]), usage)
                }
                .boxed()
            }
            Op::Repeat { times } => {
                let count = match (times, input_named("times")) {
                    (Some(times), _) => Ok(*times),
                    (None, Some(value)) => whole_number(&value).filter(|n| *n <= LOOP_ITERATIONS_MAX).ok_or_else(|| format!("`times` must be a whole number from 0 to {LOOP_ITERATIONS_MAX}, not {value}")),
                    (None, None) => Ok(0),
                };
                match count {
                    Ok(count) => self.run_loop(b, Iterations::Count(count)),
                    Err(message) => futures_util::future::ready(single(Err(message), usage)).boxed(),
                }
            }
            Op::For => match input_named("list") {
                Some(Value::Array(items)) if items.len() as u64 <= LOOP_ITERATIONS_MAX => self.run_loop(b, Iterations::Items(items)),
                Some(Value::Array(items)) => futures_util::future::ready(single(Err(format!("the list has {} items, more than the limit of {LOOP_ITERATIONS_MAX} iterations", items.len())), usage)).boxed(),
                other => futures_util::future::ready(single(Err(format!("`list` must be a list, not {}", other.unwrap_or(Value::Null))), usage)).boxed(),
            },
            _ => unreachable!("inline blocks do not wait"),
        }
    }

    /// Runs a loop's body once per iteration, one iteration after another, then emits `done`
    /// and the lists of its collects.
    fn run_loop(&mut self, b: BlockIx, iterations: Iterations) -> BoxFuture<'a, Done> {
        let (run, instance, flow) = (self.run, self.instance, self.flow);
        let body = flow.body_of[b].expect("loops have bodies");
        // The body reads outside values as they are now; the loop waited for them.
        let mut env = Env::new();
        for &(_, _, from, out) in &flow.scopes[body].inherited {
            let value = self.captured.get(&(from, out)).or_else(|| self.env.get(&(from, out))).cloned().expect("a loop starts only once the values its body reads have arrived");
            env.insert((from, out), value);
        }
        let env = Arc::new(env);
        let prefix = format!("{}{}#", self.prefix, flow.blocks[b].id);
        let block = &flow.blocks[b];
        let (item_port, index_port, done_port) = (block.output("item"), block.output("index").expect("loops have index"), block.output("done").expect("loops have done"));
        async move {
            let count = iterations.len();
            let mut frame = Frame::new(run, instance, body, prefix, env);
            let prefix_len = frame.prefix.len();
            let mut ran = 0u64;
            let mut items = iterations.into_items();
            while ran < count && !run.failed() {
                frame.reset(prefix_len, ran);
                if let (Some(port), Some(items)) = (item_port, items.as_mut()) {
                    frame.emit(b, port, std::mem::take(&mut items[ran as usize]));
                }
                frame.emit(b, index_port, json!(ran));
                frame.start();
                frame.drive().await;
                ran += 1;
                if frame.stop {
                    break;
                }
            }
            let collected = std::mem::take(&mut frame.collected);
            let mut done = Done { executed: vec![(b, BlockUsage::of_kind(block.kind), true)], emits: vec![(b, done_port, json!(ran))], error: None };
            for (&c, list) in flow.scopes[body].collects.iter().zip(collected) {
                done.executed.push((c, BlockUsage::of_kind(BlockKind::Collect), true));
                done.emits.push((c, 0, Value::Array(list)));
            }
            done
        }
        .boxed()
    }
}

/// Appends a number in decimal without the formatting machinery (this runs per iteration).
fn push_number(text: &mut String, mut number: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    text.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

enum Inline {
    Done(Result<Emits, String>),
    Wait,
}

enum Iterations {
    Count(u64),
    Items(Vec<Value>),
}

impl Iterations {
    fn len(&self) -> u64 {
        match self {
            Iterations::Count(count) => *count,
            Iterations::Items(items) => items.len() as u64,
        }
    }

    fn into_items(self) -> Option<Vec<Value>> {
        match self {
            Iterations::Count(_) => None,
            Iterations::Items(items) => Some(items),
        }
    }
}

/// Validation errors, each with the path of the value at fault.
pub(crate) fn schema_errors(schema: &jsonschema::Validator, value: &Value) -> Vec<String> {
    schema.iter_errors(value).map(|err| {
        let path = err.instance_path().to_string();
        if path.is_empty() { err.to_string() } else { format!("{path}: {err}") }
    }).collect()
}

/// A date from RFC 3339 text or epoch milliseconds, moved by `add_ms`.
fn date(value: &Value, add_ms: i64) -> Result<(String, i64), String> {
    let at = match value {
        Value::String(text) => text.parse::<jiff::Timestamp>().map_err(|err| format!("`{text}` is not an RFC 3339 date-time: {err}"))?,
        Value::Number(number) => number.as_i64().and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).ok_or_else(|| format!("{number} is not a time in epoch milliseconds"))?,
        other => return Err(format!("expected an RFC 3339 date-time or epoch milliseconds, not {other}")),
    };
    let moved = at.as_millisecond().checked_add(add_ms).and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).ok_or("the date moves out of the supported range")?;
    Ok((moved.to_string(), moved.as_millisecond()))
}

/// A JSON number that is a whole number at least 0, however written: `1e3` and `1000.0` are
/// 1000 (JSON has one number type, and other tools write whole numbers so).
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        // 2^53: past it a float no longer tells neighbouring whole numbers apart.
        (float >= 0.0 && float.fract() == 0.0 && float <= 9_007_199_254_740_992.0).then_some(float as u64)
    })
}

/// Port values by port name, written as JSON text straight from the values (a trace's input or
/// output): nothing is copied into a map first.
fn ports_json<'v>(ports: impl Iterator<Item = (&'v str, &'v Value)> + Clone) -> Box<RawValue> {
    struct Ports<I>(I);
    impl<'v, I: Iterator<Item = (&'v str, &'v Value)> + Clone> serde::Serialize for Ports<I> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.clone())
        }
    }
    // Values have text keys and finite numbers: writing them cannot fail.
    serde_json::value::to_raw_value(&Ports(ports)).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
