//! Run history: what each run did, block by block, for people to read. The ledger holds the
//! credits; these rows repeat a run's credit total and each block's credits for display.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::catalog::{Page, PageRequest, json_column, ms_to_text};
use crate::error::ApiError;

/// Lifecycle of a run as people see it. `paused` and `cancelled` mirror the ledger; a run the
/// ledger calls completed ended as `succeeded`, `failed` or `timed_out`, or, when a crash lost
/// how it ended before history recorded it, `unknown` (the ledger knows it ended and what it
/// was charged, not whether it succeeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Paused,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Unknown,
}

impl RunState {
    pub const ALL: [RunState; 7] = [RunState::Paused, RunState::Running, RunState::Succeeded, RunState::Failed, RunState::TimedOut, RunState::Cancelled, RunState::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Paused => "paused",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Cancelled => "cancelled",
            RunState::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Paused | RunState::Running)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    pub id: String,
    pub team: String,
    pub flow_id: String,
    pub snapshot: Option<u32>,
    pub deployment_id: Option<String>,
    pub trigger: String,
    pub location: String,
    pub status: RunState,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub credits: u64,
    pub error: Option<String>,
    pub input: Value,
    pub output: Value,
    /// What the flow's `response` block answered (`{status, body}`), when it did: how a caller
    /// that stopped waiting (408) reads its answer.
    pub response: Option<Value>,
    /// Present on a single run's page, not in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockView>>,
    /// Block executions past [`BLOCKS_PER_RUN_MAX`], charged but not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks_omitted: Option<u64>,
    /// A private run's job as the team's runners hold it (absent for other runs and once the
    /// job is done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerHold>,
    /// A paused run's reason and what brings the team's credits back, as its plan and settings
    /// allow when read (absent for other runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for_credits: Option<String>,
}

impl RunView {
    /// Says why a paused run waits, with `advice` (what brings credits back).
    pub fn explain_pause(&mut self, advice: &str) {
        if self.status == RunState::Paused {
            self.waiting_for_credits = Some(format!("the team is out of credits; the run starts by itself when credits return: {advice}"));
        }
    }
}

/// Who has a private run's job. A run is `running` from its admission (it holds credits from
/// then); this says whether a runner is working on it or it waits for one.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerHold {
    /// The runner whose lease is current; `None` while the job waits for a runner (never
    /// claimed, or its runner's lease ran out).
    pub id: Option<String>,
    pub waiting_for_runner: bool,
    /// Times a runner took it.
    pub claims: u32,
}

/// Most block executions run history lists for one run (a loop may run millions); the ledger
/// keeps every charge, and the run counts those left out.
pub const BLOCKS_PER_RUN_MAX: usize = 10_000;

#[derive(Clone, Debug, Serialize)]
pub struct BlockView {
    pub seq: u32,
    pub block_id: String,
    pub kind: String,
    pub status: String,
    pub input: Value,
    pub output: Value,
    pub started_at: String,
    pub duration_us: i64,
    pub credits: u64,
    pub error: Option<String>,
}

/// A run about to be admitted.
pub struct NewRun<'a> {
    pub id: &'a str,
    pub team: &'a str,
    pub flow_id: &'a str,
    pub snapshot: Option<u32>,
    pub deployment_id: Option<&'a str>,
    pub trigger: &'a str,
    pub location: &'a str,
    pub status: RunState,
    pub input: &'a Value,
    /// When the ledger admitted (or paused) it, in Unix milliseconds.
    pub at_ms: i64,
}

/// How a run ended.
pub struct RunEnd<'a> {
    pub state: RunState,
    pub at_ms: i64,
    pub credits: u64,
    pub output: &'a Value,
    pub error: Option<&'a str>,
    /// The `response` block's answer (status, body), when the flow gave one.
    pub response: Option<&'a (u16, Value)>,
}

impl RunEnd<'_> {
    fn response_json(&self) -> Option<String> {
        self.response.map(|(status, body)| serde_json::json!({"status": status, "body": body}).to_string())
    }
}

/// Changes to the per-flow usage rollup, summed by team, day and flow until written: the
/// history writer writes a batch's in one upsert per flow and day rather than one per run.
#[derive(Default)]
pub struct FlowUsageTally(std::collections::HashMap<(String, i64, String), (i64, i64)>);

