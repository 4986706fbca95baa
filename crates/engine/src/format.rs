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
        if syntax == Syntax::Yaml
            && let Some(line) = too_deep(text)
        {
            // The YAML parser takes time quadratic in the depth before its own limit refuses it.
            let message = format!("line {line}: `[` and `{{` nest more than {FLOW_NESTING_MAX} deep");
            return Err(Problems(vec![Problem::file("file", message)]));
        }
        let parsed = match syntax {
            Syntax::Json => serde_json::from_str(text).map_err(|err| err.to_string()),
            Syntax::Yaml => serde_norway::from_str(text).map_err(|err| err.to_string()),
        };
        parsed.map_err(|message| Problems(vec![Problem::file("file", message)]))
    }
}

/// Deepest nesting of `[` and `{` a YAML flow file may have: as deep as JSON's parser goes.
pub const FLOW_NESTING_MAX: usize = 128;

/// The line where YAML text's `[`/`{` nesting (outside quoted strings and comments) passes
/// [`FLOW_NESTING_MAX`], if it does. A guard, not a parser: brackets inside plain or block
/// scalars count too, which only matters for text nested that deep anyway.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let mut previous = '\n';
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\n') => {
                line += 1;
                // Plain YAML strings do not span lines in flow files; a stray quote ends here.
                if quote == Some('\'') {
                    quote = None;
                }
            }
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if previous.is_whitespace() => {
                while chars.peek().is_some_and(|&next| next != '\n') {
                    chars.next();
                }
            }
            (None, '[' | '{') => {
                depth += 1;
                if depth > FLOW_NESTING_MAX {
                    return Some(line);
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    None
}

/// Splits `block.port`; the port is after the last dot.
pub(crate) fn split_endpoint(endpoint: &str) -> Option<(&str, &str)> {
    let (block, port) = endpoint.rsplit_once('.')?;
    (!block.is_empty() && !port.is_empty()).then_some((block, port))
}
