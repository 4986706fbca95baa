//! The price book: credit prices versioned by the instant they take effect.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Deserialize;

use crate::{BlockKind, CoreError, Credits};

/// Credits per execution of one block kind, by where it executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockPrice {
    pub local: Credits,
    pub cloud: Credits,
    /// Enterprise private runner; the cloud price when absent.
    #[serde(default)]
    pub private: Option<Credits>,
}

/// One version of every price, in force from `effective_from` until the next version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceVersion {
    pub effective_from: Timestamp,
    pub blocks: HashMap<BlockKind, BlockPrice>,
    pub agent_models: BTreeMap<String, Credits>,
    pub media_models: BTreeMap<String, Credits>,
    /// Per unique external MCP tool an AI agent uses in one block execution.
    pub external_mcp_tool: Credits,
    /// Per unique internal (Flows-hosted) MCP tool; free in the shipped book.
    pub internal_mcp_tool: Credits,
}

/// Every price version, oldest first. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceBook {
    versions: Vec<PriceVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBookFile {
    versions: Vec<PriceVersionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceVersionFile {
    effective_from: String,
    external_mcp_tool: Credits,
    internal_mcp_tool: Credits,
    blocks: BTreeMap<String, BlockPrice>,
    agent_models: BTreeMap<String, Credits>,
    media_models: BTreeMap<String, Credits>,
}

const SHIPPED_PRICE_BOOK: &str = include_str!("../data/price_book.toml");

impl PriceBook {
    /// The price book shipped with the binary.
    pub fn shipped() -> PriceBook {
        PriceBook::from_toml(SHIPPED_PRICE_BOOK).expect("the shipped price book is valid (tested)")
    }

    pub fn from_toml(text: &str) -> Result<PriceBook, CoreError> {
        let invalid = |message: String| CoreError::PriceBookFile { message };
        let file: PriceBookFile = toml::from_str(text).map_err(|err| invalid(err.to_string()))?;
        let mut versions = Vec::with_capacity(file.versions.len());
        for (index, version) in file.versions.into_iter().enumerate() {
            let effective_from: Timestamp = version
                .effective_from
                .parse()
                .map_err(|err| invalid(format!("versions[{index}].effective_from: {err}")))?;
            let mut blocks = HashMap::with_capacity(version.blocks.len());
            for (id, price) in version.blocks {
                let kind: BlockKind = id.parse().map_err(|err| invalid(format!("versions[{index}].blocks: {err}")))?;
                if kind.is_priced_by_model() {
                    return Err(invalid(format!("versions[{index}].blocks.{id}: {id} is priced per model, not in the block table")));
                }
                blocks.insert(kind, price);
            }
            versions.push(PriceVersion {
                effective_from,
                blocks,
                agent_models: version.agent_models,
                media_models: version.media_models,
                external_mcp_tool: version.external_mcp_tool,
                internal_mcp_tool: version.internal_mcp_tool,
            });
        }
        if versions.is_empty() {
            return Err(invalid("at least one version is required".into()));
        }
        if let Some(pair) = versions.windows(2).find(|pair| pair[0].effective_from >= pair[1].effective_from) {
            return Err(invalid(format!("versions must be in increasing effective_from order ({} then {})", pair[0].effective_from, pair[1].effective_from)));
        }
        Ok(PriceBook { versions })
    }

    /// The version in force at `at`. An instant before the first version has no price: an
    /// error, never a guess.
    pub fn version_at(&self, at: Timestamp) -> Result<&PriceVersion, CoreError> {
        let in_force = self.versions.partition_point(|version| version.effective_from <= at);
        match in_force.checked_sub(1) {
            Some(index) => Ok(&self.versions[index]),
            None => Err(CoreError::BeforeFirstPriceVersion { at, first: self.versions[0].effective_from }),
        }
    }

    pub fn first_effective_from(&self) -> Timestamp {
        self.versions[0].effective_from
    }

    pub fn versions(&self) -> &[PriceVersion] {
        &self.versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_before_the_first_version_are_an_error() {
        let book = PriceBook::shipped();
        let err = book.version_at("2026-02-28T23:59:59Z".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("2026-03-01"), "{err}");
        assert!(book.version_at("2026-03-01T00:00:00Z".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_newest_version_at_an_instant_wins() {
        let later = SHIPPED_PRICE_BOOK
            .split_once("[[versions]]")
            .unwrap()
            .1
            .replace("2026-03-01T00:00:00Z", "2026-09-01T00:00:00Z")
            .replace("http_request = { local = 0, cloud = 1 }", "http_request = { local = 0, cloud = 3 }");
        let book = PriceBook::from_toml(&format!("{SHIPPED_PRICE_BOOK}\n[[versions]]{later}")).unwrap();
        let cloud_http = |at: &str| book.version_at(at.parse().unwrap()).unwrap().blocks[&BlockKind::HttpRequest].cloud;
        assert_eq!(cloud_http("2026-08-31T23:59:59Z"), Credits(1));
        assert_eq!(cloud_http("2026-09-01T00:00:00Z"), Credits(3));
        // Versions out of order are refused.
        let reversed = format!("[[versions]]{later}\n{SHIPPED_PRICE_BOOK}");
        assert!(PriceBook::from_toml(&reversed).unwrap_err().to_string().contains("increasing"));
    }

    #[test]
    fn bad_price_books_are_refused_with_the_field() {
        let cases = [
            (SHIPPED_PRICE_BOOK.replace("evaluate = {", "teleport = {"), "teleport"),
            (SHIPPED_PRICE_BOOK.replace("2026-03-01T00:00:00Z", "March 1st"), "effective_from"),
            (SHIPPED_PRICE_BOOK.replace("if = {", "ai_agent = {"), "priced per model"),
            (SHIPPED_PRICE_BOOK.replace("cloud = 2 }", "cloud = -2 }"), "cloud = -2"),
        ];
        for (text, needle) in cases {
            let err = PriceBook::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err}");
        }
    }
}