impl FlowUsageTally {
    /// Adds a run that ended (`runs` 1), or a change to a finished run's credits (`runs` 0),
    /// to its flow's usage on the day it was admitted.
    fn add(&mut self, team: &str, created_ms: i64, flow_id: &str, runs: i64, credits: i64) {
        if runs == 0 && credits == 0 {
            return;
        }
        let sums = self.0.entry((team.to_owned(), crate::catalog::utc_day(created_ms), flow_id.to_owned())).or_default();
        sums.0 += runs;
        sums.1 += credits;
    }

    /// Adds the sums to the rollup usage by flow reads, which pruning history leaves alone.
    pub fn write(self, connection: &Connection) -> Result<(), ApiError> {
        let mut upsert = connection.prepare_cached(
            "INSERT INTO flow_usage (team, day, flow_id, runs, credits) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (team, day, flow_id) DO UPDATE SET runs = runs + excluded.runs, credits = credits + excluded.credits",
        )?;
        for ((team, day, flow_id), (runs, credits)) in self.0 {
            upsert.execute(params![team, day, flow_id, runs, credits])?;
        }
        Ok(())
    }
}

/// Inserts a run's row; with `ended` when the run has already ended, so that its row is
/// written once.
pub fn insert_run(connection: &Connection, run: &NewRun<'_>, ended: Option<&RunEnd<'_>>) -> Result<(), ApiError> {
    let mut tally = FlowUsageTally::default();
    insert_run_tallied(connection, run, ended, &mut tally)?;
    tally.write(connection)
}

