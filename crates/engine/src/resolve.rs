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
        // The server finds flows by the name inside them; so does this, when no file is named so.
        if let Some(flow) = find_by_inner_name(dir, name)? {
            return Ok(flow);
        }
        Err(EngineError::FlowNotFound { name: name.to_owned(), message: format!("no {name}.yaml, {name}.yml or {name}.json in {}, nor a flow file there whose name is `{name}`", dir.display()) })
    }
}

/// Most flow files looked into when a flow is sought by the name inside it.
const DIR_FLOW_FILES_MAX: usize = 1_000;

/// The flow file in `dir` whose `name` is `name`, if one loads. Files that do not load are
/// passed over (they are not the flow asked for). Two files of that name are refused: which
/// one ran (and what it cost) would depend on the order the file system lists them in.
fn find_by_inner_name(dir: &std::path::Path, name: &str) -> Result<Option<Arc<Flow>>, EngineError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut found: Vec<(PathBuf, Flow)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().and_then(|extension| extension.to_str()).is_some_and(|extension| matches!(extension, "yaml" | "yml" | "json")))
        .take(DIR_FLOW_FILES_MAX)
        .filter(|path| std::fs::metadata(path).is_ok_and(|meta| meta.len() <= crate::FLOW_FILE_BYTES_MAX as u64))
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let flow = Flow::load(&text, Syntax::of_path(&path)).ok()?;
            (flow.name == name).then_some((path, flow))
        })
        .collect();
    found.sort_by(|(a, _), (b, _)| a.cmp(b));
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, flow)| Arc::new(flow))),
        _ => {
            let files: Vec<String> = found.iter().map(|(path, _)| path.display().to_string()).collect();
            Err(EngineError::FlowNotFound { name: name.to_owned(), message: format!("{} all hold a flow named `{name}`; rename all but one, or save the one meant as {name}.yaml", files.join(", ")) })
        }
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

/// A nested flow that cannot be found is a problem of the block that names it.
fn naming_the_block(flow: &Flow, name: &str, err: EngineError) -> EngineError {
    let EngineError::FlowNotFound { .. } = &err else { return err };
    let Some(block) = flow.blocks.iter().find(|block| matches!(&block.op, crate::op::Op::Flow { name: named } if named == name)) else { return err };
    EngineError::Invalid { flow: flow.name.clone(), problems: crate::error::Problems(vec![crate::error::Problem::block(&block.id, "config.flow", err.to_string())]) }
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
                let child = resolver.resolve(name).map_err(|err| naming_the_block(flow, name, err))?;
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
