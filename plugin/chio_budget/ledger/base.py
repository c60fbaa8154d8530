"""The counter store's contract: reserve, then decide, then commit or release.

Every backend promises the same things (one contract suite checks them all):

- Each counter keeps **held** and **spent** apart (TigerBeetle's pending and
  posted balances). ``spent`` is a u64 that saturates at 2^64-1 (the Rust
  ``record``); ``held`` is the exact, uncapped sum of the live reservations on
  that counter. What OPA sees is their sum, capped: ``min(spent + held,
  2^64-1)``. Every undo of a reservation (release, expiry, commit) subtracts
  exactly what the reservation added, so no sequence of reservations can
  take spend away.
- ``reserve`` is atomic: it adds ``cost`` to every key's ``held`` and returns
  each key's total *before* the add, so two concurrent requests can never
  both see the last of a budget as free.
- Everything is idempotent by ``receipt_id``: a second ``reserve`` of a
  known receipt returns its record unchanged (``created=False``); a second
  ``commit``/``release`` changes nothing and says so.
- A reservation not settled within its TTL is given back by expiry; a
  ``commit`` that arrives after that posts the spend exactly once
  (``committed_late``), atomically in the store, whichever process sends it.
- Settled receipts are remembered ``settled_retention`` seconds and at most
  ``settled_max`` of them, oldest forgotten first.

The extensions for rolling windows and for counters by hand (same promises
on every backend):

- **Windowed reads.** ``reserve(..., reads={k: [r1, r2]})`` and
  ``totals(keys, reads=...)`` report for ``k`` the sum of its total and the
  totals of ``r1, r2`` (capped at 2^64-1), read in the same atomic step as
  the reservation; the cost is held on ``k`` only and reading never creates
  a counter. A rolling window reads its older buckets this way.
- **Once-only marks.** ``mark_once(mark, ttl)`` is True for exactly one
  caller among every process sharing the ledger, until ``ttl`` passes (a
  soft-limit warning is emitted once).
- **Counters by hand.** ``counters(prefix)`` lists every counter that is not
  zero; ``adjust`` moves spent by a signed delta, clamped to [0, 2^64-1];
  ``reset`` zeroes spent and leaves holds held; ``export`` and ``import_``
  move spent between ledgers (holds stay where they are: they settle or
  expire there). Each write is atomic.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable
from urllib.parse import quote

from ..errors import AmountError, LedgerError
from ..money import U64_MAX, check_units

DEFAULT_TTL_SECONDS = 600.0
DEFAULT_SETTLED_RETENTION = 86_400.0
DEFAULT_SETTLED_MAX = 1_000_000
BOOK_MAX_BYTES = 65_536
"""A reservation's ``book`` (the caller's per-call record) is stored with it; this bounds its JSON size."""

Reads = Mapping[str, Sequence[str]]
"""Windowed reads: a key of the request -> other counter keys whose totals are summed into it."""

ReservationState = Literal["held", "committed", "released", "expired"]
Outcome = Literal["committed", "committed_late", "released", "already_committed", "already_released", "expired",
                  "unknown"]


@dataclass(frozen=True)
class Balance:
    """One counter: ``spent`` (posted, u64, saturating) and ``held`` (pending, exact, uncapped)."""

    spent: int
    held: int

    @property
    def total(self) -> int:
        """What limits are checked against: ``min(spent + held, 2^64-1)``."""
        return min(self.spent + self.held, U64_MAX)


@dataclass(frozen=True)
class Reservation:
    receipt_id: str
    keys: tuple[str, ...]
    amount: int
    before: tuple[int, ...]
    """Each key's total (spent + held, capped) before this reservation; other in-flight reservations included."""
    expires_at: float
    """On the ledger's clock: memory ``time.monotonic``, SQLite ``time.time``, Redis the server's ``TIME``."""
    created: bool = True
    """False when the receipt already existed and nothing was added now."""
    state: ReservationState = "held"
    book: Mapping[str, Any] | None = None
    """The caller's per-call record (a JSON object), stored with the reservation."""
    attempt: str | None = None
    """Token of the authorize attempt that created the reservation (see ``Ledger.release``)."""
    settled_amount: int | None = None
    """Committed: the spend counted. Released/expired: the amount given back."""
    late: bool = False
    """Committed after its expiry (the commit's outcome was ``committed_late``)."""


@dataclass(frozen=True)
class Settlement:
    receipt_id: str
    outcome: Outcome
    amount: int = 0
    """Committed: the amount now counted as spend. Released/expired: the amount given back."""

    @property
    def changed(self) -> bool:
        return self.outcome in ("committed", "committed_late", "released")


