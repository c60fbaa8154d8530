"""Every test of the Rust ``budget.rs``, ported one to one, through OPA.

Each test drives the real guard (embedded OPA, memory ledger) exactly as the
Rust test drives ``BudgetEnforcer``; names match the Rust tests.
"""

from __future__ import annotations

import json

import pytest

from chio_budget import (AgentViolation, BudgetViolation, SessionViolation, ToolViolation, TotalViolation)
from support.guards import U64_MAX, guard_for, make_meta, rust_policy


@pytest.fixture
def guard():
    return guard_for(rust_policy())


def test_within_budget(guard):
    meta = make_meta("a1", "s1", "t1")
    assert guard.check(meta, 100).allow


def test_total_budget_exceeded(guard):
    meta = make_meta("a1", "s1", "t1")
    guard.record(meta, 9900)
    d = guard.check(meta, 200)
    assert not d.allow
    assert isinstance(d.violation, TotalViolation)


def test_per_agent_budget_exceeded(guard):
    meta = make_meta("a1", "s1", "t1")
    guard.record(meta, 2900)
    d = guard.check(meta, 200)
    assert isinstance(d.violation, AgentViolation)


def test_per_session_budget_exceeded():
    g = guard_for(rust_policy(max_total=100000, max_per_session=1000, max_per_agent=None, max_per_tool=None))
    meta = make_meta("a1", "s1", "t1")
    g.record(meta, 900)
    d = g.check(meta, 200)
    assert isinstance(d.violation, SessionViolation)


def test_per_tool_budget_exceeded(guard):
    meta = make_meta("a1", "s1", "expensive")
    guard.record(meta, 400)
    d = guard.check(meta, 200)
    assert isinstance(d.violation, ToolViolation)


def test_zero_cost_always_passes(guard):
    assert guard.check(make_meta("a1", "s1", "t1"), 0).allow


def test_record_with_very_large_numbers_saturates():
    g = guard_for(rust_policy(max_total=U64_MAX, max_per_session=None, max_per_agent=None, max_per_tool=None))
    meta = make_meta("a1", "s1", "t1")
    g.record(meta, U64_MAX - 10)
    g.record(meta, 20)
    assert g.total_spent() == U64_MAX


def test_remaining_when_overspent_returns_zero():
    g = guard_for(rust_policy(max_total=100, max_per_session=None, max_per_agent=None, max_per_tool=None))
    meta = make_meta("a1", "s1", "t1")
    g.record(meta, 150)  # record() does not enforce
    assert g.remaining() == 0


def test_budget_violation_serde_roundtrip():
    violation = TotalViolation(limit_units=1000, current_units=900, requested_units=200, currency="USD")
    text = violation.model_dump_json()
    assert BudgetViolation.parse_json(text) == violation
    # serde_json::to_string of the Rust enum, byte for byte:
    assert text == ('{"scope":"total","limit_units":1000,"current_units":900,'
                    '"requested_units":200,"currency":"USD"}')


def test_remaining_budget(guard):
    assert guard.remaining() == 10000
    meta = make_meta("a1", "s1", "t1")
    guard.record(meta, 3000)
    assert guard.remaining() == 7000
    assert guard.total_spent() == 3000


# -- beyond the Rust tests: behaviours the Rust code has but does not test ----


@pytest.mark.parametrize("rust_json, cls", [
    ('{"scope":"session","session_id":"sess-1","limit_units":1000,"current_units":900,'
     '"requested_units":200,"currency":"USD"}', SessionViolation),
    ('{"scope":"agent","agent_id":"a1","limit_units":3000,"current_units":2900,'
     '"requested_units":200,"currency":"USD"}', AgentViolation),
    ('{"scope":"tool","tool_key":"s1:expensive","limit_units":500,"current_units":400,'
     '"requested_units":200,"currency":"USD"}', ToolViolation),
    ('{"scope":"total","limit_units":18446744073709551615,"current_units":18446744073709551605,'
     '"requested_units":20,"currency":"JPY"}', TotalViolation),
])
def test_every_violation_is_byte_equal_to_rust_serde(rust_json, cls):
    v = BudgetViolation.parse_json(rust_json)
    assert type(v) is cls
    assert v.model_dump_json() == rust_json


