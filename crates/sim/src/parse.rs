//! The scenario format of design.md §4, parsed strictly: every field is checked before replay.

use std::collections::HashMap;

use flowcredits_core::{AnchorDay, BlockKind, BlockUsage, CloudRun, CoreError, Credits, MicroUsd, PlanId, RunContext, RunId, Rules, TeamSettings, Timestamp, Trigger};
use serde_json::{Map, Value};

/// Most steps one scenario may hold.
pub const SCENARIO_STEPS_MAX: usize = 1_000_000;
/// Most blocks a `start_run` step may list.
pub const RUN_BLOCKS_MAX: usize = 10_000;

/// A scenario checked and ready to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub team: TeamSettings,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Timestamp,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `needs_credits` is decided from `blocks` with the prices in force at the step.
    StartRun { run: RunId, context: RunContext, blocks: Vec<BlockUsage>, needs_credits: bool },
    Block { run: RunId, usage: BlockUsage },
    EndRun { run: RunId },
    CancelRun { run: RunId },
    SetPayg { enabled: bool },
    SetPaygCap { cap: Option<MicroUsd> },
    Purchase { credits: Credits, expires_at: Option<Timestamp> },
    ChangePlan { plan: PlanId },
}

/// Why a scenario cannot be replayed: where (step index and field) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct ScenarioError {
    pub location: String,
    pub problem: String,
}

/// Parses and checks a scenario. Nothing is replayed here.
pub fn parse_scenario(text: &str, rules: &Rules) -> Result<Scenario, ScenarioError> {
    let document: Value = serde_json::from_str(text).map_err(|err| ScenarioError { location: "scenario".into(), problem: format!("invalid JSON: {err}") })?;
    let root = Fields::new(object(&document, Place::Root)?, Place::Root, &["team", "steps"])?;
    let team = parse_team(root.required("team")?, rules)?;
    let steps = root.required("steps")?.as_array().ok_or_else(|| root.error("steps", "must be a list of steps"))?;
    if steps.len() > SCENARIO_STEPS_MAX {
        return Err(root.error("steps", &format!("{} steps is more than the limit of {SCENARIO_STEPS_MAX}", steps.len())));
    }
    let mut checker = StepChecker { rules, previous_at: None, started: HashMap::new() };
    let steps = steps.iter().enumerate().map(|(index, step)| checker.step(index, step)).collect::<Result<_, _>>()?;
    Ok(Scenario { team, steps })
}

fn parse_team(value: &Value, rules: &Rules) -> Result<TeamSettings, ScenarioError> {
    let team = Fields::new(object(value, Place::Team)?, Place::Team, &["plan", "payg", "anchor_day", "payg_cap_usd"])?;
    let plan_text = team.string("plan")?;
    let plan: PlanId = plan_text.parse().map_err(|err: CoreError| team.error("plan", &err.to_string()))?;
    let payg = team.optional_bool("payg")?.unwrap_or(false);
    if payg && !rules.plans.get(plan).has_payg() {
        return Err(team.error("payg", &CoreError::PlanHasNoPayg { plan }.to_string()));
    }
    let anchor_day = match team.value("anchor_day") {
        None => AnchorDay::FIRST,
        Some(value) => {
            let day = value.as_i64().ok_or_else(|| team.error("anchor_day", "must be a whole number from 1 to 28"))?;
            AnchorDay::new(day).map_err(|err| team.error("anchor_day", &err.to_string()))?
        }
    };
    let payg_cap = team.optional_usd("payg_cap_usd")?;
    Ok(TeamSettings { plan, anchor_day, payg_enabled: payg, payg_cap, payg_alerts: Vec::new() })
}

struct StepChecker<'a> {
    rules: &'a Rules,
    previous_at: Option<Timestamp>,
    /// Run id to the step that started it.
    started: HashMap<RunId, usize>,
}