/// [`insert_run`], its per-flow usage added to `tally` for the caller to write.
pub fn insert_run_tallied(connection: &Connection, run: &NewRun<'_>, ended: Option<&RunEnd<'_>>, tally: &mut FlowUsageTally) -> Result<(), ApiError> {
    let started = (run.status == RunState::Running).then_some(run.at_ms);
    let status = ended.map_or(run.status, |end| end.state);
    connection
        .prepare_cached(
            "INSERT INTO run_history (id, team, flow_id, snapshot, deployment_id, trigger, location, status, created_ms, started_ms, input, ended_ms, credits, output, error, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?
        .execute(params![
            run.id,
            run.team,
            run.flow_id,
            run.snapshot,
            run.deployment_id,
            run.trigger,
            run.location,
            status.as_str(),
            run.at_ms,
            started,
            run.input.to_string(),
            ended.map(|end| end.at_ms),
            ended.map_or(0, |end| end.credits as i64),
            ended.map(|end| end.output.to_string()),
            ended.and_then(|end| end.error),
            ended.and_then(RunEnd::response_json)
        ])?;
    if let Some(end) = ended {
        tally.add(run.team, run.at_ms, run.flow_id, 1, end.credits as i64);
    }
    Ok(())
}

/// Marks a paused run running (it was resumed at `at_ms`).
pub fn mark_started(connection: &Connection, run: &str, at_ms: i64) -> Result<(), ApiError> {
    connection.execute("UPDATE run_history SET status = 'running', started_ms = ?2 WHERE id = ?1 AND status = 'paused'", params![run, at_ms])?;
    Ok(())
}

pub fn finish_run(connection: &Connection, run: &str, end: &RunEnd<'_>) -> Result<(), ApiError> {
    let mut tally = FlowUsageTally::default();
    finish_run_tallied(connection, run, end, &mut tally)?;
    tally.write(connection)
}

/// [`finish_run`], its per-flow usage added to `tally` for the caller to write.
pub fn finish_run_tallied(connection: &Connection, run: &str, end: &RunEnd<'_>, tally: &mut FlowUsageTally) -> Result<(), ApiError> {
    debug_assert!(end.state.is_finished());
    // A run counts once in its flow's usage, with its last credits, however often its end is
    // recorded.
    let before: Option<(String, i64, String, i64, String)> = connection
        .prepare_cached("SELECT status, credits, team, created_ms, flow_id FROM run_history WHERE id = ?1")?
        .query_row([run], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
        .optional()?;
    let Some((status, credits_before, team, created_ms, flow_id)) = before else { return Ok(()) };
    let was_finished = RunState::parse(&status).is_none_or(RunState::is_finished);
    connection
        .prepare_cached("UPDATE run_history SET status = ?2, ended_ms = ?3, credits = ?4, output = ?5, error = ?6, response = ?7 WHERE id = ?1")?
        .execute(params![run, end.state.as_str(), end.at_ms, end.credits as i64, end.output.to_string(), end.error, end.response_json()])?;
    if was_finished {
        tally.add(&team, created_ms, &flow_id, 0, end.credits as i64 - credits_before);
    } else {
        tally.add(&team, created_ms, &flow_id, 1, end.credits as i64);
    }
    Ok(())
}

/// One block execution as history shows it.
pub struct BlockRecord {
    pub block_id: String,
    pub kind: &'static str,
    pub failed: bool,
    /// JSON text, as the engine's trace wrote it.
    pub input: Box<RawValue>,
    pub output: Box<RawValue>,
    pub started_ms: i64,
    pub duration_us: i64,
    pub credits: u64,
    pub error: Option<String>,
}

/// A block execution as stored in its batch's JSON array.
#[derive(Serialize, serde::Deserialize)]
struct StoredBlock<B, V> {
    block_id: B,
    kind: B,
    status: B,
    input: V,
    output: V,
    started_ms: i64,
    duration_us: i64,
    credits: u64,
    error: Option<B>,
}

/// Records block executions as the run's next batch (one row whatever their number).
pub fn insert_blocks(connection: &Connection, run: &str, blocks: &[BlockRecord], run_is_new: bool) -> Result<(), ApiError> {
    let batch: i64 = if run_is_new { 0 } else { connection.prepare_cached("SELECT COALESCE(MAX(batch) + 1, 0) FROM run_history_batches WHERE run_id = ?1")?.query_row([run], |row| row.get(0))? };
    let stored: Vec<StoredBlock<&str, &RawValue>> = blocks
        .iter()
        .map(|block| StoredBlock {
            block_id: block.block_id.as_str(),
            kind: block.kind,
            status: if block.failed { "failed" } else { "completed" },
            input: &*block.input,
            output: &*block.output,
            started_ms: block.started_ms,
            duration_us: block.duration_us,
            credits: block.credits,
            error: block.error.as_deref(),
        })
        .collect();
    let text = serde_json::to_string(&stored).map_err(ApiError::internal)?;
    connection.prepare_cached("INSERT INTO run_history_batches (run_id, batch, blocks) VALUES (?1, ?2, ?3)")?.execute(params![run, batch, text])?;
    Ok(())
}

/// A run's block executions in the order they were charged, each listed once.
fn blocks(connection: &Connection, run: &str) -> Result<Vec<BlockView>, ApiError> {
    let mut statement = connection.prepare_cached("SELECT blocks FROM run_history_batches WHERE run_id = ?1 ORDER BY batch")?;
    let batches = statement.query_map([run], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    let mut listed = std::collections::HashSet::new();
    let mut views = Vec::new();
    for batch in batches {
        let stored: Vec<StoredBlock<String, Value>> = serde_json::from_str(&batch).map_err(|err| ApiError::internal(format!("run {run}'s stored history is not readable: {err}")))?;
        for block in stored {
            if !listed.insert(block.block_id.clone()) {
                continue;
            }
            views.push(BlockView {
                seq: views.len() as u32,
                block_id: block.block_id,
                kind: block.kind,
                status: block.status,
                input: block.input,
                output: block.output,
                started_at: ms_to_text(block.started_ms),
                duration_us: block.duration_us,
                credits: block.credits,
                error: block.error,
            });
        }
    }
    Ok(views)
}

const RUN_COLUMNS: &str = "h.id, h.team, h.flow_id, h.snapshot, h.deployment_id, h.trigger, h.location, h.status, h.created_ms, h.started_ms, h.ended_ms, h.credits, h.error, h.input, h.output,
    j.run_id IS NOT NULL, j.runner_id, j.lease_until_ms, j.claims, h.response";
/// Runs with their private-runner job, when they have one.
const RUN_TABLES: &str = "run_history h LEFT JOIN runner_jobs j ON j.run_id = h.id";

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunView> {
    let started: Option<i64> = row.get(9)?;
    let ended: Option<i64> = row.get(10)?;
    let runner = if row.get(15)? {
        let lease_until_ms: Option<i64> = row.get(17)?;
        let held = lease_until_ms.is_some_and(|until| until >= crate::catalog::now_ms());
        let id = row.get::<_, Option<String>>(16)?.filter(|_| held);
        Some(RunnerHold { waiting_for_runner: id.is_none(), id, claims: row.get(18)? })
    } else {
        None
    };
    Ok(RunView {
        id: row.get(0)?,
        team: row.get(1)?,
        flow_id: row.get(2)?,
        snapshot: row.get(3)?,
        deployment_id: row.get(4)?,
        trigger: row.get(5)?,
        location: row.get(6)?,
        status: RunState::parse(&row.get::<_, String>(7)?).unwrap_or(RunState::Failed),
        created_at: ms_to_text(row.get(8)?),
        started_at: started.map(ms_to_text),
        ended_at: ended.map(ms_to_text),
        duration_ms: started.zip(ended).map(|(start, end)| end - start),
        credits: row.get::<_, i64>(11)? as u64,
        error: row.get(12)?,
        input: json_column(row.get(13)?),
        output: json_column(row.get(14)?),
        response: row.get::<_, Option<String>>(19)?.map(|text| json_column(Some(text))),
        blocks: None,
        blocks_omitted: None,
        runner,
        waiting_for_credits: None,
    })
}

/// What a run list is narrowed to.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub flow_id: Option<String>,
    pub status: Option<RunState>,
    pub trigger: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

pub fn runs(connection: &Connection, team: &str, filter: &RunFilter, page: &PageRequest) -> Result<Page<RunView>, ApiError> {
    // Newest first: the cursor is the last id of the previous page, and ids sort by time.
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM {RUN_TABLES} WHERE h.team = ?1 AND (?2 IS NULL OR h.id < ?2) AND (?3 IS NULL OR h.flow_id = ?3) AND (?4 IS NULL OR h.status = ?4)
         AND (?5 IS NULL OR h.trigger = ?5) AND (?6 IS NULL OR h.created_ms >= ?6) AND (?7 IS NULL OR h.created_ms < ?7) ORDER BY h.id DESC LIMIT ?8"
    );
    let mut statement = connection.prepare(&sql)?;
    let rows = statement
        .query_map(
            params![team, page.after, filter.flow_id, filter.status.map(RunState::as_str), filter.trigger, filter.since_ms, filter.until_ms, page.limit + 1],
            run_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(rows, page.limit, |run| run.id.clone()))
}

pub fn run(connection: &Connection, team: &str, id: &str) -> Result<RunView, ApiError> {
    let mut run = connection
        .query_row(&format!("SELECT {RUN_COLUMNS} FROM {RUN_TABLES} WHERE h.team = ?1 AND h.id = ?2"), params![team, id], run_row)
        .optional()?
        .ok_or_else(|| ApiError::NotFound(format!("run {id}")))?;
    run.blocks = Some(blocks(connection, id)?);
    let omitted: i64 = connection.query_row("SELECT blocks_omitted FROM run_history WHERE id = ?1", [id], |row| row.get(0))?;
    run.blocks_omitted = (omitted > 0).then_some(omitted as u64);
    Ok(run)
}

/// How many block executions of `run` history holds.
pub fn stored_block_count(connection: &Connection, run: &str) -> Result<usize, ApiError> {
    let count: i64 = connection.prepare_cached("SELECT COALESCE(SUM(json_array_length(blocks)), 0) FROM run_history_batches WHERE run_id = ?1")?.query_row([run], |row| row.get(0))?;
    Ok(count as usize)
}

/// Adds credits charged to a run still going to what its row shows (a finished run's row has
/// the ledger's total already).
pub fn add_running_credits(connection: &Connection, run: &str, credits: u64) -> Result<(), ApiError> {
    connection.prepare_cached("UPDATE run_history SET credits = credits + ?1 WHERE id = ?2 AND status = 'running'")?.execute(params![credits as i64, run])?;
    Ok(())
}

/// Counts block executions of `run` that history leaves out.
pub fn add_omitted_blocks(connection: &Connection, run: &str, omitted: usize) -> Result<(), ApiError> {
    connection.prepare_cached("UPDATE run_history SET blocks_omitted = blocks_omitted + ?1 WHERE id = ?2")?.execute(params![omitted as i64, run])?;
    Ok(())
}

/// The flow id of runs recorded from the ledger alone (their history lost in a crash, or made
/// by another process on the ledger file: `simulate --db`, `run --db`), whose flow the server
/// never knew: the runs list filters on it and usage by flow counts them under it.
pub const LEDGER_FLOW_ID: &str = "(ledger)";
/// What usage by flow names [`LEDGER_FLOW_ID`].
pub const LEDGER_FLOW_NAME: &str = "runs recorded from the ledger (no flow known)";

/// The history id of the ledger's run `run` of `team`, admitted at `created_ms`: its own id
/// when it is named as the server names runs (`run_…`: one the server made and may have
/// handed out); else (`simulate --db` names runs as its scenario does,
/// `run --db` `local-…`) one made like the server's from when it was admitted and a digest of
/// team and run, the same at every start, so that it is unique across teams, sorts by time
/// and pages like the others.
pub fn ledger_run_history_id(team: &str, run: &str, created_ms: i64) -> String {
    if run.starts_with("run_") {
        return run.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{team}\0{run}").as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes")) >> 24;
    format!("run_{:011x}{bits:010x}", created_ms.max(0))
}

/// One flow's runs in a period and the credits history shows for them.
#[derive(Clone, Debug, Serialize)]
pub struct FlowUsage {
    /// [`LEDGER_FLOW_ID`] for runs recorded from the ledger alone.
    pub flow_id: String,
    /// `None` when the flow was deleted or is unknown.
    pub name: Option<String>,
    pub runs: u64,
    pub credits: u64,
}

/// Runs of `team` started in `[start_ms, end_ms)` (whole UTC days, as billing periods are) and
/// their credits, per flow, most credits first. Finished runs come from the `flow_usage`
/// rollup, which history's pruning leaves whole, so a retention shorter than the period loses
/// nothing here; runs still going (never pruned) from their rows, by run id range (ids sort by
/// the millisecond they were made in), so the team's index bounds the read to the period.
pub fn usage_by_flow(connection: &Connection, team: &str, start_ms: i64, end_ms: i64) -> Result<Vec<FlowUsage>, ApiError> {
    let sql = "WITH usage (flow_id, runs, credits) AS (
                   SELECT flow_id, runs, credits FROM flow_usage WHERE team = ?1 AND day >= ?2 AND day < ?3
                   UNION ALL
                   SELECT flow_id, 1, credits FROM run_history WHERE team = ?1 AND id >= ?4 AND id < ?5 AND status IN ('running', 'paused'))
               SELECT u.flow_id, f.name, SUM(u.runs), SUM(u.credits) FROM usage u LEFT JOIN flows f ON f.id = u.flow_id AND f.team = ?1
               GROUP BY u.flow_id ORDER BY SUM(u.credits) DESC, u.flow_id";
    let (from, to) = (crate::catalog::first_id_at("run", start_ms), crate::catalog::first_id_at("run", end_ms));
    let (first_day, end_day) = (crate::catalog::utc_day(start_ms), crate::catalog::utc_day(end_ms));
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map(params![team, first_day, end_day, from, to], |row| Ok(FlowUsage { flow_id: row.get(0)?, name: row.get(1)?, runs: row.get::<_, i64>(2)? as u64, credits: row.get::<_, i64>(3)? as u64 }))?;
    let mut flows: Vec<FlowUsage> = rows.collect::<Result<_, _>>()?;
    for flow in flows.iter_mut().filter(|flow| flow.flow_id == LEDGER_FLOW_ID && flow.name.is_none()) {
        flow.name = Some(LEDGER_FLOW_NAME.to_owned());
    }
    Ok(flows)
}

