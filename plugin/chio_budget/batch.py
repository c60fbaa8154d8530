"""Many ``check``s decided in one engine query: ``BudgetGuard.check_many``.

``check_many(guard, requests)`` answers exactly ``[guard.check(meta, cost)
for meta, cost in requests]``: the same inputs are built the same way
(priced, counters read from the ledger request by request, windows), then
decided together by ``engines.decide_all`` (one query on the embedded and
server engines; one by one on engines without batching), and a deny by a
rolling limit is decided again with its ``resets_at`` narrowed, as
``check`` does (``BudgetGuard._narrow``). A ledger error denies only the
request whose counters could not be read.

Only decisions that do not depend on each other's commits may be batched:
``check`` holds and records nothing, so neither do these. Every request is
decided on one version of the policy (a reload waits to close it until the
batch is done). A request ``check`` would raise on (a malformed ``meta``, a
cost that is not a cost) raises here too, before anything is decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .authorization import Cost, Evaluation
from .conversion import Conversion
from .cost import CostMetadata
from .counters import RequestCounters, request_counters
from .decision import Decision
from .errors import LedgerError
from .opa_input import build_input, price
from .loaded import Loaded

Request = tuple["CostMetadata | Mapping[str, Any]", Cost]


@dataclass
class _Pending:
    """One request on its way: a deny already known, or the input to decide."""

    meta: CostMetadata
    cost: int = 0
    conversion: Conversion | None = None
    counters: RequestCounters | None = None
    input: dict[str, Any] | None = None
    denied: Decision | None = None


def _prepare(guard: Any, s: Loaded, meta: CostMetadata, cost_units: Cost) -> _Pending:
    """What ``BudgetGuard.evaluate`` does before asking the engine, for one request."""
    cost, conversion = price(cost_units, s.policy, s.rates, meta.timestamp)
    c = request_counters(s.policy, meta, guard.tracked)
    p = _Pending(meta, cost, conversion, c)
    try:
        values = guard.ledger.totals(list(c.keys.values()), **c.reads_option)
    except LedgerError as exc:
        p.denied = Decision.deny_error(f"ledger error: {exc}", s.policy.id)
        return p
    p.input = build_input(meta, cost, dict(zip(c.keys, values)), policy=s.policy, conversion=conversion,
                          windows=c.input_windows())
    return p


def check_many(guard: Any, requests: Iterable[Request]) -> list[Decision]:
    """``[guard.check(meta, cost) for meta, cost in requests]``, decided in one query (module docstring)."""
    metas = [(m if isinstance(m, CostMetadata) else CostMetadata.model_validate(m), c) for m, c in requests]
    with guard._using() as s:
        pending = [_prepare(guard, s, meta, cost) for meta, cost in metas]
        asked = [p for p in pending if p.input is not None]
        t0 = time.perf_counter_ns()
        decisions = s.decide_many([p.input for p in asked])
        share = (time.perf_counter_ns() - t0) // max(len(asked), 1)
        found = {id(p): Evaluation(d, p.input, share, p.conversion, s.rego_revision) for p, d in zip(asked, decisions)}
        out = []
        for p in pending:
            e = found.get(id(p))
            if e is None:
                out.append(p.denied)
            elif e.decision.allow:
                out.append(e.decision)
            else:
                out.append(guard._narrow(s, p.meta, p.counters, p.cost, e).decision)
        return out
