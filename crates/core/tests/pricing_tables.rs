//! Every row of every price table in the pricing document, for every trigger and location.

use flowcredits_core::{BlockKind, BlockUsage, CloudRun, RunContext, Rules, Timestamp, Trigger};

/// A moment the shipped ("Post–March 1, 2026") price version is in force.
fn at() -> Timestamp {
    "2026-03-15T12:00:00Z".parse().unwrap()
}

/// Every way a run can be started, and whether it executes on the local canvas.
fn every_context() -> Vec<(&'static str, RunContext, bool)> {
    vec![
        ("manual on the local canvas", RunContext::manual(CloudRun::Off), true),
        ("manual with cloud run", RunContext::manual(CloudRun::On), false),
        ("api", RunContext::automated(Trigger::Api).unwrap(), false),
        ("mcp", RunContext::automated(Trigger::Mcp).unwrap(), false),
        ("api on a private runner", RunContext::private_runner(Trigger::Api).unwrap(), false),
        ("mcp on a private runner", RunContext::private_runner(Trigger::Mcp).unwrap(), false),
    ]
}

fn price(rules: &Rules, context: RunContext, usage: &BlockUsage) -> u64 {
    rules.block_price(at(), context, usage).unwrap().0
}

/// "Premium block pricing, Post–March 1, 2026": block, local canvas, cloud / cloud canvas.
const PREMIUM_BLOCKS: [(&str, u64, u64); 8] = [
    ("http_request", 0, 1),
    ("ai_request", 0, 1),
    ("evaluate", 0, 1),
    ("evaluate_with_packages", 0, 2),
    ("if", 0, 1),
    ("condition", 0, 1),
    ("validate", 0, 1),
    ("integration", 2, 2),
];

#[test]
fn premium_blocks_cost_their_column_for_every_trigger_and_location() {
    let rules = Rules::shipped();
    for (block, local, cloud) in PREMIUM_BLOCKS {
        let usage = BlockUsage::of_kind(block.parse().unwrap());
        for (context_name, context, on_local_canvas) in every_context() {
            let expected = if on_local_canvas { local } else { cloud };
            assert_eq!(price(&rules, context, &usage), expected, "{block}, {context_name}");
        }
    }
}

/// "AI Agent models and tools": credits per run, all run types.
const AGENT_MODELS: [(&str, u64); 9] = [
    ("gpt-5", 10),
    ("gpt-5-mini", 2),
    ("gpt-5-nano", 1),
    ("gpt-4", 25),
    ("gpt-4o", 15),
    ("gpt-4o-mini", 2),
    ("claude-sonnet-4.5", 10),
    ("claude-haiku-4.5", 2),
    ("claude-sonnet-4", 5),
];

#[test]
fn agent_models_cost_the_same_for_every_trigger_and_location() {
    let rules = Rules::shipped();
    for (model, credits) in AGENT_MODELS {
        let usage = BlockUsage::with_model(BlockKind::AiAgent, model);
        for (context_name, context, _) in every_context() {
            assert_eq!(price(&rules, context, &usage), credits, "{model}, {context_name}");
        }
    }
}

/// "External MCP tool (per unique tool): 2", "Internal (Flows-hosted) MCP servers: Free".
#[test]
fn agent_tools_add_two_per_unique_external_tool_and_nothing_for_internal_ones() {
    let rules = Rules::shipped();
    let cases: [(&[&str], &[&str], u64); 6] = [
        (&[], &[], 0),
        (&["search"], &[], 2),
        (&["search", "fetch"], &[], 4),
        (&["search", "search", "search"], &[], 2),
        (&["search", "fetch", "search"], &["kb", "docs"], 4),
        (&[], &["kb", "kb", "docs"], 0),
    ];
    for (model, model_credits) in AGENT_MODELS {
        for (external, internal, tool_credits) in cases {
            let usage = BlockUsage {
                external_mcp_tools: external.iter().map(|tool| tool.to_string()).collect(),
                internal_mcp_tools: internal.iter().map(|tool| tool.to_string()).collect(),
                ..BlockUsage::with_model(BlockKind::AiAgent, model)
            };
            for (context_name, context, _) in every_context() {
                assert_eq!(price(&rules, context, &usage), model_credits + tool_credits, "{model}, {external:?} {internal:?}, {context_name}");
            }
        }
    }
}

