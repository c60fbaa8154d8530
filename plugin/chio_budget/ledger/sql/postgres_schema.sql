-- The PostgreSQL ledger's tables, schema version 1 (meta.version). postgres.py runs this file
-- once, in the ledger's own schema (search_path), under an advisory lock, in one transaction.
-- Amounts are NUMERIC: exact; spent is a u64 (NUMERIC(20,0) holds 2^64-1), held is uncapped.

CREATE TABLE meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE counters (
    key   text COLLATE "C" PRIMARY KEY,     -- counter_key(): policy/window/scope/ident; "C": byte order
    spent numeric(20, 0) NOT NULL DEFAULT 0
          CHECK (spent >= 0 AND spent <= 18446744073709551615),   -- posted spend, saturating
    held  numeric NOT NULL DEFAULT 0
          CHECK (held >= 0 AND held = trunc(held))                 -- exact sum of live reservations
);

CREATE TABLE reservations (
    receipt_id     text COLLATE "C" PRIMARY KEY,   -- the unique constraint that makes reserve idempotent
    keys           text[] NOT NULL,
    amount         numeric(20, 0) NOT NULL,
    before         numeric(20, 0)[] NOT NULL,      -- each key's (windowed) total before the reservation
    expires_at     double precision NOT NULL,      -- Unix seconds on the database's clock
    state          text NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    settled_amount numeric(20, 0),                 -- committed: spend counted; released/expired: given back
    settled_at     double precision,
    settle_seq     bigint,                         -- settle order, for the settled_max bound
    late           boolean NOT NULL DEFAULT false, -- committed after expiry (committed_late)
    attempt        text,                           -- token of the authorize attempt that created it
    book           text                            -- the caller's per-call record, JSON object text
);

CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_settled_at ON reservations (settled_at) WHERE state <> 'held';
CREATE INDEX reservations_settle_seq ON reservations (settle_seq) WHERE state <> 'held';
CREATE SEQUENCE settle_seq;

CREATE TABLE marks (
    mark       text COLLATE "C" PRIMARY KEY,
    expires_at double precision                    -- forgotten from this time on; NULL: never
);

CREATE INDEX marks_expiry ON marks (expires_at) WHERE expires_at IS NOT NULL;
