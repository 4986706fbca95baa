//! The flowcredits domain: plans, the price book, charge rules, ledger arithmetic and run
//! admission. Pure: no I/O, no clock, no async. Callers pass in the time and persist the events.

mod amount;
mod block;
mod error;
pub mod ledger;
mod period;
mod plan;
mod price_book;
mod pricing;

pub use amount::{Credits, MICRO_USD_PER_CREDIT, MicroUsd};
pub use block::{BlockFamily, BlockKind};
pub use error::CoreError;
pub use ledger::{Alert, Charge, ChargeSavepoint, ChargeSplit, Command, ExecutionId, Grant, LedgerEvent, LedgerSnapshot, PeriodUsage, Refused, RunId, RunRecord, RunStatus, Rules, TeamLedger, TeamSettings};
pub use period::{AnchorDay, LATEST_INSTANT, Period, check_supported};
pub use plan::{Plan, PlanCatalog, PlanId};
pub use price_book::{BlockPrice, PriceBook, PriceVersion};
pub use pricing::{BlockUsage, CloudRun, Location, MCP_TOOLS_PER_EXECUTION_MAX, RunContext, Trigger, block_price, run_needs_credits};

pub use jiff::Timestamp;
