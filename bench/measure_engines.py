"""Issue 15 parts 2 and 3, measured: the engine pool, GOGC/GOMAXPROCS, batch evaluation.

Ratios in one run, interleaved rounds, medians (the machine is shared and
noisy: only side-by-side numbers mean anything). Usage::

    .venv/bin/python scripts/measure_engines.py threads   # 2 threads on one guard vs 1 thread
    .venv/bin/python scripts/measure_engines.py gc        # GOGC x GOMAXPROCS, each in a subprocess
    .venv/bin/python scripts/measure_engines.py batch     # one-by-one vs batched, 10,000 inputs
    .venv/bin/python scripts/measure_engines.py all [--json out.json]

``threads``: throughput (ops/s) of ``guard.check`` and of ``authorize`` +
``commit`` on the memory ledger, with 1 thread and with 2 threads sharing
one guard: over the pool (default size, ``os.cpu_count()``), over one OPA
instance (``pool_size=1``, the engine before the pool), and with one guard
(one engine) per thread; with the process CPU cores each used, the cores
two GIL-free threads (zlib) got in the same rounds (what the box could
spare), and the share of time two evaluations ran inside Go at once. ``gc``: the same 1- and 2-thread ``check`` in a
fresh process per setting of ``GOGC`` and ``GOMAXPROCS`` (the Go runtime
reads both when the library loads). ``batch``: decisions/s deciding 10,000
inputs one by one vs ``decide_many`` (embedded, server through the OPA
stand-in) and ``check`` vs ``check_many``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from chio_budget import BudgetGuard, CostMetadata  # noqa: E402
from chio_budget.compiler import compile_all  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.policy import BudgetPolicy  # noqa: E402

REGO = ROOT / "rego"
POLICY = BudgetPolicy.model_validate({"id": "default", "currency": "USD", "max_total": 2**63, "max_per_session": 2**62,
                                      "max_per_agent": 2**62, "max_per_tool": {"s1:expensive": 2**61}})
_ids = count()


def meta(i: int) -> CostMetadata:
    return CostMetadata(receipt_id=f"r{i}", timestamp=1000, agent_id=f"a{i % 7}", session_id=f"s{i % 5}",
                        tool_server="s1", tool_name="t1" if i % 3 else "expensive")


def guard(pool_size: int | None) -> BudgetGuard:
    return BudgetGuard(POLICY, EmbeddedEngine(compile_all({"default": POLICY}), REGO, pool_size=pool_size), "memory")


def op_check(g: BudgetGuard) -> None:
    g.check(meta(next(_ids)), 3)


def op_authorize(g: BudgetGuard) -> None:
    auth = g.authorize(meta(next(_ids)), 3)
    auth.commit()


_CPU: list[float] = []  # process CPU cores used by the last ``throughput`` call


def cores_available(seconds: float) -> float:
    """Cores two GIL-free threads (zlib) get right now: what the box can give a 2-thread run."""
    data = b"x" * (4 << 20)
    stop = time.perf_counter() + seconds

    def work() -> None:
        import zlib

        while time.perf_counter() < stop:
            zlib.compress(data, 1)

    c0, t0 = time.process_time(), time.perf_counter()
    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def throughput(guards: list[BudgetGuard], op: Callable[[BudgetGuard], None], seconds: float) -> float:
    """Ops/s with one thread per guard in ``guards`` (the same guard twice: two threads sharing it)."""
    c0 = time.process_time()
    done = [0] * len(guards)
    stop = time.perf_counter() + seconds
    start = threading.Barrier(len(guards) + 1)

    def work(k: int, g: BudgetGuard) -> None:
        start.wait()
        n = 0
        while time.perf_counter() < stop:
            for _ in range(20):
                op(g)
            n += 20
        done[k] = n

    ts = [threading.Thread(target=work, args=(k, g)) for k, g in enumerate(guards)]
    for t in ts:
        t.start()
    t0 = time.perf_counter()
    stop = t0 + seconds
    start.wait()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    _CPU[:] = [(time.process_time() - c0) / wall]
    return sum(done) / wall


def go_overlap(g: BudgetGuard, seconds: float) -> dict[str, float]:
    """Two threads on ``g``: the share of wall time with at least one, and with two, evaluations
    inside the Go library at once (the GIL is released there). Independent of how many cores the
    box can spare: with one OPA instance the second share is 0 by construction (they queue)."""
    from opa_bindings import engine as bindings

    lib = bindings._get_lib()
    real = lib.OpaEvalDocument
    lock, state = threading.Lock(), {"n": 0, "t": 0, "one": 0, "two": 0}

    def event(delta: int) -> None:
        with lock:
            now = time.perf_counter_ns()
            state["one"] += (now - state["t"]) if state["n"] >= 1 else 0
            state["two"] += (now - state["t"]) if state["n"] >= 2 else 0
            state["n"], state["t"] = state["n"] + delta, now

    def timed(*args: Any) -> Any:
        event(1)
        try:
            return real(*args)
        finally:
            event(-1)

    lib.OpaEvalDocument = timed
    try:
        t0 = time.perf_counter_ns()
        throughput([g, g], op_check, seconds)
        wall = time.perf_counter_ns() - t0
    finally:
        lib.OpaEvalDocument = real
    return {"at least one in Go": round(state["one"] / wall, 3), "two in Go at once": round(state["two"] / wall, 3)}


def measure_threads(rounds: int, seconds: float) -> dict[str, Any]:
    pooled, single, other = guard(None), guard(1), guard(None)
    for g in (pooled, single, other):  # warm: every instance of the pool created, queries prepared
        throughput([g, g], op_check, 0.2)
    setups = {
        "1 thread": lambda op: throughput([pooled], op, seconds),
        "2 threads, one guard (pool)": lambda op: throughput([pooled, pooled], op, seconds),
        "2 threads, one guard (pool_size=1)": lambda op: throughput([single, single], op, seconds),
        "2 threads, a guard each": lambda op: throughput([pooled, other], op, seconds),
    }
    raw: dict[str, dict[str, list[float]]] = {op: {k: [] for k in setups} for op in ("check", "authorize+commit")}
    cores: dict[str, dict[str, list[float]]] = {op: {k: [] for k in setups} for op in raw}
    free: list[float] = []
    for r in range(rounds):
        names = list(setups) if r % 2 == 0 else list(reversed(setups))
        free.append(cores_available(seconds / 2))
        for op_name, op in (("check", op_check), ("authorize+commit", op_authorize)):
            for name in names:
                raw[op_name][name].append(setups[name](op))
                cores[op_name][name].append(_CPU[0])
    out: dict[str, Any] = {"pool_size": pooled.engine.pool_size, "cpus": os.cpu_count(), "rounds": rounds,
                           "cores two GIL-free threads got (median)": round(statistics.median(free), 2)}
    for op_name, by in raw.items():
        base = by["1 thread"]
        out[op_name] = {name: {"ops_per_s": round(statistics.median(v)),
                               "ratio": round(statistics.median([x / b for x, b in zip(v, base)]), 3),
                               "cores_used": round(statistics.median(cores[op_name][name]), 2)}
                        for name, v in by.items()}
    out["overlap, 2 threads on one guard (pool)"] = go_overlap(pooled, 2 * seconds)
    out["overlap, 2 threads on one guard (pool_size=1)"] = go_overlap(single, 2 * seconds)
    for g in (pooled, single, other):
        g.close()
    return out


def _child_gc(seconds: float) -> None:
    """In a fresh process (GOGC/GOMAXPROCS from the environment): 1- and 2-thread check ops/s."""
    import resource

    g = guard(None)
    throughput([g, g], op_check, 0.3)
    c0, n0 = time.process_time(), next(_ids)
    one = throughput([g], op_check, seconds)
    cpu_us = (time.process_time() - c0) * 1e6 / (next(_ids) - n0)  # process CPU (Go's GC threads too) per check
    two = throughput([g, g], op_check, seconds)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork+exec).
    hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
    rss_mb = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"1": one, "2": two, "cpu": cpu_us, "rss": rss_mb}))


GC_SETTINGS = [("100", ""), ("200", ""), ("400", ""), ("off", ""), ("100", "1"), ("400", "1"), ("400", "2")]


def measure_gc(rounds: int, seconds: float) -> dict[str, Any]:
    raw: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        order = GC_SETTINGS if r % 2 == 0 else list(reversed(GC_SETTINGS))
        for gogc, procs in order:
            env = {k: v for k, v in os.environ.items() if k not in ("GOGC", "GOMAXPROCS")}
            env["GOGC"] = gogc
            if procs:
                env["GOMAXPROCS"] = procs
            res = subprocess.run([sys.executable, __file__, "_gc_child", "--seconds", str(seconds)], env=env,
                                 capture_output=True, text=True, check=True)
            raw.setdefault(f"GOGC={gogc} GOMAXPROCS={procs or 'default'}", []).append(json.loads(res.stdout))
    base = raw["GOGC=100 GOMAXPROCS=default"]
    out = {}
    for name, runs in raw.items():
        out[name] = {
            "1 thread ops/s": round(statistics.median(x["1"] for x in runs)),
            "2 threads ops/s": round(statistics.median(x["2"] for x in runs)),
            "1 thread vs default": round(statistics.median(x["1"] / b["1"] for x, b in zip(runs, base)), 3),
            "2 threads vs default": round(statistics.median(x["2"] / b["2"] for x, b in zip(runs, base)), 3),
            "2 threads / 1 thread": round(statistics.median(x["2"] / x["1"] for x in runs), 3),
            "CPU us per check (1 thread)": round(statistics.median(x["cpu"] for x in runs)),
            "CPU vs default": round(statistics.median(x["cpu"] / b["cpu"] for x, b in zip(runs, base)), 3),
            "peak RSS MB": round(max(x["rss"] for x in runs)),
        }
    return out


def _inputs(n: int) -> tuple[list[dict], list[tuple[CostMetadata, int]]]:
    g = guard(1)
    reqs = [(meta(i), (i * 37) % 5000) for i in range(n)]
    inputs = [g.evaluate(m, c).input for m, c in reqs]
    g.close()
    return inputs, reqs


def _rate(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def measure_batch(rounds: int, n: int, server: bool) -> dict[str, Any]:
    inputs, reqs = _inputs(n)
    e = EmbeddedEngine(compile_all({"default": POLICY}), REGO, pool_size=1)
    g = guard(1)
    cases: dict[str, Callable[[], Any]] = {
        "embedded decide (one by one)": lambda: [e.decide(i) for i in inputs],
        "embedded decide_many": lambda: e.decide_many(inputs),
        "guard.check (one by one)": lambda: [g.check(m, c) for m, c in reqs],
        "guard.check_many": lambda: g.check_many(reqs),
    }
    assert e.decide_many(inputs) == [e.decide(i) for i in inputs]
    standin = None
    if server:
        from chio_budget.engines.opa_http import make_client, push
        from chio_budget.engines.server import ServerEngine
        from chio_budget.rego_files import rego_modules
        from support.opa import start_opa

        standin = start_opa(None)
        client = make_client(standin.url, timeout=60)
        compiled = compile_all({"default": POLICY})
        push(client, compiled, rego_modules(REGO))
        s = ServerEngine(client, compiled, url=standin.url)
        cases["server decide (one by one)"] = lambda: [s.decide(i) for i in inputs]
        cases["server decide_many"] = lambda: s.decide_many(inputs)
    raw: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds):
        for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
            raw[name].append(_rate(cases[name], n))
    out: dict[str, Any] = {"inputs": n, "rounds": rounds}
    pairs = [("embedded decide_many", "embedded decide (one by one)"), ("guard.check_many", "guard.check (one by one)"),
             ("server decide_many", "server decide (one by one)")]
    for name, v in raw.items():
        out[name] = {"decisions_per_s": round(statistics.median(v))}
    for batched, single in pairs:
        if batched in raw:
            out[batched]["ratio_vs_one_by_one"] = round(
                statistics.median([b / s for b, s in zip(raw[batched], raw[single])]), 3)
    e.close()
    g.close()
    if standin is not None:
        s.close()
        standin.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["threads", "gc", "batch", "all", "_gc_child"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.what == "_gc_child":
        _child_gc(a.seconds)
        return
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if a.what in ("threads", "all"):
        out["threads"] = measure_threads(a.rounds, a.seconds)
    if a.what in ("gc", "all"):
        out["gc"] = measure_gc(a.rounds, a.seconds)
    if a.what in ("batch", "all"):
        out["batch"] = measure_batch(max(a.rounds // 2, 3), a.inputs, not a.no_server)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
