"""A plain-Python transcription of the Rust ``BudgetEnforcer`` (the oracle).

Line for line the Rust ``check``/``record``, except that ``check_all``
collects every violation (in the same order) instead of returning the
first; ``check`` returns the first, as Rust does. The differential tests
demand that OPA agree with this on every decision, and ``bench/run.py``
times it as the baseline. It is a reference, never on a decision path: it
keeps its counters in process memory and reserves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chio_budget.policy import BudgetPolicy

U64_MAX = 2**64 - 1


def sat_add(a: int, b: int) -> int:
    return min(a + b, U64_MAX)


@dataclass
class RustEnforcer:
    policy: BudgetPolicy
    total_spent: int = 0
    session_spent: dict = field(default_factory=dict)
    agent_spent: dict = field(default_factory=dict)
    tool_spent: dict = field(default_factory=dict)

    def check_all(self, meta, cost: int) -> list[dict]:
        p, p_cur = self.policy, self.policy.currency
        out = []
        if sat_add(self.total_spent, cost) > p.max_total.units:
            out.append({"scope": "total", "limit_units": p.max_total.units, "current_units": self.total_spent,
                        "requested_units": cost, "currency": p_cur})
        if p.max_per_session is not None and meta.session_id is not None:
            current = self.session_spent.get(meta.session_id, 0)
            if sat_add(current, cost) > p.max_per_session.units:
                out.append({"scope": "session", "session_id": meta.session_id,
                            "limit_units": p.max_per_session.units, "current_units": current,
                            "requested_units": cost, "currency": p_cur})
        if p.max_per_agent is not None:
            current = self.agent_spent.get(meta.agent_id, 0)
            if sat_add(current, cost) > p.max_per_agent.units:
                out.append({"scope": "agent", "agent_id": meta.agent_id, "limit_units": p.max_per_agent.units,
                            "current_units": current, "requested_units": cost, "currency": p_cur})
        tool_key = f"{meta.tool_server}:{meta.tool_name}"
        limit = p.max_per_tool.get(tool_key)
        if limit is not None:
            current = self.tool_spent.get(tool_key, 0)
            if sat_add(current, cost) > limit.units:
                out.append({"scope": "tool", "tool_key": tool_key, "limit_units": limit.units,
                            "current_units": current, "requested_units": cost, "currency": p_cur})
        return out

    def check(self, meta, cost: int) -> dict | None:
        v = self.check_all(meta, cost)
        return v[0] if v else None

    def record(self, meta, cost: int) -> None:
        self.total_spent = sat_add(self.total_spent, cost)
        if meta.session_id is not None:
            self.session_spent[meta.session_id] = sat_add(self.session_spent.get(meta.session_id, 0), cost)
        self.agent_spent[meta.agent_id] = sat_add(self.agent_spent.get(meta.agent_id, 0), cost)
        key = f"{meta.tool_server}:{meta.tool_name}"
        self.tool_spent[key] = sat_add(self.tool_spent.get(key, 0), cost)

    def remaining(self) -> int:
        return max(self.policy.max_total.units - self.total_spent, 0)
