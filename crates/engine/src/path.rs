//! Paths into values (`items[0].name`), `{{...}}` templates and the tests `if` and `condition`
//! apply. Parsed when the flow loads, so a malformed path is a load problem, not a run failure.

use std::cmp::Ordering;

use serde_json::Value;

/// Longest path, in segments; a guard against pathological configs.
pub const PATH_SEGMENTS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A path into a value: keys separated by dots, list indexes as `[n]` or `.n`. Empty (or `$`)
/// is the value itself.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Path(Vec<Segment>);

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let text = text.trim();
        let text = text.strip_prefix('$').map(|rest| rest.strip_prefix('.').unwrap_or(rest)).unwrap_or(text);
        let mut segments = Vec::new();
        if text.is_empty() {
            return Ok(Path(segments));
        }
        for part in text.split('.') {
            let (key, mut rest) = part.split_once('[').map_or((part, ""), |(key, rest)| (key, rest));
            if part.contains('[') && rest.is_empty() {
                return Err(format!("`{text}` has an unclosed `[`"));
            }
            if !key.is_empty() {
                segments.push(match key.parse::<usize>() {
                    Ok(index) => Segment::Index(index),
                    Err(_) => Segment::Key(key.to_owned()),
                });
            } else if rest.is_empty() {
                return Err(format!("`{text}` has an empty segment"));
            }
            while !rest.is_empty() {
                let (index, after) = rest.split_once(']').ok_or_else(|| format!("`{text}` has an unclosed `[`"))?;
                let index = index.parse::<usize>().map_err(|_| format!("`{text}`: `[{index}]` is not a list index"))?;
                segments.push(Segment::Index(index));
                rest = after.strip_prefix('[').unwrap_or(after);
                if !after.is_empty() && !after.starts_with('[') {
                    return Err(format!("`{text}`: unexpected `{after}` after `]`"));
                }
            }
        }
        if segments.len() > PATH_SEGMENTS_MAX {
            return Err(format!("`{text}` has {} segments, more than the limit of {PATH_SEGMENTS_MAX}", segments.len()));
        }
        Ok(Path(segments))
    }

    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(value, |value, segment| match (segment, value) {
            (Segment::Key(key), Value::Object(map)) => map.get(key),
            (Segment::Index(index), Value::Array(items)) => items.get(*index),
            (Segment::Index(index), Value::Object(map)) => map.get(&index.to_string()),
            _ => None,
        })
    }

    /// The first key, and the rest of the path.
    fn split_first(&self) -> Option<(&str, Path)> {
        match self.0.first()? {
            Segment::Key(key) => Some((key, Path(self.0[1..].to_vec()))),
            Segment::Index(_) => None,
        }
    }
}

/// What a template can read: the block's input and the flow's config.
pub struct Scope<'a> {
    pub input: &'a Value,
    pub config: &'a Value,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Input(Path),
    Config(Path),
}

/// A text with `{{input.path}}` and `{{config.key}}` placeholders.
#[derive(Clone, Debug)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| format!("`{{{{` at byte {} is never closed with `}}}}`", text.len() - rest.len() + open))?;
            let path = Path::parse(&after[..close])?;
            let (root, mut inner) = path.split_first().ok_or_else(|| format!("`{{{{{}}}}}` must start with `input` or `config`", &after[..close]))?;
            // `input.$` is the value itself, as `$` is in a path of its own.
            if matches!(&inner.0[..], [Segment::Key(key)] if key == "$") {
                inner.0.clear();
            }
            parts.push(match root {
                "input" => Part::Input(inner),
                "config" => Part::Config(inner),
                other => return Err(format!("`{{{{{}}}}}`: `{other}` is not `input` or `config`", &after[..close])),
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// Fills the placeholders; strings go in as they are, other values as JSON. A placeholder
    /// that finds nothing is an error naming it.
    pub fn render(&self, scope: &Scope<'_>) -> Result<String, String> {
        self.fill(scope, false)
    }

    /// Fills a URL's placeholders. Those in its path, query or fragment (after the `/` that
    /// ends `scheme://host`) are percent-encoded, so a value is one piece of data: `a b/../c?x=1`
    /// cannot change the path or add parameters. A placeholder before that (a base URL such as
    /// `{{config.base}}/items`) goes in as it is.
    pub fn render_url(&self, scope: &Scope<'_>) -> Result<String, String> {
        self.fill(scope, true)
    }

    fn fill(&self, scope: &Scope<'_>, url: bool) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            let (value, root, path) = match part {
                Part::Text(text) => {
                    out.push_str(text);
                    continue;
                }
                Part::Input(path) => (path.get(scope.input), "input", path),
                Part::Config(path) => (path.get(scope.config), "config", path),
            };
            let text = match value {
                Some(Value::String(text)) => std::borrow::Cow::Borrowed(text.as_str()),
                Some(other) => std::borrow::Cow::Owned(other.to_string()),
                None => return Err(format!("template placeholder `{root}{}` has no value", describe(path))),
            };
            if url && past_authority(&out) {
                percent_encode(&text, &mut out);
            } else {
                out.push_str(&text);
            }
        }
        Ok(out)
    }
}

