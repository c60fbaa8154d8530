"""The data document exactly as commit 0f1dbcc compiled it, for ``decision_0f1dbcc.rego``.

Frozen with the Rego beside it (``git show 0f1dbcc:plugin/chio_budget/compiler.py``):
plain units and a revision per policy, whatever the live compiler does now. The
benchmark (``bench/perf_common.py``) and the equivalence test
(``tests/test_decision_equivalence.py``) both feed the frozen file through it.
"""

from __future__ import annotations

from typing import Any, Mapping

from chio_budget.compiler import revision_of
from chio_budget.policy import BudgetPolicy


def data_0f1dbcc(policies: Mapping[str, BudgetPolicy]) -> dict[str, Any]:
    out = {}
    for pid in sorted(policies):
        p = policies[pid]
        doc: dict[str, Any] = {"currency": p.currency, "max_total": p.max_total.units}
        if p.max_per_session is not None:
            doc["max_per_session"] = p.max_per_session.units
        if p.max_per_agent is not None:
            doc["max_per_agent"] = p.max_per_agent.units
        if p.max_per_tool:
            doc["max_per_tool"] = {k: v.units for k, v in sorted(p.max_per_tool.items())}
        doc["revision"] = revision_of(doc)
        out[pid] = doc
    return {"chio": {"budget": {"policies": out}}}
