-- The PostgreSQL ledger's operations: one function per Ledger method, each called as one
-- statement in autocommit mode, so each operation is exactly one transaction and one round trip.
-- postgres.py (re)creates them whenever it creates or migrates the schema, with the ledger's schema
-- as the search_path; the functions Python calls pin it (SET search_path FROM CURRENT), the helpers
-- they call inherit it (and stay inlinable).
--
-- Locking (READ COMMITTED, no lost update, no deadlock): a transaction takes
--   1. its own receipt's row (INSERT .. ON CONFLICT or SELECT .. FOR UPDATE), the only
--      reservation row it ever waits for;
--   2. due reservations with FOR UPDATE SKIP LOCKED (never waits: another transaction expires them);
--   3. every counter row it reads or writes, in ONE statement ordered by key (after inserting
--      the missing rows it will write, also in key order); rows locked in a fixed order by every
--      transaction cannot form a wait cycle, and each row is re-read after its lock is granted;
--   4. settled rows to prune, with SKIP LOCKED (never waits).
-- Helpers are PL/pgSQL rather than SQL functions: PL/pgSQL keeps its plans for the session, a SQL
-- function called from PL/pgSQL is planned again on every call (measured: 0.37 ms for chio_windowed).
-- Arguments p_now (NULL: the database's clock_timestamp()), p_retention (settled_retention, s) and
-- p_max (settled_max) come with every call; amounts travel as numeric, never as floats.

CREATE OR REPLACE FUNCTION chio_now(p_now double precision) RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())::double precision)
$$;

