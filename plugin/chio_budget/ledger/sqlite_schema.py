"""The SQLite ledger's file format: create schema 2, or migrate schema 1 to it, on open;
and the few statements of the ledger's hot path (``upsert_counters``, ``settle_row``, ``FORGET``).

The schema is package data (``sql/schema.sql``, ``sql/migrate_v1.sql``).
Migration runs in one ``BEGIN IMMEDIATE`` transaction, so it happens once
even when several processes open the file together, and a failure leaves
the version-1 file untouched. Version 1 kept one counter per key (spent and
held together, saturating); version 2 keeps them apart:
``held`` = the sum of the key's live reservations, ``spent`` = the old
counter minus that (never below 0). A process still running version-1 code
fails closed on the migrated file (its queries name a column that is gone).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from contextlib import contextmanager
from importlib import resources
from typing import Iterator, Sequence

from ..errors import LedgerError
from ..money import U64_MAX

SCHEMA_VERSION = 2

# -- statements of the ledger's hot path (sqlite.py), few per transaction ------------------------

_UPSERT = ("INSERT INTO counters (key, spent, held) VALUES {} "
           "ON CONFLICT (key) DO UPDATE SET spent = excluded.spent, held = excluded.held")
_ROWS = 300  # counters per upsert statement (3 parameters each; SQLite bounds the number of parameters)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)  # UPDATE ... RETURNING
_SEQ = "(SELECT coalesce(max(settle_seq), 0) + 1 FROM reservations WHERE state != 'held')"
_SETTLE = "UPDATE reservations SET state = ?, settled_amount = ?, settled_at = ?, late = ?, settle_seq = {} " \
          "WHERE receipt_id = ?"
FORGET = ("DELETE FROM reservations WHERE receipt_id IN (SELECT receipt_id FROM (SELECT receipt_id FROM reservations "
          "WHERE state != 'held' AND settled_at < ? ORDER BY settled_at LIMIT 1000) "
          "UNION ALL SELECT receipt_id FROM reservations WHERE state != 'held' AND settle_seq <= ?)")
"""Forget settled receipts settled before a time (1,000 at most) or with ``settle_seq`` at most a bound."""


def upsert_counters(cur: sqlite3.Cursor, rows: Sequence[tuple[str, int, int]]) -> None:
    """Write ``(key, spent, held)`` rows: one statement per ``_ROWS`` counters (SQLite caches it)."""
    for i in range(0, len(rows), _ROWS):
        batch = rows[i:i + _ROWS]
        cur.execute(_UPSERT.format(",".join(["(?, ?, ?)"] * len(batch))),
                    [x for k, s, h in batch for x in (k, str(s), str(h))])


def settle_row(cur: sqlite3.Cursor, rid: str, state: str, amount: str, now: float, late: bool) -> int:
    """Mark a reservation settled with the next ``settle_seq``; that seq. One statement where
    SQLite has ``RETURNING`` (3.35+), two before."""
    if _RETURNING:
        return cur.execute(_SETTLE.format(_SEQ) + " RETURNING settle_seq",
                           (state, amount, now, int(late), rid)).fetchone()[0]
    seq = cur.execute(f"SELECT {_SEQ}").fetchone()[0]
    cur.execute(_SETTLE.format("?"), (state, amount, now, int(late), seq, rid))
    return seq


def begin(conn: sqlite3.Connection, write: bool, busy_timeout: float) -> None:
    """Begin a transaction, waiting for locks in steps of 0.1-2 ms (jittered) up to ``busy_timeout``
    seconds, then raising SQLite's busy error.

    The ledger's connections run with SQLite's busy timeout at 0, because SQLite's own busy
    handler sleeps 1, 2, 5, 10, 15... ms, far longer than a ledger transaction holds the lock:
    processes sharing a file would mostly sleep. In WAL mode only two steps can be busy: taking
    the write lock (``BEGIN IMMEDIATE``) and taking a read snapshot (the first read after
    ``BEGIN``, forced here by ``PRAGMA schema_version``); once a transaction holds them, its
    statements and its ``COMMIT`` are never busy (checkpoints after a commit are passive).
    """
    deadline, pause = time.monotonic() + busy_timeout, 0.0001
    while True:
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("BEGIN")
                conn.execute("PRAGMA schema_version").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.002)


def busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, whatever the extended code."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _statements(name: str) -> list[str]:
    text = resources.files(__package__).joinpath("sql", name).read_text(encoding="utf-8")
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def read_units(text: object, what: str, *, cap: bool = True) -> int:
    """A stored decimal back, refusing anything we would not have written."""
    if not isinstance(text, str) or not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise LedgerError(f"sqlite ledger: corrupt {what}: {text!r} is not a canonical decimal")
    v = int(text)
    if cap and v > U64_MAX:
        raise LedgerError(f"sqlite ledger: corrupt {what}: {text} exceeds 2^64-1")
    return v


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str, *, begun: bool = False) -> Iterator[None]:
    """``begin`` (unless the caller has ``begun``) ... ``COMMIT``; anything raised inside rolls back."""
    if not begun:
        conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


ADDITIVE = {"marks": "marks.sql"}
"""Tables added to schema 2 without a version bump (older code never reads them): table -> file."""


def _complete(conn: sqlite3.Connection) -> bool:
    if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        return False
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return names >= ADDITIVE.keys()


def ensure_schema(conn: sqlite3.Connection, path: object) -> None:
    """Leave the file at ``SCHEMA_VERSION`` with every additive table: create it, migrate it,
    or refuse an unknown version. Read-only when nothing is missing."""
    if _complete(conn):
        return
    with transaction(conn, "BEGIN IMMEDIATE"):
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # again, under the write lock
        if version == 0:
            for statement in _statements("schema.sql"):
                conn.execute(statement)
        elif version == 1:
            _migrate_v1(conn)
        elif version != SCHEMA_VERSION:
            raise LedgerError(f"sqlite ledger: {path}: schema version {version}; this code knows 1 "
                              f"(migrated on open) and {SCHEMA_VERSION}")
        for name in ADDITIVE.values():
            for statement in _statements(name):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    for statement in _statements("migrate_v1.sql"):
        conn.execute(statement)
    held: dict[str, int] = {}
    for keys, amount in conn.execute("SELECT keys, amount FROM reservations WHERE state = 'held'"):
        for k in json.loads(keys):
            held[k] = held.get(k, 0) + read_units(amount, "reservation amount")
    combined = {k: read_units(u, f"counter {k!r}") for k, u in conn.execute("SELECT key, spent FROM counters")}
    conn.executemany("INSERT INTO counters (key, spent, held) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                     "SET spent = excluded.spent, held = excluded.held",
                     [(k, str(max(combined.get(k, 0) - held.get(k, 0), 0)), str(held.get(k, 0)))
                      for k in combined.keys() | held.keys()])
    settled = conn.execute("SELECT receipt_id FROM reservations WHERE state != 'held' "
                           "ORDER BY settled_at, receipt_id").fetchall()
    conn.executemany("UPDATE reservations SET settle_seq = ? WHERE receipt_id = ?",
                     [(i, rid) for i, (rid,) in enumerate(settled, 1)])