@runtime_checkable
class Ledger(Protocol):
    """Spend counters keyed by strings (see ``counter_key``)."""

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None, *,
                book: Mapping[str, Any] | None = None, attempt: str | None = None,
                reads: Reads | None = None) -> Reservation:
        """Hold ``cost`` on every key until commit, release or expiry; idempotent by receipt.

        ``reads`` maps a key of ``keys`` to other counters whose totals are added
        to that key's ``before`` (read atomically with the reservation; see ``Reads``).
        """
        ...

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Post a reservation as spend (``actual`` replaces the estimate); after expiry: once, ``committed_late``."""
        ...

    def release(self, receipt_id: str, *, attempt: str | None = None) -> Settlement:
        """Give a held reservation back; with ``attempt``, only if that attempt created it."""
        ...

    def get(self, receipt_id: str) -> Reservation | None:
        """The receipt's record in any state; None when unknown or forgotten."""
        ...

    def totals(self, keys: Sequence[str], reads: Reads | None = None) -> list[int]:
        """``min(spent + held, 2^64-1)`` per key, in ``keys`` order (plus ``reads``, as in ``reserve``)."""
        ...

    def balances(self, keys: Sequence[str]) -> list[Balance]: ...

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """The Rust ``record``: ``spent += cost`` (saturating), without deciding; the new totals."""
        ...

    def expire(self) -> list[str]:
        """Give back every reservation past its TTL now; their receipt ids."""
        ...

    def open_reservations(self) -> int: ...

    def mark_once(self, mark: str, ttl: float | None = None) -> bool:
        """True for the first caller of ``mark`` only (any process sharing the ledger), until
        ``ttl`` seconds have passed (None: for as long as the ledger keeps its data)."""
        ...

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]:
        """Every counter whose key starts with ``prefix`` and whose spent or held is not 0.

        A listing, not a snapshot: each balance is read atomically, but a counter
        written while the listing runs may or may not be in it. Order: by key on
        memory, SQLite and PostgreSQL; none on Redis.
        """
        ...

    def adjust(self, key: str, delta: int) -> tuple[Balance, Balance]:
        """Atomically ``spent += delta`` (a signed int), clamped to [0, 2^64-1]; ``(before, after)``."""
        ...

    def reset(self, keys: Sequence[str]) -> list[Balance]:
        """Atomically set ``spent`` of every key to 0 (held stays held); the balances before."""
        ...

    def export(self) -> Iterator[dict[str, Any]]:
        """``{"key": ..., "spent": int}`` per counter with spent > 0 (holds are not exported)."""
        ...

    def import_(self, records: Iterable[Mapping[str, Any]], *, merge: bool = False) -> int:
        """Add each record's ``spent`` (saturating), all or nothing; refused (``LedgerError``)
        when the ledger holds any counter, unless ``merge``. The number of counters written."""
        ...

    def close(self) -> None: ...


# -- shared pieces of every backend ----------------------------------------------------------


