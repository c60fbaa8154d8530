"""Where the time of one decision goes: ``guard.check`` next to the bare evaluation, under py-spy.

Runs each loop in a child process of its own under ``py-spy record`` (raw
stacks, 1,000 samples/s), then sorts every sample of the main thread into
a bucket by the frames on its stack and prints each bucket's share and its
microseconds per call (share x the loop's own time per call):

    check        guard.check(meta, 5) on a memory ledger (the guard's whole path)
    authorize    guard.authorize(...).commit() on a memory ledger
    bare         OpaEngine.eval_document("chio.budget.decision", input) (the bindings alone)

py-spy is not a dependency: ``.venv/bin/pip install py-spy`` first (it needs
ptrace, e.g. root in a container). Time inside the Go library is the time of
the ctypes call (``_call``'s native call, GIL released); ``--perf`` also runs
each loop under ``perf record`` (every thread, Go's GC workers too) and sorts
the leaf symbols into Go GC, allocation, JSON, Rego evaluation, Python and
the kernel. Reports; never fails.

    .venv/bin/python bench/perf_profile.py [--seconds 8] [--loops check,bare,authorize] [--perf]
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

BUCKETS = [  # (name, test on the stack's frames, root first), first match wins
    ("Go: OPA evaluation (and Go's JSON in and out)", lambda f, native: native),
    ("bindings: input json.dumps", lambda f, n: any("_encode_input" in x or "_dumps (" in x for x in f)),
    ("bindings: result json.loads", lambda f, n: any("_call (" in x for x in f) and any("loads (" in x for x in f)),
    ("bindings: other Python (lock, envelope)", lambda f, n: any("opa_bindings" in x for x in f)),
    ("Decision.from_opa (pydantic)", lambda f, n: any("from_opa" in x for x in f)),
    ("ledger (memory)", lambda f, n: any("chio_budget/ledger/" in x for x in f)),
    ("counter keys (request_counters)", lambda f, n: any("request_counters" in x for x in f)),
    ("build_input", lambda f, n: any("build_input" in x for x in f)),
    ("guard: other Python (pydantic copies, pricing, Evaluation...)", lambda f, n: any("chio_budget" in x for x in f)),
    ("bench loop", lambda f, n: True),
]


def _native_line() -> str:
    """``_call (opa_bindings/engine.py:N)``: the frame of the ctypes call into Go."""
    from opa_bindings.engine import OpaEngine

    src, start = inspect.getsourcelines(OpaEngine._call)
    line = start + next(i for i, s in enumerate(src) if "ptr = fn(" in s)
    return f"OpaEngine._call (opa_bindings/engine.py:{line})"


def loop(kind: str, seconds: float, timing: str) -> None:
    import perf_common as pc

    policy = pc.make_policy()
    g = pc.guard(policy)
    metas = [pc.meta(i) for i in range(1000)]
    for m in metas[:200]:
        g.record(m, 3)
    inp = g.evaluate(metas[0], 5).input
    bare = pc.raw_opa(pc.live_modules(), pc.compile_all({policy.id: policy}).document)
    op = {"check": lambda i: g.check(metas[i % 1000], 5),
          "authorize": pc.authorize_commit(g, metas),
          "bare": lambda i: bare.eval_document(pc.DOCUMENT, inp)}[kind]
    for i in range(300):
        op(i)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        op(n)
        n += 1
    Path(timing).write_text(f"{(time.perf_counter() - t0) / n * 1e6:.1f}")


def profile(kind: str, seconds: float, py_spy: str) -> tuple[float, collections.Counter]:
    out = Path(tempfile.mkdtemp(prefix="chio-profile-")) / f"{kind}.raw"
    timing = out.with_suffix(".us")
    subprocess.run([py_spy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(out), "--",
                    sys.executable, __file__, "--loop", kind, str(seconds), str(timing)],
                   capture_output=True, text=True, check=True)
    per_call = float(timing.read_text())
    native = _native_line()
    counts: collections.Counter = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not any("<lambda> (perf_profile.py" in f or "authorize_commit.<locals>.op " in f for f in frames):
            continue  # start-up: imports, loading the engine (the 300 warm-up calls are counted)
        is_native = frames[-1].endswith(native.split(" ", 1)[1]) and "._call (" in frames[-1]
        bucket = next(name for name, test in BUCKETS if test(frames, is_native))
        counts[bucket] += int(n)
    shutil.rmtree(out.parent, ignore_errors=True)
    return per_call, counts


PERF_BUCKETS = [  # (name, regex on "dso sym"), first match wins; leaf symbols (no call graph)
    ("Go GC (mark, scan, sweep, write barriers)", r"libopabridge.*runtime\.(gc|scan|mark|sweep|wbBuf|tryDefer|greyobject|"
     r"findObject|heapBits|spanSet|moveInlineMarks|bgsweep|(\(\*mspan\)\.)?(typePointers|nextFreeIndex)|"
     r"extractHeapBits|step|pcvalue|funcInfo|findfunc|\(\*spanInlineMarkBits\)|\(\*lfstack\)|\(\*stkframe\))|"
     r"libopabridge.*(internal/runtime/gc|gcWriteBarrier)"),
    ("Go allocation", r"libopabridge.*runtime\.(mallocgc|newobject|memclr|makeslice|makemap|growslice|"
     r"\(\*mspan\)\.writeHeapBits|nextFree|\(\*mcache\))"),
    ("Go JSON / value conversion (input in, result out)", r"libopabridge.*(encoding/json|ast\.InterfaceToValue|"
     r"ast\.ValueToInterface|util\.Unmarshal|util\.RoundTrip|strconv|JSON|json|math/big|strings\.\(\*Reader\)|reflect)"),
    ("Go Rego evaluation (topdown, ast, maps, hashing)", r"libopabridge.*(open-policy-agent|xxhash|maps|mapaccess|"
     r"mapassign|memeqbody|aeshash|strequal|memmove|cmpbody|itab|interequal|efaceeq)"),
    ("Go runtime, other (scheduler, cgo)", r"libopabridge"),
    ("Python (interpreter, json, pydantic-core)", r"python|pydantic|_json"),
    ("kernel", r"\[kernel"),
    ("other (libc, ...)", r"."),
]


def perf_profile(kind: str, seconds: float) -> collections.Counter:
    """Leaf symbols of the whole child process (every thread, Go's too) under ``perf record``."""
    import re

    tmp = Path(tempfile.mkdtemp(prefix="chio-perf-"))
    data = tmp / "perf.data"
    subprocess.run(["perf", "record", "-F", "999", "-o", str(data), "--", sys.executable, __file__, "--loop",
                    kind, str(seconds), str(tmp / "us")], capture_output=True, check=True)
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                             "-g", "none", "--percent-limit", "0"], capture_output=True, text=True).stdout
    counts: collections.Counter = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*)", line)
        if m:
            counts[next(n for n, rx in PERF_BUCKETS if re.search(rx, m.group(2)))] += float(m.group(1))
    shutil.rmtree(tmp, ignore_errors=True)
    return counts