impl StepChecker<'_> {
    fn step(&mut self, index: usize, value: &Value) -> Result<Step, ScenarioError> {
        let place = Place::Step(index);
        let map = object(value, place)?;
        let op = Fields::new_unchecked(map, place).string("op")?.to_owned();
        let allowed: &[&str] = match op.as_str() {
            "start_run" => &["at", "op", "run", "trigger", "cloud_run", "blocks"],
            "block" => &["at", "op", "run", "type", "model", "external_mcp_tools", "internal_mcp_tools"],
            "end_run" | "cancel_run" => &["at", "op", "run"],
            "set_payg" => &["at", "op", "enabled"],
            "set_payg_cap" => &["at", "op", "cap_usd"],
            "purchase" => &["at", "op", "credits", "expires_at"],
            "change_plan" => &["at", "op", "plan"],
            other => {
                let known = "start_run, block, end_run, cancel_run, set_payg, set_payg_cap, purchase, change_plan";
                return Err(place.error("op", &format!("unknown op `{other}` (expected one of {known})")));
            }
        };
        let fields = Fields::new(map, place, allowed)?;
        let at = fields.timestamp("at")?;
        if let Some(previous) = self.previous_at.filter(|previous| at < *previous) {
            return Err(fields.error("at", &format!("{at} is earlier than the step before it ({previous}); steps must be in time order")));
        }
        let first_price = self.rules.prices.first_effective_from();
        if at < first_price {
            return Err(fields.error("at", &CoreError::BeforeFirstPriceVersion { at, first: first_price }.to_string()));
        }
        self.previous_at = Some(at);
        let action = match op.as_str() {
            "start_run" => self.start_run(index, at, &fields)?,
            "block" => {
                let run = self.known_run(&fields)?;
                let usage = block_usage(&fields)?;
                // Priced here only to report an unknown model as malformed; the charge happens on replay.
                let context = RunContext::manual(CloudRun::On);
                self.rules.block_price(at, context, &usage).map_err(|err| fields.error(price_field(&err), &err.to_string()))?;
                Action::Block { run, usage }
            }
            "end_run" => Action::EndRun { run: self.known_run(&fields)? },
            "cancel_run" => Action::CancelRun { run: self.known_run(&fields)? },
            "set_payg" => Action::SetPayg { enabled: fields.bool("enabled")? },
            "set_payg_cap" => Action::SetPaygCap { cap: fields.optional_usd("cap_usd")? },
            "purchase" => {
                let credits = fields.positive_integer("credits")?;
                let expires_at = fields.value("expires_at").map(|_| fields.timestamp("expires_at")).transpose()?;
                Action::Purchase { credits: Credits(credits), expires_at }
            }
            "change_plan" => {
                let plan = fields.string("plan")?.parse().map_err(|err: CoreError| fields.error("plan", &err.to_string()))?;
                Action::ChangePlan { plan }
            }
            _ => unreachable!("ops were matched above"),
        };
        Ok(Step { at, action })
    }

    fn start_run(&mut self, index: usize, at: Timestamp, fields: &Fields<'_>) -> Result<Action, ScenarioError> {
        let run = fields.run_id()?;
        if let Some(first) = self.started.get(&run) {
            return Err(fields.error("run", &format!("run {run} was already started at step {first}; run ids must be unique")));
        }
        let trigger: Trigger = fields.string("trigger")?.parse().map_err(|err: CoreError| fields.error("trigger", &err.to_string()))?;
        let cloud_run = CloudRun::from(fields.optional_bool("cloud_run")?.unwrap_or(false));
        let context = RunContext::for_trigger(trigger, cloud_run);
        let list = fields.required("blocks")?.as_array().ok_or_else(|| fields.error("blocks", "must be a list of blocks"))?;
        if list.len() > RUN_BLOCKS_MAX {
            return Err(fields.error("blocks", &format!("{} blocks is more than the limit of {RUN_BLOCKS_MAX}", list.len())));
        }
        let mut blocks = Vec::with_capacity(list.len());
        let mut needs_credits = false;
        for (position, block) in list.iter().enumerate() {
            let prefix = format!("blocks[{position}].");
            let block_fields = Fields::new(object(block, Place::Field(index, &prefix))?, Place::Field(index, &prefix), &["type", "model"])?;
            let usage = block_usage(&block_fields)?;
            let price = self.rules.block_price(at, context, &usage).map_err(|err| block_fields.error(price_field(&err), &err.to_string()))?;
            needs_credits |= !price.is_zero();
            blocks.push(usage);
        }
        self.started.insert(run.clone(), index);
        Ok(Action::StartRun { run, context, blocks, needs_credits })
    }

    fn known_run(&self, fields: &Fields<'_>) -> Result<RunId, ScenarioError> {
        let run = fields.run_id()?;
        if !self.started.contains_key(&run) {
            return Err(fields.error("run", &format!("run {run} is not started by any earlier step")));
        }
        Ok(run)
    }
}

fn block_usage(fields: &Fields<'_>) -> Result<BlockUsage, ScenarioError> {
    let kind: BlockKind = fields.string("type")?.parse().map_err(|err: CoreError| fields.error("type", &err.to_string()))?;
    let model = fields.value("model").map(|_| fields.string("model").map(str::to_owned)).transpose()?;
    let external_mcp_tools = fields.optional_string_list("external_mcp_tools")?;
    let internal_mcp_tools = fields.optional_string_list("internal_mcp_tools")?;
    let usage = BlockUsage { kind, model, external_mcp_tools, internal_mcp_tools };
    if let Some((field, index)) = usage.blank_tool() {
        return Err(fields.error(&format!("{field}[{index}]"), "is empty; a tool is named"));
    }
    Ok(usage)
}

/// The field a pricing error is about.
fn price_field(err: &CoreError) -> &'static str {
    match err {
        CoreError::TooManyTools { .. } => "external_mcp_tools",
        _ => "model",
    }
}

