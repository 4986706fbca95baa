//! Charge rules: what one block execution costs, and whether a run needs credits at all.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::{BlockKind, CoreError, Credits, PriceVersion};

/// How a run was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Clicking Run (the app, the CLI, the dashboard).
    Manual,
    /// Through the API; schedules and webhooks of deployed flows count here.
    Api,
    /// As a tool called over the Model Context Protocol.
    Mcp,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Trigger::Manual, Trigger::Api, Trigger::Mcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Api => "api",
            Trigger::Mcp => "mcp",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<Trigger, CoreError> {
        Trigger::ALL
            .into_iter()
            .find(|trigger| trigger.as_str() == text)
            .ok_or_else(|| CoreError::UnknownTrigger { trigger: text.to_owned() })
    }
}

/// Where a run's blocks execute, which picks the price column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// The user's own machine (the local canvas).
    Local,
    /// Flows' cloud.
    Cloud,
    /// An Enterprise private runner.
    Private,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Local => "local",
            Location::Cloud => "cloud",
            Location::Private => "private",
        }
    }
}

impl FromStr for Location {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<Location, CoreError> {
        [Location::Local, Location::Cloud, Location::Private]
            .into_iter()
            .find(|location| location.as_str() == text)
            .ok_or_else(|| CoreError::UnknownLocation { location: text.to_owned() })
    }
}

/// Trigger and location of a run. Only the combinations the product allows can be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunContext {
    trigger: Trigger,
    location: Location,
}

impl RunContext {
    /// A run started by hand: on the local canvas, or in the cloud with Cloud Run on.
    pub fn manual(cloud_run: CloudRun) -> RunContext {
        let location = match cloud_run {
            CloudRun::Off => Location::Local,
            CloudRun::On => Location::Cloud,
        };
        RunContext { trigger: Trigger::Manual, location }
    }

    /// A run started by the API or MCP, executed in the cloud.
    pub fn automated(trigger: Trigger) -> Result<RunContext, CoreError> {
        match trigger {
            Trigger::Manual => Err(CoreError::ManualIsNotAutomated),
            Trigger::Api | Trigger::Mcp => Ok(RunContext { trigger, location: Location::Cloud }),
        }
    }

    /// An automated run handed to an Enterprise private runner.
    pub fn private_runner(trigger: Trigger) -> Result<RunContext, CoreError> {
        let cloud = RunContext::automated(trigger)?;
        Ok(RunContext { location: Location::Private, ..cloud })
    }

    /// The context a trigger gets when the caller names it with a Cloud Run flag.
    pub fn for_trigger(trigger: Trigger, cloud_run: CloudRun) -> RunContext {
        match trigger {
            Trigger::Manual => RunContext::manual(cloud_run),
            Trigger::Api | Trigger::Mcp => RunContext { trigger, location: Location::Cloud },
        }
    }

    pub fn trigger(self) -> Trigger {
        self.trigger
    }

    pub fn location(self) -> Location {
        self.location
    }
}

/// Whether a manual run has Cloud Run turned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudRun {
    Off,
    On,
}

impl From<bool> for CloudRun {
    fn from(on: bool) -> CloudRun {
        if on { CloudRun::On } else { CloudRun::Off }
    }
}

/// The most distinct MCP tools one agent block execution may report.
pub const MCP_TOOLS_PER_EXECUTION_MAX: usize = 1_000;

/// What one block execution did that its price depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockUsage {
    pub kind: BlockKind,
    /// The model, for `ai_agent` and `ai_media` (others ignore it).
    pub model: Option<String>,
    /// Names of external MCP tools the agent called; repeats are charged once.
    pub external_mcp_tools: Vec<String>,
    /// Names of internal (Flows-hosted) MCP tools the agent called.
    pub internal_mcp_tools: Vec<String>,
}

impl BlockUsage {
    pub fn of_kind(kind: BlockKind) -> BlockUsage {
        BlockUsage { kind, model: None, external_mcp_tools: Vec::new(), internal_mcp_tools: Vec::new() }
    }

    pub fn with_model(kind: BlockKind, model: impl Into<String>) -> BlockUsage {
        BlockUsage { model: Some(model.into()), ..BlockUsage::of_kind(kind) }
    }

    /// The first MCP tool named by blank text, as its field and index. A tool is counted, and
    /// so priced, by its name: every caller that takes usage from outside refuses one without.
    pub fn blank_tool(&self) -> Option<(&'static str, usize)> {
        [("external_mcp_tools", &self.external_mcp_tools), ("internal_mcp_tools", &self.internal_mcp_tools)]
            .into_iter()
            .find_map(|(field, tools)| tools.iter().position(|tool| tool.trim().is_empty()).map(|index| (field, index)))
    }
}

/// Credits for one block execution under the price version in force.
pub fn block_price(prices: &PriceVersion, context: RunContext, usage: &BlockUsage) -> Result<Credits, CoreError> {
    match usage.kind {
        BlockKind::AiAgent => {
            let model_price = model_price(&prices.agent_models, usage)?;
            let tools = |names: &[String]| -> Result<u64, CoreError> {
                if names.len() > MCP_TOOLS_PER_EXECUTION_MAX {
                    return Err(CoreError::TooManyTools { count: names.len(), max: MCP_TOOLS_PER_EXECUTION_MAX });
                }
                Ok(names.iter().collect::<BTreeSet<_>>().len() as u64)
            };
            let external = Credits(prices.external_mcp_tool.0 * tools(&usage.external_mcp_tools)?);
            let internal = Credits(prices.internal_mcp_tool.0 * tools(&usage.internal_mcp_tools)?);
            Ok(model_price + external + internal)
        }
        BlockKind::AiMedia => model_price(&prices.media_models, usage),
        kind => Ok(prices.blocks.get(&kind).map_or(Credits::ZERO, |price| match context.location {
            Location::Local => price.local,
            Location::Cloud => price.cloud,
            Location::Private => price.private.unwrap_or(price.cloud),
        })),
    }
}

fn model_price(models: &std::collections::BTreeMap<String, Credits>, usage: &BlockUsage) -> Result<Credits, CoreError> {
    let model = usage.model.as_deref().ok_or(CoreError::MissingModel { kind: usage.kind })?;
    models.get(model).copied().ok_or_else(|| CoreError::UnknownModel { kind: usage.kind, model: model.to_owned() })
}

/// A run needs credits when any of its flow's blocks has a price above zero for the run's
/// trigger and location. Decided from the flow definition before the run starts; an agent
/// block's tools are not known yet, and its model alone already costs credits.
pub fn run_needs_credits(prices: &PriceVersion, context: RunContext, blocks: &[BlockUsage]) -> Result<bool, CoreError> {
    let mut needs = false;
    for block in blocks {
        // Every block is priced, not just up to the first paid one, so that an unknown model
        // anywhere in the flow is reported before the run starts.
        needs |= !block_price(prices, context, block)?.is_zero();
    }
    Ok(needs)
}
