//! Reading a block's `config` with every problem reported, and none of them fatal on its own:
//! loading goes on to find the rest.

use serde_json::{Map, Value};

use crate::error::Problem;

pub(crate) struct Cfg<'a> {
    block: &'a str,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
    pub problems: Vec<Problem>,
}

impl<'a> Cfg<'a> {
    pub fn new(block: &'a str, map: &'a Map<String, Value>) -> Cfg<'a> {
        Cfg { block, map, known: Vec::new(), problems: Vec::new() }
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem::block(self.block, format!("config.{key}"), message));
    }

    /// The raw value, if present.
    pub fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        // A key may be read twice (present, then its range); it is listed once.
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.map.get(key)
    }

    pub fn required(&mut self, key: &'static str, what: &str) -> Option<&'a Value> {
        let value = self.value(key);
        if value.is_none() {
            self.problem(key, format!("missing; give {what}"));
        }
        value
    }

    pub fn text(&mut self, key: &'static str) -> Option<String> {
        match self.value(key)? {
            Value::String(text) => Some(text.clone()),
            _ => {
                self.problem(key, "must be text");
                None
            }
        }
    }

    pub fn required_text(&mut self, key: &'static str, what: &str) -> Option<String> {
        match self.required(key, what)? {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            _ => {
                self.problem(key, format!("must be non-empty text: {what}"));
                None
            }
        }
    }

    /// A whole number in `min..=max`, `unit` naming what it counts.
    pub fn integer(&mut self, key: &'static str, min: u64, max: u64, unit: &str) -> Option<u64> {
        let value = self.value(key)?;
        match value.as_u64() {
            Some(number) if (min..=max).contains(&number) => Some(number),
            _ => {
                self.problem(key, format!("must be a whole number of {unit} from {min} to {max}, not {value}"));
                None
            }
        }
    }

    pub fn object(&mut self, key: &'static str) -> Option<&'a Map<String, Value>> {
        match self.value(key)? {
            Value::Object(map) => Some(map),
            _ => {
                self.problem(key, "must be a record (an object)");
                None
            }
        }
    }

    /// A list of distinct port names, for blocks whose inputs the author declares.
    pub fn port_names(&mut self, key: &'static str, reserved: &[&str]) -> Vec<String> {
        let Some(value) = self.value(key) else { return Vec::new() };
        let Some(items) = value.as_array() else {
            self.problem(key, "must be a list of input port names");
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(name) if is_identifier(name) && !reserved.contains(&name) && !names.iter().any(|seen| seen == name) => names.push(name.to_owned()),
                _ => self.problem(&format!("{key}[{index}]"), format!("{item} is not a new port name (letters, digits, `_`, `-`)")),
            }
        }
        names
    }

    /// Reports keys no reader asked for, so a typo does not pass silently.
    pub fn finish(mut self) -> Vec<Problem> {
        let unknown: Vec<String> = self.map.keys().filter(|key| !self.known.contains(&key.as_str())).cloned().collect();
        for key in unknown {
            let known = if self.known.is_empty() { "this block takes no config".to_owned() } else { format!("expected {}", self.known.join(", ")) };
            self.problem(&key, format!("unknown field ({known})"));
        }
        self.problems
    }
}

/// Block ids and port names: ASCII letters, digits, `_` and `-`. No dots, slashes or `#`,
/// because those separate the parts of endpoints and execution ids.
pub(crate) fn is_identifier(text: &str) -> bool {
    !text.is_empty() && text.len() <= ID_BYTES_MAX && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// Longest block id or port name, in bytes.
pub const ID_BYTES_MAX: usize = 48;
