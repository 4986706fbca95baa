//! The engine's one error type. Messages name the block and the field so the flow author knows
//! where to look, and say what to do where that is not obvious.

use std::fmt;

use flowcredits_core::CoreError;

/// One thing wrong with a flow file, found before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The block the problem is in; `None` for the file as a whole.
    pub block: Option<String>,
    /// Where in the block or file: `config.url`, `edges[3].to`, `kind`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn block(block: &str, field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { block: Some(block.to_owned()), field: field.into(), message: message.into() }
    }

    pub fn file(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { block: None, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.block {
            Some(block) => write!(f, "block `{block}`, {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every problem of one flow file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "{count} problem{}", if count == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `flow` is empty when the file could not be read far enough to find its name.
    #[error("{} is not valid: {problems}", if flow.is_empty() { "the flow file".to_owned() } else { format!("flow `{flow}`") })]
    Invalid { flow: String, problems: Problems },
    #[error("block `{block}` ({kind}) failed: {message}")]
    Block { block: String, kind: &'static str, message: String },
    #[error("flow `{name}` cannot be found: {message}")]
    FlowNotFound { name: String, message: String },
    #[error("flow `{name}` includes itself through `flow` blocks ({chain}); a flow may not run itself")]
    FlowRecursion { name: String, chain: String },
    #[error("flow `{name}` would nest more than {max} flows deep ({chain}); flatten some of them")]
    FlowTooDeep { name: String, max: usize, chain: String },
    #[error("the meter refused: {0}")]
    Meter(#[from] CoreError),
    #[error("execution {execution} was already charged with a different usage")]
    ExecutionConflict { execution: String },
    #[error("run {run} is paused: the team has no credits left for a run that needs them; turn on pay-as-you-go, buy credits or wait for the next billing period")]
    Paused { run: String },
    #[error("{0}")]
    Store(String),
}

impl EngineError {
    pub(crate) fn block(block: &str, kind: flowcredits_core::BlockKind, message: impl Into<String>) -> EngineError {
        EngineError::Block { block: block.to_owned(), kind: kind.as_str(), message: message.into() }
    }
}
