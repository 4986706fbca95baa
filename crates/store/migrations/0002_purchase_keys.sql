-- Idempotency keys of purchases: a retried purchase with the same key (and the same request)
-- is answered with the grant the first one made instead of buying again. One row per key a
-- team used, kept with the grant it bought; the request is kept as the ledger decided it.

CREATE TABLE purchase_keys (
    team_id INTEGER NOT NULL REFERENCES teams(id),
    key TEXT NOT NULL,                 -- 1 to 255 bytes of visible ASCII
    credits INTEGER NOT NULL,          -- as requested
    expires_ms INTEGER,                -- as requested; NULL: the ledger's default expiry
    grant_no INTEGER NOT NULL,         -- the grant the first purchase made
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (team_id, key)
) STRICT, WITHOUT ROWID;
CREATE TRIGGER purchase_keys_no_update BEFORE UPDATE ON purchase_keys BEGIN SELECT RAISE(ABORT, 'purchase keys are append-only'); END;
