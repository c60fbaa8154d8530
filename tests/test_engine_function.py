"""FunctionEngine: the shipped test double keeps every Engine promise."""

from __future__ import annotations

import pytest

from chio_budget import Decision
from chio_budget.engines import Engine
from chio_budget.engines.function import FunctionEngine

INPUT = {"policy_id": "default", "request": {}, "cost": {"units": 1, "currency": "USD"}, "totals": {}}


def test_is_an_engine_named_function():
    e = FunctionEngine(lambda i: Decision(allow=True))
    assert isinstance(e, Engine) and e.name == "function"
    assert FunctionEngine(lambda i: {}, name="fake-opa").name == "fake-opa"


def test_a_decision_is_returned_as_is_and_the_handler_sees_the_input():
    seen = []
    d = Decision(allow=True, policy_id="default")
    e = FunctionEngine(lambda i: seen.append(i) or d)
    assert e.decide(INPUT) is d and seen == [INPUT]


def test_a_dict_is_validated_like_an_opa_result():
    e = FunctionEngine(lambda i: {"allow": False, "violations": [
        {"scope": "total", "limit_units": 10, "current_units": 9, "requested_units": 2, "currency": "USD"}]})
    d = e.decide(INPUT)
    assert d.allow is False and d.violation.scope == "total" and d.policy_id == "default" and d.error is None


@pytest.mark.parametrize("result, error", [
    ({}, "malformed decision: missing ['allow', 'violations']"),
    (None, "malformed decision: expected an object, got NoneType"),
    ({"allow": "yes", "violations": []}, "malformed decision: allow is not a boolean"),
    ({"allow": True, "violations": [{"scope": "custom", "code": "x"}]}, "malformed decision: allow with violations"),
])
def test_a_malformed_result_is_a_deny_with_the_cause(result, error):
    d = FunctionEngine(lambda i: result).decide(INPUT)
    assert (d.allow, d.error, d.policy_id) == (False, error, "default")


def test_a_raising_handler_is_a_deny_never_an_exception():
    def boom(i):
        raise ConnectionError("opa down")

    d = FunctionEngine(boom).decide(INPUT)
    assert (d.allow, d.error, d.policy_id) == (False, "engine error: ConnectionError: opa down", "default")


def test_close_and_context_manager():
    with FunctionEngine(lambda i: {}) as e:
        assert e.closed is False
    assert e.closed is True
    with pytest.raises(TypeError, match="handler must be callable"):
        FunctionEngine("not callable")
