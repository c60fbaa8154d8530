"""What a budget would have done to a log: every call through the real guard, in order.

Each call is ``guard.authorize(meta, cost)`` and, when allowed,
``commit()`` - the production path, on the embedded OPA and a fresh ledger
(memory, or a new empty SQLite file). Decisions depend on every earlier
commit (each call reads the counters the calls before it filled), so the run
is sequential; see docs/toolkit.md for the batching that was measured and
why it is not used.

``Simulation`` accumulates, in memory bounded by the distinct keys: calls
allowed/denied/errored, denies by scope (a call denied by two scopes counts
in both), spend per agent/session/tool with its limit, the first denial per
scope, the warnings the Rego emitted, and the timeline the chart draws.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..decision import Decision
from ..errors import LedgerError
from ..money import U64_MAX
from ..policy import BudgetPolicy
from .calls import cost_of, meta_of
from .ordering import Call
from ..windows import ALL_TIME
from .costquery import NO_SESSION
from .timeline import Mark, Timeline

SCOPES = ("total", "session", "agent", "tool")
MAX_WARNING_KINDS = 100
DEFAULT_SETTLED_MAX = 100_000
"""Settled receipts a simulation's ledger remembers (duplicate receipt ids within this distance are caught)."""


@dataclass
class KeyStats:
    calls: int = 0
    allowed: int = 0
    denied: int = 0
    spent: int = 0


class Simulation:
    """The accumulated outcome of a run; ``observe`` each decided call, then ``result()``."""

    def __init__(self, policy: BudgetPolicy):
        self.policy = policy
        self.total = KeyStats()
        self.errors = 0
        self.keys: dict[str, dict[str, KeyStats]] = {"session": {}, "agent": {}, "tool": {}}
        self.denied_by_scope: dict[str, int] = {}
        self.first_denial: dict[str, dict[str, Any]] = {}
        self.warnings: dict[str, dict[str, Any]] = {}
        self.revision: str | None = None
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.timeline = Timeline()

    def _stats(self, call: Call) -> dict[str, KeyStats]:
        out = {"total": self.total}
        for scope, key in (("agent", call.agent_id), ("session", call.session_id), ("tool", call.tool_key)):
            if key is not None:
                table = self.keys[scope]
                out[scope] = table.get(key) or table.setdefault(key, KeyStats())
        return out

    def observe(self, call: Call, d: Decision, units: int) -> None:
        """One decided call; ``units`` is what it cost in the policy currency (converted by the guard)."""
        if self.first_ts is None:
            self.first_ts = call.timestamp
        self.last_ts = call.timestamp
        if self.revision is None and d.policy_revision:
            self.revision = d.policy_revision
        stats = self._stats(call)
        for s in stats.values():
            s.calls += 1
            if d.allow:
                s.allowed += 1
                s.spent = min(s.spent + units, U64_MAX)
            else:
                s.denied += 1
        for w in d.warnings:
            self._warning(call, w)
        if d.allow:
            keys = {"agent": call.agent_id, "session": call.session_id, "tool": call.tool_key}
            self.timeline.spend(call.timestamp, {scope: s.spent for scope, s in stats.items()}, keys, units)
            return
        if d.error is not None:
            self.errors += 1
        for scope in self._deny_scopes(d):
            self.denied_by_scope[scope] = self.denied_by_scope.get(scope, 0) + 1
            if scope not in self.first_denial:
                self.first_denial[scope] = _denial(call, d, units, self.policy.currency)
        for v in d.violations:
            key = {"total": "total", "agent": call.agent_id, "session": call.session_id,
                   "tool": call.tool_key}.get(v.scope)
            current = getattr(v, "current_units", None)
            self.timeline.deny(v.scope, Mark(call.timestamp, key or v.scope,
                                             current if current is not None else self.total.spent, units))

    @staticmethod
    def _deny_scopes(d: Decision) -> list[str]:
        if d.error is not None:
            return ["error"]
        return list(dict.fromkeys(v.scope for v in d.violations)) or ["unspecified"]

    def _warning(self, call: Call, w: dict[str, Any]) -> None:
        kind = json.dumps(w, sort_keys=True, separators=(",", ":"))
        entry = self.warnings.get(kind)
        if entry is None:
            if len(self.warnings) >= MAX_WARNING_KINDS:
                kind, w = "<other>", {"other": "more distinct warnings than the report keeps"}
                entry = self.warnings.get(kind)
            if entry is None:
                entry = self.warnings[kind] = {"warning": w, "count": 0,
                                               "first": {"receipt_id": call.receipt_id, "where": call.where}}
        entry["count"] += 1

    def limit(self, scope: str, key: str | None = None) -> int | None:
        return policy_limit(self.policy, scope, key)[0]

    def window(self, scope: str, key: str | None = None) -> str | None:
        return policy_limit(self.policy, scope, key)[1]

    def result(self) -> dict[str, Any]:
        """The JSON report (docs/toolkit.md, "simulate --json")."""
        t = self.total
        spend: dict[str, Any] = {"total": {"spent": t.spent, "limit": self.limit("total"),
                                           "window": self.window("total"), "calls": t.calls,
                                           "allowed": t.allowed, "denied": t.denied}}
        for scope in ("agent", "session", "tool"):
            rows = []
            for key in sorted(self.keys[scope]):
                s = self.keys[scope][key]
                limit, window = policy_limit(self.policy, scope, key)
                rows.append({"key": key, "spent": s.spent, "limit": limit, "window": window, "calls": s.calls,
                             "allowed": s.allowed, "denied": s.denied})
            spend[scope] = rows
        return {
            "policy_id": self.policy.id, "policy_revision": self.revision, "currency": self.policy.currency,
            "calls": {"total": t.calls, "allowed": t.allowed, "denied": t.denied, "errors": self.errors},
            "time": {"first": self.first_ts, "last": self.last_ts},
            "denied_by_scope": dict(sorted(self.denied_by_scope.items(), key=_scope_order)),
            "first_denial": dict(sorted(self.first_denial.items(), key=_scope_order)),
            "spend": spend,
            "warnings": sorted(self.warnings.values(), key=lambda w: -w["count"]),
        }