-- Settle a reservation, then forget settled receipts beyond settled_max and past the retention
-- (up to 1,000 each; step 4: SKIP LOCKED, never waits). Every settle prunes, so the bounds hold.
CREATE OR REPLACE FUNCTION chio_settle(p_id text, p_state text, p_amount numeric, v_now double precision,
                                       p_late boolean, p_retention double precision, p_max bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint := nextval('settle_seq');
BEGIN
    UPDATE reservations SET state = p_state, settled_amount = p_amount, settled_at = v_now, settle_seq = v_seq,
                            late = p_late WHERE receipt_id = p_id;
    DELETE FROM reservations WHERE receipt_id IN (
        SELECT receipt_id FROM reservations WHERE state <> 'held' AND settle_seq <= v_seq - p_max
        ORDER BY settle_seq LIMIT 1000 FOR UPDATE SKIP LOCKED);
    DELETE FROM reservations WHERE receipt_id IN (
        SELECT receipt_id FROM reservations WHERE state <> 'held' AND settled_at < v_now - p_retention
        ORDER BY settled_at LIMIT 1000 FOR UPDATE SKIP LOCKED);
END $$;

-- Steps 2 and 3 of every operation: lock the due reservations (SKIP LOCKED: another transaction
-- already expiring one is left to it), create the rows of p_create in key order, lock the
-- counters of p_create, p_also and the due reservations in ONE statement ordered by key, then
-- give the due reservations back. Returns the expired ids.
CREATE OR REPLACE FUNCTION chio_sweep(v_now double precision, p_retention double precision, p_max bigint,
                                      p_create text[], p_also text[])
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_due text[];
    v_lock text[] := p_create || p_also;
    r record;
BEGIN
    SELECT coalesce(array_agg(receipt_id), '{}') INTO v_due FROM (
        SELECT receipt_id FROM reservations WHERE state = 'held' AND expires_at <= v_now
        ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) d;
    IF cardinality(v_due) > 0 THEN
        v_lock := v_lock || ARRAY(SELECT DISTINCT k FROM reservations, unnest(keys) k WHERE receipt_id = ANY(v_due));
    END IF;
    IF cardinality(p_create) > 0 THEN
        INSERT INTO counters (key) SELECT DISTINCT k COLLATE "C" FROM unnest(p_create) k ORDER BY 1
            ON CONFLICT (key) DO NOTHING;
    END IF;
    IF cardinality(v_lock) > 0 THEN
        PERFORM 1 FROM counters WHERE key = ANY(v_lock) ORDER BY key FOR UPDATE;
    END IF;
    FOR r IN SELECT receipt_id, keys, amount FROM reservations WHERE receipt_id = ANY(v_due)
             ORDER BY expires_at, receipt_id LOOP
        UPDATE counters SET held = greatest(held - r.amount, 0) WHERE key = ANY(r.keys);
        PERFORM chio_settle(r.receipt_id, 'expired', r.amount, v_now, false, p_retention, p_max);
    END LOOP;
    RETURN v_due;
END $$;

-- Windowed totals: min(spent + held, 2^64-1) of key i (0 without a row) plus the totals of the
-- read keys whose p_read_of is i, capped at 2^64-1; in key order.
CREATE OR REPLACE FUNCTION chio_windowed(p_keys text[], p_read_of int[], p_read_keys text[]) RETURNS numeric[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_out numeric[];
BEGIN
    WITH t AS (SELECT k.i, least(coalesce(c.spent + c.held, 0), 18446744073709551615) AS total
               FROM unnest(p_keys) WITH ORDINALITY AS k(key, i) LEFT JOIN counters c ON c.key = k.key),
         r AS (SELECT x.i, sum(least(c.spent + c.held, 18446744073709551615)) AS extra
               FROM unnest(p_read_of, p_read_keys) AS x(i, key) JOIN counters c ON c.key = x.key GROUP BY x.i)
    SELECT coalesce(array_agg(least(t.total + coalesce(r.extra, 0), 18446744073709551615) ORDER BY t.i), '{}')
    INTO v_out FROM t LEFT JOIN r ON r.i = t.i;
    RETURN v_out;
END $$;

-- The record as the Python side reads it; no row when unknown or forgotten.
CREATE OR REPLACE FUNCTION chio_find(p_id text, v_now double precision, p_retention double precision)
RETURNS SETOF reservations
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT * FROM reservations
        WHERE receipt_id = p_id AND (state = 'held' OR settled_at >= v_now - p_retention);
END $$;

-- Steps 1-3 of commit and release: lock the receipt's row, then its counters with the sweep's;
-- the record as it is after the sweep (no row when unknown or forgotten).
CREATE OR REPLACE FUNCTION chio_settling(p_id text, v_now double precision, p_retention double precision,
                                         p_max bigint) RETURNS SETOF reservations
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
BEGIN
    SELECT keys INTO v_keys FROM reservations WHERE receipt_id = p_id FOR UPDATE;
    PERFORM chio_sweep(v_now, p_retention, p_max, '{}', coalesce(v_keys, '{}'));
    RETURN QUERY SELECT * FROM chio_find(p_id, v_now, p_retention);
END $$;

CREATE OR REPLACE FUNCTION chio_reserve(p_id text, p_keys text[], p_cost numeric, p_ttl double precision,
                                        p_attempt text, p_book text, p_read_of int[], p_read_keys text[],
                                        p_now double precision, p_retention double precision, p_max bigint)
RETURNS TABLE (created boolean, keys text[], amount numeric, before numeric[], expires_at double precision,
               state text, settled_amount numeric, late boolean, attempt text, book text)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := chio_now(p_now);
    v_created boolean;
BEGIN
    -- a new receipt, or a forgotten one reused; otherwise the existing row, locked
    INSERT INTO reservations AS old (receipt_id, keys, amount, before, expires_at, state, attempt, book)
    VALUES (p_id, p_keys, p_cost, '{}', v_now + p_ttl, 'held', p_attempt, p_book)
    ON CONFLICT (receipt_id) DO UPDATE SET keys = excluded.keys, amount = excluded.amount, before = '{}',
        expires_at = excluded.expires_at, state = 'held', settled_amount = NULL, settled_at = NULL,
        settle_seq = NULL, late = false, attempt = excluded.attempt, book = excluded.book
        WHERE old.state <> 'held' AND old.settled_at < v_now - p_retention
    RETURNING true INTO v_created;
    IF v_created THEN
        PERFORM chio_sweep(v_now, p_retention, p_max, p_keys, p_read_keys);
        UPDATE reservations SET before = chio_windowed(p_keys, p_read_of, p_read_keys) WHERE receipt_id = p_id;
        UPDATE counters SET held = held + p_cost WHERE key = ANY(p_keys);
    ELSE
        PERFORM chio_sweep(v_now, p_retention, p_max, '{}', '{}');
    END IF;
    RETURN QUERY SELECT coalesce(v_created, false), x.keys, x.amount, x.before, x.expires_at, x.state,
                        x.settled_amount, x.late, x.attempt, x.book FROM reservations x WHERE x.receipt_id = p_id;
END $$;

-- commit (p_commit) or release a receipt; the Settlement's (outcome, amount).
-- commit of a held receipt: held -= reserved, spent += actual; of an expired one: spent += actual,
-- once (committed_late). release: only a held one, and with p_attempt only that attempt's.
CREATE OR REPLACE FUNCTION chio_finish(p_id text, p_commit boolean, p_actual numeric, p_attempt text,
                                       p_now double precision, p_retention double precision, p_max bigint)
RETURNS TABLE (outcome text, amount numeric)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := chio_now(p_now);
    x reservations;
    v_amount numeric;
BEGIN
    SELECT * INTO x FROM chio_settling(p_id, v_now, p_retention, p_max);
    IF NOT FOUND OR (NOT p_commit AND x.state = 'held' AND p_attempt IS NOT NULL
                     AND x.attempt IS DISTINCT FROM p_attempt) THEN
        RETURN QUERY SELECT 'unknown'::text, 0::numeric;
    ELSIF x.state = 'expired' AND NOT p_commit THEN
        RETURN QUERY SELECT 'expired'::text, x.amount;
    ELSIF x.state NOT IN ('held', 'expired') THEN
        RETURN QUERY SELECT 'already_' || x.state, 0::numeric;
    ELSIF NOT p_commit THEN
        UPDATE counters SET held = greatest(held - x.amount, 0) WHERE key = ANY(x.keys);
        PERFORM chio_settle(p_id, 'released', x.amount, v_now, false, p_retention, p_max);
        RETURN QUERY SELECT 'released'::text, x.amount;
    ELSE
        v_amount := coalesce(p_actual, x.amount);
        IF x.state = 'held' THEN
            UPDATE counters SET held = greatest(held - x.amount, 0),
                                spent = least(spent + v_amount, 18446744073709551615) WHERE key = ANY(x.keys);
        ELSE  -- expired: the call ran past its TTL; post it now, exactly once
            UPDATE counters SET spent = least(spent + v_amount, 18446744073709551615) WHERE key = ANY(x.keys);
        END IF;
        PERFORM chio_settle(p_id, 'committed', v_amount, v_now, x.state = 'expired', p_retention, p_max);
        RETURN QUERY SELECT CASE WHEN x.state = 'held' THEN 'committed' ELSE 'committed_late' END, v_amount;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION chio_get(p_id text, p_now double precision, p_retention double precision,
                                    p_max bigint)
RETURNS SETOF reservations
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := chio_now(p_now);
BEGIN
    PERFORM chio_sweep(v_now, p_retention, p_max, '{}', '{}');
    RETURN QUERY SELECT * FROM chio_find(p_id, v_now, p_retention);
END $$;

-- spent and held of each key, in order (0 and 0 without a row).
CREATE OR REPLACE FUNCTION chio_balance_rows(p_keys text[]) RETURNS TABLE (spent numeric, held numeric)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT coalesce(c.spent, 0), coalesce(c.held, 0)
        FROM unnest(p_keys) WITH ORDINALITY AS k(key, i) LEFT JOIN counters c ON c.key = k.key ORDER BY k.i;
END $$;

-- spent and held of each key, in order, after giving back what is due.
CREATE OR REPLACE FUNCTION chio_balances(p_keys text[], p_now double precision, p_retention double precision,
                                         p_max bigint)
RETURNS TABLE (spent numeric, held numeric)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, '{}', '{}');
    RETURN QUERY SELECT * FROM chio_balance_rows(p_keys);
END $$;

CREATE OR REPLACE FUNCTION chio_windowed_totals(p_keys text[], p_read_of int[], p_read_keys text[],
                                                p_now double precision,
                                                p_retention double precision, p_max bigint) RETURNS numeric[]
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, '{}', '{}');
    RETURN chio_windowed(p_keys, p_read_of, p_read_keys);
