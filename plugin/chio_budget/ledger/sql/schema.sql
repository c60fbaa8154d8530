-- The SQLite ledger, schema version 2 (PRAGMA user_version = 2).
-- Amounts are canonical decimal TEXT: SQLite's INTEGER is signed 64-bit and
-- held sums are not capped at all, so neither fits an INTEGER.
CREATE TABLE IF NOT EXISTS counters (
    key   TEXT PRIMARY KEY,                 -- counter_key(): policy/window/scope/ident
    spent TEXT NOT NULL DEFAULT '0',        -- posted spend, u64, saturating at 2^64-1
    held  TEXT NOT NULL DEFAULT '0'         -- exact sum of the live reservations on this key (no cap)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS reservations (
    receipt_id     TEXT PRIMARY KEY,
    keys           TEXT NOT NULL,           -- JSON array of counter keys
    amount         TEXT NOT NULL,           -- reserved units (decimal)
    before         TEXT NOT NULL,           -- JSON array of decimal totals before the reservation
    expires_at     REAL NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    settled_amount TEXT,                    -- committed: spend counted, released/expired: units given back
    settled_at     REAL,
    settle_seq     INTEGER,                 -- settle order, for the settled_max bound
    late           INTEGER NOT NULL DEFAULT 0,   -- 1: committed after expiry (committed_late)
    attempt        TEXT,                    -- token of the authorize attempt that created it
    book           TEXT                     -- the caller's per-call record, JSON object text
);

CREATE INDEX IF NOT EXISTS reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS reservations_settled_at ON reservations (settled_at) WHERE state != 'held';
CREATE INDEX IF NOT EXISTS reservations_settle_seq ON reservations (settle_seq) WHERE state != 'held';