/// Deletes at most `limit` finished runs made before `before_ms` (and their blocks), oldest
/// first; running and paused runs stay whatever their age. Returns how many were deleted.
pub fn prune(connection: &mut Connection, before_ms: i64, limit: u32) -> Result<usize, ApiError> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Run ids sort by the millisecond they were made in: the oldest are the first ids.
    let oldest = "SELECT id FROM run_history WHERE id < ?1 AND status NOT IN ('running', 'paused') ORDER BY id LIMIT ?2";
    let cutoff = crate::catalog::first_id_at("run", before_ms);
    transaction.execute(&format!("DELETE FROM run_history_batches WHERE run_id IN ({oldest})"), params![cutoff, limit])?;
    let deleted = transaction.execute(&format!("DELETE FROM run_history WHERE id IN ({oldest})"), params![cutoff, limit])?;
    transaction.commit()?;
    Ok(deleted)
}

/// When history says a run started (or was admitted, if it never started), in Unix milliseconds.
pub fn started_ms(connection: &Connection, id: &str) -> Result<Option<i64>, ApiError> {
    Ok(connection.query_row("SELECT COALESCE(started_ms, created_ms) FROM run_history WHERE id = ?1", [id], |row| row.get(0)).optional()?)
}

/// What history records of a run, if anything.
pub fn run_state(connection: &Connection, id: &str) -> Result<Option<RunState>, ApiError> {
    let status: Option<String> = connection.query_row("SELECT status FROM run_history WHERE id = ?1", [id], |row| row.get(0)).optional()?;
    Ok(status.and_then(|status| RunState::parse(&status)))
}

