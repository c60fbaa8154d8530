"""Kernel contexts, simple kernel guards and the chain-guard builder for the chain tests."""

from __future__ import annotations

import threading
from typing import Any

from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.kernel import GuardContext, GuardDecision
from chio_budget.policy import BudgetPolicy
from chio_budget.rates import Rate, StaticRates

from .guards import guard_for, rust_policy


def ctx(request_id: str, tool: str = "search", server: str = "s1", agent: str = "a1",
        session: str | None = "sess-1", **kw: Any) -> GuardContext:
    return GuardContext(request_id=request_id, tool_name=tool, server_id=server, agent_id=agent,
                        session_id=session, timestamp=1000, **kw)


def budget(policy: BudgetPolicy | None = None, ledger: Any = "memory", rates: dict[str, str] | None = None,
           **kw: Any) -> BudgetChainGuard:
    """A chain guard over the Rust test policy with a 5-unit price for s1:search.

    ``rates`` (``{"EUR/USD": "1.085"}``) become the guard's static rates, updated at the
    contexts' timestamp (1000)."""
    policy = policy or rust_policy(prices={"s1:search": 5})
    return BudgetChainGuard(guard_for(policy, ledger=ledger, rates=static_rates(rates)), **kw)


def static_rates(pairs: dict[str, str] | None) -> StaticRates | None:
    if pairs is None:
        return None
    return StaticRates({k: Rate.from_decimal(v, 1000, "test") for k, v in pairs.items()})


class AllowAll:
    name = "allow-all"

    def __init__(self):
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def evaluate(self, c: GuardContext) -> GuardDecision:
        with self._lock:
            self.seen.append(c.request_id)
        return GuardDecision.allow(self.name, {"note": "allows everything"})


class DenyOnTool:
    name = "deny-on-tool"

    def __init__(self, tool_key: str):
        self.tool_key = tool_key
        self.seen: list[str] = []

    def evaluate(self, c: GuardContext) -> GuardDecision:
        self.seen.append(c.request_id)
        if c.tool_key == self.tool_key:
            return GuardDecision.deny(self.name, f"tool {self.tool_key} is blocked", {"tool_key": c.tool_key})
        return GuardDecision.allow(self.name)


class Raising:
    name = "exploding"

    def evaluate(self, c: GuardContext) -> GuardDecision:
        raise RuntimeError("boom")


class Pending:
    name = "approver"

    def evaluate(self, c: GuardContext) -> GuardDecision:
        return GuardDecision(verdict="pending_approval", reason="needs a human",
                             evidence=[{"guard_name": self.name, "verdict": "pending_approval",
                                        "details": "needs a human"}])
