"""Ledger throughput: decisions per second for each backend, in one run.

    .venv/bin/python bench/ledgers.py [--n 2000] [--threads 1,4] [--redis redis://127.0.0.1:6379/0]

For memory, SQLite (synchronous=FULL, the default, and NORMAL) and Redis it
measures

- guard: ``BudgetGuard.authorize`` + ``commit`` with the real embedded OPA
  (one decision = one reserve, one OPA evaluation, one commit), and
- raw: ``ledger.reserve`` + ``ledger.commit`` alone (4 counter keys, as the
  guard uses with a session),

single-threaded and with several threads sharing the guard; then, for
``--held-backends`` (default memory), the raw pair again while ``--held``
(default 100,000) other reservations are held, which is what showed the
memory ledger's old O(n) expiry scan (issue 9 item 5). It prints numbers and
never fails a build: a backend that cannot run is reported as skipped with
the reason.
"""

from __future__ import annotations

import argparse
import gc
import platform
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

from chio_budget import BudgetGuard, CostMetadata  # noqa: E402
from chio_budget.compiler import data_document  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.ledger import open_ledger  # noqa: E402
from chio_budget.policy import BudgetPolicy  # noqa: E402

POLICY = BudgetPolicy.model_validate({"id": "bench", "currency": "USD", "max_total": 2**63, "max_per_session": 2**62,
                                      "max_per_agent": 2**62, "max_per_tool": {"s1:t1": 2**62}})


def _run(threads: int, n: int, op) -> float:
    """``op(worker, i)`` n times in each of ``threads`` threads; returns ops per second overall."""
    barrier = threading.Barrier(threads + 1)

    def work(w: int) -> None:
        barrier.wait()
        for i in range(n):
            op(w, i)

    ts = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return threads * n / (time.perf_counter() - t0)


def bench_backend(name: str, uri: str, engine: EmbeddedEngine, n: int, threads: list[int]) -> list[str]:
    rows = []
    ledger = open_ledger(uri)
    try:
        guard = BudgetGuard(POLICY, engine, ledger)
        run = uuid.uuid4().hex[:8]
        metas = [CostMetadata(receipt_id="x", timestamp=1, session_id=f"s{w % 3}", agent_id=f"a{w % 2}",
                              tool_server="s1", tool_name="t1") for w in range(max(threads))]
        keys = [list(guard.counter_keys(m).values()) for m in metas]
        for t in threads:
            def guard_op(w: int, i: int, t=t) -> None:
                a = guard.authorize(metas[w].model_copy(update={"receipt_id": f"g{run}-{t}-{w}-{i}"}), 7)
                if not a.allow or a.commit(5).outcome != "committed":
                    raise RuntimeError(f"unexpected: {a.decision}")

            def raw_op(w: int, i: int, t=t) -> None:
                rid = f"r{run}-{t}-{w}-{i}"
                ledger.reserve(rid, keys[w], 7)
                ledger.commit(rid, 5)

            g = _run(t, n, guard_op)
            r = _run(t, n, raw_op)
            rows.append(f"| {name:<22} | {t:>7} | {g:>12,.0f} | {r:>20,.0f} |")
    finally:
        if hasattr(ledger, "clear"):
            ledger.clear()
        ledger.close()
    return rows


def bench_held(name: str, uri: str, held: int, n: int) -> str:
    """Raw reserve+commit pairs per second while ``held`` other reservations are held."""
    ledger = open_ledger(uri, ttl=3600)
    try:
        run = uuid.uuid4().hex[:8]
        for i in range(held):
            ledger.reserve(f"h{run}-{i}", ["bench//total/", f"bench//agent/a{i % 100}"], 1)
        keys = ["bench//total/", "bench//agent/a1"]

        def pair(w: int, i: int) -> None:
            ledger.reserve(f"x{run}-{i}", keys, 7)
            ledger.commit(f"x{run}-{i}", 5)

        gc.collect()  # start from a clean heap, so one full collection is not the whole measurement
        rate = _run(1, n, pair)
        return f"| {name:<22} | {held:>9,} | {rate:>20,.0f} |"
    finally:
        if hasattr(ledger, "clear"):
            ledger.clear()
        ledger.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="operations per thread per measurement")
    ap.add_argument("--threads", default="1,4", help="thread counts, comma-separated")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--held", type=int, default=100_000, help="reservations held during the held measurement")
    ap.add_argument("--held-backends", default="memory", help="comma-separated: memory,sqlite,redis")
    args = ap.parse_args()
    threads = [int(x) for x in args.threads.split(",")]

    engine = EmbeddedEngine(data_document({POLICY.id: POLICY}), ROOT / "rego")
    tmp = Path(tempfile.mkdtemp(prefix="chio-bench-"))
    backends = [
        ("memory", "memory"),
        ("sqlite (FULL)", f"sqlite:///{tmp / 'full.db'}"),
        ("sqlite (NORMAL)", f"sqlite:///{tmp / 'normal.db'}?synchronous=NORMAL"),
        ("redis", f"{args.redis}{'&' if '?' in args.redis else '?'}prefix=chio-bench-{uuid.uuid4().hex[:8]}"),
    ]
    print(f"# ledgers: {args.n} ops/thread, python {platform.python_version()}, {platform.machine()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| backend                | threads | guard dec/s  | raw reserve+commit/s |")
    print("|------------------------|---------|--------------|----------------------|")
    for name, uri in backends:
        try:
            for row in bench_backend(name, uri, engine, args.n, threads):
                print(row, flush=True)
        except Exception as exc:  # a benchmark reports, it never fails the build
            print(f"| {name:<22} | skipped: {type(exc).__name__}: {exc} |", flush=True)
    engine.close()
    held_uris = {"memory": "memory", "sqlite": f"sqlite:///{tmp / 'held.db'}?synchronous=NORMAL",
                 "redis": backends[-1][1]}
    print(f"\n| backend                | held      | raw reserve+commit/s |")
    print("|------------------------|-----------|----------------------|")
    for name in [b for b in args.held_backends.split(",") if b]:
        try:
            print(bench_held(name, held_uris[name], args.held, args.n), flush=True)
        except Exception as exc:  # a benchmark reports, it never fails the build
            print(f"| {name:<22} | skipped: {type(exc).__name__}: {exc} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