/// When the newest run history holds was admitted (Unix milliseconds); `None` when it holds none.
pub fn newest_created_ms(connection: &Connection) -> Result<Option<i64>, ApiError> {
    // Rows are appended as runs are admitted: the last row is the newest, without a scan.
    Ok(connection.query_row("SELECT created_ms FROM run_history ORDER BY rowid DESC LIMIT 1", [], |row| row.get(0)).optional()?)
}

/// Which of `ids` have no history row.
pub fn without_rows(connection: &Connection, ids: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut statement = connection.prepare_cached("SELECT EXISTS (SELECT 1 FROM run_history WHERE id = ?1)")?;
    let mut missing = Vec::new();
    for id in ids {
        if !statement.query_row([&id], |row| row.get::<_, bool>(0))? {
            missing.push(id);
        }
    }
    Ok(missing)
}

/// Runs recorded as running, across teams: at start-up, the runs a stopped server left.
pub fn running_runs(connection: &Connection) -> Result<Vec<(String, String)>, ApiError> {
    let mut statement = connection.prepare("SELECT team, id FROM run_history WHERE status = 'running' ORDER BY id")?;
    Ok(statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?)
}

/// Paused runs of a team, oldest first (to dispatch when the ledger resumes them).
/// Keeps the blocks a run on the user's machine declared when it was admitted.
pub fn keep_declared(connection: &Connection, run: &str, declared: &Value) -> Result<(), ApiError> {
    connection.prepare_cached("UPDATE run_history SET declared = ?1 WHERE id = ?2")?.execute(params![declared.to_string(), run])?;
    Ok(())
}

