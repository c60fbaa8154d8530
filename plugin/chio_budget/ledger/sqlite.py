"""Counters in one SQLite file: durable, shared by every process on one machine.

Promises (on top of the ``Ledger`` contract in ``base.py``):

- Every operation is one ``BEGIN IMMEDIATE`` transaction, so processes and
  threads sharing the file are serialised by SQLite's write lock: a
  reservation reads and bumps every counter it touches before anyone else
  can, and two requests can never both see the last of a budget as free.
- A committed amount is on disk when ``commit`` returns (WAL; with the
  default ``synchronous=FULL`` it also survives power loss, with ``NORMAL``
  it survives ``kill -9`` of the process). A process killed mid-operation
  leaves the transaction rolled back: no reservation is ever counted twice,
  and a reservation whose holder died is given back when its TTL passes.
- Amounts are u64. SQLite's INTEGER is signed 64-bit, so counters and
  amounts are stored as canonical decimal TEXT and added in Python inside
  the transaction: exact up to 2^64-1, readable with the ``sqlite3`` shell.
- Waiting for the lock longer than ``busy_timeout`` seconds, a locked or
  corrupt file, or any other SQLite error raises ``LedgerError``; the guard
  turns that into a deny (fail closed).

Time is this machine's clock (``clock``, default ``time.time``): every
process sharing the file must use the same one, which they do on one host.

Settled receipts are kept ``settled_retention`` seconds (default a day) so
a late second commit/release/reserve of the same receipt is recognised.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import LedgerError
from ..money import U64_MAX, check_units
from .base import DEFAULT_TTL_SECONDS, Reservation, Settlement, parse_seconds

SCHEMA_VERSION = 1
DEFAULT_SETTLED_RETENTION = 86_400.0
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key   TEXT PRIMARY KEY,           -- counter_key(): policy/window/scope/ident
    units TEXT NOT NULL               -- u64 as canonical decimal (SQLite INTEGER is signed 64-bit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    receipt_id     TEXT PRIMARY KEY,
    keys           TEXT NOT NULL,     -- JSON array of counter keys
    amount         TEXT NOT NULL,     -- reserved units (decimal)
    before         TEXT NOT NULL,     -- JSON array of decimal counters before the reservation
    expires_at     REAL NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    settled_amount TEXT,              -- committed: spend counted, released/expired: units given back
    settled_at     REAL
);
CREATE INDEX IF NOT EXISTS reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS reservations_settled_at ON reservations (settled_at) WHERE state != 'held';
"""


def _clamp(value: int) -> int:
    return min(max(value, 0), U64_MAX)


