"""Differential test: OPA (through the guard) against the plain-Python Rust model.

Random policies, random check/record sequences; every decision must agree
with the model on ``allow`` and on the ordered violations, and the counters
must agree after every record.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chio_budget.cost import CostMetadata
from chio_budget.policy import BudgetPolicy
from support.guards import U64_MAX, guard_for
from chio_budget.rust_model import RustEnforcer

TOOLS = ["s1:t1", "s1:expensive", "s2:t1"]

# Amounts cluster around small values and around 2^64 so both ordinary
# limits and saturation are exercised.
amount = st.one_of(st.integers(0, 3000), st.integers(U64_MAX - 3000, U64_MAX), st.sampled_from([0, 1, U64_MAX]))
small = st.integers(0, 3000)


@st.composite
def policies(draw):
    big = draw(st.booleans())
    lim = amount if big else small
    return BudgetPolicy.model_validate({
        "id": "p",
        "currency": draw(st.sampled_from(["USD", "JPY"])),
        "max_total": draw(lim),
        **({"max_per_session": draw(lim)} if draw(st.booleans()) else {}),
        **({"max_per_agent": draw(lim)} if draw(st.booleans()) else {}),
        "max_per_tool": draw(st.dictionaries(st.sampled_from(TOOLS), lim, max_size=2)),
    })


metas = st.builds(
    lambda a, s, t: CostMetadata(receipt_id="r", timestamp=1, agent_id=a, session_id=s,
                                 tool_server=t.split(":")[0], tool_name=t.split(":")[1]),
    st.sampled_from(["a1", "a2"]), st.sampled_from([None, "s1", "s2"]), st.sampled_from(TOOLS),
)
ops = st.lists(st.tuples(st.sampled_from(["check", "record"]), metas, st.one_of(small, amount)), min_size=1,
               max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), sequence=ops)
def test_opa_agrees_with_rust_model(policy, sequence):
    guard = guard_for(policy)
    model = RustEnforcer(policy)
    try:
        for op, meta, cost in sequence:
            if op == "record":
                guard.record(meta, cost)
                model.record(meta, cost)
                assert guard.total_spent() == model.total_spent
                assert guard.remaining() == model.remaining()
            else:
                d = guard.check(meta, cost)
                expected = model.check_all(meta, cost)
                assert d.error is None
                assert d.allow == (not expected)
                assert [v.model_dump() for v in d.violations] == expected
                first = model.check(meta, cost)
                assert (d.violation.model_dump() if d.violation else None) == first
    finally:
        guard.close()
