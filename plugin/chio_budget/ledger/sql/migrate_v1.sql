-- Schema 1 -> 2, the structural half (sqlite.py computes held and spent in
-- the same transaction). Version 1 kept one combined counter per key
-- ("units" = spent + held, saturating); version 2 keeps them apart.
ALTER TABLE counters RENAME COLUMN units TO spent;
ALTER TABLE counters ADD COLUMN held TEXT NOT NULL DEFAULT '0';
ALTER TABLE reservations ADD COLUMN settle_seq INTEGER;
ALTER TABLE reservations ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
ALTER TABLE reservations ADD COLUMN attempt TEXT;
ALTER TABLE reservations ADD COLUMN book TEXT;
CREATE INDEX IF NOT EXISTS reservations_settle_seq ON reservations (settle_seq) WHERE state != 'held';