END $$;

-- The Rust record: spent += cost (saturating) on each (distinct) key; the new totals.
CREATE OR REPLACE FUNCTION chio_add(p_keys text[], p_cost numeric, p_now double precision,
                                    p_retention double precision, p_max bigint)
RETURNS numeric[]
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, p_keys, '{}');
    UPDATE counters SET spent = least(spent + p_cost, 18446744073709551615) WHERE key = ANY(p_keys);
    RETURN chio_windowed(p_keys, '{}', '{}');
END $$;

CREATE OR REPLACE FUNCTION chio_expire(p_now double precision, p_retention double precision, p_max bigint)
RETURNS text[]
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := chio_now(p_now);
    v_gone text[] := chio_sweep(v_now, p_retention, p_max, '{}', '{}');
BEGIN
    DELETE FROM marks WHERE mark IN (
        SELECT mark FROM marks WHERE expires_at <= v_now LIMIT 1000 FOR UPDATE SKIP LOCKED);
    RETURN v_gone;
END $$;

-- True for the first caller of p_mark (until p_ttl seconds have passed; NULL: never forgotten).
CREATE OR REPLACE FUNCTION chio_mark(p_mark text, p_ttl double precision, p_now double precision,
                                     p_retention double precision, p_max bigint)
RETURNS boolean
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := chio_now(p_now);
BEGIN
    PERFORM chio_sweep(v_now, p_retention, p_max, '{}', '{}');
    DELETE FROM marks WHERE mark = p_mark AND expires_at <= v_now;
    INSERT INTO marks (mark, expires_at) VALUES (p_mark, v_now + p_ttl) ON CONFLICT (mark) DO NOTHING;
    RETURN FOUND;
