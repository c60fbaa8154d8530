"""Decision cases shared by every engine: each one an OPA input and its expected decision.

Built from the Rust tests' scenarios (policy, recorded history, request) with
the expected decision computed by the plain-Python Rust model, so the same
list checks the embedded engine, the server engine and their parity.
``expected`` is ``Decision.to_json_dict()``; ``None`` means "deny with an
engine error" (the error text is engine-specific).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chio_budget.compiler import compile_policy, data_document
from chio_budget.cost import CostMetadata
from chio_budget.policy import BudgetPolicy
from support.guards import U64_MAX, make_meta, rust_policy
from chio_budget.rust_model import RustEnforcer


@dataclass(frozen=True)
class DecisionCase:
    id: str
    data: dict[str, Any]
    input: dict[str, Any]
    expected: dict[str, Any] | None


def engine_input(policy: BudgetPolicy, meta: CostMetadata, cost: int, model: RustEnforcer,
                 currency: str | None = None) -> dict[str, Any]:
    """The input the guard builds: ``null`` for a scope no limit reads (the guard keeps no counter there)."""
    key = f"{meta.tool_server}:{meta.tool_name}"
    return {
        "policy_id": policy.id,
        "request": meta.request_input(),
        "cost": {"units": cost, "currency": currency or policy.currency},
        "totals": {
            "total": model.total_spent,
            "session": (model.session_spent.get(meta.session_id, 0)
                        if meta.session_id is not None and policy.max_per_session is not None else None),
            "agent": model.agent_spent.get(meta.agent_id, 0) if policy.max_per_agent is not None else None,
            "tool": model.tool_spent.get(key, 0) if key in policy.max_per_tool else None,
        },
    }


def expected_decision(policy: BudgetPolicy, violations: list[dict]) -> dict[str, Any]:
    return {"allow": not violations, "violations": violations, "warnings": [], "policy_id": policy.id,
            "policy_revision": compile_policy(policy)["revision"]}


def case(id: str, policy: BudgetPolicy, history: list[tuple[CostMetadata, int]], meta: CostMetadata,
         cost: int) -> DecisionCase:
    model = RustEnforcer(policy)
    for m, c in history:
        model.record(m, c)
    return DecisionCase(id, data_document({policy.id: policy}), engine_input(policy, meta, cost, model),
                        expected_decision(policy, model.check_all(meta, cost)))


_P = rust_policy()
_SESSION_ONLY = rust_policy(max_total=100000, max_per_session=1000, max_per_agent=None, max_per_tool=None)
_MAX = rust_policy(max_total=U64_MAX, max_per_session=None, max_per_agent=None, max_per_tool=None)
_MAX_1 = rust_policy(max_total=U64_MAX - 1, max_per_session=None, max_per_agent=None, max_per_tool=None)
_JPY = rust_policy(currency="JPY", max_total=500, max_per_session=None, max_per_agent=None, max_per_tool=None)
_m = make_meta
_exp = _m("a1", "s1", "expensive")

CASES: list[DecisionCase] = [
    case("within_budget", _P, [], _m(), 100),
    case("total_budget_exceeded", _P, [(_m(), 9900)], _m(), 200),
    case("per_agent_budget_exceeded", _P, [(_m(), 2900)], _m(), 200),
    case("per_session_budget_exceeded", _SESSION_ONLY, [(_m(), 900)], _m(), 200),
    case("per_tool_budget_exceeded", _P, [(_exp, 400)], _exp, 200),
    case("zero_cost_always_passes", _P, [], _m(), 0),
    case("zero_cost_denied_when_over", _P, [(_m(), 20000)], _m(), 0),
    case("exactly_at_limit", _P, [(_m(), 2000)], _m(), 1000),
    case("no_session_no_session_check", _SESSION_ONLY, [(_m(session=None), 900)], _m(session=None), 200),
    case("unlisted_tool_no_tool_check", _P, [(_m("a9", "s1", "cheap", session="x"), 2000)], _m("a1", "s1", "cheap"), 200),
    case("all_four_in_order", _P, [(_exp, 400), (_m(), 2500), (_m("a2"), 2000), (_m("a3", session="o"), 5000)], _exp, 200),
    case("u64_near_max_exact", _MAX_1, [(_m(), U64_MAX - 11)], _m(), 11),
    case("u64_near_max_fits", _MAX_1, [(_m(), U64_MAX - 11)], _m(), 10),
    case("u64_saturating_at_max_limit", _MAX, [(_m(), U64_MAX - 10)], _m(), 20),
    case("u64_counter_saturated", _MAX_1, [(_m(), U64_MAX), (_m(), 5)], _m(), 0),
    case("jpy_policy", _JPY, [(_m(), 400)], _m(), 101),
    DecisionCase("unknown_policy_id", data_document({_P.id: _P}),
                 {**engine_input(_P, _m(), 1, RustEnforcer(_P)), "policy_id": "nope"}, None),
    # A caller of OPA's API that leaves out the numbers is denied, never
    # read as "no limit" (the guard always builds the full input).
    DecisionCase("input_without_cost_or_totals", data_document({_P.id: _P}), {"policy_id": "default"},
                 {**expected_decision(_P, []), "allow": False, "violations": [
                     {"scope": "custom", "code": "invalid_input", "message": m} for m in sorted([
                         "cost.currency must be a string", "cost.units must be an integer >= 0",
                         "request.agent_id must be a string", "request.tool_key must be a string",
                         "totals.agent must be an integer >= 0",
                         "totals.tool must be an integer >= 0 or null (no tool limit applies)",
                         "totals.total must be an integer >= 0"])]}),
    DecisionCase("currency_mismatch", data_document({_P.id: _P}),
                 engine_input(_P, _m(), 1, RustEnforcer(_P), currency="EUR"),
                 {**expected_decision(_P, []), "allow": False, "violations": [
                     {"scope": "custom", "code": "currency_mismatch",
                      "message": "cost is in EUR but policy default is in USD"}]}),
]


# -- issue 11: windows, soft limits, the per-call cap (hand-computed expectations) -----------

_TEAM = rust_policy(id="team", currency="EUR", timezone="Europe/Berlin", window="monthly", warn_at=[0.8, 0.95],
                    max_total=500000, max_per_session=None, max_per_agent={"units": 3000, "window": "daily"},
                    max_per_tool={"s1:hot": {"units": 100, "window": {"rolling": 3600}}}, max_per_invocation=500)
_T = 1772964000  # 2026-03-08T10:00:00Z
_MONTH = {"window": "monthly", "key": "m:2026-03@Europe/Berlin", "start": 1772319600, "resets_at": 1774994400}
_DAY = {"window": "daily", "key": "d:2026-03-08@Europe/Berlin", "start": 1772924400, "resets_at": 1773010800}
_HOUR = {"window": "rolling", "key": "r:60:1772964000", "start": 1772960400, "resets_at": 1772967659}


def _team_input(tool: str, cost: int, total: int, agent: int, hot: int | None = None) -> dict[str, Any]:
    meta = CostMetadata(receipt_id="r1", timestamp=_T, agent_id="a1", tool_server="s1", tool_name=tool)
    windows = {"total": _MONTH, "agent": _DAY, **({"tool": _HOUR} if hot is not None else {})}
    return {"policy_id": "team", "request": meta.request_input(), "cost": {"units": cost, "currency": "EUR"},
            "totals": {"total": total, "session": None, "agent": agent, "tool": hot}, "windows": windows}


def _team_expected(violations: list[dict], warnings: list[dict]) -> dict[str, Any]:
    return {**expected_decision(_TEAM, violations), "warnings": warnings}


def _agent(current: int, requested: int, **extra: Any) -> dict[str, Any]:
    return {"scope": "agent", "agent_id": "a1", "limit_units": 3000, "current_units": current,
            "requested_units": requested, "currency": "EUR", "window": "daily", "resets_at": 1773010800, **extra}


CASES += [
    DecisionCase("windowed_daily_agent_violation_and_warnings", data_document({"team": _TEAM}),
                 _team_input("t1", 200, 1000, 2900),
                 _team_expected([_agent(2900, 200)], [_agent(2900, 200, threshold=0.8),
                                                      _agent(2900, 200, threshold=0.95)])),
    DecisionCase("windowed_monthly_total_warning_only", data_document({"team": _TEAM}),
                 _team_input("t1", 100, 399900, 0),
                 _team_expected([], [{"scope": "total", "limit_units": 500000, "current_units": 399900,
                                      "requested_units": 100, "currency": "EUR", "window": "monthly",
                                      "resets_at": 1774994400, "threshold": 0.8}])),
    DecisionCase("rolling_tool_violation", data_document({"team": _TEAM}),
                 _team_input("hot", 50, 0, 0, hot=60),
                 _team_expected([{"scope": "tool", "tool_key": "s1:hot", "limit_units": 100, "current_units": 60,
                                  "requested_units": 50, "currency": "EUR", "window": "rolling",
                                  "resets_at": 1772967659}],
                                [{"scope": "tool", "tool_key": "s1:hot", "limit_units": 100, "current_units": 60,
                                  "requested_units": 50, "currency": "EUR", "window": "rolling",
                                  "resets_at": 1772967659, "threshold": t} for t in (0.8, 0.95)])),
    DecisionCase("per_call_cap_first", data_document({"team": _TEAM}),
                 _team_input("t1", 501, 499900, 0),
                 _team_expected([{"scope": "invocation", "limit_units": 500, "requested_units": 501,
                                  "currency": "EUR"},
                                 {"scope": "total", "limit_units": 500000, "current_units": 499900,
                                  "requested_units": 501, "currency": "EUR", "window": "monthly",
                                  "resets_at": 1774994400}],
                                [{"scope": "total", "limit_units": 500000, "current_units": 499900,
                                  "requested_units": 501, "currency": "EUR", "window": "monthly",
                                  "resets_at": 1774994400, "threshold": t} for t in (0.8, 0.95)])),
]
