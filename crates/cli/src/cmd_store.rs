//! The credit office on the durable ledger: `teams`, `usage`, `invoices`, `migrate` and
//! `ledger verify`. Each opens the database named by `--db`; only `migrate` and `teams create`
//! make it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use flowcredits_core::{AnchorDay, CoreError, Credits, MicroUsd, PlanId, Rules, TeamSettings, Timestamp};
use flowcredits_store::{Actor, LedgerStore, NewTeam, SqliteStore, StoreError, TeamInfo, TeamName, UsageReport};
use serde_json::{Value, json};

use flowcredits_server::ledger::{invoice_json, usage_json};

use crate::BadArgument;
use crate::rules::RulesArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct DbArgs {
    /// The ledger database (SQLite); `migrate`, `teams create` and `simulate --db` create it.
    #[arg(long, global = true, value_name = "PATH", default_value = "flowcredits.db", env = "FLOWCREDITS_DB")]
    pub db: PathBuf,
}

impl DbArgs {
    pub fn open(&self, rules: Rules) -> anyhow::Result<SqliteStore> {
        SqliteStore::open(&self.db, rules).with_context(|| format!("cannot open the ledger {}", self.db.display()))
    }

    /// The ledger, which must exist: a command that only reads it does not make an empty one
    /// at a mistyped path.
    pub fn open_existing(&self, rules: Rules) -> anyhow::Result<SqliteStore> {
        anyhow::ensure!(
            self.db.exists(),
            "no ledger at {}; check --db, or create one with `flowcredits migrate --db {}` (or `teams create`)",
            self.db.display(),
            self.db.display()
        );
        self.open(rules)
    }
}

#[derive(clap::Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl StoreCommand {
    /// Whether the command was asked for JSON (its error then comes as JSON on stdout too).
    pub fn json(&self) -> bool {
        let flag = match self {
            StoreCommand::Teams(TeamsArgs { command: TeamsCommand::Create { json, .. } | TeamsCommand::List(json) | TeamsCommand::Show { json, .. }, .. }) => json,
            StoreCommand::Usage(UsageArgs { json, .. }) | StoreCommand::Invoices(InvoicesArgs { json, .. }) | StoreCommand::Migrate(MigrateArgs { json, .. }) => json,
            StoreCommand::Ledger(LedgerArgs { command: LedgerCommand::Verify { json, .. }, .. }) => json,
        };
        flag.json
    }
}

/// Commands on the durable ledger, flattened into the top-level command list.
#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Create, list and show teams.
    Teams(TeamsArgs),
    /// A team's credit usage in one billing period.
    Usage(UsageArgs),
    /// A team's invoices (periods that ended by now are closed and invoiced first).
    Invoices(InvoicesArgs),
    /// Create the database or bring its schema up to date.
    Migrate(MigrateArgs),
    /// Ledger maintenance.
    Ledger(LedgerArgs),
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(clap::Args)]
pub struct TeamsArgs {
    #[command(subcommand)]
    command: TeamsCommand,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(clap::Subcommand)]
