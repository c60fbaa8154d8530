"""Counters in this process's memory, behind one lock.

For a single kernel process: fastest, and lost with the process. Every
operation holds the lock for its whole read-modify-write, so it is atomic
for every thread of the process.

- Expiry costs O(log n) per operation: held reservations sit in a heap keyed
  by expiry, and each operation pops only what is due. Entries of settled
  reservations are skipped when they surface and the heap is rebuilt when
  they outnumber the live ones (amortised O(1)).
- Time is ``time.monotonic`` (a ``clock`` may be passed for tests), so a step
  of the wall clock neither expires nor extends a reservation.
- Settled receipts are kept in settle order, pruned from the oldest by age
  (``settled_retention``) and count (``settled_max``).
- Counters at zero are not kept (a released hold, a reset, an ``add`` of 0
  leave no entry), so memory grows only with counters that hold something.
- Marks with a TTL sit in a second heap and are dropped once due (on the
  next ``mark_once`` or ``expire``).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..money import U64_MAX, check_units
from .base import (ClosesOnExit, DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS, Balance,
                   ExportsSpent, Reads, Reservation, Settlement, check_delta, check_mark, check_reads, clamp_spent,
                   import_refused, key_order, load_book, read_keys, reserve_args, settled_outcome, spent_records,
                   windowed)
from .options import LedgerOptions, parse_query


class MemoryLedger(ExportsSpent, ClosesOnExit):
    """The ``Ledger`` contract in one process (see the module docstring)."""

    def __init__(self, *, ttl: float = DEFAULT_TTL_SECONDS, settled_retention: float = DEFAULT_SETTLED_RETENTION,
                 settled_max: int = DEFAULT_SETTLED_MAX, clock: Callable[[], float] = time.monotonic):
        self.options = LedgerOptions.make(ttl, settled_retention, settled_max)
        self._clock = clock
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        self._held_units: dict[str, int] = {}   # only non-zero entries
        self._held: dict[str, Reservation] = {}
        self._expiry: list[tuple[float, str]] = []  # heap; may hold entries of settled reservations
        self._settled: OrderedDict[str, tuple[Reservation, float]] = OrderedDict()  # settle order
        self._marks: dict[str, float | None] = {}  # mark -> forgotten at (None: never)
        self._mark_expiry: list[tuple[float, str]] = []  # heap

    @classmethod
    def from_uri(cls, uri: str = "memory", **options: Any) -> "MemoryLedger":
        """``memory``, ``memory://`` or ``memory://?ttl=60&settled_max=1000``; keywords win."""
        query = uri.split("?", 1)[1] if "?" in uri else ""
        parsed, _ = parse_query(uri, query)
        return cls(**{**parsed, **options})

    # -- helpers (lock held) ------------------------------------------------

    def _total(self, key: str) -> int:
        return min(self._spent.get(key, 0) + self._held_units.get(key, 0), U64_MAX)

    def _hold(self, keys: Sequence[str], amount: int) -> None:
        held = self._held_units
        for k in keys:
            v = held.get(k, 0) + amount
            if v > 0:
                held[k] = v
            else:
                held.pop(k, None)

    def _spend(self, keys: Sequence[str], amount: int) -> None:
        for k in keys:
            self._set_spent(k, min(self._spent.get(k, 0) + amount, U64_MAX))

    def _set_spent(self, key: str, value: int) -> None:
        if value:
            self._spent[key] = value
        else:
            self._spent.pop(key, None)

    def _windowed(self, keys: Sequence[str], reads: Mapping[str, Sequence[str]]) -> list[int]:
        if not reads:  # no rolling window: each key's own total
            return [self._total(k) for k in keys]
        totals = {k: self._total(k) for k in read_keys(keys, reads)}
        return [windowed(totals, k, reads) for k in keys]

    def _settle(self, r: Reservation, state: str, amount: int, now: float, late: bool = False) -> None:
        self._held.pop(r.receipt_id, None)
        self._settled.pop(r.receipt_id, None)
        self._settled[r.receipt_id] = (replace(r, created=False, state=state, settled_amount=amount, late=late), now)
        while len(self._settled) > self.options.settled_max:
            self._settled.popitem(last=False)

    def _sweep(self) -> tuple[float, list[str]]:
        """Expire what is due, forget what is past retention; ``(now, expired ids)``."""
        now = self._clock()
        gone = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires_at, rid = heapq.heappop(heap)
            r = self._held.get(rid)
            if r is not None and r.expires_at == expires_at:
                self._hold(r.keys, -r.amount)
                self._settle(r, "expired", r.amount, now)
                gone.append(rid)
        if len(heap) > 2 * len(self._held) + 1024:  # mostly settled entries: rebuild
            self._expiry = [(r.expires_at, rid) for rid, r in self._held.items()]
            heapq.heapify(self._expiry)
        settled, cutoff = self._settled, now - self.options.settled_retention
        while settled and next(iter(settled.values()))[1] < cutoff:
            settled.popitem(last=False)
        return now, gone

    def _find(self, receipt_id: str) -> Reservation | None:
        r = self._held.get(receipt_id)
        if r is None and receipt_id in self._settled:
            r = self._settled[receipt_id][0]
        return r

    # -- Ledger -------------------------------------------------------------

    def reserve(self, receipt_id: str, keys: Sequence[str], cost: int, ttl: float | None = None, *,
                book: Mapping[str, Any] | None = None, attempt: str | None = None,
                reads: Reads | None = None) -> Reservation:
        cost, keys, reads, ttl, book_text = reserve_args(cost, keys, ttl, self.options.ttl, book, reads)
        stored_book = load_book(book_text)  # a copy, exactly as the other backends give it back
        with self._lock:
            now, _ = self._sweep()
            found = self._find(receipt_id)
            if found is not None:
                return replace(found, created=False)
            before = tuple(self._windowed(keys, reads))
            self._hold(keys, cost)
            r = Reservation(receipt_id, keys, cost, before, now + ttl, True, "held", stored_book, attempt)
            self._held[receipt_id] = r
            heapq.heappush(self._expiry, (r.expires_at, receipt_id))
            return r

    def commit(self, receipt_id: str, actual: int | None = None) -> Settlement:
        if actual is not None:
            actual = check_units(actual, "actual")
        with self._lock:
            now, _ = self._sweep()
            r = self._find(receipt_id)
            if r is None:
                return Settlement(receipt_id, "unknown")
            amount = r.amount if actual is None else actual
            if r.state == "held":
                self._hold(r.keys, -r.amount)
                self._spend(r.keys, amount)
                self._settle(r, "committed", amount, now)
                return Settlement(receipt_id, "committed", amount)
            if r.state == "expired":  # the call ran past its TTL: post it now, exactly once
                self._spend(r.keys, amount)
                self._settle(r, "committed", amount, now, late=True)
                return Settlement(receipt_id, "committed_late", amount)
            return Settlement(receipt_id, settled_outcome(r.state))

    def release(self, receipt_id: str, *, attempt: str | None = None) -> Settlement:
        with self._lock:
            now, _ = self._sweep()
            r = self._find(receipt_id)
            if r is None or (r.state == "held" and attempt is not None and r.attempt != attempt):
                return Settlement(receipt_id, "unknown")
            if r.state != "held":
                return Settlement(receipt_id, settled_outcome(r.state), r.amount if r.state == "expired" else 0)
            self._hold(r.keys, -r.amount)
            self._settle(r, "released", r.amount, now)
            return Settlement(receipt_id, "released", r.amount)

    def get(self, receipt_id: str) -> Reservation | None:
        with self._lock:
            self._sweep()
            r = self._find(receipt_id)
            return None if r is None else replace(r, created=False)

    def balances(self, keys: Sequence[str]) -> list[Balance]:
        with self._lock:
            self._sweep()
            return [Balance(self._spent.get(k, 0), self._held_units.get(k, 0)) for k in keys]

    def totals(self, keys: Sequence[str], reads: Reads | None = None) -> list[int]:
        reads = check_reads(reads, keys)
        with self._lock:
            self._sweep()
            return self._windowed(keys, reads)

    def add(self, keys: Sequence[str], cost: int) -> list[int]:
        cost = check_units(cost, "cost")
        with self._lock:
            self._sweep()  # like every other operation: due reservations are given back first
            keys = key_order(keys)
            self._spend(keys, cost)
            return [self._total(k) for k in keys]

    def expire(self) -> list[str]:
        with self._lock:
            return self._sweep()[1]

    def open_reservations(self) -> int:
        with self._lock:
            return len(self._held)

    # -- extensions ---------------------------------------------------------

    def mark_once(self, mark: str, ttl: float | None = None) -> bool:
        mark, ttl = check_mark(mark, ttl)
        with self._lock:
            now, heap = self._clock(), self._mark_expiry
            while heap and heap[0][0] <= now:
                due, old = heapq.heappop(heap)
                if self._marks.get(old) == due:
                    del self._marks[old]
            if mark in self._marks:
                return False
            self._marks[mark] = None if ttl is None else now + ttl
            if ttl is not None:
                heapq.heappush(heap, (now + ttl, mark))
            return True

    def counters(self, prefix: str = "") -> Iterator[tuple[str, Balance]]:
        """A snapshot taken under the lock, in key order."""
        with self._lock:
            self._sweep()
            keys = sorted(k for k in self._spent.keys() | self._held_units.keys() if k.startswith(prefix))
            found = [(k, Balance(self._spent.get(k, 0), self._held_units.get(k, 0))) for k in keys]
        return iter(found)

    def adjust(self, key: str, delta: int) -> tuple[Balance, Balance]:
        delta = check_delta(delta)
        with self._lock:
            self._sweep()
            before = Balance(self._spent.get(key, 0), self._held_units.get(key, 0))
            self._set_spent(key, clamp_spent(before.spent + delta))
            return before, Balance(self._spent.get(key, 0), before.held)

    def reset(self, keys: Sequence[str]) -> list[Balance]:
        with self._lock:
            self._sweep()
            before = [Balance(self._spent.get(k, 0), self._held_units.get(k, 0)) for k in keys]
            for k in keys:
                self._spent.pop(k, None)
            return before

    def import_(self, records: Iterable[Mapping[str, Any]], *, merge: bool = False) -> int:
        amounts = spent_records(records)
        with self._lock:
            self._sweep()
            existing = next(iter(self._spent.keys() | self._held_units.keys()), None)
            if existing is not None and not merge:
                raise import_refused(existing)
            for key, spent in amounts.items():
                self._spend([key], spent)
            return len(amounts)

    def close(self) -> None:
        pass


    def __repr__(self) -> str:
        return f"MemoryLedger(counters={len(self._spent)}, open={len(self._held)})"
