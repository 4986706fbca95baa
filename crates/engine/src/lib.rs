//! The flowcredits engine: flow files (JSON or YAML), validation that reports every problem
//! with its block and field, and an async executor that meters every block execution as it
//! happens.
//!
//! - [`Flow::load`] parses and checks a flow.
//! - [`Engine::run`] admits a run through a [`Meter`], runs it and returns a [`RunReport`].
//! - [`estimate()`] prices a flow before it runs.
//! - [`Providers`] is where AI providers and integration connectors plug in.
//! - [`FlowResolver`] finds the flows that `flow` blocks run.

mod config;
pub mod cron;
mod error;
pub mod estimate;
mod exec;
mod flow;
mod format;
pub mod http;
pub mod js;
pub mod meter;
mod op;
mod path;
pub mod provider;
mod resolve;
mod ts;

pub use config::ID_BYTES_MAX as BLOCK_ID_BYTES_MAX;
pub use error::{EngineError, Problem, Problems};
pub use estimate::{Estimate, estimate};
pub use exec::{CHARGE_BATCH_MAX, Engine, Limits, RUN_EXECUTIONS_MAX, Execution, HttpTrigger, Output, Response, ResponseHook, RunOutcome, RunReport, RunRequest, check_models, check_models_nested, planned_usage};
pub use flow::{FLOW_BLOCKS_MAX, FLOW_EDGES_MAX, Flow};
pub use format::{FLOW_FILE_BYTES_MAX, FlowFile, Syntax};
pub use meter::{Admission, BlockCharge, BlockTrace, ChargedAndEnded, LedgerMeter, Meter};
pub use op::{DELAY_MS_MAX, LOOP_ITERATIONS_MAX, Ty};
pub use provider::{AiCall, AiFailure, AiOutcome, AiProvider, Connector, Providers};
pub use resolve::{DirResolver, FLOW_NESTING_MAX, FlowResolver, MapResolver, resolve_all};
pub use ts::strip_types;
/// The future type [`Meter`], [`AiProvider`] and [`Connector`] implementations return.
pub use futures_util::future::BoxFuture;
