"""Helpers shared by the chain tests: contexts, simple guards, ledger backends."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.kernel import GuardContext, GuardDecision
from chio_budget.rates import Rate, StaticRates
from conftest import guard_for, rust_policy


def ctx(request_id: str, tool: str = "search", server: str = "s1", agent: str = "a1",
        session: str | None = "sess-1", **kw) -> GuardContext:
    return GuardContext(request_id=request_id, tool_name=tool, server_id=server, agent_id=agent,
                        session_id=session, timestamp=1000, **kw)


def budget(policy=None, ledger="memory", rates=None, **kw) -> BudgetChainGuard:
    """A chain guard over the Rust test policy with a 5-unit price for s1:search.

    ``rates`` (``{"EUR/USD": "1.085"}``) become the guard's static rates, updated at the
    contexts' timestamp (1000)."""
    policy = policy or rust_policy(prices={"s1:search": 5})
    return BudgetChainGuard(guard_for(policy, ledger=ledger, rates=static_rates(rates)), **kw)


def static_rates(pairs: dict[str, str] | None):
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


REDIS_URL = os.environ.get("CHIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
        return True
    except Exception:
        return False


def ledger_uri(kind: str, tmp_path, request=None) -> str:
    """A ledger URI for ``kind``, skipping (loudly) when the backend cannot run here.

    A backend module missing from this build is skipped; a missing Redis
    server fails instead when ``CHIO_REQUIRE_REDIS=1`` (CI). Redis gets a
    key prefix of its own, deleted after the test when ``request`` is given.
    """
    if kind == "memory":
        return "memory"
    try:
        __import__(f"chio_budget.ledger.{kind}")
    except ImportError:
        pytest.skip(f"SKIPPED: the {kind} ledger backend is not in this build (chio_budget.ledger.{kind})")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    if not _redis_up():
        if os.environ.get("CHIO_REQUIRE_REDIS") == "1":
            pytest.fail("CHIO_REQUIRE_REDIS=1 but no Redis on 127.0.0.1:6379")
        pytest.skip(f"SKIPPED: no Redis at {REDIS_URL} (set CHIO_REQUIRE_REDIS=1 to make this a failure)")
    prefix = f"chio-chain-test-{uuid.uuid4().hex[:12]}"
    if request is not None:
        def cleanup():
            import redis

            r = redis.Redis.from_url(REDIS_URL)
            keys = list(r.scan_iter(match=f"{{{prefix}}}:*")) + list(r.scan_iter(match=f"{prefix}:*"))
            if keys:
                r.delete(*keys)
        request.addfinalizer(cleanup)
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix={prefix}"


def unique_policy(**overrides):
    """The Rust policy under a fresh id, so shared Redis keys never collide between runs."""
    return rust_policy(id=f"chain-{uuid.uuid4().hex[:12]}", **overrides)
