"""What the decision log and metrics add to a guard-chain call (one run; never fails).

Runs the same scripted calls (evaluate + settle, three-guard chain, embedded
OPA, memory ledger) through four set-ups and prints the mean time per call
and the ratio to the bare chain:

    bare            BudgetChainGuard, no decision log, no metrics
    +log            decision log to a file
    +log+metrics    decision log and Prometheus metrics
    +log+metrics+shadow   ... and one shadow policy

    .venv/bin/python bench/chain.py [calls]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

from chio_budget import BudgetGuard, BudgetPolicy  # noqa: E402
from chio_budget.chain import GuardChain  # noqa: E402
from chio_budget.chain_guard import BudgetChainGuard  # noqa: E402
from chio_budget.compiler import data_document  # noqa: E402
from chio_budget.decisionlog import DecisionLog  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.kernel import GuardContext, GuardDecision  # noqa: E402
from chio_budget.metrics import BudgetMetrics  # noqa: E402


class AllowAll:
    name = "allow-all"

    def evaluate(self, ctx):
        return GuardDecision.allow(self.name)


class DenyOnTool:
    name = "deny-on-tool"

    def evaluate(self, ctx):
        if ctx.tool_key == "s1:rm":
            return GuardDecision.deny(self.name, "rm is blocked")
        return GuardDecision.allow(self.name)


def policy(pid: str, limit: int) -> BudgetPolicy:
    return BudgetPolicy.model_validate({"id": pid, "currency": "USD", "max_total": limit, "max_per_session": limit,
                                        "max_per_agent": limit, "prices": {"s1:search": 5}})


def make_guard(p: BudgetPolicy) -> BudgetGuard:
    return BudgetGuard(p, EmbeddedEngine(data_document({p.id: p}), ROOT / "rego"), "memory")


def build(label: str, **kw):
    b = BudgetChainGuard(make_guard(policy("default", 2**62)), **kw)
    return label, b, GuardChain([AllowAll(), b, DenyOnTool()])


def calls(chain: GuardChain, label: str, start: int, n: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for ``n`` calls.

    CPU time (all threads, user + system) is the steadier figure on a busy
    machine: time spent waiting for a core while other processes run is not
    in it.
    """
    ctxs = [GuardContext(request_id=f"{label}-{i}", tool_name="search", server_id="s1", agent_id=f"a{i % 7}",
                         session_id=f"s{i % 3}", timestamp=1000) for i in range(start, start + n)]
    t0, c0 = time.perf_counter(), time.process_time()
    for c in ctxs:
        chain.evaluate(c)
        chain.on_invocation_complete(c.request_id, 4)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = 10
    per = max(n // rounds, 1)
    tmp = tempfile.mkdtemp(prefix="chio-bench-")
    log = os.path.join(tmp, "decisions.jsonl")
    setups = [
        build("bare"),
        build("+log", decision_log=DecisionLog(log)),
        build("+log+metrics", decision_log=DecisionLog(log), metrics=BudgetMetrics()),
        build("+log+metrics+shadow", decision_log=DecisionLog(log), metrics=BudgetMetrics(),
              shadows=[make_guard(policy("next", 2**40))]),
    ]
    for label, _, chain in setups:  # warm-up: prepared-query cache, first-use allocations
        calls(chain, "warm" + label, 0, 50)
    wall = {label: [] for label, _, _ in setups}
    cpu = {label: [] for label, _, _ in setups}
    # Rounds interleave the set-ups so machine noise falls on all of them alike.
    for r in range(rounds):
        for label, _, chain in setups:
            w, c = calls(chain, label, r * per, per)
            wall[label].append(w / per)
            cpu[label].append(c / per)
    for _, b, _ in setups:
        b.close()
    wb, cb = statistics.median(wall["bare"]), statistics.median(cpu["bare"])
    print("chain call = evaluate + settle; allow-all, budget, deny-on-tool; embedded OPA; memory ledger")
    print(f"{rounds} interleaved rounds x {per} calls per set-up; median of the round means")
    print(f"{'set-up':<22}{'wall us/call':>13}{'ratio':>7}{'cpu us/call':>13}{'ratio':>7}")
    for label, _, _ in setups:
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        print(f"{label:<22}{w * 1e6:>13.1f}{w / wb:>7.2f}{c * 1e6:>13.1f}{c / cb:>7.2f}")
    with open(log) as f:
        first = f.readline().strip()
        events = 1 + sum(1 for _ in f)
    print(f"decision log: {os.path.getsize(log)} bytes for {events} events ({log})")
    print("sample line:", first)


if __name__ == "__main__":
    main()