def print_perf(kinds: list[str], seconds: float) -> None:
    results = {k: perf_profile(k, seconds) for k in kinds}
    print("\n| inside the process (perf, leaf symbols, every thread) | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, _ in PERF_BUCKETS:
        print(f"| {name} | " + " | ".join(f"{results[k][name]:.0f}%" for k in kinds) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--loops", default="check,bare")
    ap.add_argument("--perf", action="store_true", help="also break the whole process down with perf record")
    args = ap.parse_args()
    if args.loop:
        return loop(args.loop[0], float(args.loop[1]), args.loop[2])
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not py_spy:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    results = {k: profile(k, args.seconds, py_spy) for k in args.loops.split(",")}
    kinds = list(results)
    print("| where the time goes | " + " | ".join(f"{k}: share | {k}: us/call" for k in kinds) + " |")
    print("|---|" + "---|---|" * len(kinds))
    for name, _ in BUCKETS:
        cells = []
        for k in kinds:
            per_call, counts = results[k]
            share = counts[name] / max(sum(counts.values()), 1)
            cells += [f"{share:.0%}", f"{share * per_call:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **total** (loop's own time per call) | "
          + " | ".join(f"100% | {results[k][0]:.0f}" for k in kinds) + " |")
    if args.perf:
        print_perf(kinds, args.seconds)


if __name__ == "__main__":
    main()
