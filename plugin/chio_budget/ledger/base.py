"""The counter store's contract: reserve, then decide, then commit or release.

Every backend promises the same things (one contract suite checks them all):

- ``reserve`` is atomic: it adds ``cost`` to every key and returns each key's
  value *before* the add, so two concurrent requests can never both see the
  last of a budget as free.
- Everything is idempotent by ``receipt_id``: a second ``reserve`` of a held
  receipt returns the first reservation unchanged (``created=False``); a
  second ``commit``/``release`` changes nothing and says so.
- A reservation not settled within its TTL is released by expiry.
- Counters are u64 and saturate at 2^64-1; releases floor at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol, Sequence, runtime_checkable
from urllib.parse import quote

from ..errors import LedgerError

DEFAULT_TTL_SECONDS = 600.0

ReservationState = Literal["held", "committed", "released", "expired"]
Outcome = Literal["committed", "committed_late", "released", "already_committed", "already_released", "expired", "unknown"]


@dataclass(frozen=True)
class Reservation:
    receipt_id: str
    keys: tuple[str, ...]
    amount: int
    before: tuple[int, ...]
    """Each key's counter before this reservation was added (other in-flight reservations included)."""
    expires_at: float
    created: bool = True
    """False when the receipt already had a reservation and nothing was added now."""
    state: ReservationState = "held"


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

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None) -> Reservation: ...

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        """Turn a held reservation into spend; ``actual`` replaces the estimate."""
        ...

    def release(self, receipt_id: str) -> Settlement: ...

    def totals(self, keys: Sequence[str]) -> list[int]:
        """Current counters (held reservations included), in ``keys`` order."""
        ...

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        """Seed-style ``record``: add without deciding; returns the new values."""
        ...

    def expire(self) -> list[str]:
        """Release every reservation past its TTL now; returns their receipt ids."""
        ...

    def open_reservations(self) -> int: ...

    def close(self) -> None: ...


def parse_seconds(value: str, name: str, uri: str) -> float:
    """A ``?ttl=30``-style URI option; ``LedgerError`` naming the URI otherwise."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise LedgerError(f"{uri}: {name}: expected seconds >= 0, got {value!r}")
    return seconds


@lru_cache(maxsize=65536)  # on every decision's path; quoting is slow and keys repeat
def counter_key(policy_id: str, scope: str, ident: str = "", window: str = "") -> str:
    """``policy/window/scope/ident``, each segment percent-quoted.

    ``window`` is empty for all-time counters; a windowed counter (``2026-11``,
    ``d:2026-11-28``) is another key, so windows need no schema change.
    """
    return "/".join(quote(s, safe=":@-_.") for s in (policy_id, window, scope, ident))
