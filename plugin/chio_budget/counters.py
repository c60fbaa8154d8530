"""Which counters a request touches, in the window of its timestamp.

One counter per limit that applies to the request (``total`` always;
``session`` with a session limit and a session; ``agent`` with an agent
limit; ``tool`` for a listed tool), keyed
``counter_key(policy, scope, ident, window=<segment>)``: an all-time limit
keeps the empty window segment, so its key is the one it always had. A
rolling limit's cost lands on the bucket of the request's timestamp, and
the older buckets of its window are ``reads`` summed into that counter by
the ledger, atomically with the reservation.

The same computation answers the reports (``window_totals``): the total
limit's window containing a given time, and the keys whose balances make
it up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .cost import CostMetadata
from .errors import LedgerError
from .ledger.base import Balance, counter_key
from .money import U64_MAX
from .limits import Plan, plan
from .policy import BudgetPolicy
from .windows import ALL_TIME, Span, span

SCOPES = ("total", "session", "agent", "tool")

_PLANS: dict[int, Plan] = {}


def plan_of(policy: BudgetPolicy) -> Plan:
    """The policy's resolved plan, computed once per policy object (policies are frozen)."""
    key = id(policy)
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = plan(policy)
        weakref.finalize(policy, _PLANS.pop, key, None)
    return p


@dataclass(frozen=True)
class RequestCounters:
    """The counters of one request.

    ``keys``: scope -> the ledger key its cost is held on. ``windows``: scope
    -> its window, for windowed limits only. ``reads``: ledger key -> the
    older rolling buckets summed into it (what ``Ledger.reserve``/``totals``
    take as ``reads``).
    """

    keys: dict[str, str]
    windows: dict[str, Span] = field(default_factory=dict)
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def reads_option(self) -> dict[str, Any]:
        """``reads=`` for ``Ledger.reserve``/``totals``, only when a rolling window needs it
        (a ledger without windowed reads still serves every other policy)."""
        return {"reads": self.reads} if self.reads else {}

    def input_windows(self) -> dict[str, Any] | None:
        """``input.windows`` (None when no limit of the request is windowed: the input is unchanged)."""
        return {scope: s.input() for scope, s in self.windows.items()} or None


def _idents(policies: tuple[BudgetPolicy, ...], meta: CostMetadata) -> dict[str, str]:
    """Scope -> the id its counter is kept under, for every limit of ``policies`` that applies."""
    out = {"total": ""}
    if meta.session_id is not None and any(p.max_per_session is not None for p in policies):
        out["session"] = meta.session_id
    if any(p.max_per_agent is not None for p in policies):
        out["agent"] = meta.agent_id
    if any(meta.tool_key in p.max_per_tool for p in policies):
        out["tool"] = meta.tool_key
    return out


def request_counters(policy: BudgetPolicy, meta: CostMetadata,
                     tracked: tuple[BudgetPolicy, ...] = ()) -> RequestCounters:
    """The counters ``meta`` touches under ``policy``; ``WindowError`` when its timestamp
    cannot be placed in a calendar window (past the year 9999).

    ``tracked`` policies (shadows judged on the same totals) add the counters
    their limits read; a scope only they limit is kept all-time under
    ``policy``'s id, since ``policy`` gives it no window.
    """
    p = plan_of(policy)
    keys: dict[str, str] = {}
    windows: dict[str, Span] = {}
    reads: dict[str, tuple[str, ...]] = {}
    for scope, ident in _idents((policy, *tracked), meta).items():
        rule = p.rule(scope, meta.tool_key)
        if rule is None or rule.window.kind == ALL_TIME:
            keys[scope] = counter_key(policy.id, scope, ident)
            continue
        s = span(rule.window, meta.timestamp, p.timezone)
        keys[scope] = key = counter_key(policy.id, scope, ident, window=s.key)
        windows[scope] = s
        if s.reads:
            reads[key] = _read_keys(policy.id, scope, ident, s.reads)
    return RequestCounters(keys, windows, reads)


@lru_cache(maxsize=4096)
def _read_keys(policy_id: str, scope: str, ident: str, segments: tuple[str, ...]) -> tuple[str, ...]:
    """The ledger keys of a rolling window's older buckets (the same for every request in a bucket)."""
    return tuple(counter_key(policy_id, scope, ident, window=r) for r in segments)


def total_window(policy: BudgetPolicy, at: int) -> tuple[Span, list[str]]:
    """The total limit's window containing ``at`` and the ledger keys that make up its
    balance (one for all-time and calendar windows, every bucket of a rolling one)."""
    p = plan_of(policy)
    s = span(p.rules["total"].window, at, p.timezone)
    return s, [counter_key(policy.id, "total", window=k) for k in (*s.reads, s.key)]


def total_balance(ledger: Any, policy: BudgetPolicy, at: int) -> Balance:
    """The total limit's balance in its window containing ``at`` (a rolling one: all its buckets)."""
    balances = ledger.balances(total_window(policy, at)[1])
    return Balance(min(sum(b.spent for b in balances), U64_MAX), sum(b.held for b in balances))


def narrowed_windows(ledger: Any, c: RequestCounters, e: Any, cost: int, timestamp: int) -> dict[str, Any] | None:
    """``input.windows`` with a rolling violation's ``resets_at`` narrowed to when enough of its
    window's spend leaves for ``cost`` to fit (``Span.leaves_enough_at``), or None to keep them.

    ``e`` is the denying ``Evaluation``. The buckets are read again, one
    violated window at a time, after the request's own hold was given back;
    the first ``resets_at`` (everything gone) stays when they cannot be read
    or never free enough (the cost alone is above the limit).
    """
    rolling = [v for v in e.decision.violations
               if getattr(v, "window", None) == "rolling" and v.scope in c.windows]
    if not rolling or e.input is None:
        return None
    windows = dict(e.input["windows"])
    for v in rolling:
        span, key = c.windows[v.scope], c.keys[v.scope]
        try:
            units = ledger.totals([*c.reads.get(key, ()), key])
        except LedgerError:
            return None
        at = span.leaves_enough_at(units, sum(units) + cost - v.limit_units)
        if at is not None and cost <= v.limit_units:
            windows[v.scope] = {**windows[v.scope], "resets_at": max(at, timestamp + 1)}
    return windows
