//! Loading plans and prices: the shipped data, or files named on the command line.

use std::path::PathBuf;

use anyhow::Context;
use flowcredits_core::{PlanCatalog, PriceBook, Rules};

#[derive(clap::Args, Clone, Debug)]
pub struct RulesArgs {
    /// Plans file (TOML) to use instead of the shipped plans.
    #[arg(long, global = true, value_name = "PATH", env = "FLOWCREDITS_PLANS")]
    pub plans: Option<PathBuf>,
    /// Price book (TOML) to use instead of the shipped one.
    #[arg(long, global = true, value_name = "PATH", env = "FLOWCREDITS_PRICE_BOOK")]
    pub price_book: Option<PathBuf>,
}

impl RulesArgs {
    pub fn load(&self) -> anyhow::Result<Rules> {
        let plans = match &self.plans {
            None => PlanCatalog::shipped(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read plans file {}", path.display()))?;
                PlanCatalog::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
        };
        let prices = match &self.price_book {
            None => PriceBook::shipped(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read price book {}", path.display()))?;
                PriceBook::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
        };
        Ok(Rules { plans, prices })
    }
}