def policy_limit(policy: BudgetPolicy, scope: str, key: str | None = None) -> tuple[int | None, str | None]:
    """The limit that reads this scope's counter (units, or None) and its window (None: all time).

    A windowed limit caps the spend of each window, so it is not comparable with
    a whole run's spend; views show it with its window instead of a share used.
    """
    if scope == "total":
        limit = policy.max_total
    elif scope == "agent":
        limit = policy.max_per_agent
    elif scope == "session":
        limit = None if key == NO_SESSION else policy.max_per_session
    else:
        limit = policy.max_per_tool.get(key) if key is not None else None
    if limit is None:
        return None, None
    window = getattr(limit, "window", None) or policy.window
    return limit.units, None if window.kind == ALL_TIME else str(window)


def _scope_order(item: tuple[str, Any]) -> tuple[int, str]:
    scope = item[0]
    return (SCOPES.index(scope) if scope in SCOPES else len(SCOPES), scope)


def _denial(call: Call, d: Decision, units: int, currency: str) -> dict[str, Any]:
    out = {"receipt_id": call.receipt_id, "timestamp": call.timestamp, "where": call.where,
           "agent_id": call.agent_id, "session_id": call.session_id, "tool_key": call.tool_key,
           "cost_units": units, "decision": d.to_json_dict()}
    if call.currency != currency:  # converted by the guard: keep what the record said
        out["original_cost"] = {"units": call.cost, "currency": call.currency}
    return out


def run(guard: Any, calls: Iterable[Call], sim: Simulation,
        on_decision: Callable[[Call, Decision], None] | None = None) -> Simulation:
    """Authorize (and commit when allowed) every call, in the order given."""
    currency = sim.policy.currency
    for call in calls:
        auth = guard.authorize(meta_of(call), cost_of(call, currency))
        if auth.allow:
            auth.commit()
        sim.observe(call, auth.decision, auth.estimate_units)
        if on_decision is not None:
            on_decision(call, auth.decision)
    return sim


def simulation_ledger(uri: str | None) -> Any:
    """A fresh ledger for a simulation: ``memory`` or a new, empty SQLite file - never a live one.

    Refused (``LedgerError``): any other backend, and an SQLite file that
    exists and holds counters (or is not a ledger at all).
    """
    from ..ledger import open_ledger

    uri = uri or "memory"
    scheme = uri.split("://", 1)[0] if "://" in uri else uri.split("?", 1)[0]
    if scheme == "memory":
        return open_ledger(uri, settled_max=DEFAULT_SETTLED_MAX)
    if scheme != "sqlite":
        raise LedgerError(f"--ledger: a simulation writes only to memory or a new SQLite file "
                          f"(sqlite:///path), never to a live {scheme} ledger")
    path = Path(uri.split("://", 1)[1].split("?", 1)[0][1:])
    existed = path.exists() and path.stat().st_size > 0
    ledger = open_ledger(uri, settled_max=DEFAULT_SETTLED_MAX)
    if existed and _holds_counters(ledger):
        ledger.close()
        raise LedgerError(f"--ledger: {path} already holds counters; a simulation needs a new, empty file")
    return ledger


def _holds_counters(ledger: Any) -> bool:
    counters = getattr(ledger, "counters", None)
    if counters is None:  # a ledger without the counters() extension: refuse any existing file
        return True
    return next(iter(counters()), None) is not None