/// "AI media models": credits per run (medium quality).
const MEDIA_MODELS: [(&str, u64); 3] = [("gpt-image-1.5", 50), ("gpt-image-1", 65), ("gpt-image-1-mini", 15)];

#[test]
fn media_models_cost_the_same_for_every_trigger_and_location() {
    let rules = Rules::shipped();
    for (model, credits) in MEDIA_MODELS {
        let usage = BlockUsage::with_model(BlockKind::AiMedia, model);
        for (context_name, context, _) in every_context() {
            assert_eq!(price(&rules, context, &usage), credits, "{model}, {context_name}");
        }
    }
}

#[test]
fn blocks_missing_from_the_tables_are_free_everywhere() {
    let rules = Rules::shipped();
    let priced: Vec<&str> = PREMIUM_BLOCKS.iter().map(|(block, _, _)| *block).chain(["ai_agent", "ai_media"]).collect();
    let free: Vec<BlockKind> = BlockKind::ALL.iter().copied().filter(|kind| !priced.contains(&kind.as_str())).collect();
    assert_eq!(free.len(), BlockKind::ALL.len() - 10);
    for kind in free {
        for (context_name, context, _) in every_context() {
            assert_eq!(price(&rules, context, &BlockUsage::of_kind(kind)), 0, "{kind}, {context_name}");
        }
    }
}

#[test]
fn models_are_checked_per_table() {
    let rules = Rules::shipped();
    let context = RunContext::manual(CloudRun::Off);
    let failures = [
        (BlockUsage::with_model(BlockKind::AiAgent, "gpt-image-1"), "unknown model `gpt-image-1` for ai_agent"),
        (BlockUsage::with_model(BlockKind::AiMedia, "gpt-5"), "unknown model `gpt-5` for ai_media"),
        (BlockUsage::with_model(BlockKind::AiAgent, "GPT-5"), "unknown model `GPT-5` for ai_agent"),
        (BlockUsage::of_kind(BlockKind::AiAgent), "ai_agent needs a model"),
        (BlockUsage::of_kind(BlockKind::AiMedia), "ai_media needs a model"),
    ];
    for (usage, message) in failures {
        assert_eq!(rules.block_price(at(), context, &usage).unwrap_err().to_string(), message);
    }
    // An AI request names its provider's model, but its credit price is flat.
    assert_eq!(price(&rules, RunContext::manual(CloudRun::On), &BlockUsage::with_model(BlockKind::AiRequest, "anything")), 1);
}

/// "Manual runs only consume credits for blocks that run in the cloud"; automated runs also pay
/// for HTTP requests and logic blocks.
#[test]
fn whether_a_run_needs_credits_follows_its_blocks_and_context() {
    let rules = Rules::shipped();
    let flow = |kinds: &[&str]| -> Vec<BlockUsage> { kinds.iter().map(|kind| BlockUsage::of_kind(kind.parse().unwrap())).collect() };
    let local = RunContext::manual(CloudRun::Off);
    let cloud = RunContext::manual(CloudRun::On);
    let api = RunContext::automated(Trigger::Api).unwrap();
    let cases = [
        (flow(&["start", "http_request", "if", "evaluate", "display"]), local, false),
        (flow(&["start", "http_request", "if", "evaluate", "display"]), cloud, true),
        (flow(&["start", "http_request", "if", "evaluate", "display"]), api, true),
        (flow(&["start", "integration"]), local, true),
        (flow(&["start", "select", "template", "repeat", "log"]), api, false),
        (flow(&[]), api, false),
        (vec![BlockUsage::with_model(BlockKind::AiAgent, "gpt-5-nano")], local, true),
        (vec![BlockUsage::with_model(BlockKind::AiMedia, "gpt-image-1-mini")], local, true),
    ];
    for (blocks, context, needs) in cases {
        assert_eq!(rules.run_needs_credits(at(), context, &blocks).unwrap(), needs, "{blocks:?} in {context:?}");
    }
    let unknown = vec![BlockUsage::of_kind(BlockKind::Start), BlockUsage::with_model(BlockKind::AiAgent, "gpt-0")];
    assert!(rules.run_needs_credits(at(), local, &unknown).is_err(), "an unknown model anywhere in the flow is an error");
}