/// The blocks a run on the user's machine declared (`None`: a run made otherwise; not found:
/// no such run in the team).
pub fn declared(connection: &Connection, team: &str, run: &str) -> Result<Option<Value>, ApiError> {
    let text: Option<Option<String>> = connection.query_row("SELECT declared FROM run_history WHERE id = ?1 AND team = ?2", [run, team], |row| row.get(0)).optional()?;
    let text = text.ok_or_else(|| ApiError::NotFound(format!("run {run}")))?;
    text.map(|text| serde_json::from_str(&text).map_err(|err| ApiError::internal(format!("run {run}'s declared blocks are not readable: {err}")))).transpose()
}

/// Keeps the hook request of a paused run for when it resumes.
pub fn keep_paused_http(connection: &Connection, run: &str, http: &Value) -> Result<(), ApiError> {
    connection.prepare_cached("UPDATE run_history SET http = ?1 WHERE id = ?2")?.execute(params![http.to_string(), run])?;
    Ok(())
}

/// The hook request a paused run was made by, if a hook made it.
pub fn paused_http(connection: &Connection, run: &str) -> Result<Option<flowcredits_engine::HttpTrigger>, ApiError> {
    let text: Option<String> = connection.query_row("SELECT http FROM run_history WHERE id = ?1", [run], |row| row.get(0)).optional()?.flatten();
    let Some(text) = text else { return Ok(None) };
    let value: Value = serde_json::from_str(&text).map_err(|err| ApiError::internal(format!("run {run}'s stored request is not readable: {err}")))?;
    Ok(crate::jobs::http_from_json(&value))
}

pub fn paused_runs(connection: &Connection, team: &str) -> Result<Vec<String>, ApiError> {
    let mut statement = connection.prepare("SELECT id FROM run_history WHERE team = ?1 AND status = 'paused' ORDER BY id")?;
    Ok(statement.query_map([team], |row| row.get(0))?.collect::<Result<_, _>>()?)
}

/// The paused runs a deployment made, oldest first.
pub fn paused_runs_of_deployment(connection: &Connection, deployment_id: &str) -> Result<Vec<String>, ApiError> {
    let mut statement = connection.prepare("SELECT id FROM run_history WHERE deployment_id = ?1 AND status = 'paused' ORDER BY id")?;
    Ok(statement.query_map([deployment_id], |row| row.get(0))?.collect::<Result<_, _>>()?)
}

/// Whether a deployment already has a paused run waiting (schedules do not pile them up).
pub fn deployment_has_paused_run(connection: &Connection, deployment_id: &str) -> Result<bool, ApiError> {
    Ok(connection.query_row("SELECT EXISTS (SELECT 1 FROM run_history WHERE deployment_id = ?1 AND status = 'paused')", [deployment_id], |row| row.get(0))?)
}
