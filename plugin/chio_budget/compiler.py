"""Policies -> the Rego data document (and OPA bundles).

The output is deterministic byte for byte (sorted keys, fixed separators), so
a revision is a pure function of the limits and two builds of the same YAML
can be compared with ``cmp``. Absent limits are absent keys: Rego treats an
undefined limit as "no such check", whereas ``null`` or ``0`` would not be.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from .limits import compile_extras
from .policy import BudgetPolicy, load_policies

DATA_ROOT = ("chio", "budget")
DECISION_PATH = "chio/budget/decision"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def revision_of(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def compile_policy(policy: BudgetPolicy) -> dict[str, Any]:
    """One entry of ``data.chio.budget.policies``, amounts as plain minor units."""
    doc: dict[str, Any] = {"currency": policy.currency, "max_total": policy.max_total.units}
    if policy.max_per_session is not None:
        doc["max_per_session"] = policy.max_per_session.units
    if policy.max_per_agent is not None:
        doc["max_per_agent"] = policy.max_per_agent.units
    if policy.max_per_tool:
        doc["max_per_tool"] = {k: v.units for k, v in sorted(policy.max_per_tool.items())}
    if policy.prices:
        doc["prices"] = {k: v.units for k, v in sorted(policy.prices.items())}
    doc.update(compile_extras(policy))  # windows, thresholds, per-call cap: only when used
    doc["revision"] = revision_of(doc)
    return doc


def compile_policies(policies: Mapping[str, BudgetPolicy]) -> dict[str, Any]:
    """The value of ``data.chio.budget``: ``{"policies": {id: entry}}``."""
    return {"policies": {pid: compile_policy(policies[pid]) for pid in sorted(policies)}}


def data_document(policies: Mapping[str, BudgetPolicy]) -> dict[str, Any]:
    """The whole data document, rooted at ``data`` (``opa eval -d`` ready)."""
    return {"chio": {"budget": compile_policies(policies)}}


def data_revision(policies: Mapping[str, BudgetPolicy]) -> str:
    return revision_of(compile_policies(policies))


def compile_dir(policies_dir: str | Path) -> bytes:
    """The bytes of ``build/data.json`` for a policy directory."""
    return canonical_json(data_document(load_policies(policies_dir))) + b"\n"
