"""Counters in one SQLite file: durable, shared by every process on one machine.

Promises (on top of the ``Ledger`` contract in ``base.py``):

- Every operation is one ``BEGIN IMMEDIATE`` transaction, so processes and
  threads sharing the file are serialised by SQLite's write lock: a
  reservation reads and bumps every counter it touches before anyone else
  can, and a late commit is posted by exactly one of the processes that try.
  Few statements per transaction: ``reserve`` reads every counter it needs
  in one SELECT and writes them in one multi-row upsert; ``commit`` settles
  with one ``UPDATE ... RETURNING`` (7 and 8 statements with BEGIN/COMMIT).
- A committed amount is on disk when ``commit`` returns (WAL; with the
  default ``synchronous=FULL`` it also survives power loss or an OS crash;
  with ``NORMAL`` it survives ``kill -9`` of the process, but power loss may
  take the last transactions committed before it: see docs/ledgers.md). A process killed mid-operation
  leaves the transaction rolled back: no reservation is ever counted twice,
  and a reservation whose holder died is given back when its TTL passes.
- Amounts are canonical decimal TEXT (SQLite's INTEGER is signed 64-bit),
  added in Python inside the transaction: exact, readable in ``sqlite3``.
- Waiting for the lock longer than ``busy_timeout`` seconds, a locked or
  corrupt file, or any other SQLite error raises ``LedgerError``; the guard
  turns that into a deny (fail closed).

Time is this machine's wall clock (``time.time``), which every process on
the host shares. A clock step moves every expiry with it: a backward step
of S seconds keeps a reservation at most S seconds past its TTL, a forward
step expires reservations early (a late commit still counts, once).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from ..errors import LedgerError
from ..money import U64_MAX, check_units
from .base import (ClosesOnExit, DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS, Balance,
                   ExportsSpent, Reads, Reservation, Settlement, check_delta, check_mark, check_reads, clamp_spent,
                   import_refused, key_order, load_book, read_keys, reserve_args, settled_outcome, spent_records,
                   windowed)
from .options import LedgerOptions, check_seconds, parse_query
from .sqlite_schema import (FORGET, begin, busy as _busy, ensure_schema, read_units, settle_row,
                            transaction, upsert_counters)

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_ROW = "keys, amount, before, expires_at, state, settled_amount, late, attempt, book"
_PAGE = 1000  # counters() reads this many per transaction


class SqliteLedger(ExportsSpent, ClosesOnExit):
    """The ``Ledger`` contract over one SQLite file (see the module docstring).

    Thread-safe (one connection per ledger, behind a lock) and safe for many
    processes on one machine (each opens its own ``SqliteLedger``). After
    ``fork`` the child transparently opens its own connection.
    """

    def __init__(self, path: str | os.PathLike[str], *, ttl: float = DEFAULT_TTL_SECONDS,
                 settled_retention: float = DEFAULT_SETTLED_RETENTION, settled_max: int = DEFAULT_SETTLED_MAX,
                 clock: Callable[[], float] = time.time, busy_timeout: float = 10.0, synchronous: str = "FULL"):
        self.path = Path(path)
        self.options = LedgerOptions.make(ttl, settled_retention, settled_max)
        self._clock = clock
        self._busy_timeout = check_seconds(busy_timeout, "busy_timeout")
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise LedgerError(f"sqlite ledger: synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self._synchronous = sync
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._connect()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "SqliteLedger":
        """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's form).

        Query parameters set options: ``?ttl=60&busy_timeout=5&synchronous=NORMAL
        &settled_retention=3600&settled_max=100000``; keyword ``options`` win.
        """
        parts = urlsplit(uri)
        if parts.scheme != "sqlite" or not uri.startswith("sqlite:///"):
            raise LedgerError(f"sqlite ledger: expected 'sqlite:///path/to/file.db', got {uri!r}")
        path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
        if not path or path == ":memory:":
            raise LedgerError(f"sqlite ledger: {uri!r} names no file (an in-memory database cannot be shared)")
        parsed, _ = parse_query(uri, parts.query, {"busy_timeout": check_seconds,
                                                   "synchronous": lambda value, _: value})
        return cls(path, **{**parsed, **options})

    # -- connection -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open, switch to WAL and check the schema, retrying while the file is busy.

        SQLite's busy handler does not cover opening: a connection whose first read
        must upgrade to a write (switching a fresh file to WAL while another process
        is writing it, or the WAL clean-up of a closing connection) gets SQLITE_BUSY
        at once. So replicas starting together retry here until ``busy_timeout``.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.001
        while True:
            try:
                conn = self._open()
            except sqlite3.Error as exc:
                if not _busy(exc) or time.monotonic() + pause > deadline:
                    raise LedgerError(f"sqlite ledger: {self.path}: {exc}") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            self._conn, self._pid = conn, os.getpid()
            return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"sqlite ledger: {self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            ensure_schema(conn, self.path)
            conn.execute("PRAGMA busy_timeout = 0")  # from here on, _tx waits for locks itself (begin)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """One transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so
        nothing read inside it can change before we write. Any error rolls back."""
        if self._pid != os.getpid():  # forked: the parent's lock and connection are not ours
            self._lock, self._conn = threading.Lock(), None
        with self._lock:
            try:
                conn = self._conn if self._conn is not None else self._connect()
                begin(conn, write, self._busy_timeout)
                with transaction(conn, "", begun=True):
                    yield conn.cursor()
            except sqlite3.Error as exc:
                raise LedgerError(f"sqlite ledger: {self.path}: {exc}") from None

    # -- helpers (inside a transaction) ----------------------------------------

    def _balances(self, cur: sqlite3.Cursor, keys: Sequence[str]) -> list[tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for i in range(0, len(keys), 500):  # SQLite bounds the number of parameters
            batch = tuple(keys[i:i + 500])
            found.update((k, (read_units(s, f"counter {k!r} spent"), read_units(h, f"counter {k!r} held", cap=False)))
                         for k, s, h in cur.execute("SELECT key, spent, held FROM counters WHERE key IN "
                                                    f"({','.join('?' * len(batch))})", batch))
        return [found.get(k, (0, 0)) for k in keys]

    def _windowed(self, cur: sqlite3.Cursor, keys: Sequence[str], reads: Mapping[str, Sequence[str]]) -> list[int]:
        every = read_keys(keys, reads)
        totals = {k: min(s + h, U64_MAX) for k, (s, h) in zip(every, self._balances(cur, every))}
        return [windowed(totals, k, reads) for k in keys]

    def _change(self, cur: sqlite3.Cursor, keys: Sequence[str], spend: int = 0, hold: int = 0,
                found: Sequence[tuple[int, int]] | None = None) -> list[int]:
        """``spent += spend`` (saturating), ``held += hold`` (exact, >= 0) on each (distinct) key, whose
        balances are ``found`` when already read in this transaction; the new totals."""
        new = [(min(s + spend, U64_MAX), max(h + hold, 0)) for s, h in found or self._balances(cur, keys)]
        upsert_counters(cur, [(k, s, h) for k, (s, h) in zip(keys, new)])
        return [min(s + h, U64_MAX) for s, h in new]

    def _settle(self, cur: sqlite3.Cursor, rid: str, state: str, amount: int, now: float, late: bool = False) -> None:
        """Settle, then forget settled receipts beyond ``settled_max`` and past the retention."""
        seq = settle_row(cur, rid, state, str(amount), now, late)
        self._forget(cur, now, seq)

    def _forget(self, cur: sqlite3.Cursor, now: float, seq: int) -> None:
        """Delete settled receipts past the retention (1,000 at most) or beyond ``settled_max``
        (``seq``: the latest settle). Only settling adds them, so pruning here bounds them."""
        cur.execute(FORGET, (now - self.options.settled_retention, seq - self.options.settled_max))

    def _sweep(self, cur: sqlite3.Cursor) -> tuple[float, list[str]]:
        """Expire what is due and forget settled receipts past retention; ``(now, expired ids)``."""
        now = self._clock()
        gone = cur.execute("SELECT receipt_id, keys, amount FROM reservations "
                           "WHERE state = 'held' AND expires_at <= ? ORDER BY expires_at", (now,)).fetchall()
        for rid, keys, amount in gone:
            units = read_units(amount, "reservation amount")
            self._change(cur, json.loads(keys), hold=-units)
            self._settle(cur, rid, "expired", units, now)
        return now, [rid for rid, _, _ in gone]

    def _row(self, cur: sqlite3.Cursor, receipt_id: str, now: float) -> Any:
        return cur.execute(f"SELECT {_ROW} FROM reservations WHERE receipt_id = ? "
                           "AND (state = 'held' OR settled_at >= ?)",
                           (receipt_id, now - self.options.settled_retention)).fetchone()

    @staticmethod
    def _reservation(receipt_id: str, row: Any, created: bool) -> Reservation:
        keys, amount, before, expires_at, state, settled, late, attempt, book = row
        return Reservation(receipt_id, tuple(json.loads(keys)), read_units(amount, "reservation amount"),
                           tuple(read_units(b, "reservation before") for b in json.loads(before)),
                           float(expires_at), created, state, load_book(book), attempt,
                           None if settled is None else read_units(settled, "settled amount"), bool(late))

    def _due(self, cur: sqlite3.Cursor) -> bool:
        """Is anything due for expiry? (Read paths sweep only then, to stay read-only otherwise.)"""
        return cur.execute("SELECT 1 FROM reservations WHERE state = 'held' AND expires_at <= ? LIMIT 1",
                           (self._clock(),)).fetchone() is not None

    def _read(self, fn: Callable[[sqlite3.Cursor, float], Any]) -> Any:
        """``fn(cur, now)`` in a read transaction, or after a sweep when something is due."""
        with self._tx(write=False) as cur:
            if not self._due(cur):
                return fn(cur, self._clock())
        with self._tx() as cur:
            now, _ = self._sweep(cur)
            return fn(cur, now)

    # -- Ledger ----------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None, *,
                book: Mapping[str, Any] | None = None, attempt: str | None = None,
                reads: Reads | None = None) -> Reservation:
        """Atomically add ``cost`` to every key's held amount until commit, release or expiry."""
        cost, keys, reads, ttl, book_text = reserve_args(cost, keys, ttl, self.options.ttl, book, reads)
        with self._tx() as cur:
            now, _ = self._sweep(cur)
            row = self._row(cur, receipt_id, now)
            if row is not None:
                return self._reservation(receipt_id, row, created=False)
            every = read_keys(keys, reads)  # one SELECT: the totals before, and the balances to change
            found = dict(zip(every, self._balances(cur, every)))
            totals = {k: min(s + h, U64_MAX) for k, (s, h) in found.items()}
            before = [windowed(totals, k, reads) for k in keys]
            self._change(cur, keys, hold=cost, found=[found[k] for k in keys])
            # REPLACE: a forgotten record of the same id (past its retention, not yet pruned) is reused
            cur.execute(f"INSERT OR REPLACE INTO reservations (receipt_id, {_ROW}) "
                        "VALUES (?, ?, ?, ?, ?, 'held', NULL, 0, ?, ?)",
                        (receipt_id, json.dumps(keys), str(cost), json.dumps([str(b) for b in before]), now + ttl,
                         attempt, book_text))
            return Reservation(receipt_id, keys, cost, tuple(before), now + ttl, True, "held", load_book(book_text),
                               attempt)

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Post a held reservation as spend; an expired one once, as ``committed_late``. Idempotent."""
        if actual is not None:
            actual = check_units(actual, "actual")
        with self._tx() as cur:
            now, _ = self._sweep(cur)
            row = self._row(cur, receipt_id, now)
            if row is None:
                return Settlement(receipt_id, "unknown")
            state, reserved = row[4], read_units(row[1], "reservation amount")
            if state not in ("held", "expired"):
                return Settlement(receipt_id, settled_outcome(state))
            amount = reserved if actual is None else actual
            self._change(cur, json.loads(row[0]), spend=amount, hold=-reserved if state == "held" else 0)
            self._settle(cur, receipt_id, "committed", amount, now, late=state == "expired")
            return Settlement(receipt_id, "committed" if state == "held" else "committed_late", amount)

    def release(self, receipt_id: str, *, attempt: str | None = None) -> Settlement:
        """Give a held reservation back (only this ``attempt``'s, when given). Idempotent."""
        with self._tx() as cur:
            now, _ = self._sweep(cur)
            row = self._row(cur, receipt_id, now)
            if row is None or (row[4] == "held" and attempt is not None and row[7] != attempt):
                return Settlement(receipt_id, "unknown")
            amount = read_units(row[1], "reservation amount")
            if row[4] != "held":
                return Settlement(receipt_id, settled_outcome(row[4]), amount if row[4] == "expired" else 0)
            self._change(cur, json.loads(row[0]), hold=-amount)
            self._settle(cur, receipt_id, "released", amount, now)
            return Settlement(receipt_id, "released", amount)

    def get(self, receipt_id: str) -> Reservation | None:
        row = self._read(lambda cur, now: self._row(cur, receipt_id, now))
        return None if row is None else self._reservation(receipt_id, row, created=False)

    def balances(self, keys: Sequence[str]) -> list[Balance]:
        keys = list(keys)
        uniq = list(key_order(keys))
        found = dict(zip(uniq, self._read(lambda cur, now: self._balances(cur, uniq))))
        return [Balance(*found[k]) for k in keys]

    def totals(self, keys: Sequence[str], reads: Reads | None = None) -> list[int]:
        reads = check_reads(reads, keys)
        if not reads:
            return [b.total for b in self.balances(keys)]
        return self._read(lambda cur, now: self._windowed(cur, keys, reads))

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """The Rust ``record``: ``spent += cost``, saturating at 2^64-1; the new totals."""
        cost = check_units(cost, "cost")
        keys = key_order(keys)
        with self._tx() as cur:
            self._sweep(cur)
            return self._change(cur, keys, spend=cost)

    def expire(self) -> list[str]:
        with self._tx() as cur:
            now = self._clock()
            self._forget_marks(cur, now)
            gone = self._sweep(cur)[1]
            self._forget(cur, now, 0)  # past the retention (settled_max is kept by every settle)
            return gone

    # -- extensions --------------------------------------------------------------

    @staticmethod
    def _forget_marks(cur: sqlite3.Cursor, now: float) -> None:
        cur.execute("DELETE FROM marks WHERE mark IN (SELECT mark FROM marks WHERE expires_at <= ? LIMIT 1000)",
                    (now,))

    def mark_once(self, mark: str, ttl: float | None = None) -> bool:
        mark, ttl = check_mark(mark, ttl)
        with self._tx() as cur:
            now = self._clock()
            cur.execute("DELETE FROM marks WHERE mark = ? AND expires_at <= ?", (mark, now))
            self._forget_marks(cur, now)
            cur.execute("INSERT INTO marks (mark, expires_at) VALUES (?, ?) ON CONFLICT (mark) DO NOTHING",
                        (mark, None if ttl is None else now + ttl))
            return cur.rowcount == 1

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]:
        """In key order, ``_PAGE`` counters per read transaction (never a lock held while the caller works)."""
        after, first = prefix, True
        while True:
            page = self._read(lambda cur, now: cur.execute(
                f"SELECT key, spent, held FROM counters WHERE key {'>=' if first else '>'} ? "
                f"AND (spent != '0' OR held != '0') ORDER BY key LIMIT {_PAGE}", (after,)).fetchall())
            for key, spent, held in page:
                if not key.startswith(prefix):
                    return
                yield key, Balance(read_units(spent, f"counter {key!r} spent"),
                                   read_units(held, f"counter {key!r} held", cap=False))
            if len(page) < _PAGE:
                return
            after, first = page[-1][0], False

    def adjust(self, key: str, delta: int) -> tuple[Balance, Balance]:
        delta = check_delta(delta)
        with self._tx() as cur:
            self._sweep(cur)
            spent, held = self._balances(cur, [key])[0]
            after = clamp_spent(spent + delta)
            if after != spent:
                upsert_counters(cur, [(key, after, held)])
            return Balance(spent, held), Balance(after, held)

    def reset(self, keys: Sequence[str]) -> list[Balance]:
        keys = list(keys)
        uniq = list(key_order(keys))
        with self._tx() as cur:
            self._sweep(cur)
            found = dict(zip(uniq, self._balances(cur, uniq)))
            cur.executemany("UPDATE counters SET spent = '0' WHERE key = ?", [(k,) for k in uniq])
        return [Balance(*found[k]) for k in keys]

    def import_(self, records: Iterable[Mapping[str, Any]], *, merge: bool = False) -> int:
        """All records in one transaction: all of them are written or none."""
        amounts = spent_records(records)
        with self._tx() as cur:
            self._sweep(cur)
            held = cur.execute("SELECT key FROM counters WHERE spent != '0' OR held != '0' LIMIT 1").fetchone()
            if held is not None and not merge:
                raise import_refused(held[0])
            keys = list(amounts)
            upsert_counters(cur, [(k, min(s + amounts[k], U64_MAX), h) for k, (s, h) in zip(keys, self._balances(cur, keys))])
            return len(amounts)

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

