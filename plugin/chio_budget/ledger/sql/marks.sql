-- Once-only marks (ledger.mark_once), added to schema 2 without a version bump:
-- code that predates them never reads this table, so it need not stop.
CREATE TABLE IF NOT EXISTS marks (
    mark       TEXT PRIMARY KEY,
    expires_at REAL                         -- forgotten from this time on (ledger clock); NULL: never
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS marks_expiry ON marks (expires_at) WHERE expires_at IS NOT NULL;
