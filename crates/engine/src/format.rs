//! The flow file as written: JSON or YAML, before validation.
//!
//! ```yaml
//! name: hello
//! config: { greeting: "Hello" }
//! blocks:
//!   - { id: start, kind: start }
//!   - { id: greet, kind: template, config: { template: "{{config.greeting}}, {{input.name}}" } }
//!   - { id: show, kind: display }
//! edges:
//!   - { from: start.input, to: greet.input }
//!   - { from: greet.text, to: show.value }
//! ```

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Problem, Problems};

/// Largest flow file accepted, in bytes.
pub const FLOW_FILE_BYTES_MAX: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Values `get_config` blocks and `{{config.x}}` templates read; a run may override them.
    #[serde(default)]
    pub config: Map<String, Value>,
    pub blocks: Vec<BlockFile>,
    #[serde(default)]
    pub edges: Vec<EdgeFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockFile {
    pub id: String,
    #[serde(alias = "type")]
    pub kind: String,
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// `from: "block.port"` (an output port) to `to: "block.port"` (an input port).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    pub from: String,
    pub to: String,
}

/// The syntax a flow file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

impl Syntax {
    /// By file extension: `.json` is JSON, anything else YAML (a superset of JSON).
    pub fn of_path(path: &std::path::Path) -> Syntax {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("json") => Syntax::Json,
            _ => Syntax::Yaml,
        }
    }
}

impl FlowFile {
    pub fn parse(text: &str, syntax: Syntax) -> Result<FlowFile, Problems> {
        if text.len() > FLOW_FILE_BYTES_MAX {
            let message = format!("{} bytes is more than the limit of {FLOW_FILE_BYTES_MAX}", text.len());
            return Err(Problems(vec![Problem::file("file", message)]));
        }
        let parsed = match syntax {
            Syntax::Json => serde_json::from_str(text).map_err(|err| err.to_string()),
            Syntax::Yaml => serde_norway::from_str(text).map_err(|err| err.to_string()),
        };
        parsed.map_err(|message| Problems(vec![Problem::file("file", message)]))
    }
}

/// Splits `block.port`; the port is after the last dot.
pub(crate) fn split_endpoint(endpoint: &str) -> Option<(&str, &str)> {
    let (block, port) = endpoint.rsplit_once('.')?;
    (!block.is_empty() && !port.is_empty()).then_some((block, port))
}
