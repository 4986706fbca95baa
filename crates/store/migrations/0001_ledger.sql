-- The durable ledger. Instants are Unix milliseconds (UTC); credits are whole numbers; money is
-- micro-dollars. Enumerations are small integer codes (see src/codec.rs).

CREATE TABLE teams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    plan INTEGER NOT NULL,
    anchor_day INTEGER NOT NULL CHECK (anchor_day BETWEEN 1 AND 28),
    payg INTEGER NOT NULL CHECK (payg IN (0, 1)),
    payg_cap_micro_usd INTEGER CHECK (payg_cap_micro_usd >= 0),   -- NULL: no cap
    payg_alerts TEXT NOT NULL DEFAULT '',                         -- micro-dollars, comma-separated
    clock_ms INTEGER,                                             -- last instant the ledger saw
    next_run_seq INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL
) STRICT;

-- Balances of each billing period, kept with the ledger (rebuilt from entries by verify).
CREATE TABLE periods (
    team_id INTEGER NOT NULL REFERENCES teams(id),
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    included INTEGER NOT NULL CHECK (included >= 0),
    included_used INTEGER NOT NULL CHECK (included_used >= 0),
    purchased_used INTEGER NOT NULL CHECK (purchased_used >= 0),
    payg_credits INTEGER NOT NULL CHECK (payg_credits >= 0),
    unbilled_credits INTEGER NOT NULL CHECK (unbilled_credits >= 0),
    PRIMARY KEY (team_id, start_ms)
) STRICT, WITHOUT ROWID;

CREATE TABLE alerts (
    team_id INTEGER NOT NULL,
    period_start_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (team_id, period_start_ms, kind, value)
) STRICT, WITHOUT ROWID;

-- Purchased credits. `remaining` is a balance: credits minus the draws recorded in grant_draws.
CREATE TABLE grants (
    team_id INTEGER NOT NULL REFERENCES teams(id),
    grant_no INTEGER NOT NULL,
    credits INTEGER NOT NULL CHECK (credits > 0),
    remaining INTEGER NOT NULL CHECK (remaining BETWEEN 0 AND credits),
    granted_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (team_id, grant_no)
) STRICT, WITHOUT ROWID;

-- `op` numbers are the order in which the store recorded starts, charges and ends.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL REFERENCES teams(id),
    run_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    trigger INTEGER NOT NULL,
    location INTEGER NOT NULL,
    needs_credits INTEGER NOT NULL CHECK (needs_credits IN (0, 1)),
    status INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    credits INTEGER NOT NULL DEFAULT 0,
    start_op INTEGER NOT NULL,
    end_op INTEGER,
    UNIQUE (team_id, run_key)
) STRICT;
CREATE INDEX runs_open ON runs (team_id, seq) WHERE status IN (0, 1);

-- Block executions: the usage events. The key is the caller's execution id (see codec.rs).
CREATE TABLE executions (
    team_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    op INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    detail_hash INTEGER NOT NULL,
    credits INTEGER NOT NULL CHECK (credits >= 0),
    period_start_ms INTEGER NOT NULL,   -- the billing period it was charged in
    PRIMARY KEY (team_id, key)
) STRICT, WITHOUT ROWID;

-- Append-only ledger entries, one per charged execution: where its credits came from. An entry
-- points at its execution by the execution's op number, which is also the entry's id; the row
-- is a handful of small integers, so the ledger costs little beside the execution itself.
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,   -- executions.op
    included INTEGER NOT NULL,
    purchased INTEGER NOT NULL,
    payg INTEGER NOT NULL,
    unbilled INTEGER NOT NULL
) STRICT;

CREATE TABLE grant_draws (
    entry_id INTEGER NOT NULL REFERENCES entries(id),
    team_id INTEGER NOT NULL,
    grant_no INTEGER NOT NULL,
    credits INTEGER NOT NULL CHECK (credits > 0),
    PRIMARY KEY (entry_id, grant_no)
) STRICT, WITHOUT ROWID;

-- Usage by block kind and trigger, per period: what the dashboard reads instead of a scan.
CREATE TABLE usage_rollups (
    team_id INTEGER NOT NULL,
    period_start_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    trigger INTEGER NOT NULL,
    executions INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    PRIMARY KEY (team_id, period_start_ms, kind, trigger)
) STRICT, WITHOUT ROWID;

CREATE TABLE invoices (
    team_id INTEGER NOT NULL REFERENCES teams(id),
    period_start_ms INTEGER NOT NULL,
    period_end_ms INTEGER NOT NULL,
    included INTEGER NOT NULL,
    included_used INTEGER NOT NULL,
    included_expired INTEGER NOT NULL,
    purchased_used INTEGER NOT NULL,
    payg_credits INTEGER NOT NULL,
    unbilled_credits INTEGER NOT NULL,
    amount_due_micro_usd INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL,
    PRIMARY KEY (team_id, period_start_ms)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL REFERENCES teams(id),
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_team ON audit_log (team_id, id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;

-- Counters the writer keeps between runs.
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO store_meta (name, value) VALUES ('next_op', 1);