def test_opa_violations_serialise_as_rust_json(guard):
    meta = make_meta("a1", "s1", "t1")
    guard.record(meta, 2900)
    d = guard.check(meta, 200)
    assert [v.model_dump_json() for v in d.violations] == [
        '{"scope":"agent","agent_id":"a1","limit_units":3000,"current_units":2900,'
        '"requested_units":200,"currency":"USD"}'
    ]


def test_no_session_id_means_no_session_check():
    g = guard_for(rust_policy(max_total=100000, max_per_session=1000, max_per_agent=None, max_per_tool=None))
    meta = make_meta(session=None)
    g.record(meta, 900)
    assert g.check(meta, 200).allow
    # ...while the same spend with a session is denied on the session scope.
    with_session = make_meta()
    g.record(with_session, 900)
    assert isinstance(g.check(with_session, 200).violation, SessionViolation)


def test_tool_not_listed_has_no_tool_check(guard):
    meta = make_meta("a1", "s1", "cheap")
    guard.record(make_meta("a9", "s1", "cheap", session="other"), 2000)
    d = guard.check(meta, 200)
    assert d.allow


def test_all_violations_reported_in_order_primary_first(guard):
    meta = make_meta("a1", "s1", "expensive")
    guard.record(meta, 400)  # tool s1:expensive at 400
    guard.record(make_meta("a1", "s1", "t1"), 2500)  # agent a1 at 2900
    guard.record(make_meta("a2", "s1", "t1"), 2000)  # session sess-1 at 4900
    guard.record(make_meta("a3", "s1", "t1", session="other"), 5000)  # total at 9900
    d = guard.check(meta, 200)
    assert [v.scope for v in d.violations] == ["total", "session", "agent", "tool"]
    assert d.violation is d.violations[0]
    assert isinstance(d.violation, TotalViolation)
    assert d.violation.current_units == 9900


def test_totals_near_u64_max_compared_exactly():
    # A float comparison would call (2^64 - 11) + 10 and (2^64 - 11) + 11 equal.
    g = guard_for(rust_policy(max_total=U64_MAX - 1, max_per_session=None, max_per_agent=None, max_per_tool=None))
    meta = make_meta()
    g.record(meta, U64_MAX - 11)
    assert g.check(meta, 10).allow
    d = g.check(meta, 11)
    assert not d.allow
    assert d.violation.model_dump() == {"scope": "total", "limit_units": U64_MAX - 1,
                                        "current_units": U64_MAX - 11, "requested_units": 11, "currency": "USD"}


def test_saturating_sum_at_u64_max_limit_is_allowed_like_rust():
    g = guard_for(rust_policy(max_total=U64_MAX, max_per_session=None, max_per_agent=None, max_per_tool=None))
    meta = make_meta()
    g.record(meta, U64_MAX - 10)
    # Rust: (MAX-10).saturating_add(20) == MAX, and MAX > MAX is false.
    assert g.check(meta, 20).allow


def test_denied_request_records_nothing(guard):
    meta = make_meta("a1", "s1", "t1")
    guard.record(meta, 2900)
    auth = guard.authorize(make_meta("a1", "s1", "t1", receipt="r2"), 200)
    assert not auth.allow
    assert guard.total_spent() == 2900
    keys = guard.counter_keys(meta)
    assert set(keys) == {"total", "session", "agent"}, "t1 is not a listed tool: no tool counter is kept"
    assert guard.ledger.totals(list(keys.values())) == [2900, 2900, 2900]
    assert (guard.total_held(), guard.ledger.open_reservations()) == (0, 0)
    assert auth.commit().outcome == "unknown"  # committing a denied authorization is a no-op
    assert guard.total_spent() == 2900


def test_check_holds_nothing_and_record_never_enforces(guard):
    meta = make_meta()
    assert guard.check(meta, 100).allow
    assert guard.total_spent() == 0
    guard.record(meta, 50000)  # far past every limit: record only counts
    assert guard.total_spent() == 50000
    assert guard.remaining() == 0


def test_decision_json_is_the_design_shape(guard):
    meta = make_meta()
    guard.record(meta, 9900)
    d = guard.check(meta, 200)
    doc = d.to_json_dict()
    assert set(doc) == {"allow", "violations", "warnings", "policy_id", "policy_revision"}
    assert doc["policy_id"] == "default" and doc["policy_revision"].startswith("sha256:")
    assert json.loads(json.dumps(doc)) == doc
