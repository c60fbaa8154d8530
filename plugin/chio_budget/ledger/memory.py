"""Counters in this process's memory, behind one lock.

For a single kernel process: fastest, and lost with the process. Settled
receipt ids are remembered (up to ``remember_settled``) so a late second
commit or release is recognised as a no-op rather than applied twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

from ..money import U64_MAX, check_units
from .base import DEFAULT_TTL_SECONDS, Reservation, Settlement


class MemoryLedger:
    def __init__(self, *, default_ttl: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.time,
                 remember_settled: int = 100_000):
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._held: dict[str, Reservation] = {}
        self._settled: OrderedDict[str, Reservation] = OrderedDict()
        self._default_ttl = default_ttl
        self._clock = clock
        self._remember = remember_settled

    # -- helpers (lock held) ------------------------------------------------

    def _apply(self, keys: Sequence[str], delta: int) -> None:
        c = self._counters
        for k in keys:
            c[k] = min(max(c.get(k, 0) + delta, 0), U64_MAX)

    def _settle(self, r: Reservation, state: str) -> None:
        del self._held[r.receipt_id]
        self._settled[r.receipt_id] = Reservation(r.receipt_id, r.keys, r.amount, r.before, r.expires_at,
                                                  False, state)  # type: ignore[arg-type]
        while len(self._settled) > self._remember:
            self._settled.popitem(last=False)

    def _expire_locked(self) -> list[str]:
        now = self._clock()
        gone = [r for r in self._held.values() if r.expires_at <= now]
        for r in gone:
            self._apply(r.keys, -r.amount)
            self._settle(r, "expired")
        return [r.receipt_id for r in gone]

    # -- Ledger -------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None) -> Reservation:
        cost = check_units(cost, "cost")
        with self._lock:
            self._expire_locked()
            if receipt_id in self._held:
                r = self._held[receipt_id]
                return Reservation(r.receipt_id, r.keys, r.amount, r.before, r.expires_at, False, "held")
            if receipt_id in self._settled:
                return self._settled[receipt_id]
            keys = tuple(dict.fromkeys(keys))
            before = tuple(self._counters.get(k, 0) for k in keys)
            self._apply(keys, cost)
            r = Reservation(receipt_id, keys, cost, before,
                            self._clock() + (self._default_ttl if ttl is None else ttl))
            self._held[receipt_id] = r
            return r

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        if actual is not None:
            actual = check_units(actual, "actual")
        with self._lock:
            self._expire_locked()
            r = self._held.get(receipt_id)
            if r is None:
                return self._already(receipt_id)
            amount = r.amount if actual is None else actual
            self._apply(r.keys, amount - r.amount)
            self._settle(r, "committed")
            return Settlement(receipt_id, "committed", amount)

    def release(self, receipt_id: str) -> Settlement:
        with self._lock:
            self._expire_locked()
            r = self._held.get(receipt_id)
            if r is None:
                return self._already(receipt_id)
            self._apply(r.keys, -r.amount)
            self._settle(r, "released")
            return Settlement(receipt_id, "released", r.amount)

    def _already(self, receipt_id: str) -> Settlement:
        r = self._settled.get(receipt_id)
        if r is None:
            return Settlement(receipt_id, "unknown")
        if r.state == "expired":
            return Settlement(receipt_id, "expired", r.amount)
        return Settlement(receipt_id, "already_committed" if r.state == "committed" else "already_released")

    def totals(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            self._expire_locked()
            return [self._counters.get(k, 0) for k in keys]

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        cost = check_units(cost, "cost")
        with self._lock:
            self._expire_locked()  # like every other operation: due reservations are given back first
            keys = tuple(dict.fromkeys(keys))
            self._apply(keys, cost)
            return [self._counters[k] for k in keys]

    def expire(self) -> list[str]:
        with self._lock:
            return self._expire_locked()

    def open_reservations(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"MemoryLedger(counters={len(self._counters)}, open={len(self._held)})"

