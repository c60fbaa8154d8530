"""Counters in PostgreSQL: shared by every kernel replica that reaches the database.

Promises (on top of the ``Ledger`` contract in ``base.py``):

- Each operation is one call of a PL/pgSQL function (``sql/postgres_functions.sql``)
  as one statement on an autocommit connection: one transaction and one
  round trip per operation.
- No lost update under ``READ COMMITTED`` (the default): every counter row an
  operation reads or writes is locked with ``SELECT ... FOR UPDATE`` in ONE
  statement ordered by key, after the operation's own receipt row and before
  anything else; due reservations and settled rows to prune are taken with
  ``SKIP LOCKED``. A fixed order means two reservations over overlapping
  counters wait for each other but never deadlock, and each row is re-read
  once its lock is granted. ``isolation=serializable`` is offered too
  (serialization failures are retried, up to ``retries`` times); it is
  slower under contention (``docs/ledgers.md``).
- Exact amounts: ``spent`` is ``NUMERIC(20,0)`` (u64, saturating at 2^64-1),
  ``held`` is ``NUMERIC`` (uncapped); Python sends and reads them as
  numerics, never floats.
- Idempotent by receipt id: ``reservations.receipt_id`` is the primary key,
  and ``reserve`` is an ``INSERT ... ON CONFLICT``: of two replicas reserving
  the same receipt, one creates it and the other gets it back.
- Time is the database's clock (``clock_timestamp()``), one clock for every
  replica, unless a ``clock`` is passed (tests).
- Fail closed, and bounded: any error is a ``LedgerError``. A lock wait or a
  slow statement ends at ``statement_timeout`` (server side); a connection
  the network dropped ends at ``tcp_user_timeout``/keepalives (libpq); a
  server that stops answering on a live connection is cut by a watchdog at
  ``deadline``; waiting for a pooled connection ends at ``pool_timeout``.
  Nothing is resent after a connection error (the call may have run; the
  guard releases only what its own attempt made), only after a
  serialization failure or deadlock, which PostgreSQL rolled back.

The schema is created on first use and versioned (``postgres_schema.py``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..errors import LedgerError
from ..money import U64_MAX, check_units
from .base import (Balance, ClosesOnExit, DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS,
                   ExportsSpent, Reads, Reservation, Settlement, check_delta, check_mark, check_reads, import_refused,
                   key_order, load_book, reserve_args, spent_records)
from .options import LedgerOptions, check_count, check_seconds, parse_query
from .postgres_schema import check_schema_name, ensure_schema
from .watchdog import Watchdog

DEFAULT_SCHEMA = "chio_budget"
_ISOLATION = {"read_committed": "read committed", "serializable": "serializable"}
_LIBPQ = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "1",
          "keepalives_count": "3", "tcp_user_timeout": "5000", "application_name": "chio-budget"}
_RECORD = "keys, amount, before, expires_at, state, settled_amount, late, attempt, book"
_PAGE = 1000
_OWN = {"schema": lambda v, _: v, "pool_min": lambda v, w: check_count(v, w, minimum=0),
        "pool_max": check_count, "pool_timeout": check_seconds, "statement_timeout": check_seconds,
        "deadline": check_seconds, "isolation": lambda v, _: v, "retries": lambda v, w: check_count(v, w, minimum=0)}


def _reservation(receipt_id: str, row: Sequence[Any], created: bool) -> Reservation:
    keys, amount, before, expires_at, state, settled, late, attempt, book = row
    return Reservation(receipt_id, tuple(keys), int(amount), tuple(int(b) for b in before), float(expires_at),
                       created, state, load_book(book), attempt, None if settled is None else int(settled),
                       bool(late))


class PostgresLedger(ExportsSpent, ClosesOnExit):
    """The ``Ledger`` contract over one PostgreSQL schema (see the module docstring).

    Thread-safe (a ``psycopg_pool`` pool of autocommit connections, at most
    ``pool_max``; a thread waits up to ``pool_timeout`` for one) and fork-safe
    (a child opens its own pool on first use). The schema is checked, and
    created or migrated, on the first operation, so constructing the ledger
    never needs the database to be up: until it is, every decision denies.
    """

    def __init__(self, conninfo: str, *, schema: str = DEFAULT_SCHEMA, ttl: float = DEFAULT_TTL_SECONDS,
                 settled_retention: float = DEFAULT_SETTLED_RETENTION, settled_max: int = DEFAULT_SETTLED_MAX,
                 clock: Callable[[], float] | None = None, pool_min: int = 1, pool_max: int = 4,
                 pool_timeout: float = 2.0, statement_timeout: float = 5.0, deadline: float = 10.0,
                 isolation: str = "read_committed", retries: int = 10):
        self.schema = check_schema_name(schema)
        self.options = LedgerOptions.make(ttl, settled_retention, settled_max)
        if isolation not in _ISOLATION:
            raise LedgerError(f"postgres ledger: isolation must be one of {', '.join(_ISOLATION)}, got {isolation!r}")
        if not (isinstance(pool_max, int) and isinstance(pool_min, int) and 0 <= pool_min <= pool_max >= 1):
            raise LedgerError(f"postgres ledger: need 0 <= pool_min <= pool_max, pool_max >= 1; got {pool_min}, "
                              f"{pool_max}")
        self.isolation, self.retries = isolation, check_count(retries, "retries", minimum=0)
        self._pool_sizes = (pool_min, pool_max)
        self._pool_timeout = check_seconds(pool_timeout, "pool_timeout")
        gucs = f"-c statement_timeout={int(check_seconds(statement_timeout, 'statement_timeout') * 1000)} " \
               f"-c default_transaction_isolation={_ISOLATION[isolation].replace(' ', chr(92) + ' ')}"
        given = conninfo_to_dict(conninfo)
        self.conninfo = make_conninfo(conninfo, **{k: v for k, v in _LIBPQ.items() if k not in given},
                                      options=f"{given.get('options', '')} {gucs}".strip())
        self._clock = clock
        self._limits = (self.options.settled_retention, self.options.settled_max)
        self._watchdog_seconds = check_seconds(deadline, "deadline")
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = -1
        self._ready = False
        self._fn: dict[tuple[str, str], sql.Composed] = {}
        self.conflicts = 0
        """Serialization failures and deadlocks PostgreSQL rolled back and this ledger retried."""

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "PostgresLedger":
        """``postgresql://user@host:port/db?schema=team_a&ttl=60&pool_max=8`` (also ``postgres://``).

        Ledger options ride in the query (the common ones, plus ``schema``,
        ``pool_min``, ``pool_max``, ``pool_timeout``, ``statement_timeout``,
        ``deadline``, ``isolation``, ``retries``); every other query parameter
        goes to libpq (``sslmode=require``, ``connect_timeout=2`` ...). Keyword
        ``options`` win.
        """
        parts = urlsplit(uri)
        ours, theirs = parse_query(uri, parts.query, _OWN, pass_through=True)
        base = uri.split("?", 1)[0]
        try:
            conninfo = make_conninfo(base, **dict(theirs))
        except psycopg.ProgrammingError as exc:
            raise LedgerError(f"postgres ledger: bad URI {uri!r}: {exc}") from None
        return cls(conninfo, **{**ours, **options})

    # -- plumbing ----------------------------------------------------------------

    def _pool_now(self) -> ConnectionPool:
        if self._pool is None or self._pid != os.getpid():  # first use, or forked: the parent's pool is not ours
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    lo, hi = self._pool_sizes
                    self._pool = ConnectionPool(self.conninfo, min_size=lo, max_size=hi, open=False,
                                                timeout=self._pool_timeout, kwargs={"autocommit": True},
                                                name=f"chio-budget-{self.schema}")
                    self._pool.open(wait=False)
                    self._watchdog = Watchdog(self._watchdog_seconds)
                    self._pid, self._ready = os.getpid(), False
        return self._pool

    def _run(self, fn: str, args: Sequence[Any], casts: str, columns: str = "*") -> list[tuple]:
        """``SELECT columns FROM schema.fn(args)``; retried only after a rollback PostgreSQL reports
        (serialization failure, deadlock). Every failure is a ``LedgerError``."""
        query = self._fn.get((fn, columns))
        if query is None:
            query = self._fn[(fn, columns)] = sql.SQL("SELECT " + columns + " FROM {}.{}(" + casts + ")").format(
                sql.Identifier(self.schema), sql.Identifier(fn))
        for attempt in range(self.retries + 1):
            try:
                with self._pool_now().connection() as conn:
                    if not self._ready:
                        ensure_schema(conn, self.schema)
                        self._ready = True
                    with self._watchdog.watch(conn):
                        return conn.execute(query, args).fetchall()
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
                if attempt == self.retries:
                    raise LedgerError(f"postgres ledger: gave up after {attempt + 1} tries: {exc}") from None
                with self._lock:
                    self.conflicts += 1
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))  # let the other one finish
            except psycopg.Error as exc:
                raise LedgerError(f"postgres ledger: {type(exc).__name__}: {str(exc).strip()}") from None
        raise AssertionError("unreachable")

    def _now(self) -> float | None:
        return None if self._clock is None else float(self._clock())

    # -- Ledger ------------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None, *,
                book: Mapping[str, Any] | None = None, attempt: str | None = None,
                reads: Reads | None = None) -> Reservation:
        """Atomically add ``cost`` to every key's held amount until commit, release or expiry."""
        cost, keys, reads, ttl, book_text = reserve_args(cost, keys, ttl, self.options.ttl, book, reads)
        read_of = [i for i, k in enumerate(keys, 1) for _ in reads.get(k, ())]
        read_keys = [r for k in keys for r in reads.get(k, ())]
        [row] = self._run("chio_reserve", [receipt_id, list(keys), str(cost), ttl, attempt, book_text,
                                           read_of, read_keys, self._now(), *self._limits],
                          "%s, %s::text[], %s::numeric, %s, %s, %s, %s::int[], %s::text[], %s, %s, %s",
                          "created, " + _RECORD)
        return _reservation(receipt_id, row[1:], bool(row[0]))

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Post a held reservation as spend; an expired one once, as ``committed_late``. Idempotent."""
        actual_arg = None if actual is None else str(check_units(actual, "actual"))
        return self._finish(receipt_id, True, actual_arg, None)

    def release(self, receipt_id: str, *, attempt: str | None = None) -> Settlement:
        """Give a held reservation back (only this ``attempt``'s, when given). Idempotent."""
        return self._finish(receipt_id, False, None, attempt)

    def _finish(self, receipt_id: str, commit: bool, actual: str | None, attempt: str | None) -> Settlement:
        [(outcome, amount)] = self._run("chio_finish", [receipt_id, commit, actual, attempt, self._now(),
                                                        *self._limits], "%s, %s, %s::numeric, %s, %s, %s, %s")
        return Settlement(receipt_id, outcome, int(amount))

    def get(self, receipt_id: str) -> Reservation | None:
        rows = self._run("chio_get", [receipt_id, self._now(), *self._limits], "%s, %s, %s, %s", _RECORD)
        return _reservation(receipt_id, rows[0], False) if rows else None

    def balances(self, keys: Sequence[str]) -> list[Balance]:
        rows = self._run("chio_balances", [list(keys), self._now(), *self._limits], "%s::text[], %s, %s, %s")
        return [Balance(int(s), int(h)) for s, h in rows]

    def totals(self, keys: Sequence[str], reads: Reads | None = None) -> list[int]:
        reads = check_reads(reads, keys)
        if not reads:
            return [b.total for b in self.balances(keys)]
        keys = list(keys)
        read_of = [i for i, k in enumerate(keys, 1) for _ in reads.get(k, ())]
        read_keys = [r for k in keys for r in reads.get(k, ())]
        [(totals,)] = self._run("chio_windowed_totals", [keys, read_of, read_keys, self._now(), *self._limits],
                                "%s::text[], %s::int[], %s::text[], %s, %s, %s")
        return [int(t) for t in totals]

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """The Rust ``record``: ``spent += cost``, saturating at 2^64-1; the new totals."""
        cost = check_units(cost, "cost")
        [(totals,)] = self._run("chio_add", [list(key_order(keys)), str(cost), self._now(), *self._limits],
                                "%s::text[], %s::numeric, %s, %s, %s")
        return [int(t) for t in totals]

    def expire(self) -> list[str]:
        """Give back every reservation past its TTL now (1,000 per transaction, looped)."""
        gone: list[str] = []
        while True:
            [(batch,)] = self._run("chio_expire", [self._now(), *self._limits], "%s, %s, %s")
            gone.extend(batch)
            if len(batch) < 1000:
                return gone

    def open_reservations(self) -> int:
        return int(self._run("chio_open", [], "")[0][0])

    # -- extensions -----------------------------------------------------------------

    def mark_once(self, mark: str, ttl: float | None = None) -> bool:
        mark, ttl = check_mark(mark, ttl)
        return bool(self._run("chio_mark", [mark, ttl, self._now(), *self._limits], "%s, %s, %s, %s, %s")[0][0])

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]:
        """In key order (byte order, ``COLLATE "C"``), ``_PAGE`` counters per transaction."""
        after, first = prefix, True
        while True:
            page = self._run("chio_counters", [after, first, _PAGE, self._now(), *self._limits],
                             "%s, %s, %s, %s, %s, %s")
            for key, spent, held in page:
                if not key.startswith(prefix):
                    return
                yield key, Balance(int(spent), int(held))
            if len(page) < _PAGE:
                return
            after, first = page[-1][0], False

    def adjust(self, key: str, delta: int) -> tuple[Balance, Balance]:
        delta = check_delta(delta)
        delta = max(min(delta, U64_MAX), -U64_MAX)  # the result is clamped anyway; keeps the numeric small
        [(spent, held, after)] = self._run("chio_adjust", [key, str(delta), self._now(), *self._limits],
                                           "%s, %s::numeric, %s, %s, %s")
        return Balance(int(spent), int(held)), Balance(int(after), int(held))

    def reset(self, keys: Sequence[str]) -> list[Balance]:
        rows = self._run("chio_reset", [list(keys), self._now(), *self._limits], "%s::text[], %s, %s, %s")
        return [Balance(int(s), int(h)) for s, h in rows]

    def import_(self, records: Iterable[Mapping[str, Any]], *, merge: bool = False) -> int:
        """One transaction for all records; without ``merge`` the counters table is locked against
        writers while it checks that the ledger is empty and writes."""
        amounts = spent_records(records)
        [(refused, written)] = self._run("chio_import", [list(amounts), [str(v) for v in amounts.values()], merge,
                                                         self._now(), *self._limits],
                                         "%s::text[], %s::numeric[], %s, %s, %s, %s")
        if refused is not None:
            raise import_refused(refused)
        return int(written)

    def drop(self) -> None:
        """Drop this ledger's schema and everything in it (tests). Not part of ``Ledger``."""
        try:
            with self._pool_now().connection() as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
        except psycopg.Error as exc:
            raise LedgerError(f"postgres ledger: {type(exc).__name__}: {exc}") from None
        self._ready = False

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
                self._watchdog.close()
            self._pool = None

    def __repr__(self) -> str:
        return f"PostgresLedger(schema={self.schema!r})"