END $$;

-- spent += p_delta (signed), clamped to [0, 2^64-1]. A key with no row gets one only when it grows.
CREATE OR REPLACE FUNCTION chio_adjust(p_key text, p_delta numeric, p_now double precision,
                                       p_retention double precision, p_max bigint)
RETURNS TABLE (spent numeric, held numeric, spent_after numeric)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s numeric := 0;
    h numeric := 0;
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, CASE WHEN p_delta > 0 THEN ARRAY[p_key] ELSE '{}' END,
                       ARRAY[p_key]);
    SELECT c.spent, c.held INTO s, h FROM counters c WHERE c.key = p_key;
    s := coalesce(s, 0);
    h := coalesce(h, 0);
    UPDATE counters c SET spent = least(greatest(s + p_delta, 0), 18446744073709551615) WHERE c.key = p_key;
    RETURN QUERY SELECT s, h, least(greatest(s + p_delta, 0), 18446744073709551615);
END $$;

-- spent := 0 on each key (held stays); the balances before, in order.
CREATE OR REPLACE FUNCTION chio_reset(p_keys text[], p_now double precision, p_retention double precision,
                                      p_max bigint)
RETURNS TABLE (spent numeric, held numeric)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, '{}', p_keys);
    RETURN QUERY SELECT * FROM chio_balance_rows(p_keys);
    UPDATE counters c SET spent = 0 WHERE c.key = ANY(p_keys);
END $$;

-- One page of counters() in key order: keys >= p_from (> when not p_first) that hold something.
CREATE OR REPLACE FUNCTION chio_counters(p_from text, p_first boolean, p_limit int, p_now double precision,
                                         p_retention double precision, p_max bigint)
RETURNS TABLE (key text, spent numeric, held numeric)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, '{}', '{}');
    RETURN QUERY SELECT c.key, c.spent, c.held FROM counters c
        WHERE (c.key > p_from OR (p_first AND c.key = p_from)) AND (c.spent <> 0 OR c.held <> 0)
        ORDER BY c.key LIMIT p_limit;
END $$;

-- Add every (distinct) key's amount, saturating. Without p_merge, refused (returns the key found)
-- while any counter holds something; the table lock keeps writers out until this commits.
CREATE OR REPLACE FUNCTION chio_import(p_keys text[], p_spent numeric[], p_merge boolean,
                                       p_now double precision, p_retention double precision, p_max bigint)
RETURNS TABLE (refused text, written bigint)
SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_found text;
BEGIN
    IF NOT p_merge THEN
        LOCK TABLE counters IN SHARE ROW EXCLUSIVE MODE;
    END IF;
    PERFORM chio_sweep(chio_now(p_now), p_retention, p_max, p_keys, '{}');
    IF NOT p_merge THEN
        SELECT c.key INTO v_found FROM counters c WHERE c.spent <> 0 OR c.held <> 0 LIMIT 1;
        IF FOUND THEN
            RETURN QUERY SELECT v_found, 0::bigint;
            RETURN;
        END IF;
    END IF;
    UPDATE counters c SET spent = least(c.spent + x.amount, 18446744073709551615)
        FROM unnest(p_keys, p_spent) AS x(key, amount) WHERE c.key = x.key;
    RETURN QUERY SELECT NULL::text, cardinality(p_keys)::bigint;
END $$;

CREATE OR REPLACE FUNCTION chio_open() RETURNS bigint
SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM reservations WHERE state = 'held'
$$;