enum TeamsCommand {
    /// Create a team (again with the same settings is fine).
    Create {
        /// The team's name: letters, digits, '-', '_', '.' (at most 64 bytes).
        name: String,
        /// free, solo, team or enterprise.
        #[arg(long)]
        plan: String,
        /// Day of the month (1-28) on which billing periods start.
        #[arg(long, default_value_t = 1)]
        anchor_day: i64,
        /// Turn pay-as-you-go on.
        #[arg(long)]
        payg: bool,
        /// Most pay-as-you-go spending per period, in dollars ("25", "12.5").
        #[arg(long, value_name = "USD")]
        payg_cap_usd: Option<String>,
        /// Who is creating the team, for the audit log.
        #[arg(long, default_value = "cli")]
        actor: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Every team: plan, anchor day and pay-as-you-go settings.
    List(JsonFlag),
    /// Settings and audit log of one team.
    Show {
        /// The team's name.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(clap::Args)]
pub struct UsageArgs {
    /// The team whose usage to show.
    #[arg(long)]
    team: String,
    /// The period starting in this month (YYYY-MM); default: the period today is in.
    #[arg(long, value_name = "YYYY-MM")]
    period: Option<String>,
    #[command(flatten)]
    json: JsonFlag,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(clap::Args)]
pub struct InvoicesArgs {
    /// The team whose invoices to list.
    #[arg(long)]
    team: String,
    #[command(flatten)]
    json: JsonFlag,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(clap::Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(clap::Subcommand)]
enum LedgerCommand {
    /// Check that every stored balance and rollup equals its rebuild from the ledger entries
    /// (exit 1 when one does not).
    Verify {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub fn run(command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Teams(args) => {
            let rules = args.rules.load()?;
            let store = match args.command {
                TeamsCommand::Create { .. } => args.db.open(rules.clone())?,
                _ => args.db.open_existing(rules.clone())?,
            };
            teams(store, &rules, args.command).map_err(|err| next_step(err, &args.db.db))
        }
        StoreCommand::Usage(args) => usage(args.db.open_existing(args.rules.load()?)?, &args).map_err(|err| next_step(err, &args.db.db)),
        StoreCommand::Invoices(args) => invoices(args.db.open_existing(args.rules.load()?)?, &args).map_err(|err| next_step(err, &args.db.db)),
        StoreCommand::Migrate(MigrateArgs { db, json }) => {
            let applied = match flowcredits_store::migrate(&db.db) {
                // Changing the schema under a running server would leave it writing to tables
                // it no longer knows: a usage error, like a bad argument.
                Err(StoreError::InUse(_)) => {
                    return Err(BadArgument(format!("cannot migrate {}: a running `flowcredits serve` (or another flowcredits command) has it open; stop the server first, then migrate", db.db.display())).into());
                }
                other => other.with_context(|| format!("cannot migrate {}", db.db.display()))?,
            };
            let value = json!({"db": db.db.display().to_string(), "schema_version": flowcredits_store::SCHEMA_VERSION, "migrations_applied": applied});
            print(&json, value, || format!("{}: schema version {} ({applied} migrations applied)\n", db.db.display(), flowcredits_store::SCHEMA_VERSION));
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Ledger(LedgerArgs { command: LedgerCommand::Verify { db, json }, rules }) => verify(db.open_existing(rules.load()?)?, &json),
    }
}

fn print(json: &JsonFlag, value: Value, text: impl FnOnce() -> String) {
    if json.json {
        println!("{}", serde_json::to_string_pretty(&value).expect("a JSON value always serializes"));
    } else {
        print!("{}", text());
    }
}

/// The ledger's refusals that have an obvious next step, with that step.
fn next_step(err: anyhow::Error, db: &Path) -> anyhow::Error {
    let db = db.display();
    let advice = match err.downcast_ref::<StoreError>().map(StoreError::root) {
        Some(StoreError::UnknownTeam { team }) => format!("team `{team}` is not in {db}; its teams: flowcredits teams list --db {db}; a new one: flowcredits teams create {team} --plan free|solo|team|enterprise --db {db}"),
        Some(refusal @ StoreError::TeamExists { team }) => format!(
            "{refusal}: `teams create` again must give the settings it has (flowcredits teams show {team} --db {db}); to change them, serve this ledger (flowcredits serve --db {db}) and use PUT /v1/teams/{team}/plan or PATCH /v1/teams/{team}/billing"
        ),
        _ => return err,
    };
    anyhow::anyhow!(advice)
}

fn teams(store: SqliteStore, rules: &Rules, command: TeamsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TeamsCommand::Create { name, plan, anchor_day, payg, payg_cap_usd, actor, json } => {
            let payg_cap = payg_cap_usd.map(|usd| MicroUsd::parse_usd(&usd).with_context(|| BadArgument(format!("--payg-cap-usd: `{usd}` is not a dollar amount like 25 or 12.5")))).transpose()?;
            let anchor_day = AnchorDay::new(anchor_day).map_err(|err| BadArgument(format!("--anchor-day: {err}")))?;
            let plan = plan.parse::<PlanId>().map_err(|err| BadArgument(format!("--plan: {err}")))?;
            if payg_cap.is_some() && !rules.plans.get(plan).has_payg() {
                return Err(BadArgument(format!("--payg-cap-usd: plan {plan} has no pay-as-you-go, so it takes no cap")).into());
            }
            let settings = TeamSettings { anchor_day, payg_enabled: payg, payg_cap, ..TeamSettings::new(plan) };
            let team = store.create_team(NewTeam { name: TeamName::new(name)?, settings, actor: Actor::new(actor)?, at: Timestamp::now() }).map_err(|err| match err.root() {
                // Settings the plan does not allow are a bad combination of arguments.
                StoreError::Refused(CoreError::PlanHasNoPayg { .. }) => anyhow::Error::new(BadArgument(format!("--payg: {err}"))),
                _ => anyhow::Error::new(err),
            })?;
            print(&json, team_json(&team), || format!("team {} ({})\n", team.name, describe(&team.settings)));
        }
        TeamsCommand::List(json) => {
            let teams = store.teams()?;
            print(&json, Value::Array(teams.iter().map(team_json).collect()), || teams.iter().map(|team| format!("{}\t{}\n", team.name, describe(&team.settings))).collect());
        }
        TeamsCommand::Show { name, json } => {
            let name = TeamName::new(name)?;
            let (team, audit) = (store.team(&name)?, store.audit_log(&name)?);
            let audit_json: Vec<Value> = audit.iter().map(|entry| json!({"at": entry.at.to_string(), "actor": entry.actor, "action": entry.action, "detail": entry.detail})).collect();
            let mut value = team_json(&team);
            value["audit_log"] = Value::Array(audit_json);
            print(&json, value, || {
                let mut text = format!("team {}\n  {}\n  created {}\naudit log:\n", team.name, describe(&team.settings), team.created_at);
                text.extend(audit.iter().map(|entry| format!("  {}  {:<18} {}  {}\n", entry.at, entry.action, entry.actor, entry.detail)));
                text
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(settings: &TeamSettings) -> String {
    let payg = match (settings.payg_enabled, settings.payg_cap) {
        (false, _) => "pay-as-you-go off".to_owned(),
        (true, None) => "pay-as-you-go on, no cap".to_owned(),
        (true, Some(cap)) => format!("pay-as-you-go on, cap ${cap}"),
    };
    format!("plan {}, periods start on day {}, {payg}", settings.plan, settings.anchor_day.get())
}

fn team_json(team: &TeamInfo) -> Value {
    let settings = &team.settings;
    json!({
        "name": team.name.as_str(),
        "plan": settings.plan.as_str(),
        "anchor_day": settings.anchor_day.get(),
        "payg_enabled": settings.payg_enabled,
        "payg_cap_usd": settings.payg_cap.map(|cap| cap.to_string()),
        "created_at": team.created_at.to_string(),
    })
}

fn usage(store: SqliteStore, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let team = TeamName::new(args.team.as_str())?;
    // Read as of now, as the API does: without --period, the period today is in (the team's
    // ledger may not have moved since an earlier one: nothing advances it between commands here,
    // unlike a server's scheduler), and purchases count when usable now (or at the start of a
    // period not begun yet).
    let report = store.usage(&team, args.period.as_deref(), Timestamp::now()).map_err(|err| match err {
        StoreError::BadPeriod { .. } => anyhow::Error::new(BadArgument(format!("--period: {err}"))),
        other => other.into(),
    })?;
    print(&args.json, usage_json(&report), || usage_text(&report));
    Ok(ExitCode::SUCCESS)
}

fn usage_text(report: &UsageReport) -> String {
    // What is left of an ended period's allowance expired with it; purchased credits still
    // usable did not.
    let left = match (report.ended(), report.purchased_remaining) {
        (false, _) => format!("{} left", report.remaining()),
        (true, Credits::ZERO) => format!("{} expired", report.included_expired()),
        (true, purchased) => format!("{} expired, {purchased} purchased still usable", report.included_expired()),
    };
    let mut text = format!(
        "team {}, period {} to {}\n  used {} of {} included credits; {left}\n  included {}, purchased {}, pay-as-you-go {} (${}), unbilled {}\n",
        report.team, report.period.start, report.period.end, report.used(), report.included,
        report.included_used, report.purchased_used, report.payg_credits, report.payg_amount(), report.unbilled_credits,
    );
    if !report.breakdown.is_empty() {
        text.push_str("  by block kind and trigger:\n");
    }
    text.extend(report.breakdown.iter().map(|line| format!("    {:<24} {:<7} {:>10} executions {:>10} credits\n", line.kind.as_str(), line.trigger.as_str(), line.executions, line.credits)));
    text
}

fn invoices(store: SqliteStore, args: &InvoicesArgs) -> anyhow::Result<ExitCode> {
    let team = TeamName::new(args.team.as_str())?;
    // A period that ended while nothing happened to the team is invoiced now.
    store.close_periods(Timestamp::now())?;
    let invoices = store.invoices(&team)?;
    print(&args.json, Value::Array(invoices.iter().map(invoice_json).collect()), || {
        if invoices.is_empty() {
            return format!("team {team} has no closed billing period yet\n");
        }
        invoices
            .iter()
            .map(|invoice| {
                let changes: String = invoice.plan_changes.iter().map(|change| format!("; {} → {} on {}", change.from, change.to, change.at)).collect();
                format!(
                    "{} to {} ({} plan{changes}): included {} (used {}, expired {}), purchased used {}, pay-as-you-go {}, unbilled {}; amount due ${}\n",
                    invoice.period.start, invoice.period.end, invoice.plan, invoice.included, invoice.included_used, invoice.included_expired,
                    invoice.purchased_used, invoice.payg_credits, invoice.unbilled_credits, invoice.amount_due,
                )
            })
            .collect()
    });
    Ok(ExitCode::SUCCESS)
}

fn verify(store: SqliteStore, json: &JsonFlag) -> anyhow::Result<ExitCode> {
    let report = store.verify()?;
    let value = json!({"ok": report.is_ok(), "entries": report.entries, "balances_checked": report.balances_checked, "mismatches": report.mismatches});
    print(json, value, || {
        let mismatches: String = report.mismatches.iter().map(|mismatch| format!("MISMATCH {mismatch}\n")).collect();
        format!("{mismatches}{} ledger entries, {} balances checked, {} mismatches\n", report.entries, report.balances_checked, report.mismatches.len())
    });
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
