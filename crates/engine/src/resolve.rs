//! Finding the flows that `flow` blocks run. The CLI looks in a directory; the server will look
//! up snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::EngineError;
use crate::flow::Flow;
use crate::format::Syntax;

/// Deepest chain of flows running flows.
pub const FLOW_NESTING_MAX: usize = 8;

pub trait FlowResolver: Send + Sync {
    fn resolve(&self, name: &str) -> Result<Arc<Flow>, EngineError>;
}

/// Flow files in one directory: `NAME.yaml`, `NAME.yml` or `NAME.json`.
pub struct DirResolver {
    dir: PathBuf,
}

impl DirResolver {
    pub fn new(dir: impl Into<PathBuf>) -> DirResolver {
        DirResolver { dir: dir.into() }
    }
}

impl FlowResolver for DirResolver {
    fn resolve(&self, name: &str) -> Result<Arc<Flow>, EngineError> {
        if !crate::config::is_identifier(name) {
            return Err(EngineError::FlowNotFound { name: name.to_owned(), message: "a flow name has only letters, digits, `_` and `-`".into() });
        }
        for extension in ["yaml", "yml", "json"] {
            let path = self.dir.join(format!("{name}.{extension}"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Flow::load(&text, Syntax::of_path(&path)).map(Arc::new);
            }
        }
        // A flow file given by bare name lives in the current directory, whose path is empty.
        let dir = if self.dir.as_os_str().is_empty() { std::path::Path::new(".") } else { &self.dir };
        Err(EngineError::FlowNotFound { name: name.to_owned(), message: format!("no {name}.yaml, {name}.yml or {name}.json in {}", dir.display()) })
    }
}

/// Flows held in memory, by name.
#[derive(Default)]
pub struct MapResolver(pub BTreeMap<String, Arc<Flow>>);

impl FlowResolver for MapResolver {
    fn resolve(&self, name: &str) -> Result<Arc<Flow>, EngineError> {
        self.0.get(name).cloned().ok_or_else(|| EngineError::FlowNotFound { name: name.to_owned(), message: "no flow by that name is known".into() })
    }
}

/// Loads every flow reachable through `flow` blocks, refusing a flow that runs itself.
pub fn resolve_all(root: &Flow, resolver: &dyn FlowResolver) -> Result<BTreeMap<String, Arc<Flow>>, EngineError> {
    let mut found = BTreeMap::new();
    let mut chain = vec![root.name.clone()];
    visit(root, resolver, &mut chain, &mut found)?;
    Ok(found)
}

fn visit(flow: &Flow, resolver: &dyn FlowResolver, chain: &mut Vec<String>, found: &mut BTreeMap<String, Arc<Flow>>) -> Result<(), EngineError> {
    for name in flow.subflows() {
        if chain.iter().any(|seen| seen == name) {
            chain.push(name.to_owned());
            return Err(EngineError::FlowRecursion { name: name.to_owned(), chain: chain.join(" -> ") });
        }
        if chain.len() >= FLOW_NESTING_MAX {
            return Err(EngineError::FlowTooDeep { name: name.to_owned(), max: FLOW_NESTING_MAX, chain: chain.join(" -> ") });
        }
        let child = match found.get(name) {
            Some(child) => Arc::clone(child),
            None => {
                let child = resolver.resolve(name)?;
                found.insert(name.to_owned(), Arc::clone(&child));
                child
            }
        };
        chain.push(name.to_owned());
        visit(&child, resolver, chain, found)?;
        chain.pop();
    }
    Ok(())
}
