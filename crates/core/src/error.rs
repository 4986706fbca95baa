use jiff::Timestamp;

use crate::{BlockKind, PlanId, RunStatus};

/// Everything the domain refuses. Messages name the thing and the problem, and are safe to
/// show to the person who asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("unknown plan `{plan}` (expected free, solo, team or enterprise)")]
    UnknownPlan { plan: String },
    #[error("unknown block kind `{kind}`")]
    UnknownBlockKind { kind: String },
    #[error("unknown trigger `{trigger}` (expected manual, api or mcp)")]
    UnknownTrigger { trigger: String },
    #[error("unknown location `{location}` (expected local, cloud or private)")]
    UnknownLocation { location: String },
    #[error("a manual run is not an automated run; use a manual run context")]
    ManualIsNotAutomated,
    #[error("unknown model `{model}` for {kind}")]
    UnknownModel { kind: BlockKind, model: String },
    #[error("{kind} needs a model")]
    MissingModel { kind: BlockKind },
    #[error("{count} MCP tools in one block execution is more than the limit of {max}")]
    TooManyTools { count: usize, max: usize },
    #[error("anchor day {day} is outside 1 to 28")]
    AnchorDayOutOfRange { day: i64 },
    #[error("no price is in force at {at}: the first price-book version starts at {first}")]
    BeforeFirstPriceVersion { at: Timestamp, first: Timestamp },
    #[error("{at} is later than the latest instant flowcredits handles ({latest})")]
    AfterLatestInstant { at: Timestamp, latest: Timestamp },
    #[error("plans file: {message}")]
    PlansFile { message: String },
    #[error("price book: {message}")]
    PriceBookFile { message: String },
    #[error("{at} is earlier than the team's last recorded event at {last}")]
    TimeWentBackwards { at: Timestamp, last: Timestamp },
    #[error("run {run} was already started")]
    DuplicateRun { run: String },
    #[error("run {run} is not known")]
    UnknownRun { run: String },
    #[error("run {run} is {status}")]
    RunNotRunning { run: String, status: RunStatus },
    #[error("run {run} is {status}")]
    RunAlreadyFinished { run: String, status: RunStatus },
    #[error("the team already has {max} runs waiting for credits, the most it may have; a new run that needs credits can wait only once credits come back (pay-as-you-go, a purchase or the next period) or waiting runs are cancelled")]
    TooManyPausedRuns { max: usize },
    #[error("plan {plan} cannot buy credits")]
    PlanCannotPurchase { plan: PlanId },
    #[error("plan {plan} has no pay-as-you-go")]
    PlanHasNoPayg { plan: PlanId },
    #[error("{field} is {value}, outside 1 to {max}")]
    AmountOutOfRange { field: &'static str, value: u64, max: u64 },
    #[error("purchased credits must expire after they are bought ({expires_at} is not after {at})")]
    ExpiryNotAfterPurchase { at: Timestamp, expires_at: Timestamp },
    #[error("{field} is {length} bytes long, more than the limit of {max}")]
    IdTooLong { field: &'static str, length: usize, max: usize },
    #[error("{field} is empty")]
    IdEmpty { field: &'static str },
}
