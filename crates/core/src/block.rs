//! The block catalog: every kind of block a flow author can use.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

macro_rules! block_kinds {
    ($($variant:ident => $id:literal, $family:ident;)*) => {
        /// A kind of block. The string id is what flow files and usage events carry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum BlockKind { $($variant,)* }

        impl BlockKind {
            pub const ALL: &'static [BlockKind] = &[$(BlockKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(BlockKind::$variant => $id,)* }
            }

            pub fn family(self) -> BlockFamily {
                match self { $(BlockKind::$variant => BlockFamily::$family,)* }
            }
        }
    };
}

block_kinds! {
    Start => "start", Trigger;
    Request => "request", Trigger;
    Response => "response", Trigger;
    Schedule => "schedule", Trigger;
    Mcp => "mcp", Trigger;
    HttpRequest => "http_request", Action;
    Integration => "integration", Action;
    Flow => "flow", Action;
    AiRequest => "ai_request", Ai;
    AiAgent => "ai_agent", Ai;
    AiMedia => "ai_media", Ai;
    If => "if", Logic;
    Condition => "condition", Logic;
    Or => "or", Logic;
    Validate => "validate", Logic;
    Evaluate => "evaluate", Logic;
    EvaluateWithPackages => "evaluate_with_packages", Logic;
    Delay => "delay", Logic;
    Repeat => "repeat", Loop;
    For => "for", Loop;
    Collect => "collect", Loop;
    String => "string", Data;
    Number => "number", Data;
    Bool => "bool", Data;
    Null => "null", Data;
    List => "list", Data;
    Record => "record", Data;
    Select => "select", Data;
    Template => "template", Data;
    Now => "now", Data;
    Date => "date", Data;
    SetVariable => "set_variable", Data;
    GetVariable => "get_variable", Data;
    GetConfig => "get_config", Data;
    Display => "display", Visualize;
    Log => "log", Visualize;
}

/// The catalog's groups, as a flow author sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFamily {
    Trigger,
    Action,
    Ai,
    Logic,
    Loop,
    Data,
    Visualize,
}

impl BlockKind {
    /// AI blocks draw on pay-as-you-go AI credits; every other kind on Flows credits.
    pub fn is_ai(self) -> bool {
        self.family() == BlockFamily::Ai
    }

    /// Kinds whose price is set per model rather than by the block price table.
    pub fn is_priced_by_model(self) -> bool {
        matches!(self, BlockKind::AiAgent | BlockKind::AiMedia)
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockKind {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<BlockKind, CoreError> {
        BlockKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| CoreError::UnknownBlockKind { kind: text.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_id() {
        assert_eq!(BlockKind::ALL.len(), 36);
        for kind in BlockKind::ALL {
            assert_eq!(kind.as_str().parse::<BlockKind>().unwrap(), *kind);
        }
        let err = "teleport".parse::<BlockKind>().unwrap_err();
        assert!(err.to_string().contains("teleport"));
    }
}
