"""``make bench``: every performance target of issue 15, side by side in one run.

Each row is a ratio measured in this run (interleaved rounds, medians; wall
and process CPU), with its target and PASS/MISS where the issue sets one:

- decision: trivial Rego / bare evaluation; the live Rego's allow and deny
  paths / the frozen 0f1dbcc file; guard.check and authorize+commit / bare
  evaluation; guard.check / the plain-Python Rust model; 1,000,000 vs 10
  counters; 10,000 vs 10 tool limits;
- ledgers: authorize+commit on SQLite, Redis, PostgreSQL / memory;
- workers: 2 threads on one guard and with a guard each / 1 thread; 2
  processes sharing Redis; 2 and 4 processes sharing SQLite / 1 process;
- batch: decide_many / check_many vs one by one, 10,000 inputs;
- go: GOGC and GOMAXPROCS variants (a process each) / GOGC=100.

Prints the table, writes ``bench/results.json`` and ``docs/performance.png``;
``--write-doc`` also rewrites the results section of ``docs/performance.md``.
``--quick`` runs everything at tiny sizes in seconds (the smoke test's mode:
the numbers mean nothing). Features another branch adds (engine pool,
``decide_many``, ``check_many``) are detected; absent, their rows say
"n/a (not on this branch)". A backend that is not reachable is a skipped row
with the reason. Never fails on a number.

    .venv/bin/python bench/perf.py [--quick] [--write-doc] [--only decision,ledgers,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import perf_common as pc  # noqa: E402
import perf_procs  # noqa: E402
import perf_report  # noqa: E402
import perf_rows  # noqa: E402

GROUPS = ("decision", "ledgers", "workers", "batch", "go")

# Sizes: full run (about 3 minutes on the 2-core reference machine) and --quick (seconds).
FULL = {"rounds": 150, "k": 10, "counters": 1_000_000, "ledger_rounds": 12, "ledger_k": 40, "thread_rounds": 6,
        "thread_s": 0.8, "proc_rounds": 5, "proc_s": 1.0, "batch_n": 10_000, "batch_rounds": 2, "go_rounds": 5,
        "go_s": 0.25, "sqlite_counts": (1, 2, 4), "go_variants": 5, "shadow_rounds": 40}
QUICK = {"rounds": 2, "k": 5, "counters": 1_000, "ledger_rounds": 1, "ledger_k": 3, "thread_rounds": 1,
         "thread_s": 0.05, "proc_rounds": 1, "proc_s": 0.05, "batch_n": 50, "batch_rounds": 1, "go_rounds": 1,
         "go_s": 0.05, "sqlite_counts": (1, 2), "go_variants": 2, "shadow_rounds": 1}


def run_groups(only: set[str], z: dict, args: argparse.Namespace) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    series: dict = {}
    plan = [
        ("decision", lambda: perf_rows.decision_group(z["rounds"], z["k"], z["counters"])),
        ("ledgers", lambda: perf_rows.backends_group(z["ledger_rounds"], z["ledger_k"], args.redis, args.postgres)),
        ("workers", lambda: perf_rows.threads_group(z["thread_rounds"], z["thread_s"])),
        ("workers", lambda: perf_procs.replicas_group(args.redis, z["proc_rounds"], z["proc_s"],
                                                             z["sqlite_counts"])),
        ("batch", lambda: perf_rows.batch_group(z["batch_n"], z["batch_rounds"])),
        ("batch", lambda: perf_rows.shadow_group(z["shadow_rounds"], z["k"])),
        ("go", lambda: perf_procs.go_env_group(z["go_rounds"], z["go_s"], z["go_variants"])),
    ]
    for group, fn in plan:
        if group not in only:
            continue
        t0 = time.perf_counter()
        r, s = fn()
        print(f"# {group}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        rows += r
        for key, value in s.items():
            series[("ledger_cost" if group == "ledgers" and key == "cost" else key)] = value
    return rows, series


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test; numbers meaningless)")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {','.join(GROUPS)}")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--figure", type=Path, default=pc.ROOT / "docs" / "performance.png")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the results section of --doc")
    ap.add_argument("--doc", type=Path, default=pc.ROOT / "docs" / "performance.md")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args(argv)
    only = {g.strip() for g in args.only.split(",") if g.strip()}
    if only - set(GROUPS):
        ap.error(f"unknown group(s): {', '.join(sorted(only - set(GROUPS)))}")
    t0, c0 = time.perf_counter(), time.process_time()
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"schema": 1, "started_at": started.isoformat(timespec="seconds"), "quick": args.quick,
              "argv": ["bench/perf.py", *(argv if argv is not None else sys.argv[1:])],
              "commit": perf_report.commit(), "features": pc.features(),
              "machine": perf_report.machine(args.redis, args.postgres),
              "sizes": QUICK if args.quick else FULL, "groups": sorted(only)}
    rows, series = run_groups(only, QUICK if args.quick else FULL, args)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result.update(rows=rows, series=series, runtime_s=time.perf_counter() - t0,
                  parent_cpu_s=time.process_time() - c0,
                  finished_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print(perf_report.header(result))
    print()
    print(perf_report.table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}", end="")
    if not args.no_figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        perf_report.figure(result, args.figure)
        print(f", {args.figure}", end="")
    if args.write_doc:
        perf_report.write_doc(args.doc, result, None if args.no_figure else args.figure)
        print(f", {args.doc}", end="")
    print()
    return result


if __name__ == "__main__":
    main()
