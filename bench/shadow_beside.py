"""What a shadow costs when it rides the enforced decision's query (one run; never fails).

Runs the same calls (``BudgetChainGuard.evaluate`` + ``on_invocation_complete``,
embedded OPA, memory ledger, no decision log, no metrics) through three set-ups
and prints the median time per call and the ratios:

    none      no shadow
    own       one shadow on its own engine: two queries a call (the enforced, then the shadow's)
    beside    one shadow over the enforced guard's engine: one query for both (``decide_many``)

Rounds interleave the set-ups so machine noise falls on all of them alike.

    .venv/bin/python bench/shadow_beside.py [calls]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

from chio_budget import BudgetGuard, BudgetPolicy  # noqa: E402
from chio_budget.chain_guard import BudgetChainGuard  # noqa: E402
from chio_budget.compiler import compile_all  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.kernel import GuardContext  # noqa: E402


def policy(pid: str, limit: int) -> BudgetPolicy:
    return BudgetPolicy.model_validate({"id": pid, "currency": "USD", "max_total": limit, "max_per_session": limit,
                                        "max_per_agent": limit, "prices": {"s1:search": 5}})


ENFORCED, NEXT = policy("default", 2**62), policy("next", 2**40)


def engine(*policies: BudgetPolicy) -> EmbeddedEngine:
    return EmbeddedEngine(compile_all({p.id: p for p in policies}), ROOT / "rego", pool_size=1)


def setups() -> dict[str, BudgetChainGuard]:
    shared = engine(ENFORCED, NEXT)
    return {
        "none": BudgetChainGuard(BudgetGuard(ENFORCED, engine(ENFORCED))),
        "own": BudgetChainGuard(BudgetGuard(ENFORCED, engine(ENFORCED)), shadows=[BudgetGuard(NEXT, engine(NEXT))]),
        "beside": BudgetChainGuard(BudgetGuard(ENFORCED, shared), shadows=[BudgetGuard(NEXT, shared)]),
    }


def calls(b: BudgetChainGuard, label: str, start: int, n: int) -> float:
    """Wall seconds per call over ``n`` calls (evaluate + settle)."""
    ctxs = [GuardContext(request_id=f"{label}-{i}", tool_name="search", server_id="s1", agent_id=f"a{i % 7}",
                         session_id=f"s{i % 3}", timestamp=1000) for i in range(start, start + n)]
    t0 = time.perf_counter()
    for c in ctxs:
        b.evaluate(c)
        b.on_invocation_complete(c.request_id, 4)
    return (time.perf_counter() - t0) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    rounds = 20
    per = max(n // rounds, 1)
    guards = setups()
    for label, b in guards.items():  # warm-up: prepared-query cache, first-use allocations
        calls(b, "warm-" + label, 0, 100)
    times: dict[str, list[float]] = {label: [] for label in guards}
    for r in range(rounds):
        for label, b in guards.items():
            times[label].append(calls(b, label, r * per, per))
    for b in guards.values():
        b.close()
    med = {label: statistics.median(t) for label, t in times.items()}
    print("evaluate + settle through BudgetChainGuard; embedded OPA (pool_size=1); memory ledger; no log, no metrics")
    print(f"{rounds} interleaved rounds x {per} calls per set-up; median of the round means")
    for label in guards:
        print(f"  {label:<8}{med[label] * 1e6:>9.1f} us/call")
    print(f"own/none    (shadow on its own engine, two queries) {med['own'] / med['none']:.2f}")
    print(f"beside/none (shadow beside the enforced, one query)  {med['beside'] / med['none']:.2f}")
    print(f"beside/own                                           {med['beside'] / med['own']:.2f}")


if __name__ == "__main__":
    main()
