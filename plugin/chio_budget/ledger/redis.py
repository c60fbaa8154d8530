"""Counters in Redis: shared by every kernel replica that can reach the server.

Promises (on top of the ``Ledger`` contract in ``base.py``):

- Each operation is exactly one Lua script (``lua/*.lua``, package data,
  behind the shared prelude ``lua/lib.lua``; EVALSHA, reloaded on NOSCRIPT),
  and Redis runs a script with nothing interleaved, so a reservation reads
  and bumps every counter it touches atomically however many replicas call,
  and a late commit is posted by exactly one of them.
- Exact amounts. Redis integers are signed 64-bit and Lua numbers are doubles
  (exact only to 2^53), so INCRBY never touches money: amounts are canonical
  decimal strings, added in the scripts as doubles only while both have at
  most 15 digits (every such sum is below 2^53, so exact), digit by digit
  otherwise (``spent`` saturating at 2^64-1, ``held`` uncapped).
- Expiry works across replicas: held reservations sit in a sorted set
  scored by expiry, and every script first gives back the ones that are due
  (up to 1,000 per call; ``expire()`` loops). Time is the Redis server's
  clock (``TIME``), one clock for every replica, unless a ``clock`` is passed
  (tests). A step of the server's clock moves every expiry with it: a
  backward step of S seconds keeps a reservation at most S seconds past its
  TTL, a forward step expires reservations early.
- Any Redis error (unreachable, timeout, script error, a corrupt value)
  raises ``LedgerError``; the guard turns that into a deny (fail closed).
  After a timeout the operation may or may not have run. Clients built by
  ``from_uri`` never resend a command by themselves (redis-py would, and a
  resent ``add`` would count twice); the guard's cleanup after a failed
  ``reserve`` releases only what its own attempt created.

Keys share the hash tag ``{<prefix>}`` so the scripts stay legal on Redis
Cluster: ``{p}:version`` ("2"), ``{p}:spent`` and ``{p}:held`` (hashes
key -> decimal; a counter at zero has no field), ``{p}:reservations`` (hash
receipt -> JSON record), ``{p}:expiry`` (zset receipt -> expires_at),
``{p}:settled`` (zset receipt -> settled_at), ``{p}:marks`` and
``{p}:mark_expiry`` (``mark_once``; added without a version bump, since
older scripts never read them), ``{p}:import:<token>`` (an import's staging
hash, gone when the import ends and expiring after an hour if it never
does). Schema-1 data (one combined ``{p}:counters`` hash) is migrated by the
first script that sees it, atomically.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlencode

import redis as redis_py
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..errors import LedgerError
from ..money import U64_MAX, check_units
from .base import (ClosesOnExit, DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS, Balance,
                   ExportsSpent, Reads, Reservation, Settlement, check_delta, check_mark, check_reads, import_refused,
                   key_order, read_keys, reserve_args, spent_records, windowed)
from .options import LedgerOptions, parse_query
from .redis_cluster import SCHEMES, cluster_client, describe

DEFAULT_PREFIX = "chio-budget"
SWEEP_LIMIT = 1000  # as in lua/lib.lua
_SCRIPTS = ("reserve", "commit", "release", "get", "balances", "add", "expire", "mark", "adjust", "reset", "import")
_BATCH = 1000  # keys per balances script in counters(), fields per HSET when staging an import
_STAGING_TTL_MS = 3_600_000
_ERRORS = (redis_py.RedisError, RedisClusterException)  # the latter is not a RedisError


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _reservation(receipt_id: str, raw: Any, created: bool) -> Reservation:
    r = json.loads(_s(raw))
    settled = r.get("c")
    return Reservation(receipt_id, tuple(r["k"] or ()), int(r["a"]), tuple(int(b) for b in r["b"] or ()),
                       float(r["e"]), created, r["s"], json.loads(r["m"]) if "m" in r else None, r.get("x"),
                       None if settled is None else int(settled), bool(r.get("l")))


class RedisLedger(ExportsSpent, ClosesOnExit):
    """The ``Ledger`` contract over one Redis server (see the module docstring).

    Thread-safe (redis-py's connection pool) and fork-safe (the pool reconnects
    in a child). Many ``RedisLedger`` objects with the same ``prefix`` on the
    same server share the counters: that is how kernel replicas share a budget.
    """

    def __init__(self, client: "redis_py.Redis", *, prefix: str = DEFAULT_PREFIX, ttl: float = DEFAULT_TTL_SECONDS,
                 settled_retention: float = DEFAULT_SETTLED_RETENTION, settled_max: int = DEFAULT_SETTLED_MAX,
                 clock: Callable[[], float] | None = None):
        if not prefix or "{" in prefix or "}" in prefix:
            raise LedgerError(f"redis ledger: prefix must be non-empty and free of braces, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.options = LedgerOptions.make(ttl, settled_retention, settled_max)
        tag = "{" + prefix + "}"
        self.keys = [f"{tag}:{name}" for name in
                     ("version", "spent", "held", "reservations", "expiry", "settled", "counters", "marks",
                      "mark_expiry")]
        self._tag = tag
        self._clock = clock
        self._limits = [repr(self.options.settled_retention), str(self.options.settled_max)]
        lib = _lua("lib")
        self._scripts = {name: client.register_script(lib + "\n" + _lua(name)) for name in _SCRIPTS}

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "RedisLedger":
        """``redis://host:port/db`` (also ``rediss://``, ``unix://``), as redis-py reads it;
        ``redis+cluster://host:port,host:port/0`` (also ``rediss+cluster://``) for Redis Cluster.

        Ledger options may ride in the query (``?prefix=team-a&ttl=60
        &settled_retention=3600&settled_max=100000``); every other query
        parameter goes to redis-py (``socket_timeout=2`` ...). Keyword
        ``options`` win. Socket timeouts default to 5 s so a hung server
        denies instead of hanging; redis-py's own retries are off.
        """
        query = uri.split("?", 1)[1] if "?" in uri else ""
        ours, theirs = parse_query(uri, query, {"prefix": lambda value, _: value}, pass_through=True)
        ours.update({k: options.pop(k) for k in ("prefix", "ttl", "settled_retention", "settled_max", "clock")
                     if k in options})
        if uri.split("://", 1)[0] in SCHEMES:
            return cls(cluster_client(uri, theirs, options), **ours)
        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("retry", Retry(NoBackoff(), 0))
        try:
            base = uri.split("?", 1)[0]  # not urlunsplit: it turns unix:///x into unix:/x
            client = redis_py.Redis.from_url(base + ("?" + urlencode(theirs) if theirs else ""), **options)
        except (ValueError, TypeError, redis_py.RedisError) as exc:
            raise LedgerError(f"redis ledger: bad URI {uri!r}: {exc}") from None
        return cls(client, **ours)

    # -- plumbing ----------------------------------------------------------------

    def _run(self, name: str, *args: Any, extra_keys: Sequence[str] = ()) -> Any:
        """One script; every failure (Redis, a reply we cannot read) is a ``LedgerError``."""
        now = "" if self._clock is None else repr(float(self._clock()))
        try:
            return self._scripts[name](keys=[*self.keys, *extra_keys], args=[now, *self._limits, *args])
        except _ERRORS as exc:
            raise LedgerError(f"redis ledger: {describe(exc)}") from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One plain command on the client, failures wrapped like ``_run``'s."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except _ERRORS as exc:
            raise LedgerError(f"redis ledger: {describe(exc)}") from None

    # -- Ledger ------------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None, *,
                book: Mapping[str, Any] | None = None, attempt: str | None = None,
                reads: Reads | None = None) -> Reservation:
        """Atomically add ``cost`` to every key's held amount until commit, release or expiry."""
        cost, keys, reads, ttl, book_text = reserve_args(cost, keys, ttl, self.options.ttl, book, reads)
        book_text = book_text or ""
        args = [receipt_id, str(cost), repr(ttl), attempt or "", book_text, str(len(keys)), *keys]
        for k in keys:
            args += [str(len(reads.get(k, ()))), *reads.get(k, ())]
        created, raw = self._run("reserve", *args)
        return _reservation(receipt_id, raw, bool(int(created)))

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Post a held reservation as spend; an expired one once, as ``committed_late``. Idempotent."""
        actual_arg = "" if actual is None else str(check_units(actual, "actual"))
        outcome, amount = self._run("commit", receipt_id, actual_arg)
        return Settlement(receipt_id, _s(outcome), int(_s(amount)))  # type: ignore[arg-type]

    def release(self, receipt_id: str, *, attempt: str | None = None) -> Settlement:
        """Give a held reservation back (only this ``attempt``'s, when given). Idempotent."""
        outcome, amount = self._run("release", receipt_id, attempt or "")
        return Settlement(receipt_id, _s(outcome), int(_s(amount)))  # type: ignore[arg-type]

    def get(self, receipt_id: str) -> Reservation | None:
        raw = self._run("get", receipt_id)
        return None if raw is None else _reservation(receipt_id, raw, False)

    def balances(self, keys: Sequence[str]) -> list[Balance]:
        keys = list(keys)
        if not keys:
            self._run("expire")
            return []
        flat = [int(_s(v)) for v in self._run("balances", *keys)]
        return [Balance(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def totals(self, keys: Sequence[str], reads: Reads | None = None) -> list[int]:
        reads = check_reads(reads, keys)
        if not reads:
            return [b.total for b in self.balances(keys)]
        every = read_keys(keys, reads)  # one script: every total read at the same instant
        totals = {k: b.total for k, b in zip(every, self.balances(every))}
        return [windowed(totals, k, reads) for k in keys]

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """The Rust ``record``: ``spent += cost``, saturating at 2^64-1; the new totals."""
        cost = check_units(cost, "cost")
        return [int(_s(v)) for v in self._run("add", str(cost), *key_order(keys))]

    def expire(self) -> list[str]:
        """Give back every reservation past its TTL now; loops past the per-script sweep limit."""
        gone: list[str] = []
        while True:
            batch = [_s(i) for i in self._run("expire")]
            gone.extend(batch)
            if len(batch) < SWEEP_LIMIT:
                return gone

    def open_reservations(self) -> int:
        return int(self._call("zcard", self.keys[4]))

    # -- extensions -----------------------------------------------------------------

    def mark_once(self, mark: str, ttl: float | None = None) -> bool:
        mark, ttl = check_mark(mark, ttl)
        return bool(int(self._run("mark", mark, "" if ttl is None else repr(ttl))))

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]:
        """HSCAN over the spent and held hashes, balances read ``_BATCH`` at a time by one
        script each; in no particular order."""
        seen: set[str] = set()
        match = _glob_escape(prefix) + "*"
        for field in (self.keys[1], self.keys[2]):
            cursor = 0
            while True:
                cursor, page = self._call("hscan", field, cursor, match, _BATCH)
                batch = [k for k in dict.fromkeys(_s(f) for f in page) if k not in seen]
                seen.update(batch)
                for key, balance in zip(batch, self.balances(batch) if batch else ()):
                    if balance.spent or balance.held:
                        yield key, balance
                if int(cursor) == 0:
                    break

    def adjust(self, key: str, delta: int) -> tuple[Balance, Balance]:
        delta = check_delta(delta)
        spent, held, after = (int(_s(v)) for v in
                              self._run("adjust", key, "+" if delta >= 0 else "-", str(min(abs(delta), U64_MAX))))
        return Balance(spent, held), Balance(after, held)

    def reset(self, keys: Sequence[str]) -> list[Balance]:
        keys = list(keys)
        uniq = list(key_order(keys))
        if not uniq:
            return []
        flat = [int(_s(v)) for v in self._run("reset", *uniq)]
        found = {k: Balance(flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(uniq)}
        return [found[k] for k in keys]

    def import_(self, records: Iterable[Mapping[str, Any]], *, merge: bool = False) -> int:
        """Staged in a hash of this prefix's slot, then added by one script: all or nothing.
        The script runs in O(records); an import of 100,000 counters blocks the server for
        about as long as 100,000 HSETs."""
        amounts = spent_records(records)
        staging = f"{self._tag}:import:{uuid.uuid4().hex}"
        items = [x for k, v in amounts.items() for x in (k, str(v))]
        for i in range(0, len(items), 2 * _BATCH):
            self._call("hset", staging, items=items[i:i + 2 * _BATCH])
            self._call("pexpire", staging, _STAGING_TTL_MS)  # a crashed import cleans up after itself
        status, detail = self._run("import", "1" if merge else "0", extra_keys=[staging])
        if _s(status) == "refused":
            raise import_refused(_s(detail))
        return int(detail)

    def clear(self) -> None:
        """Delete every key of this prefix (tests, resets). Not part of ``Ledger``."""
        self._call("delete", *self.keys)

    def close(self) -> None:
        try:
            self.client.close()
        except redis_py.RedisError:
            pass


    def __repr__(self) -> str:
        return f"RedisLedger(prefix={self.prefix!r})"
