"""Windowed decisions against a plain-Python model, over random timestamps spanning DST changes (issue 11).

The model knows nothing of ``chio_budget.windows``: a request's window is its
local date (daily), the Monday before it (weekly) or its year and month
(monthly), read with ``datetime.fromtimestamp(t, ZoneInfo(tz))``; a window
resets at the next such local midnight. A rolling window of W seconds keeps
every spend event and counts, at ``t``, those whose B-second block
``[s - s % B, s - s % B + B)`` reaches past ``t - W`` and starts by ``t``
(README, "Windows"); it resets when the last of them leaves, or, on a deny,
when enough of them has. It applies the rules of the README: per-call cap
first, then ``current + requested > limit`` per scope, warnings where
``(current + requested) * 10000 >= bps * limit``. Every decision the guard
makes (violations and warnings, byte for byte) must be the model's, on the
embedded and the server engine and on every ledger.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.compiler import compile_all
from chio_budget.engines import make_engine
from chio_budget.ledger import MemoryLedger, open_ledger
from chio_budget.policy import parse_policy
from support.backends import REDIS_URL, need_redis
from support.guards import REGO_DIR
from support.opa import start_opa

ZONES = {"ny": "America/New_York", "berlin": "Europe/Berlin", "rolling": "Europe/Berlin"}
CALENDAR = {"total": ("monthly", 6000), "agent": ("daily", 3000), "tool": ("weekly", 2000)}
ROLLING = {"total": ("monthly", 6000), "agent": (("rolling", 7200, 120), 3000), "tool": (("rolling", 90, 2), 2000)}
LIMITS = {"ny": CALENDAR, "berlin": CALENDAR, "rolling": ROLLING}
CAP, WARN = 1500, (5000, 9000)


def _yaml(window) -> str:
    return window if isinstance(window, str) else f"{{rolling: {window[1]}}}"


POLICIES = {
    pid: parse_policy(
        f"id: {pid}\ncurrency: USD\ntimezone: {ZONES[pid]}\nwarn_at: [0.5, 0.9]\nmax_per_invocation: {CAP}\n"
        f"max_total: {{units: 6000, window: {_yaml(lim['total'][0])}}}\n"
        f"max_per_agent: {{units: 3000, window: {_yaml(lim['agent'][0])}}}\n"
        f"max_per_tool:\n  \"s1:x\": {{units: 2000, window: {_yaml(lim['tool'][0])}}}\n", "model.yaml")
    for pid, lim in LIMITS.items()
}


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


# DST changes of 2026 in both zones, local midnights next to them (New York's 23- and 25-hour
# days, Berlin's, month ends); requests land within 3 s, 100 s (the rolling tool window is 90 s),
# two hours (the rolling agent window) or two days of one.
CHANGES = [utc(2026, 3, 8, 7), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 11, 1, 6),
           utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5),
           utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), utc(2026, 3, 31, 22), utc(2026, 4, 1, 4),
           utc(2026, 10, 31, 23), utc(2026, 11, 1, 4)]


class Model:
    def __init__(self, tz: str, limits: dict):
        self.zone = ZoneInfo(tz)
        self.limits = limits
        self.counters: dict[tuple[str, str, str], int] = {}
        self.events: dict[tuple[str, str], list[tuple[int, int]]] = {}  # rolling: (scope, id) -> (second, units)

    def _period(self, kind: str, t: int) -> tuple[str, date]:
        d = datetime.fromtimestamp(t, self.zone).date()
        if kind == "daily":
            return d.isoformat(), d + timedelta(days=1)
        if kind == "weekly":
            monday = d - timedelta(days=d.weekday())
            return monday.isoformat(), monday + timedelta(days=7)
        nxt = date(d.year + d.month // 12, d.month % 12 + 1, 1)
        return f"{d.year:04d}-{d.month:02d}", nxt

    def _resets_at(self, nxt: date) -> int:
        return int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.zone).timestamp())

    def _scopes(self, agent: str, tool: str):
        yield "total", {}, ""
        yield "agent", {"agent_id": agent}, agent
        if tool == "s1:x":
            yield "tool", {"tool_key": tool}, tool

    def _rolling(self, scope: str, ident: str, window: tuple, t: int, cost: int, limit: int) -> tuple[int, int]:
        """(current, resets_at) of a rolling window at ``t`` from the spend events themselves."""
        _, w, b = window
        counted = sorted((s - s % b, u) for s, u in self.events.get((scope, ident), [])
                         if s - s % b + b - 1 > t - w and s - s % b <= t)
        current = sum(u for _, u in counted)
        resets_at = t - t % b + b - 1 + w  # when all of it has left
        if current + cost > limit >= cost:  # denied: when enough has left
            gone = 0
            for block, u in counted:
                gone += u
                if gone >= current + cost - limit:
                    resets_at = block + b - 1 + w
                    break
        return current, resets_at

    def decide(self, t: int, agent: str, tool: str, cost: int) -> tuple[list[dict], list[dict], list]:
        violations = [{"scope": "invocation", "limit_units": CAP, "requested_units": cost, "currency": "USD"}] \
            if cost > CAP else []
        warnings, touched = [], []
        for scope, who, ident in self._scopes(agent, tool):
            window, limit = self.limits[scope]
            if isinstance(window, tuple):
                current, resets_at = self._rolling(scope, ident, window, t, cost, limit)
                kind, key = "rolling", (scope, ident, t)
            else:
                label, nxt = self._period(window, t)
                kind, key = window, (scope, ident, label)
                current, resets_at = self.counters.get(key, 0), self._resets_at(nxt)
            report = {"scope": scope, **who, "limit_units": limit, "current_units": current,
                      "requested_units": cost, "currency": "USD", "window": kind, "resets_at": resets_at}
            if current + cost > limit:
                violations.append(report)
            warnings += [{**report, "threshold": bps / 10000} for bps in WARN
                         if (current + cost) * 10000 >= bps * limit]
            touched.append(key)
        return violations, warnings, touched

    def commit(self, touched: list, cost: int) -> None:
        for key in touched:
            if isinstance(key[2], int):  # rolling: the event itself
                self.events.setdefault(key[:2], []).append((key[2], cost))
            else:
                self.counters[key] = self.counters.get(key, 0) + cost


# -- engines and ledgers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    compiled = compile_all(POLICIES)
    server = start_opa(None)
    out = {"embedded": make_engine("embedded", compiled, REGO_DIR),
           "server": make_engine("server", compiled, REGO_DIR, opa_url=server.url, push=True, ready_timeout=10)}
    yield out
    for e in out.values():
        e.close()
    server.close()


def open_fresh(kind: str, tmp_dir) -> tuple:
    if kind == "memory":
        return MemoryLedger(), None
    if kind == "sqlite":
        return open_ledger(f"sqlite:///{tmp_dir / (uuid.uuid4().hex + '.db')}"), None
    ledger = open_ledger(f"{REDIS_URL}?prefix=chio-test-{uuid.uuid4().hex[:12]}")
    return ledger, ledger.clear


EVENTS = st.lists(st.tuples(st.integers(0, len(CHANGES) - 1),
                            st.one_of(st.integers(-3, 3), st.integers(-100, 100), st.integers(-7300, 7300),
                                      st.integers(-2 * 86400, 2 * 86400)),
                            st.sampled_from(["a1", "a2"]), st.sampled_from(["x", "y"]),
                            st.integers(0, 1600)), min_size=1, max_size=16)


@pytest.mark.parametrize("engine_kind", ["embedded", "server"])
@pytest.mark.parametrize("ledger_kind", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_windowed_decisions_match_the_model(engines, engine_kind, ledger_kind, tmp_path_factory):
    if ledger_kind == "redis":
        need_redis()
    tmp_dir = tmp_path_factory.mktemp("model")

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(ZONES)), EVENTS)
    def run(pid, events):
        ledger, clear = open_fresh(ledger_kind, tmp_dir)
        guard = BudgetGuard(POLICIES[pid], engines[engine_kind], ledger)
        model = Model(ZONES[pid], LIMITS[pid])
        try:
            for i, (base, offset, agent, tool, cost) in enumerate(events):
                t = CHANGES[base] + offset
                meta = CostMetadata(receipt_id=f"r{i}", timestamp=t, agent_id=agent, tool_server="s1",
                                    tool_name=tool)
                violations, warnings, touched = model.decide(t, agent, f"s1:{tool}", cost)
                auth = guard.authorize(meta, cost)
                got = auth.decision.to_json_dict()
                assert (got["violations"], got["warnings"]) == (violations, warnings), (pid, t, agent, tool, cost)
                assert auth.allow == (not violations)
                if auth.allow:
                    auth.commit()
                    model.commit(touched, cost)
        finally:
            if clear is not None:
                clear()
            ledger.close()

    run()