/// Whether a URL written so far has reached its path: a `/` after `scheme://host`.
fn past_authority(url: &str) -> bool {
    url.split_once("://").is_some_and(|(_, rest)| rest.contains(['/', '?', '#']))
}

/// Appends `text` with every byte but the unreserved ones (RFC 3986: letters, digits, `-._~`)
/// as `%XX`.
fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// A path as a flow file writes it: `items[0].name`, or `$` for the value itself.
impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = describe(self);
        f.write_str(if text.is_empty() { "$" } else { text.trim_start_matches('.') })
    }
}

fn describe(path: &Path) -> String {
    path.0.iter().map(|segment| match segment {
        Segment::Key(key) => format!(".{key}"),
        Segment::Index(index) => format!("[{index}]"),
    }).collect()
}

/// A comparison `if` and `condition` apply to their input.
#[derive(Clone, Debug)]
pub struct Test {
    path: Path,
    op: TestOp,
    value: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TestOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Truthy,
    Falsy,
    Exists,
    Contains,
}

const TEST_OPS: &[(&str, TestOp)] = &[("eq", TestOp::Eq), ("ne", TestOp::Ne), ("lt", TestOp::Lt), ("le", TestOp::Le), ("gt", TestOp::Gt), ("ge", TestOp::Ge), ("truthy", TestOp::Truthy), ("falsy", TestOp::Falsy), ("exists", TestOp::Exists), ("contains", TestOp::Contains)];

