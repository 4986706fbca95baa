//! The extension point for AI blocks (`ai_request`, `ai_agent`, `ai_media`) and `integration`
//! connectors. The executor calls these traits; implementations (OpenAI- and Anthropic-
//! compatible APIs, MCP tool clients, webhook and chat connectors) plug in through
//! [`Providers`]. Until one is registered the blocks fail with a clear message, and are still
//! charged, because they started.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowcredits_core::{BlockKind, BlockUsage};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use crate::config::Cfg;

/// Most tools one AI agent block may declare.
pub const AGENT_TOOLS_MAX: usize = 64;

/// An MCP tool an agent may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    /// Hosted by Flows (free) rather than an external MCP server (charged per unique tool).
    pub internal: bool,
}

/// An AI block's config.
#[derive(Clone, Debug)]
pub struct AiSpec {
    pub kind: BlockKind,
    /// The model id; for `ai_agent` and `ai_media` it also sets the price.
    pub model: String,
    /// Which registered provider to use; `None` is the default one.
    pub provider: Option<String>,
    pub instructions: Option<String>,
    pub tools: Vec<ToolSpec>,
}

impl AiSpec {
    pub(crate) fn parse(kind: BlockKind, cfg: &mut Cfg<'_>) -> AiSpec {
        let model = cfg.required_text("model", "the model id, e.g. \"gpt-5-mini\"").unwrap_or_default();
        let provider = cfg.text("provider");
        let instructions = cfg.text("instructions");
        let mut tools = Vec::new();
        if let Some(value) = cfg.value("tools") {
            match value.as_array() {
                Some(items) if kind == BlockKind::AiAgent && items.len() <= AGENT_TOOLS_MAX => {
                    for (index, item) in items.iter().enumerate() {
                        match (item.get("name").and_then(Value::as_str), item.get("internal").map(Value::as_bool)) {
                            (Some(name), None) => tools.push(ToolSpec { name: name.to_owned(), internal: false }),
                            (Some(name), Some(Some(internal))) => tools.push(ToolSpec { name: name.to_owned(), internal }),
                            _ => cfg.problem(&format!("tools[{index}]"), "must be {\"name\": \"...\", \"internal\": true|false}"),
                        }
                    }
                }
                _ if kind != BlockKind::AiAgent => cfg.problem("tools", "only ai_agent blocks use tools"),
                _ => cfg.problem("tools", format!("must be a list of at most {AGENT_TOOLS_MAX} tools")),
            }
        }
        AiSpec { kind, model, provider, instructions, tools }
    }

    /// The usage known before the block runs, for admission and estimates: the model, no tools.
    pub fn planned_usage(&self) -> BlockUsage {
        match self.kind {
            BlockKind::AiAgent | BlockKind::AiMedia => BlockUsage::with_model(self.kind, self.model.clone()),
            kind => BlockUsage::of_kind(kind),
        }
    }
}

/// One AI block execution, as handed to a provider.
pub struct AiCall<'a> {
    pub spec: &'a AiSpec,
    pub prompt: &'a Value,
}

/// What a provider did: the block's output and the usage its price depends on.
#[derive(Clone, Debug, Default)]
pub struct AiOutcome {
    pub output: Value,
    pub external_mcp_tools: Vec<String>,
    pub internal_mcp_tools: Vec<String>,
}

/// A provider that failed still reports the tools it used before failing: they are charged.
#[derive(Clone, Debug)]
pub struct AiFailure {
    pub message: String,
    pub used: AiOutcome,
}

pub trait AiProvider: Send + Sync {
    fn call<'a>(&'a self, call: AiCall<'a>) -> BoxFuture<'a, Result<AiOutcome, AiFailure>>;
}

/// An `integration` block's config.
#[derive(Clone, Debug)]
pub struct ConnectorSpec {
    pub connector: String,
    pub action: String,
    pub params: Map<String, Value>,
}

impl ConnectorSpec {
    pub(crate) fn parse(cfg: &mut Cfg<'_>) -> ConnectorSpec {
        let connector = cfg.required_text("connector", "the connector's name, e.g. \"webhook\"").unwrap_or_default();
        let action = cfg.required_text("action", "what the connector does, e.g. \"post\"").unwrap_or_default();
        let params = cfg.object("params").cloned().unwrap_or_default();
        ConnectorSpec { connector, action, params }
    }
}

pub trait Connector: Send + Sync {
    fn invoke<'a>(&'a self, spec: &'a ConnectorSpec, input: &'a Value) -> BoxFuture<'a, Result<Value, String>>;
}

/// The providers and connectors an engine may call, by name.
#[derive(Clone, Default)]
pub struct Providers {
    ai: BTreeMap<String, Arc<dyn AiProvider>>,
    default_ai: Option<String>,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
}

impl Providers {
    /// Registers an AI provider; the first one registered is the default.
    pub fn with_ai(mut self, name: &str, provider: Arc<dyn AiProvider>) -> Providers {
        self.default_ai.get_or_insert_with(|| name.to_owned());
        self.ai.insert(name.to_owned(), provider);
        self
    }

    pub fn with_connector(mut self, name: &str, connector: Arc<dyn Connector>) -> Providers {
        self.connectors.insert(name.to_owned(), connector);
        self
    }

    pub(crate) fn ai(&self, spec: &AiSpec) -> Result<&Arc<dyn AiProvider>, String> {
        let name = spec.provider.as_ref().or(self.default_ai.as_ref());
        match name {
            None => Err(format!("no AI provider is configured, so {} cannot call model `{}` (this build of flowcredits has no AI providers yet)", spec.kind, spec.model)),
            Some(name) => self.ai.get(name).ok_or_else(|| format!("no AI provider named `{name}` is configured")),
        }
    }

    pub(crate) fn connector(&self, spec: &ConnectorSpec) -> Result<&Arc<dyn Connector>, String> {
        self.connectors.get(&spec.connector).ok_or_else(|| format!("no connector named `{}` is configured (this build of flowcredits has no connectors yet)", spec.connector))
    }
}