def _units(text: str, what: str) -> int:
    """Read a stored decimal back, refusing anything we would not have written."""
    if not isinstance(text, str) or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise LedgerError(f"sqlite ledger: corrupt {what}: {text!r} is not a canonical u64 decimal")
    v = int(text)
    if v > U64_MAX:
        raise LedgerError(f"sqlite ledger: corrupt {what}: {text} exceeds 2^64-1")
    return v


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    """``begin`` ... ``COMMIT``; anything raised inside rolls back."""
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteLedger:
    """The ``Ledger`` contract over one SQLite file (see the module docstring).

    Thread-safe (one connection per ledger, behind a lock) and safe for many
    processes on one machine (each opens its own ``SqliteLedger``). After
    ``fork`` the child transparently opens its own connection.
    """

    def __init__(self, path: str | os.PathLike[str], *, default_ttl: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.time, busy_timeout: float = 10.0,
                 synchronous: str = "FULL", settled_retention: float = DEFAULT_SETTLED_RETENTION):
        self.path = Path(path)
        self._default_ttl = float(default_ttl)
        self._clock = clock
        self._busy_timeout = float(busy_timeout)
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise LedgerError(f"sqlite ledger: synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self._synchronous = sync
        self._retention = float(settled_retention)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._writes = 0
        with self._lock:
            self._connect()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "SqliteLedger":
        """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's form).

        Query parameters set options: ``?ttl=60&busy_timeout=5&synchronous=NORMAL
        &settled_retention=3600``; keyword ``options`` win over the URI.
        """
        parts = urlsplit(uri)
        if parts.scheme != "sqlite" or not uri.startswith("sqlite:///"):
            raise LedgerError(f"sqlite ledger: expected 'sqlite:///path/to/file.db', got {uri!r}")
        path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
        if not path or path == ":memory:":
            raise LedgerError(f"sqlite ledger: {uri!r} names no file (an in-memory database cannot be shared)")
        opts: dict[str, Any] = {}
        for name, value in parse_qsl(parts.query, strict_parsing=False):
            if name == "synchronous":
                opts[name] = value
            elif name in ("ttl", "default_ttl", "busy_timeout", "settled_retention"):
                opts["default_ttl" if name == "ttl" else name] = parse_seconds(value, name, uri)
            else:
                raise LedgerError(f"sqlite ledger: unknown option {name!r} in {uri!r}")
        opts.update(options)
        return cls(path, **opts)

    # -- connection -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"sqlite ledger: {self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise LedgerError(f"sqlite ledger: {self.path}: schema version {version}, this code knows {SCHEMA_VERSION}")
            if version == 0:
                with _transaction(conn, "BEGIN IMMEDIATE"):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise LedgerError(f"sqlite ledger: {self.path}: {exc}") from None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            return self._connect()
        return self._conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """One transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so
        nothing read inside it can change before we write. Any error rolls back."""
        if self._pid != os.getpid():  # forked: the parent's lock and connection are not ours
            self._lock, self._conn = threading.Lock(), None
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn, "BEGIN IMMEDIATE" if write else "BEGIN"):
                    yield conn.cursor()
            except sqlite3.Error as exc:
                raise LedgerError(f"sqlite ledger: {self.path}: {exc}") from None

    # -- helpers (inside a transaction) ----------------------------------------

    def _read(self, cur: sqlite3.Cursor, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        found = {k: _units(u, f"counter {k!r}")
                 for k, u in cur.execute(f"SELECT key, units FROM counters WHERE key IN ({marks})", tuple(keys))}
        return [found.get(k, 0) for k in keys]

    def _apply(self, cur: sqlite3.Cursor, keys: Sequence[str], delta: int) -> list[int]:
        values = [_clamp(v + delta) for v in self._read(cur, keys)]
        cur.executemany("INSERT INTO counters (key, units) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET units = excluded.units",
                        [(k, str(v)) for k, v in zip(keys, values)])
        return values

    def _sweep(self, cur: sqlite3.Cursor, now: float) -> list[str]:
        gone = cur.execute("SELECT receipt_id, keys, amount FROM reservations "
                           "WHERE state = 'held' AND expires_at <= ? ORDER BY expires_at", (now,)).fetchall()
        for rid, keys, amount in gone:
            self._apply(cur, json.loads(keys), -_units(amount, "reservation amount"))
            cur.execute("UPDATE reservations SET state = 'expired', settled_amount = amount, settled_at = ? "
                        "WHERE receipt_id = ?", (now, rid))
        self._writes += 1
        if self._writes % 1000 == 0:
            self._prune(cur, now)
        return [rid for rid, _, _ in gone]

    def _prune(self, cur: sqlite3.Cursor, now: float) -> None:
        cur.execute("DELETE FROM reservations WHERE state != 'held' AND settled_at < ?", (now - self._retention,))

    def _record(self, cur: sqlite3.Cursor, receipt_id: str):
        return cur.execute("SELECT keys, amount, before, expires_at, state, settled_amount FROM reservations "
                           "WHERE receipt_id = ?", (receipt_id,)).fetchone()

    @staticmethod
    def _reservation(receipt_id: str, row: Any, created: bool) -> Reservation:
        keys, amount, before, expires_at, state, _ = row
        return Reservation(receipt_id, tuple(json.loads(keys)), _units(amount, "reservation amount"),
                           tuple(_units(b, "reservation before") for b in json.loads(before)),
                           float(expires_at), created, state)

    def _ttl(self, ttl: float | None) -> float:
        return self._default_ttl if ttl is None else float(ttl)

    # -- Ledger ----------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None) -> Reservation:
        """Atomically add ``cost`` to every key and hold it until commit, release or expiry."""
        cost = check_units(cost, "cost")
        keys = tuple(dict.fromkeys(keys))
        ttl = self._ttl(ttl)
        with self._tx() as cur:
            now = self._clock()
            self._sweep(cur, now)
            row = self._record(cur, receipt_id)
            if row is not None:
                return self._reservation(receipt_id, row, created=False)
            before = self._read(cur, keys)
            cur.executemany("INSERT INTO counters (key, units) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET units = excluded.units",
                            [(k, str(_clamp(b + cost))) for k, b in zip(keys, before)])
            expires_at = now + ttl
            cur.execute("INSERT INTO reservations (receipt_id, keys, amount, before, expires_at, state) "
                        "VALUES (?, ?, ?, ?, ?, 'held')",
                        (receipt_id, json.dumps(keys), str(cost), json.dumps([str(b) for b in before]), expires_at))
            return Reservation(receipt_id, keys, cost, tuple(before), expires_at)

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Turn a held reservation into spend (``actual`` replaces the estimate). Idempotent."""
        if actual is not None:
            actual = check_units(actual, "actual")
        with self._tx() as cur:
            now = self._clock()
            self._sweep(cur, now)
            row = self._record(cur, receipt_id)
            if row is None or row[4] != "held":
                return self._already(receipt_id, row)
            reserved = _units(row[1], "reservation amount")
            amount = reserved if actual is None else actual
            if amount != reserved:
                self._apply(cur, json.loads(row[0]), amount - reserved)
            cur.execute("UPDATE reservations SET state = 'committed', settled_amount = ?, settled_at = ? "
                        "WHERE receipt_id = ?", (str(amount), now, receipt_id))
            return Settlement(receipt_id, "committed", amount)

    def release(self, receipt_id: str) -> Settlement:
        """Give a held reservation back. Idempotent."""
        with self._tx() as cur:
            now = self._clock()
            self._sweep(cur, now)
            row = self._record(cur, receipt_id)
            if row is None or row[4] != "held":
                return self._already(receipt_id, row)
            amount = _units(row[1], "reservation amount")
            self._apply(cur, json.loads(row[0]), -amount)
            cur.execute("UPDATE reservations SET state = 'released', settled_amount = amount, settled_at = ? "
                        "WHERE receipt_id = ?", (now, receipt_id))
            return Settlement(receipt_id, "released", amount)

    @staticmethod
    def _already(receipt_id: str, row: Any) -> Settlement:
        if row is None:
            return Settlement(receipt_id, "unknown")
        state = row[4]
        if state == "expired":
            return Settlement(receipt_id, "expired", _units(row[1], "reservation amount"))
        return Settlement(receipt_id, "already_committed" if state == "committed" else "already_released")

    def totals(self, keys: Sequence[str]) -> list[int]:
        """Current counters, held reservations included, expired ones given back first."""
        keys = list(keys)
        with self._tx(write=False) as cur:
            due = cur.execute("SELECT 1 FROM reservations WHERE state = 'held' AND expires_at <= ? LIMIT 1",
                              (self._clock(),)).fetchone()
            if due is None:
                found = dict(zip(dict.fromkeys(keys), self._read(cur, list(dict.fromkeys(keys)))))
                return [found[k] for k in keys]
        with self._tx() as cur:
            self._sweep(cur, self._clock())
            found = dict(zip(dict.fromkeys(keys), self._read(cur, list(dict.fromkeys(keys)))))
            return [found[k] for k in keys]

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """Seed-style ``record``: add without deciding, saturating at 2^64-1; new values."""
        cost = check_units(cost, "cost")
        keys = tuple(dict.fromkeys(keys))
        with self._tx() as cur:
            self._sweep(cur, self._clock())
            return self._apply(cur, keys, cost)

    def expire(self) -> list[str]:
        """Release every reservation past its TTL now (and forget long-settled receipts)."""
        with self._tx() as cur:
            now = self._clock()
            gone = self._sweep(cur, now)
            self._prune(cur, now)
            return gone

    def open_reservations(self) -> int:
        with self._tx(write=False) as cur:
            return cur.execute("SELECT count(*) FROM reservations WHERE state = 'held'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                try:
                    self._conn.close()
                except sqlite3.Error:
                    pass
            self._conn = None

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"
