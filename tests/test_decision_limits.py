"""Windowed violations, warnings and the per-call cap through the real embedded OPA,
and their Python models (issue 11)."""

from __future__ import annotations

import json

import pytest

from chio_budget.compiler import data_document
from chio_budget.decision import (
    AgentViolation, BudgetViolation, CustomViolation, Decision, InvocationViolation, TotalViolation,
)
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.policy import parse_policy
from chio_budget.windows import Window, span
from support.guards import REGO_DIR

T = 1772964000  # 2026-03-08T10:00:00Z

TEAM = parse_policy(
    "id: team\ncurrency: EUR\ntimezone: Europe/Berlin\nwindow: monthly\nwarn_at: [0.8, 0.95]\n"
    "max_total: 500000\nmax_per_agent: {units: 3000, window: daily}\nmax_per_invocation: 500\n")


@pytest.fixture(scope="module")
def engine():
    e = EmbeddedEngine(data_document({"team": TEAM}), REGO_DIR)
    yield e
    e.close()


def team_input(cost: int, total: int, agent: int) -> dict:
    windows = {scope: span(Window(kind), T, "Europe/Berlin").input()
               for scope, kind in (("total", "monthly"), ("agent", "daily"))}
    return {"policy_id": "team",
            "request": {"receipt_id": "r1", "timestamp": T, "agent_id": "a1", "session_id": None,
                        "tool_server": "s1", "tool_name": "t1", "tool_key": "s1:t1"},
            "cost": {"units": cost, "currency": "EUR"},
            "totals": {"total": total, "session": None, "agent": agent, "tool": None},
            "windows": windows}


def test_windowed_violation_json_is_the_rust_fields_then_window_and_resets_at(engine):
    d = engine.decide(team_input(200, 0, 2900))
    assert d.allow is False and isinstance(d.violation, AgentViolation)
    assert d.violation.model_dump_json() == (
        '{"scope":"agent","agent_id":"a1","limit_units":3000,"current_units":2900,"requested_units":200,'
        '"currency":"EUR","window":"daily","resets_at":1773010800}')
    assert "daily budget exceeded" in d.reason() and "resets at 2026-03-08T23:00:00Z" in d.reason()


def test_all_time_violation_json_is_byte_for_byte_rust():
    v = BudgetViolation.parse({"scope": "total", "limit_units": 1000, "current_units": 900,
                               "requested_units": 200, "currency": "USD"})
    assert isinstance(v, TotalViolation)
    assert v.model_dump_json() == ('{"scope":"total","limit_units":1000,"current_units":900,'
                                   '"requested_units":200,"currency":"USD"}')
    assert "window" not in v.model_dump()


def test_per_call_cap_is_checked_first(engine):
    d = engine.decide(team_input(501, 499900, 0))
    assert [v.scope for v in d.violations] == ["invocation", "total"]
    assert isinstance(d.violation, InvocationViolation)
    assert d.violation.model_dump_json() == (
        '{"scope":"invocation","limit_units":500,"requested_units":501,"currency":"EUR"}')
    assert d.reason().startswith("denied: per-call cap exceeded: 501 requested > limit 500 EUR")


def test_warnings_carry_the_violation_fields_and_threshold(engine):
    d = engine.decide(team_input(100, 399900, 0))  # 400000 = 80% of 500000
    assert d.allow is True
    assert d.warnings == [{"scope": "total", "limit_units": 500000, "current_units": 399900,
                           "requested_units": 100, "currency": "EUR", "window": "monthly",
                           "resets_at": 1774994400, "threshold": 0.8}]
    assert json.loads(json.dumps(d.to_json_dict()))["warnings"] == d.warnings


def test_a_window_field_alone_is_not_a_builtin_violation():
    # An extension reusing the agent scope with other fields stays a custom violation.
    v = BudgetViolation.parse({"scope": "agent", "agent_id": "a1", "limit_units": 1, "current_units": 1,
                               "requested_units": 1, "currency": "EUR", "window": "daily"})
    assert isinstance(v, CustomViolation)


def test_invocation_violation_round_trips():
    d = Decision.from_opa({"allow": False, "violations": [
        {"scope": "invocation", "limit_units": 5, "requested_units": 6, "currency": "USD"}]}, "p")
    assert isinstance(d.violation, InvocationViolation) and d.error is None
