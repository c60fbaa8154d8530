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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable
from urllib.parse import quote

from ..errors import LedgerError
from ..money import U64_MAX

DEFAULT_TTL_SECONDS = 600.0
DEFAULT_SETTLED_RETENTION = 86_400.0
DEFAULT_SETTLED_MAX = 1_000_000
BOOK_MAX_BYTES = 65_536
"""A reservation's ``book`` (the caller's per-call record) is stored with it; this bounds its JSON size."""

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
                book: Mapping[str, Any] | None = None, attempt: str | None = None) -> Reservation:
        """Hold ``cost`` on every key until commit, release or expiry; idempotent by receipt."""
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

    def totals(self, keys: Sequence[str]) -> list[int]:
        """``min(spent + held, 2^64-1)`` per key, in ``keys`` order."""
        ...

    def balances(self, keys: Sequence[str]) -> list[Balance]: ...

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """The Rust ``record``: ``spent += cost`` (saturating), without deciding; the new totals."""
        ...

    def expire(self) -> list[str]:
        """Give back every reservation past its TTL now; their receipt ids."""
        ...

    def open_reservations(self) -> int: ...

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
        text = json.dumps(book, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"book is not JSON: {exc}") from None
    if len(text.encode()) > BOOK_MAX_BYTES:
        raise LedgerError(f"book is {len(text.encode())} bytes of JSON; the limit is {BOOK_MAX_BYTES}")
    return text


def load_book(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def settled_outcome(state: str) -> Outcome:
    """What a commit or release of an already settled receipt reports."""
    return {"committed": "already_committed", "released": "already_released"}.get(state, "expired")  # type: ignore[return-value]


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