class ClosesOnExit:
    """``with ledger:`` closes it on the way out (every backend mixes this in)."""

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_ttl(value: Any, what: str = "ttl") -> float:
    """A TTL in seconds: finite and > 0. Zero, negative, NaN or infinite is a ``LedgerError``
    (a zero TTL releases a reservation before its decision is even made)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise LedgerError(f"{what}: expected seconds > 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise LedgerError(f"{what}: expected finite seconds > 0, got {value!r}")
    return seconds


def dump_book(book: Mapping[str, Any] | None) -> str | None:
    """A book as stored: canonical JSON text of an object, at most ``BOOK_MAX_BYTES``."""
    if book is None:
        return None
    if not isinstance(book, Mapping):
        raise LedgerError(f"book must be a JSON object (a mapping), got {type(book).__name__}")
    try:
        text = _BOOK_JSON.encode(book)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"book is not JSON: {exc}") from None
    if len(text) > BOOK_MAX_BYTES:  # ASCII (ensure_ascii): one byte a character
        raise LedgerError(f"book is {len(text)} bytes of JSON; the limit is {BOOK_MAX_BYTES}")
    return text


# One encoder for every book: ``json.dumps`` with options builds a new one on each call
# (on every reservation's path).
_BOOK_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def load_book(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def settled_outcome(state: str) -> Outcome:
    """What a commit or release of an already settled receipt reports."""
    return {"committed": "already_committed", "released": "already_released"}.get(state, "expired")  # type: ignore[return-value]


_ATTEMPTS = itertools.count()
_ATTEMPT_PREFIX = [os.urandom(8).hex()]
os.register_at_fork(after_in_child=lambda: _ATTEMPT_PREFIX.__setitem__(0, os.urandom(8).hex()))


def attempt_token() -> str:
    """A token for one authorize call (``Reservation.attempt``): 32 hex characters, 64 random
    bits drawn once per process (again in a forked child) and a counter. Unique like a
    uuid4, without its system call on every decision (which also lets another thread take
    the interpreter lock mid-decision)."""
    return f"{_ATTEMPT_PREFIX[0]}{next(_ATTEMPTS):016x}"


def key_order(keys: Sequence[str]) -> tuple[str, ...]:
    """Distinct keys, first occurrence first: a key named twice is one counter, counted once."""
    return tuple(dict.fromkeys(keys))


@lru_cache(maxsize=65536)  # on every decision's path; quoting is slow and keys repeat
def counter_key(policy_id: str, scope: str, ident: str = "", window: str = "") -> str:
    """``policy/window/scope/ident``, each segment percent-quoted.

    ``window`` is empty for all-time counters; a windowed counter (``2026-11``,
    ``d:2026-11-28``) is another key, so windows need no schema change.
    """
    return "/".join(quote(s, safe=":@-_.") for s in (policy_id, window, scope, ident))


def reserve_args(cost: Any, keys: Sequence[str], ttl: Any, default_ttl: float, book: Mapping[str, Any] | None,
                 reads: Reads | None) -> tuple[int, tuple[str, ...], dict[str, tuple[str, ...]], float, str | None]:
    """``reserve``'s arguments checked alike on every backend, before anything runs:
    ``(cost, distinct keys, reads, ttl, book as stored JSON text)``; ``AmountError``/``LedgerError``."""
    cost = check_units(cost, "cost")
    keys = key_order(keys)
    return cost, keys, check_reads(reads, keys), default_ttl if ttl is None else check_ttl(ttl), dump_book(book)


# -- the extensions' shared checks --------------------------------------------------------------


def check_reads(reads: Reads | None, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``reads`` as ``{key: distinct read keys}`` (only non-empty entries), or a ``LedgerError``.

    Every key of ``reads`` must be one of ``keys``; a read key named twice, or
    the key itself, counts once (it is one counter, as in ``key_order``).
    """
    if reads is None:
        return {}
    if not isinstance(reads, Mapping):
        raise LedgerError(f"reads must map a key to the keys it reads, got {type(reads).__name__}")
    known = set(keys)
    out: dict[str, tuple[str, ...]] = {}
    for key, extra in reads.items():
        if key not in known:
            raise LedgerError(f"reads names {key!r}, which is not one of the request's keys")
        if isinstance(extra, (str, bytes)) or not isinstance(extra, Sequence) \
                or not all(isinstance(r, str) for r in extra):
            raise LedgerError(f"reads[{key!r}] must be a sequence of counter keys, got {extra!r}")
        distinct = tuple(r for r in dict.fromkeys(extra) if r != key)
        if distinct:
            out[key] = distinct
    return out


def read_keys(keys: Sequence[str], reads: Mapping[str, Sequence[str]]) -> list[str]:
    """``keys`` then every read key not among them, each once: what one atomic read must fetch."""
    return list(dict.fromkeys([*keys, *(r for extra in reads.values() for r in extra)]))


def windowed(totals: Mapping[str, int], key: str, reads: Mapping[str, Sequence[str]]) -> int:
    """``min(total(key) + sum(total(r) for r in reads[key]), 2^64-1)``."""
    return min(totals[key] + sum(totals[r] for r in reads.get(key, ())), U64_MAX)


def check_mark(mark: Any, ttl: Any) -> tuple[str, float | None]:
    if not isinstance(mark, str) or not mark:
        raise LedgerError(f"mark must be a non-empty string, got {mark!r}")
    return mark, None if ttl is None else check_ttl(ttl, "mark ttl")


def check_delta(delta: Any) -> int:
    """A signed whole number of minor units (``adjust``); bools and floats are refused."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise AmountError(f"delta: must be a signed integer number of minor units, got {delta!r}")
    return delta


def clamp_spent(value: int) -> int:
    """Spent after ``adjust``: never below 0 (a refund stops at nothing spent), never above 2^64-1."""
    return min(max(value, 0), U64_MAX)


def spent_records(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Validate a whole import before anything is written: ``{key: spent}``, duplicates added
    (saturating), zero amounts dropped. A bad record is a ``LedgerError`` naming its index."""
    out: dict[str, int] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping) or set(record) != {"key", "spent"}:
            got = sorted(record) if isinstance(record, Mapping) else type(record).__name__
            raise LedgerError(f"import record {i}: expected {{'key': str, 'spent': int}}, got {got}")
        key = record["key"]
        if not isinstance(key, str):
            raise LedgerError(f"import record {i}: key must be a string, got {key!r}")
        try:
            spent = check_units(record["spent"], "spent")
        except AmountError as exc:
            raise LedgerError(f"import record {i} ({key!r}): {exc}") from None
        if spent:
            out[key] = min(out.get(key, 0) + spent, U64_MAX)
    return out


def import_refused(first_key: str) -> LedgerError:
    return LedgerError(f"import refused: the ledger already holds counters (e.g. {first_key!r}); "
                       "import into an empty ledger, or merge (add to what is there)")


class ExportsSpent:
    """``export()`` on top of ``counters()`` (every backend mixes this in)."""

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]: ...

    def export(self) -> Iterator[dict[str, Any]]:
        for key, balance in self.counters():
            if balance.spent:
                yield {"key": key, "spent": balance.spent}
