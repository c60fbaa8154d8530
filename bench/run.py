"""Decision latency of ``guard.check`` and ``guard.authorize`` on the embedded engine.

Reports; never fails. Also reports the bare ``engine.decide`` and the Python
model of the Rust ``check`` in the same run, so the numbers read as ratios
on whatever machine runs them; then the same limits counted over windows
(calendar: monthly total, daily per agent, 80/95% warnings; rolling: one
hour per session, 60 buckets summed per decision) next to the all-time ones.

    .venv/bin/python bench/run.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

from chio_budget import BudgetGuard, BudgetPolicy, CostMetadata  # noqa: E402
from chio_budget.compiler import data_document  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.opa_input import build_input  # noqa: E402
from chio_budget.rust_model import RustEnforcer  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def report(name: str, us: list[float], base: float | None = None) -> float:
    us = sorted(us)
    med = statistics.median(us)
    p99 = us[int(len(us) * 0.99) - 1]
    ratio = f"  x{med / base:.1f} of model" if base else ""
    print(f"{name:<28} median {med:8.1f} us   p99 {p99:8.1f} us   ({len(us)} calls){ratio}")
    return med


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    policy = BudgetPolicy.model_validate({"id": "default", "currency": "USD", "max_total": 10**15,
                                          "max_per_session": 10**12, "max_per_agent": 10**12,
                                          "max_per_tool": {"s1:expensive": 500}})
    guard = BudgetGuard(policy, EmbeddedEngine(data_document({policy.id: policy}), ROOT / "rego"))
    model = RustEnforcer(policy)
    metas = [CostMetadata(receipt_id=f"r{i}", timestamp=1000, session_id=f"sess-{i % 20}", agent_id=f"a{i % 50}",
                          tool_server="s1", tool_name="expensive" if i % 7 == 0 else "t1") for i in range(n)]
    for m in metas[:200]:
        guard.record(m, 3)
        model.record(m, 3)
    timed(lambda i: guard.check(metas[i], 5), 300)  # warm-up
    base = report("rust model check (python)", timed(lambda i: model.check(metas[i], 5), n))
    inp = build_input(metas[0], 5, {"total": 10, "session": 10, "agent": 10, "tool": 10}, policy=guard.policy)
    report("engine.decide (embedded)", timed(lambda i: guard.engine.decide(inp), n), base)
    report("guard.check", timed(lambda i: guard.check(metas[i], 5), n), base)

    def auth(i):
        a = guard.authorize(metas[i], 5)
        a.commit()

    report("guard.authorize + commit", timed(auth, n), base)
    windowed(metas, n, base)


def windowed(metas, n: int, base: float) -> None:
    """The same calls under windowed limits (timestamps one second apart, so windows turn)."""
    limits = dict(max_total=10**15, max_per_session=10**12, max_per_agent=10**12)
    calendar = rust_policy(id="calendar", timezone="Europe/Berlin", window="monthly", warn_at=[0.8, 0.95],
                           **{**limits, "max_per_agent": {"units": 10**12, "window": "daily"}})
    rolling = rust_policy(id="rolling", **{**limits, "max_per_session": {"units": 10**12,
                                                                        "window": {"rolling": 3600}}})
    for policy in (calendar, rolling):
        guard = guard_for(policy)
        ms = [m.model_copy(update={"timestamp": 1772964000 + i}) for i, m in enumerate(metas)]
        timed(lambda i: guard.check(ms[i], 5), 300)  # warm-up
        report(f"guard.check ({policy.id})", timed(lambda i: guard.check(ms[i], 5), n), base)

        def auth(i, guard=guard, ms=ms):
            guard.authorize(ms[i], 5).commit()

        report(f"authorize + commit ({policy.id})", timed(auth, n), base)


if __name__ == "__main__":
    main()
