"""The live decision.rego decides exactly as the version issue 15 replaced.

``tests/reference/decision_pre15.rego`` is the single-path decision.rego as it
was before the rework for speed. Each version is loaded, with the live
``rates.rego``, into an OPA engine of its own, and both must give the same
JSON (same keys, same order of violations and warnings), be undefined
together, or fail together, over: every input of ``decision_cases``; inputs
that reach each violation kind; and hypothesis-generated inputs, well-formed
and not (missing fields, wrong types, negative numbers, floats, nulls,
strings; windows and warnings; currency mismatch; conversion facts; totals
and costs near and past 2^64). On the inputs the 0f1dbcc file understands
(``bench/reference``: no windows, thresholds, per-call cap or conversion, and
every counter a number), ``allow`` and ``violations`` also match that file
loaded with the data document of that commit.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from chio_budget.compiler import compile_policy, data_document
from chio_budget.policy import BudgetPolicy
from decision_cases import CASES
from support.guards import REGO_DIR, ROOT, U64_MAX, rust_policy

sys.path.insert(0, str(ROOT / "bench" / "reference"))
from data_0f1dbcc import data_0f1dbcc  # noqa: E402 (frozen beside decision_0f1dbcc.rego)

LIVE = REGO_DIR / "chio" / "budget" / "decision.rego"
PRE15 = ROOT / "tests" / "reference" / "decision_pre15.rego"
V0F1DBCC = ROOT / "bench" / "reference" / "decision_0f1dbcc.rego"
RATES = REGO_DIR / "chio" / "budget" / "rates.rego"
DOCUMENT = "chio.budget.decision"

POLICIES: dict[str, BudgetPolicy] = {p.id: p for p in [
    rust_policy(),  # "default": total, session, agent and a tool limit
    rust_policy(id="total_only", max_per_session=None, max_per_agent=None, max_per_tool=None),
    rust_policy(id="session_only", max_total=100000, max_per_session=1000, max_per_agent=None, max_per_tool=None),
    rust_policy(id="u64", max_total=U64_MAX, max_per_session=U64_MAX - 1, max_per_agent=10**19,
                max_per_tool={"s1:expensive": U64_MAX, "s1:hot": 2**63}),
    rust_policy(id="jpy", currency="JPY", max_total=500, max_per_session=None, max_per_agent=None),
    rust_policy(id="capped", max_per_invocation=700),
    rust_policy(id="team", currency="EUR", timezone="Europe/Berlin", window="monthly", warn_at=[0.8, 0.95],
                max_total=500000, max_per_session=None, max_per_agent={"units": 3000, "window": "daily"},
                max_per_tool={"s1:hot": {"units": 100, "window": {"rolling": 3600}}}, max_per_invocation=500),
    rust_policy(id="rolling", warn_at=[0.5], max_per_session={"units": 5000, "window": {"rolling": 600}}),
    rust_policy(id="warn_u64", max_total=U64_MAX, warn_at=[0.0001, 1], max_per_session=None),
]}
PLAIN_0F1DBCC = ("default", "total_only", "session_only", "u64", "jpy")  # what 0f1dbcc's data could say
TOOLS = ("s1:expensive", "s1:hot", "s1:t1", "s2:other")
WINDOWS = {  # what the guard sends for each compiled kind (see decision_cases)
    "monthly": {"window": "monthly", "key": "m:2026-03@Europe/Berlin", "start": 1772319600, "resets_at": 1774994400},
    "daily": {"window": "daily", "key": "d:2026-03-08@Europe/Berlin", "start": 1772924400, "resets_at": 1773010800},
    "rolling": {"window": "rolling", "key": "r:60:1772964000", "start": 1772960400, "resets_at": 1772967659},
}


@lru_cache(maxsize=None)
def engine(version: str, data_json: str) -> OpaEngine:
    """One engine per Rego version and data document, kept for the session (decisions do not change it)."""
    opa = OpaEngine()
    opa.print_handler = lambda _msg, _loc: None
    files = [V0F1DBCC] if version == "0f1dbcc" else [LIVE if version == "live" else PRE15, RATES]
    for f in files:
        opa.add_policy(str(f), f.read_text())
    opa.add_data(json.loads(data_json))
    return opa


def decide(version: str, data: dict[str, Any], inp: Any) -> str:
    """The decision as JSON text (key order included), or how it failed."""
    try:
        return json.dumps(engine(version, json.dumps(data, sort_keys=True)).eval_document(DOCUMENT, inp))
    except OpaUndefinedError:
        return "undefined"
    except OpaError as exc:  # the error text names the file; that both fail is what matters
        return f"error: {exc.code}"


DATA = data_document(POLICIES)


def assert_same(inp: Any, data: dict[str, Any] = DATA) -> dict[str, Any] | None:
    live = decide("live", data, inp)
    assert live == decide("pre15", data, inp), inp
    return json.loads(live) if live.startswith("{") else None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_decision_case_decides_as_before(case):
    assert_same(case.input, case.data)


# -- inputs ---------------------------------------------------------------------

def guard_input(policy_id: str, tool: str, cost: Any, totals: dict[str, Any], *, session: Any = "sess-1",
                currency: str | None = None, windows: dict | None = None, conversion: dict | None = None,
                agent: Any = "a1") -> dict[str, Any]:
    """An input shaped as ``opa_input.build_input`` makes it (fields may be overridden with anything)."""
    server, name = tool.split(":")
    inp = {"policy_id": policy_id,
           "request": {"receipt_id": "r1", "timestamp": 1772964000, "session_id": session, "agent_id": agent,
                       "tool_server": server, "tool_name": name, "tool_key": tool},
           "cost": {"units": cost, "currency": currency or POLICIES[policy_id].currency},
           "totals": totals}
    if windows is not None:
        inp["windows"] = windows
    if conversion is not None:
        inp["conversion"] = conversion
    return inp


def guard_windows(policy_id: str, tool: str) -> dict[str, Any]:
    """The windows the guard sends: one per windowed limit that applies."""
    compiled = compile_policy(POLICIES[policy_id]).get("windows", {})
    out = {s: WINDOWS[w["kind"]] for s, w in compiled.items() if s != "tool"}
    if tool in compiled.get("tool", {}):
        out["tool"] = WINDOWS[compiled["tool"][tool]["kind"]]
    return out


def conversion(status: str, units: Any, *, age: Any = 10, max_age: Any = 60) -> dict[str, Any]:
    return {"status": status, "original": {"units": 700, "currency": "JPY"}, "pair": "JPY/USD",
            "rate": {"numerator": 1, "denominator": 150, "source": "test", "updated_at": 0, "age_seconds": age},
            "max_age_seconds": max_age, "margin_bps": 0, "base_scale": 0, "quote_scale": 2,
            "converted_units": units, "reason": "no rate" if status != "ok" else None}


_T = {"total": 0, "session": 0, "agent": 0, "tool": 0}
KINDS = {  # an input for each violation kind (scope, or code of a custom one)
    "invocation": guard_input("capped", "s1:t1", 701, _T),
    "total": guard_input("default", "s1:t1", 200, {**_T, "total": 9900}),
    "session": guard_input("session_only", "s1:t1", 200, {**_T, "session": 900, "agent": None, "tool": None}),
    "agent": guard_input("default", "s1:t1", 200, {**_T, "agent": 2900}),
    "tool": guard_input("default", "s1:expensive", 200, {**_T, "tool": 400}),
    "currency_mismatch": guard_input("default", "s1:t1", 1, _T, currency="EUR"),
    "invalid_input": guard_input("default", "s1:t1", 1, {**_T, "agent": None}),
    "rate_unavailable": guard_input("default", "s1:t1", 0, _T, conversion=conversion("rate_unavailable", None)),
    "rate_overflow": guard_input("default", "s1:t1", 0, _T, conversion=conversion("rate_overflow", None)),
    "rate_stale": guard_input("default", "s1:t1", 5, _T, conversion=conversion("ok", 5, age=61)),
    "windowed_agent": guard_input("team", "s1:t1", 200, {**_T, "session": None, "agent": 2900, "tool": None},
                                  session=None, windows=guard_windows("team", "s1:t1")),
    "windowed_invalid_input": guard_input("team", "s1:hot", 1, {**_T, "session": None}, session=None, windows={}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_violation_kind_decides_as_before(kind):
    d = assert_same(KINDS[kind])
    kinds = {v.get("code", v["scope"]) for v in d["violations"]}
    assert kind.removeprefix("windowed_") in kinds


def test_warnings_decide_as_before():
    inp = guard_input("team", "s1:hot", 50, {"total": 399990, "session": None, "agent": 2800, "tool": 60},
                      session=None, windows=guard_windows("team", "s1:hot"))
    d = assert_same(inp)
    assert [w["scope"] for w in d["warnings"]] == ["total", "agent", "agent", "tool", "tool"]


# -- hypothesis -------------------------------------------------------------------

U64_EDGES = [U64_MAX - 1, U64_MAX, U64_MAX + 1, 2**64 + 5, 2**63, 10**19 - 1, 10**19, 10**19 + 1, 2**70 + 1]
small = st.integers(0, 12000)
amounts = st.one_of(small, small, small, st.sampled_from(U64_EDGES), st.integers(0, 2**66))  # mostly small
junk = st.one_of(st.none(), st.integers(-3, -1), st.sampled_from([0.5, 5.0, 1e3, -0.0, 1e20, 2.0**64]),
                 st.floats(min_value=-1e3, max_value=1e21), st.text(max_size=2), st.booleans(),
                 st.just([1]), st.just({"units": 1}))
MUTABLE = [("cost", "units"), ("cost", "currency"), ("totals", "total"), ("totals", "session"),
           ("totals", "agent"), ("totals", "tool"), ("totals",), ("request", "agent_id"),
           ("request", "tool_key"), ("request", "session_id"), ("windows",), ("conversion",), ("policy_id",)]


def limits(policy_id: str, tool: str) -> dict[str, int | None]:
    p = compile_policy(POLICIES[policy_id])
    return {"total": p["max_total"], "session": p.get("max_per_session"), "agent": p.get("max_per_agent"),
            "tool": p.get("max_per_tool", {}).get(tool)}


@st.composite
def counter(draw, limit: int | None, cost: Any, session_less: bool) -> Any:
    """What the guard would send for one scope: a number near or past its limit, or null without one."""
    if limit is None or session_less:
        return draw(st.one_of(st.none(), amounts)) if draw(st.booleans()) else None
    if isinstance(cost, int) and draw(st.booleans()):  # current + requested right around the limit
        return max(0, limit - cost + draw(st.integers(-2, 2)))
    return draw(amounts)


@st.composite
def well_formed(draw) -> dict[str, Any]:
    pid = draw(st.sampled_from(sorted(POLICIES)))
    tool = draw(st.sampled_from(TOOLS))
    session = draw(st.sampled_from(["sess-1", None]))
    cost = draw(amounts)
    totals = {s: draw(counter(limit, cost, s == "session" and session is None))
              for s, limit in limits(pid, tool).items()}
    windows = guard_windows(pid, tool) or None
    conv = draw(st.one_of(st.none(), st.none(), st.none(), st.builds(conversion, st.sampled_from(["ok", "rate_unavailable"]),
                                                 st.one_of(st.just(cost), amounts), age=st.integers(0, 100))))
    currency = draw(st.sampled_from([None] * 6 + ["EUR", "JPY"]))
    return guard_input(pid, tool, cost, totals, session=session, currency=currency, windows=windows,
                       conversion=conv)


@st.composite
def malformed(draw) -> dict[str, Any]:
    """A well-formed input with some fields removed or replaced by anything."""
    inp = draw(well_formed())
    for path in draw(st.lists(st.sampled_from(MUTABLE), min_size=1, max_size=3)):
        *parents, last = path
        node = inp
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.booleans()):
            node.pop(last, None)
        else:
            node[last] = draw(st.one_of(junk, amounts) if last not in ("windows", "policy_id") else
                              st.one_of(junk, st.just({"agent": {"window": "daily", "resets_at": "x"}}),
                                        st.just("nope")))
    return inp


EXAMPLES = settings(max_examples=600, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@EXAMPLES
@given(well_formed())
def test_well_formed_inputs_decide_as_before(inp):
    assert_same(inp)


@EXAMPLES
@given(malformed())
def test_malformed_inputs_decide_as_before(inp):
    assert_same(inp)


@st.composite
def understood_by_0f1dbcc(draw) -> dict[str, Any]:
    """Plain policies, every counter a whole number up to u64::MAX (its sums still pass 2^64), no conversion."""
    pid = draw(st.sampled_from(PLAIN_0F1DBCC))
    tool = draw(st.sampled_from(TOOLS))
    edge = st.one_of(small, small, small, small, small, small, st.sampled_from([U64_MAX - 1, U64_MAX, 2**63, 10**19]))
    cost = draw(edge)
    totals = {s: (max(0, limit - cost + draw(st.integers(-2, 2))) if limit is not None and draw(st.booleans())
                  else draw(edge)) for s, limit in limits(pid, tool).items()}
    return guard_input(pid, tool, cost, totals, session=draw(st.sampled_from(["sess-1", None])),
                       currency=draw(st.sampled_from([None] * 6 + ["EUR"])))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(understood_by_0f1dbcc())
def test_allow_and_violations_match_the_0f1dbcc_file(inp):
    live = assert_same(inp)
    old = json.loads(decide("0f1dbcc", data_0f1dbcc({p: POLICIES[p] for p in PLAIN_0F1DBCC}), inp))
    assert (live["allow"], live["violations"]) == (old["allow"], old["violations"])
