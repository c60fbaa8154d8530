"""Why two threads on one guard stop scaling: the interpreter lock, measured without the guard.

Two experiments, each in this one process, on two raw ``OpaEngine``s loaded
with the live Rego (no guard code at all):

1. **Python between evaluations.** Each thread loops: one bare evaluation of
   ``data.chio.budget.decision`` (Go; ctypes releases the interpreter lock),
   then ``N`` microseconds of pure Python (holding it). Decisions per second
   with 2 threads / 1 thread, for N from 0 up to about 1.5 evaluations. The
   guard's own Python per authorize+commit is about as long as an
   evaluation (docs/performance.md), which is where the ratio falls.
2. **The convoy.** One thread evaluates in a loop while another runs pure
   Python: CPython 3.11 gives a thread coming back from C the lock only when
   the holder lets go (at its next C call) or after the switch interval
   (5 ms), so the evaluating thread is starved.

Ratios in one run, rounds alternating 1 and 2 threads, medians; never fails.

    .venv/bin/python bench/gil.py [--seconds 1.0] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import perf_common as pc  # noqa: E402


def python_work(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def rate(engines: list, inp: dict, threads: int, n: int, seconds: float) -> tuple[float, float]:
    """(evaluations per second over all threads, process CPU cores used)."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        e, i = engines[k], 0
        while time.perf_counter() < stop:
            e.eval_document(pc.DOCUMENT, inp)
            python_work(n)
            i += 1
        done[k] = i

    w0, c0 = time.perf_counter(), time.process_time()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - w0
    return sum(done) / wall, (time.process_time() - c0) / wall


def convoy(engine, inp: dict, seconds: float) -> tuple[float, float]:
    """(evaluations per second beside a pure-Python thread / alone, that thread's rate beside / alone)."""
    def evaluate(out: list) -> None:
        stop, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < stop:
            engine.eval_document(pc.DOCUMENT, inp)
            n += 1
        out.append(n)

    def spin(out: list) -> None:
        stop, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < stop:
            python_work(1000)
            n += 1
        out.append(n)

    alone_e: list = []
    alone_p: list = []
    evaluate(alone_e)
    spin(alone_p)
    e: list = []
    p: list = []
    ts = [threading.Thread(target=evaluate, args=(e,)), threading.Thread(target=spin, args=(p,))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return e[0] / alone_e[0], p[0] / alone_p[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    policy = pc.make_policy()
    g = pc.guard(policy)
    inp = g.evaluate(pc.meta(1), 5).input
    g.close()
    document = pc.compile_all({policy.id: policy}).document
    engines = [pc.raw_opa(pc.live_modules(), document) for _ in range(2)]
    for _ in range(300):  # warm: the prepared query, first allocations
        engines[0].eval_document(pc.DOCUMENT, inp)
        engines[1].eval_document(pc.DOCUMENT, inp)
    t0 = time.perf_counter()
    for _ in range(500):
        engines[0].eval_document(pc.DOCUMENT, inp)
    eval_us = (time.perf_counter() - t0) / 500 * 1e6
    t0 = time.perf_counter()
    python_work(100_000)
    per_unit_us = (time.perf_counter() - t0) / 100_000 * 1e6
    print(f"one bare evaluation: {eval_us:.0f} us; switch interval {sys.getswitchinterval() * 1e3:.1f} ms; "
          f"{args.rounds} rounds of {args.seconds:g} s, medians")
    print("| Python between evaluations | 1 thread | 2 threads | 2 threads / 1 | cores used (1 / 2 threads) |")
    print("|---|---|---|---|---|")
    for fraction in (0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5):
        n = int(fraction * eval_us / per_unit_us)
        one, two = [], []
        for _ in range(args.rounds):
            one.append(rate(engines, inp, 1, n, args.seconds))
            two.append(rate(engines, inp, 2, n, args.seconds))
        r1, r2 = statistics.median(x[0] for x in one), statistics.median(x[0] for x in two)
        c1, c2 = statistics.median(x[1] for x in one), statistics.median(x[1] for x in two)
        print(f"| {n * per_unit_us:.0f} us ({fraction:g} of an evaluation) | {r1:,.0f}/s | {r2:,.0f}/s | "
              f"{r2 / r1:.2f} | {c1:.2f} / {c2:.2f} |")
    e, p = convoy(engines[0], inp, args.seconds)
    print(f"convoy: one thread evaluating beside one running pure Python gets {e:.2f} of its rate alone "
          f"(the Python thread {p:.2f})")
    for engine in engines:
        engine.close()


if __name__ == "__main__":
    main()
