//! The simulator's output document.

use flowcredits_core::{Credits, PeriodUsage, RunId, RunStatus};
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub credits: Credits,
}

/// What a replay produced: runs in start order, periods oldest first, refused steps by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub runs: Vec<(RunId, RunOutcome)>,
    pub periods: Vec<PeriodUsage>,
    pub rejected: Vec<(usize, String)>,
}

impl Report {
    /// The JSON document of design.md §4.
    pub fn to_json(&self) -> Value {
        let runs: Map<String, Value> = self
            .runs
            .iter()
            .map(|(run, outcome)| (run.to_string(), json!({"status": outcome.status.as_str(), "credits": outcome.credits.0})))
            .collect();
        let periods: Vec<Value> = self
            .periods
            .iter()
            .map(|usage| {
                json!({
                    "start": usage.period.start.to_string(),
                    "end": usage.period.end.to_string(),
                    "included": usage.included.0,
                    "used": usage.used().0,
                    "included_used": usage.included_used.0,
                    "purchased_used": usage.purchased_used.0,
                    "payg_credits": usage.payg_credits.0,
                    "unbilled_credits": usage.unbilled_credits.0,
                    "payg_amount_usd": usage.payg_amount().to_string(),
                })
            })
            .collect();
        let rejected: Vec<Value> = self.rejected.iter().map(|(step, reason)| json!({"step": step, "reason": reason})).collect();
        json!({"runs": runs, "periods": periods, "rejected": rejected})
    }
}
