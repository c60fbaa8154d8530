"""Paths, the Rust tests' policy and metadata, and the one guard builder (plugin).

``guard_for(policy, engine=None, ledger="memory", **kw)`` is the only place
a test builds a ``BudgetGuard``: the real embedded OPA over this
repository's Rego unless an engine (a ``FunctionEngine`` for a scripted
answer) is given. The ``make_guard`` fixture is the same builder, closing
every guard it built when the test ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.compiler import data_document
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.policy import BudgetPolicy

ROOT = Path(__file__).resolve().parents[2]
REGO_DIR = ROOT / "rego"
POLICIES_DIR = ROOT / "policies"
U64_MAX = 2**64 - 1


def rust_policy(**overrides: Any) -> BudgetPolicy:
    """``make_policy()`` of the Rust tests, with overrides (None removes a limit)."""
    doc = {
        "id": "default", "currency": "USD", "max_total": 10000, "max_per_session": 5000,
        "max_per_agent": 3000, "max_per_tool": {"s1:expensive": 500},
    }
    doc.update(overrides)
    doc = {k: v for k, v in doc.items() if v is not None}
    return BudgetPolicy.model_validate(doc)


def make_meta(agent: str = "a1", server: str = "s1", tool: str = "t1", *, receipt: str = "r1",
              session: str | None = "sess-1") -> CostMetadata:
    """``make_meta`` of the Rust tests: receipt r1, timestamp 1000, session sess-1."""
    return CostMetadata(receipt_id=receipt, timestamp=1000, session_id=session, agent_id=agent,
                        tool_server=server, tool_name=tool)


def embedded_engine(*policies: BudgetPolicy) -> EmbeddedEngine:
    """The real embedded OPA with these policies compiled and this repository's Rego."""
    return EmbeddedEngine(data_document({p.id: p for p in policies}), REGO_DIR)


def guard_for(policy: BudgetPolicy, engine: Any = None, ledger: Any = "memory", **kw: Any) -> BudgetGuard:
    """A ``BudgetGuard`` for ``policy``: the embedded OPA unless ``engine`` is given."""
    return BudgetGuard(policy, engine if engine is not None else embedded_engine(policy), ledger, **kw)


@pytest.fixture
def make_guard() -> Callable[..., BudgetGuard]:
    """``guard_for``, closing every guard it built (engine and ledger) when the test ends."""
    built: list[BudgetGuard] = []

    def build(policy: BudgetPolicy | None = None, engine: Any = None, ledger: Any = "memory", **kw: Any):
        g = guard_for(policy or rust_policy(), engine, ledger, **kw)
        built.append(g)
        return g

    yield build
    for g in built:
        g.close()


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    """A policy directory holding the Rust tests' policy as ``default.yaml``."""
    d = tmp_path / "policies"
    d.mkdir()
    (d / "default.yaml").write_text(
        "currency: USD\nmax_total: 10000\nmax_per_session: 5000\nmax_per_agent: 3000\n"
        "max_per_tool:\n  \"s1:expensive\": 500\n"
    )
    return d
