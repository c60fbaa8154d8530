"""Soft-limit warnings, emitted once: per threshold, per window, per counter, across processes.

The decision lists a warning on every call at or past a threshold (checks
and denies included); that is data. *Emitting* one (the ``on_warning``
callback, a decision-log event, a metric) happens when an allowed call's
reservation first takes a counter across a threshold: the counter was below
it before the reservation (``current * 10000 < bps * limit``) and reaches it
with it. The ledger's ``mark_once`` makes that exactly once among every
process sharing the ledger, even when a reservation that crossed is released
and another crosses again.

The mark is ``warn:<bps>:<counter key>``; the counter key names the window
(a calendar window's, a rolling window's current bucket), so each window
warns afresh. A mark is kept for the rest of its window plus a day of grace
for late requests (all-time: as long as the ledger keeps data), which bounds
how many the ledger holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .cost import CostMetadata
from .counters import RequestCounters
from .decision import Decision
from .errors import LedgerError
from .limits import BPS

MARK_GRACE_SECONDS = 86400.0
"""How long a window's marks outlive it, for requests that arrive late."""


@dataclass(frozen=True)
class WarningEvent:
    """One threshold crossed by one allowed reservation (what ``on_warning`` receives).

    ``warning`` is the decision's warning object (the limit's violation fields,
    ``window``/``resets_at`` for a windowed limit, and ``threshold``);
    ``counter`` the ledger key of the counter that crossed; ``decision`` the
    whole decision it came with.
    """

    policy_id: str
    receipt_id: str
    counter: str
    threshold_bps: int
    warning: Mapping[str, Any]
    decision: Decision

    @property
    def scope(self) -> str:
        return str(self.warning.get("scope"))

    @property
    def mark(self) -> str:
        return mark_of(self.counter, self.threshold_bps)

    def describe(self) -> str:
        w = self.warning
        window = f" {w['window']}" if w.get("window") else ""
        who = next((f" {w[k]!r}" for k in ("session_id", "agent_id", "tool_key") if k in w), "")
        return (f"{self.scope}{who}{window} budget at {self.threshold_bps / 100:g}%: {w['current_units']} spent + "
                f"{w['requested_units']} requested >= {self.threshold_bps / 100:g}% of {w['limit_units']} "
                f"{w['currency']}")


def mark_of(counter: str, bps: int) -> str:
    return f"warn:{bps}:{counter}"


def _units(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def crossings(decision: Decision, counters: RequestCounters, policy_id: str,
              receipt_id: str) -> list[WarningEvent]:
    """The decision's built-in warnings whose threshold this request's reservation crossed.

    A contributed warning (a scope without a counter, or other fields) is
    never emitted here: only the guard's own thresholds have a counter.
    """
    out = []
    for w in decision.warnings:
        key = counters.keys.get(w.get("scope"))  # type: ignore[arg-type]
        threshold = w.get("threshold")
        if key is None or not isinstance(threshold, (int, float)) or isinstance(threshold, bool) \
                or not all(_units(w.get(f)) for f in ("current_units", "limit_units")):
            continue
        bps = round(threshold * BPS)
        if w["current_units"] * BPS < bps * w["limit_units"]:
            out.append(WarningEvent(policy_id, receipt_id, key, bps, w, decision))
    return out


def mark_ttl(counters: RequestCounters, scope: str, timestamp: int) -> float | None:
    """How long a crossing's mark is kept: the rest of its window plus a grace day (None: all-time)."""
    span = counters.windows.get(scope)
    if span is None or span.resets_at is None:
        return None
    return max(span.resets_at - timestamp, 0) + MARK_GRACE_SECONDS


def emit_crossings(ledger: Any, policy_id: str, meta: CostMetadata, counters: RequestCounters,
                   decision: Decision) -> tuple[tuple[WarningEvent, ...], int]:
    """The crossings this process is the first to mark (``ledger.mark_once``), and how many
    marks failed (a ``LedgerError``: that warning is skipped, so it is emitted at most once)."""
    emitted, failures = [], 0
    for ev in crossings(decision, counters, policy_id, meta.receipt_id):
        try:
            if ledger.mark_once(ev.mark, mark_ttl(counters, ev.scope, meta.timestamp)):
                emitted.append(ev)
        except LedgerError:
            failures += 1
    return tuple(emitted), failures
