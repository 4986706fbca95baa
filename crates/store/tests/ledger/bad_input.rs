//! Bad input gets an error that names the field or the thing, and writes nothing.

use flowcredits_core::{AnchorDay, BlockKind, BlockUsage, Credits, ExecutionId, MicroUsd, PlanId, TeamSettings};
use flowcredits_store::{Actor, BillingChange, LedgerStore, NewTeam, SqliteStore, StartRun, TeamName, UsageEvent, limits};

use crate::support::*;

type Attempt = Box<dyn Fn(&SqliteStore) -> Result<(), flowcredits_store::StoreError>>;

fn case(expected: &'static str, attempt: impl Fn(&SqliteStore) -> Result<(), flowcredits_store::StoreError> + 'static) -> (&'static str, Attempt) {
    (expected, Box::new(attempt))
}

fn charge(store: &SqliteStore, events: Vec<UsageEvent>) -> Result<(), flowcredits_store::StoreError> {
    store.charge(&team("t"), events).map(drop)
}

fn billing(store: &SqliteStore, change: BillingChange) -> Result<(), flowcredits_store::StoreError> {
    store.change_billing(&team("t"), &actor(), ts("2026-03-02T10:00:05Z"), change).map(drop)
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_writes_nothing() {
    let dir = TempDir::new("bad");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    create(&store, "big", PlanId::Enterprise);
    store.start_run(&team("t"), start("r1", "2026-03-02T10:00:00Z")).unwrap();
    store.charge(&team("t"), vec![integration("e0", "r1", "2026-03-02T10:00:01Z")]).unwrap();
    // Opens big's billing period, which a refused request would otherwise open and keep.
    store.start_run(&team("big"), start("b1", "2026-03-02T10:00:05Z")).unwrap();
    let at = "2026-03-02T10:00:05Z";
    let agent = |model: &str| UsageEvent { execution: ExecutionId::new("a1").unwrap(), run: run("r1"), usage: BlockUsage::with_model(BlockKind::AiAgent, model), at: ts(at) };
    let cases = vec![
        case("team `nobody` is not known", |s| s.start_run(&team("nobody"), start("r9", "2026-03-02T10:00:05Z")).map(drop)),
        case("team `nobody` is not known", |s| s.charge(&team("nobody"), vec![integration("e9", "r1", "2026-03-02T10:00:05Z")]).map(drop)),
        case("run ghost is not known", |s| charge(s, vec![integration("e9", "ghost", "2026-03-02T10:00:05Z")])),
        case("run ghost is not known", |s| s.end_run(&team("t"), &run("ghost"), ts("2026-03-02T10:00:05Z"))),
        case("unknown model `gpt-99`", move |s| charge(s, vec![agent("gpt-99")])),
        case("ai_agent needs a model", move |s| charge(s, vec![UsageEvent { usage: BlockUsage::of_kind(BlockKind::AiAgent), ..agent("x") }])),
        case("model: is 300 bytes long", move |s| charge(s, vec![agent(&"m".repeat(300))])),
        case("2000 MCP tools in one block execution", move |s| charge(s, vec![UsageEvent { usage: BlockUsage { external_mcp_tools: (0..2000).map(|n| n.to_string()).collect(), ..BlockUsage::with_model(BlockKind::AiAgent, "gpt-5") }, ..agent("gpt-5") }])),
        case("internal_mcp_tools: tool 1 has no name", move |s| charge(s, vec![UsageEvent { usage: BlockUsage { internal_mcp_tools: vec!["kb".into(), "  ".into()], ..BlockUsage::with_model(BlockKind::AiAgent, "gpt-5") }, ..agent("gpt-5") }])),
        case("events: 10001 events in one batch", |s| charge(s, (0..=limits::BATCH_EVENTS_MAX).map(|n| integration(&format!("b{n}"), "r1", "2026-03-02T10:00:05Z")).collect())),
        case("events: the batch is empty", |s| charge(s, Vec::new())),
        case("at: 1970-01-01T00:00:00Z is outside", |s| charge(s, vec![integration("e9", "r1", "1970-01-01T00:00:00Z")])),
        case("at: 3000-01-01T00:00:00Z is outside", |s| s.start_run(&team("t"), start("r9", "3000-01-01T00:00:00Z")).map(drop)),
        case("credits is 0, outside 1 to 1000000000", |s| s.change_billing(&team("big"), &actor(), ts("2026-03-02T10:00:05Z"), BillingChange::Purchase { credits: Credits(0), expires_at: None }).map(drop)),
        case("purchased credits must expire after they are bought", |s| s.change_billing(&team("big"), &actor(), ts("2026-03-02T10:00:05Z"), BillingChange::Purchase { credits: Credits(5), expires_at: Some(ts("2026-03-01T00:00:00Z")) }).map(drop)),
        case("plan team cannot buy credits", |s| billing(s, BillingChange::Purchase { credits: Credits(10), expires_at: None }).map(drop)),
        case("payg_cap (micro-dollars) is 18446744073709551615", |s| billing(s, BillingChange::SetPaygCap { cap: Some(MicroUsd(u64::MAX)) })),
        case("payg alert (micro-dollars) is 0", |s| billing(s, BillingChange::SetPaygAlerts { amounts: vec![MicroUsd(0)] })),
        case("run r1 was already started with a different", |s| s.start_run(&team("t"), StartRun { needs_credits: false, ..start("r1", "2026-03-02T10:00:05Z") }).map(drop)),
        case("team `t` already exists with other settings", |s| s.create_team(NewTeam { name: team("t"), settings: TeamSettings::new(PlanId::Solo), actor: actor(), at: ts("2026-03-02T10:00:05Z") }).map(drop)),
        case("plan free has no pay-as-you-go", |s| {
            let settings = TeamSettings { payg_enabled: true, ..TeamSettings::new(PlanId::Free) };
            s.create_team(NewTeam { name: team("f"), settings, actor: actor(), at: ts("2026-03-02T10:00:05Z") }).map(drop)
        }),
    ];
    for (expected, attempt) in cases {
        let before = dump(&dir.db());
        let err = attempt(&store).expect_err(expected).to_string();
        assert!(err.contains(expected), "expected `{expected}` in `{err}`");
        assert_eq!(dump(&dir.db()), before, "`{expected}` wrote something");
    }
    assert_verified(&store);
}

#[test]
fn malformed_names_and_periods_are_refused() {
    for (name, expected) in [("", "team: is empty"), ("a b", "character ' ' is not allowed"), (&"x".repeat(65)[..], "65 bytes long"), (".", "cannot name a team"), ("..", "cannot name a team")] {
        let err = TeamName::new(name).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    assert!(Actor::new("").unwrap_err().to_string().starts_with("actor"));
    assert!(AnchorDay::new(29).is_err());
    let dir = TempDir::new("period");
    let store = open(&dir.db());
    create(&store, "t", PlanId::Team);
    for period in ["2026-3", "march", "2026-13", "2026-03-01"] {
        let err = store.usage(&team("t"), Some(period), ts(CREATED)).unwrap_err().to_string();
        assert!(err.contains(period) && err.contains("YYYY-MM"), "{err}");
    }
    // The calendar ends in 9999: a month whose period would end past it is refused, not a panic.
    for period in ["9999-01", "9999-12"] {
        let err = store.usage(&team("t"), Some(period), ts(CREATED)).unwrap_err().to_string();
        assert!(err.contains(period) && err.contains("after 9998-12"), "{err}");
    }
    assert!(store.usage(&team("t"), Some("9998-12"), ts(CREATED)).is_ok());
    // Nor is there anything to show for a month that ended before the team existed.
    let err = store.usage(&team("t"), Some("2000-01"), ts(CREATED)).unwrap_err().to_string();
    assert!(err.contains("2000-01") && err.contains("before the team was created"), "{err}");
}
