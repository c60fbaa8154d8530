"""Shared fixtures: the Rust tests' policy and metadata, real backends."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.compiler import data_document
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.policy import BudgetPolicy

ROOT = Path(__file__).resolve().parent.parent
REGO_DIR = ROOT / "rego"
U64_MAX = 2**64 - 1


def rust_policy(**overrides) -> BudgetPolicy:
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


def guard_for(policy: BudgetPolicy, engine=None, ledger="memory", **kw) -> BudgetGuard:
    engine = engine or EmbeddedEngine(data_document({policy.id: policy}), REGO_DIR)
    return BudgetGuard(policy, engine, ledger, **kw)


@pytest.fixture(scope="session")
def opa_bin() -> str | None:
    """A real ``opa`` binary (``OPA_BIN``, then PATH), or None."""
    return os.environ.get("OPA_BIN") or shutil.which("opa")


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "default.yaml").write_text(
        "currency: USD\nmax_total: 10000\nmax_per_session: 5000\nmax_per_agent: 3000\n"
        "max_per_tool:\n  \"s1:expensive\": 500\n"
    )
    return d
