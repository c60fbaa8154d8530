"""Policies -> the Rego data document.

The output is deterministic byte for byte (sorted keys, fixed separators), so
a revision is a pure function of the limits and two builds of the same YAML
can be compared with ``cmp``. Absent limits are absent keys: Rego treats an
undefined limit as "no such check", whereas ``null`` or ``0`` would not be.

This module is the only one that knows the data document's layout
(``data.chio.budget.policies[id]``). Everything else - engines, bundles,
push - takes a ``Compiled`` and reads its fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .limits import compile_extras
from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry
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


@dataclass(frozen=True, eq=False)
class Compiled:
    """What the engines, bundles and push need of a compiled policy set.

    ``budget`` is the value of ``data.chio.budget`` (``{"policies": {id:
    entry}}``); the other fields are read from it once, here. Treat it as
    read-only: ``revision`` and ``revisions`` were computed from it.
    """

    budget: dict[str, Any]
    revision: str  # of the whole ``budget`` value: a bundle's manifest revision
    revisions: dict[str, str]  # {policy_id: that policy's revision}

    @classmethod
    def from_budget(cls, budget: Mapping[str, Any]) -> "Compiled":
        """From a ``data.chio.budget`` value, e.g. one read back from an OPA server."""
        policies = budget.get("policies")
        policies = policies if isinstance(policies, dict) else {}
        revisions = {pid: p.get("revision") for pid, p in policies.items() if isinstance(p, dict)}
        return cls(dict(budget), revision_of(dict(budget)), revisions)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "Compiled":
        """From a whole data document (``chio-budget compile``'s output, ``data_document``)."""
        return cls.from_budget(document.get(DATA_ROOT[0], {}).get(DATA_ROOT[1], {}))

    @property
    def document(self) -> dict[str, Any]:
        """The whole data document, rooted at ``data`` (what an in-process OPA loads)."""
        return {DATA_ROOT[0]: {DATA_ROOT[1]: self.budget}}

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.revisions))


def as_compiled(value: "Compiled | Mapping[str, Any]") -> Compiled:
    """A ``Compiled`` as is; a whole data document (the older engine argument) read into one."""
    return value if isinstance(value, Compiled) else Compiled.from_document(value)


def compile_all(policies: Mapping[str, BudgetPolicy]) -> Compiled:
    """Compile every policy: what ``make_engine`` and the bundle writer take."""
    return Compiled.from_budget(compile_policies(policies))


def data_document(policies: Mapping[str, BudgetPolicy]) -> dict[str, Any]:
    """The whole data document, rooted at ``data`` (``opa eval -d`` ready)."""
    return compile_all(policies).document


def data_revision(policies: Mapping[str, BudgetPolicy]) -> str:
    return compile_all(policies).revision


def compile_dir(policies_dir: str | Path, *, currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> bytes:
    """The bytes of ``build/data.json`` for a policy directory."""
    return canonical_json(compile_all(load_policies(policies_dir, currencies=currencies)).document) + b"\n"