impl Test {
    /// `{"path": "status", "op": "lt", "value": 400}`; `path` defaults to the whole input and
    /// `op` to `truthy`.
    pub fn parse(spec: &Value) -> Result<Test, String> {
        let map = spec.as_object().ok_or("must be an object like {\"path\": \"status\", \"op\": \"eq\", \"value\": 200}")?;
        if let Some(key) = map.keys().find(|key| !matches!(key.as_str(), "path" | "op" | "value")) {
            return Err(format!("unknown field `{key}` (expected path, op, value)"));
        }
        let path = match map.get("path") {
            None => Path::default(),
            Some(Value::String(text)) => Path::parse(text)?,
            Some(_) => return Err("`path` must be a string".into()),
        };
        let op_name = match map.get("op") {
            None => "truthy",
            Some(Value::String(text)) => text.as_str(),
            Some(_) => return Err("`op` must be a string".into()),
        };
        let op = TEST_OPS.iter().find(|(name, _)| *name == op_name).map(|(_, op)| *op).ok_or_else(|| {
            format!("unknown op `{op_name}` (expected one of {})", TEST_OPS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "))
        })?;
        let needs_value = !matches!(op, TestOp::Truthy | TestOp::Falsy | TestOp::Exists);
        let value = map.get("value").cloned();
        if needs_value && value.is_none() {
            return Err(format!("op `{op_name}` needs a `value`"));
        }
        Ok(Test { path, op, value: value.unwrap_or(Value::Null) })
    }

    pub fn holds(&self, input: &Value) -> bool {
        let found = self.path.get(input);
        let Some(actual) = found else {
            return matches!(self.op, TestOp::Falsy | TestOp::Ne);
        };
        match self.op {
            TestOp::Eq => loose_eq(actual, &self.value),
            TestOp::Ne => !loose_eq(actual, &self.value),
            TestOp::Lt => compare(actual, &self.value) == Some(Ordering::Less),
            TestOp::Le => matches!(compare(actual, &self.value), Some(Ordering::Less | Ordering::Equal)),
            TestOp::Gt => compare(actual, &self.value) == Some(Ordering::Greater),
            TestOp::Ge => matches!(compare(actual, &self.value), Some(Ordering::Greater | Ordering::Equal)),
            TestOp::Truthy => truthy(actual),
            TestOp::Falsy => !truthy(actual),
            TestOp::Exists => true,
            TestOp::Contains => match (actual, &self.value) {
                (Value::String(text), Value::String(part)) => text.contains(part.as_str()),
                (Value::Array(items), wanted) => items.iter().any(|item| loose_eq(item, wanted)),
                (Value::Object(map), Value::String(key)) => map.contains_key(key),
                _ => false,
            },
        }
    }
}

/// Numbers compare by value (200 equals 200.0); everything else structurally.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// JavaScript's idea of truth, which flow authors expect: empty text, 0, null and false are
/// false; empty lists and records are true.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|x| x != 0.0 && !x.is_nan()),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_reach_into_records_and_lists() {
        let value = json!({"items": [{"name": "a"}, {"name": "b"}], "n": 3});
        let check = |path: &str, expect: Option<Value>| assert_eq!(Path::parse(path).unwrap().get(&value).cloned(), expect, "{path}");
        check("items[1].name", Some(json!("b")));
        check("items.0.name", Some(json!("a")));
        check("$", Some(value.clone()));
        check("", Some(value.clone()));
        check("n", Some(json!(3)));
        check("items[5]", None);
        check("n.x", None);
        assert!(Path::parse("a[x]").is_err());
        assert!(Path::parse("a..b").is_err());
    }

    #[test]
    fn templates_fill_input_and_config() {
        let config = json!({"base": "http://h"});
        let input = json!({"id": 7, "name": "x"});
        let scope = Scope { input: &input, config: &config };
        let template = Template::parse("{{config.base}}/items/{{input.id}}?n={{ input.name }}").unwrap();
        assert_eq!(template.render(&scope).unwrap(), "http://h/items/7?n=x");
        assert_eq!(Template::parse("{{input.$}}").unwrap().render(&scope).unwrap(), input.to_string(), "`$` is the value itself");
        // In a URL's path and query, a value is one piece of data; a base URL goes in as it is.
        let steered = json!({"id": "a b/../c?x=1&y=é"});
        let url = Template::parse("{{config.base}}/echo/{{input.id}}?q={{input.id}}").unwrap();
        let scope_of_steered = Scope { input: &steered, config: &config };
        assert_eq!(url.render_url(&scope_of_steered).unwrap(), "http://h/echo/a%20b%2F..%2Fc%3Fx%3D1%26y%3D%C3%A9?q=a%20b%2F..%2Fc%3Fx%3D1%26y%3D%C3%A9");
        assert_eq!(Template::parse("{{config.base}}").unwrap().render_url(&scope).unwrap(), "http://h");
        let missing = Template::parse("{{input.nope}}").unwrap().render(&scope).unwrap_err();
        assert!(missing.contains("input.nope"), "{missing}");
        assert!(Template::parse("{{vars.x}}").unwrap_err().contains("vars"));
        assert!(Template::parse("{{input.x").is_err());
    }

    #[test]
    fn tests_compare_like_a_flow_author_expects() {
        let check = |spec: Value, input: Value, expect: bool| assert_eq!(Test::parse(&spec).unwrap().holds(&input), expect, "{spec} on {input}");
        check(json!({"path": "status", "op": "lt", "value": 400}), json!({"status": 200}), true);
        check(json!({"path": "status", "op": "eq", "value": 200}), json!({"status": 200.0}), true);
        check(json!({"path": "status", "op": "ge", "value": 500}), json!({"status": 200}), false);
        check(json!({}), json!(0), false);
        check(json!({"op": "exists", "path": "a"}), json!({"a": null}), true);
        check(json!({"op": "contains", "value": "b"}), json!(["a", "b"]), true);
        check(json!({"path": "missing", "op": "ne", "value": 1}), json!({}), true);
        assert!(Test::parse(&json!({"op": "between"})).unwrap_err().contains("between"));
        assert!(Test::parse(&json!({"op": "eq"})).unwrap_err().contains("value"));
    }
}
