//! Plans and their entitlements, loaded from data (`data/plans.toml`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::{CoreError, Credits};

/// The four plans of the pricing document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanId {
    Free,
    Solo,
    Team,
    Enterprise,
}

impl PlanId {
    pub const ALL: [PlanId; 4] = [PlanId::Free, PlanId::Solo, PlanId::Team, PlanId::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            PlanId::Free => "free",
            PlanId::Solo => "solo",
            PlanId::Team => "team",
            PlanId::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanId {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<PlanId, CoreError> {
        PlanId::ALL
            .into_iter()
            .find(|plan| plan.as_str() == text)
            .ok_or_else(|| CoreError::UnknownPlan { plan: text.to_owned() })
    }
}

/// What a plan entitles a team to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Credits granted at the start of every billing period; they expire at its end.
    pub included_credits: Credits,
    pub payg_flows_credits: bool,
    pub payg_ai_credits: bool,
    pub rbac: bool,
    pub private_runner: bool,
    /// `None` is unlimited.
    #[serde(default)]
    pub snapshots_per_flow: Option<u32>,
    /// Whether the team can buy extra credits (Enterprise, through its account team).
    pub can_purchase_credits: bool,
    /// Largest request body a deployed flow accepts.
    pub request_body_bytes_max: u64,
}

impl Plan {
    /// Whether the team may turn pay-as-you-go on at all.
    pub fn has_payg(&self) -> bool {
        self.payg_flows_credits || self.payg_ai_credits
    }

    /// What brings credits back to a team on this plan that has run out, as its settings allow,
    /// for people to read: "turn on pay-as-you-go, or wait for the next billing period".
    pub fn ways_to_more_credits(&self, payg_enabled: bool, payg_capped: bool) -> String {
        let mut ways = Vec::new();
        if self.has_payg() && !payg_enabled {
            ways.push("turn on pay-as-you-go");
        }
        if payg_enabled && payg_capped {
            ways.push("raise the pay-as-you-go spending cap");
        }
        if self.can_purchase_credits {
            ways.push("buy credits");
        }
        match ways.as_slice() {
            [] => "wait for the next billing period".to_owned(),
            ways => format!("{}, or wait for the next billing period", ways.join(", ")),
        }
    }
}

/// Every plan, keyed by id. Always holds all four.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCatalog {
    plans: BTreeMap<PlanId, Plan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    plans: BTreeMap<PlanId, Plan>,
}

const SHIPPED_PLANS: &str = include_str!("../data/plans.toml");

impl PlanCatalog {
    /// The plans shipped with the binary.
    pub fn shipped() -> PlanCatalog {
        PlanCatalog::from_toml(SHIPPED_PLANS).expect("the shipped plans file is valid (tested)")
    }

    pub fn from_toml(text: &str) -> Result<PlanCatalog, CoreError> {
        let file: PlansFile = toml::from_str(text).map_err(|err| CoreError::PlansFile { message: err.to_string() })?;
        for plan in PlanId::ALL {
            if !file.plans.contains_key(&plan) {
                return Err(CoreError::PlansFile { message: format!("plan `{plan}` is missing") });
            }
        }
        Ok(PlanCatalog { plans: file.plans })
    }

    pub fn get(&self, plan: PlanId) -> &Plan {
        &self.plans[&plan]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pricing document's first table, one row per plan.
    #[test]
    fn shipped_plans_match_the_entitlement_table() {
        struct Row {
            plan: PlanId,
            included: u64,
            payg_flows: bool,
            payg_ai: bool,
            rbac: bool,
            private_runner: bool,
            snapshots: Option<u32>,
        }
        let table = [
            Row { plan: PlanId::Free, included: 25, payg_flows: false, payg_ai: false, rbac: false, private_runner: false, snapshots: Some(10) },
            Row { plan: PlanId::Solo, included: 50, payg_flows: true, payg_ai: true, rbac: false, private_runner: false, snapshots: None },
            Row { plan: PlanId::Team, included: 100, payg_flows: true, payg_ai: true, rbac: true, private_runner: false, snapshots: None },
            Row { plan: PlanId::Enterprise, included: 500, payg_flows: true, payg_ai: true, rbac: true, private_runner: true, snapshots: None },
        ];
        let catalog = PlanCatalog::shipped();
        for row in table {
            let plan = catalog.get(row.plan);
            assert_eq!(plan.included_credits, Credits(row.included), "{} included", row.plan);
            assert_eq!(plan.payg_flows_credits, row.payg_flows, "{} payg flows", row.plan);
            assert_eq!(plan.payg_ai_credits, row.payg_ai, "{} payg ai", row.plan);
            assert_eq!(plan.rbac, row.rbac, "{} rbac", row.plan);
            assert_eq!(plan.private_runner, row.private_runner, "{} private runner", row.plan);
            assert_eq!(plan.snapshots_per_flow, row.snapshots, "{} snapshots", row.plan);
            assert_eq!(plan.can_purchase_credits, row.plan == PlanId::Enterprise, "{} purchase", row.plan);
        }
    }

    #[test]
    fn a_plans_file_missing_a_plan_is_refused() {
        let text = SHIPPED_PLANS.replace("[plans.solo]", "[plans.nonsense]");
        let err = PlanCatalog::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("nonsense") || err.contains("solo"), "{err}");
    }

    #[test]
    fn plan_ids_round_trip() {
        for plan in PlanId::ALL {
            assert_eq!(plan.as_str().parse::<PlanId>().unwrap(), plan);
        }
        assert!("gold".parse::<PlanId>().is_err());
    }
}