/// Where in the document a field sits, for error messages.
#[derive(Clone, Copy)]
enum Place<'p> {
    Root,
    Team,
    Step(usize),
    /// Inside step `usize`, under a prefix such as `blocks[2].`.
    Field(usize, &'p str),
}

impl Place<'_> {
    fn error(self, field: &str, problem: &str) -> ScenarioError {
        let location = match self {
            Place::Root => format!("field `{field}`"),
            Place::Team => format!("field `team.{field}`"),
            Place::Step(index) => format!("step {index}: field `{field}`"),
            Place::Field(index, prefix) => format!("step {index}: field `{prefix}{field}`"),
        };
        ScenarioError { location, problem: problem.to_owned() }
    }

    fn whole(self) -> ScenarioError {
        match self {
            Place::Root => ScenarioError { location: "scenario".into(), problem: "must be a JSON object with `team` and `steps`".into() },
            Place::Team => ScenarioError { location: "field `team`".into(), problem: "must be an object".into() },
            Place::Step(index) => ScenarioError { location: format!("step {index}"), problem: "must be an object".into() },
            Place::Field(index, prefix) => ScenarioError { location: format!("step {index}: field `{}`", prefix.trim_end_matches('.')), problem: "must be an object".into() },
        }
    }
}

fn object<'v>(value: &'v Value, place: Place<'_>) -> Result<&'v Map<String, Value>, ScenarioError> {
    value.as_object().ok_or_else(|| place.whole())
}

/// Typed access to one JSON object's fields, with errors that name them.
struct Fields<'v> {
    map: &'v Map<String, Value>,
    place: Place<'v>,
}

impl<'v> Fields<'v> {
    /// Refuses fields outside `allowed`, so a misspelt field is reported instead of ignored.
    fn new(map: &'v Map<String, Value>, place: Place<'v>, allowed: &[&str]) -> Result<Fields<'v>, ScenarioError> {
        if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Err(place.error(unknown, &format!("unknown field (expected one of {})", allowed.join(", "))));
        }
        Ok(Fields { map, place })
    }

    fn new_unchecked(map: &'v Map<String, Value>, place: Place<'v>) -> Fields<'v> {
        Fields { map, place }
    }

    fn error(&self, field: &str, problem: &str) -> ScenarioError {
        self.place.error(field, problem)
    }

    fn value(&self, field: &str) -> Option<&'v Value> {
        self.map.get(field).filter(|value| !value.is_null())
    }

    fn required(&self, field: &str) -> Result<&'v Value, ScenarioError> {
        self.value(field).ok_or_else(|| self.error(field, "is missing"))
    }

    fn string(&self, field: &str) -> Result<&'v str, ScenarioError> {
        self.required(field)?.as_str().ok_or_else(|| self.error(field, "must be a string"))
    }

    fn bool(&self, field: &str) -> Result<bool, ScenarioError> {
        self.required(field)?.as_bool().ok_or_else(|| self.error(field, "must be true or false"))
    }

    fn optional_bool(&self, field: &str) -> Result<Option<bool>, ScenarioError> {
        self.value(field).map(|_| self.bool(field)).transpose()
    }

    fn positive_integer(&self, field: &str) -> Result<u64, ScenarioError> {
        let value = self.required(field)?;
        value.as_u64().filter(|number| *number > 0).ok_or_else(|| self.error(field, &format!("must be a whole number above 0, got {value}")))
    }

    fn timestamp(&self, field: &str) -> Result<Timestamp, ScenarioError> {
        let text = self.string(field)?;
        let at = text.parse().map_err(|err| self.error(field, &format!("`{text}` is not an RFC 3339 UTC time such as 2026-03-02T10:00:00Z ({err})")))?;
        flowcredits_core::check_supported(at).map_err(|err| self.error(field, &err.to_string()))?;
        Ok(at)
    }

    fn run_id(&self) -> Result<RunId, ScenarioError> {
        RunId::new(self.string("run")?).map_err(|err| self.error("run", &err.to_string()))
    }

    fn optional_usd(&self, field: &str) -> Result<Option<MicroUsd>, ScenarioError> {
        let Some(value) = self.value(field) else { return Ok(None) };
        let text = value.as_str().ok_or_else(|| self.error(field, "must be a dollar amount as a string, such as \"25.000\""))?;
        MicroUsd::parse_usd(text).map(Some).ok_or_else(|| self.error(field, &format!("`{text}` is not a dollar amount such as \"25.000\" (at most 6 decimal places)")))
    }

    fn optional_string_list(&self, field: &str) -> Result<Vec<String>, ScenarioError> {
        let Some(value) = self.value(field) else { return Ok(Vec::new()) };
        let items = value.as_array().ok_or_else(|| self.error(field, "must be a list of strings"))?;
        items.iter().map(|item| item.as_str().map(str::to_owned).ok_or_else(|| self.error(field, &format!("must be a list of strings, found {item}")))).collect()
    }
}
