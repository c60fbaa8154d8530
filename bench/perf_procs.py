"""The rows that need processes: replicas sharing Redis or SQLite, and the Go runtime's settings.

A worker (``python bench/perf_procs.py --worker``) is one kernel replica: its
own ``BudgetGuard`` with the embedded OPA (its own Go runtime) on the ledger
each command names (opened and warmed on first use). It starts once, says
``ready``, then runs ``loop`` commands read from stdin, one JSON line each: wait until ``start``
(``time.monotonic``, one clock for every process on Linux), authorize+commit
for ``seconds`` in ``threads`` threads (the second thread on a guard of its
own), and answer ``{"n", "cpu"}`` (CPU: every thread of the process, Go's
too). Workers are started once per backend and reused round after round, so
the process counts are interleaved like everything else. Reports; never fails.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]


# -- the worker (its own process) ---------------------------------------------------------------------


def worker() -> None:
    import perf_common as pc

    policy = pc.make_policy()
    setups: dict[str, tuple[list, list]] = {}  # uri -> (guards, ops), one per thread used so far
    ident = uuid.uuid4().hex[:8]
    metas = [pc.meta(i, agents=5) for i in range(100)]
    metas = [m.model_copy(update={"agent_id": f"{ident}-{m.agent_id}"}) for m in metas]

    def ops_for(uri: str, threads: int) -> list:
        guards, ops = setups.setdefault(uri, ([], []))
        while len(ops) < threads:
            guards.append(pc.guard(policy, uri))
            ops.append(pc.authorize_commit(guards[-1], metas))
            for i in range(20):  # connections, scripts, prepared statements: warm before any clock starts
                ops[-1](i)
        return ops[:threads]

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "forget":
            for g in setups.pop(cmd["uri"], ([], []))[0]:
                g.close()
            print("{}", flush=True)
            continue
        ops = ops_for(cmd["uri"], cmd["threads"])
        time.sleep(max(cmd["start"] - time.monotonic(), 0))
        rate, cpu = pc.throughput(ops, cmd["seconds"])
        print(json.dumps({"dps": rate, "cpu": cpu}), flush=True)
    for guards, _ in setups.values():
        for g in guards:
            g.close()


# -- the parent's side ---------------------------------------------------------------------------------


class Workers:
    """One worker process per ``envs`` entry (added to the environment, GOGC/GOMAXPROCS unset
    otherwise), started together."""

    def __init__(self, envs: list[dict[str, str]]):
        base = {k: v for k, v in os.environ.items() if k not in ("GOGC", "GOMAXPROCS")}
        self.procs = [subprocess.Popen([sys.executable, __file__, "--worker"], env={**base, **env},
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for env in envs]
        try:
            for p in self.procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a worker did not start (exit {p.poll()})")
        except BaseException:
            self.close()
            raise

    def _ask(self, which: list[int], cmd: dict) -> list[dict]:
        for i in which:
            self.procs[i].stdin.write(json.dumps(cmd) + "\n")
            self.procs[i].stdin.flush()
        out = []
        for i in which:
            line = self.procs[i].stdout.readline()
            if not line:
                raise RuntimeError(f"worker {i} died (exit {self.procs[i].poll()})")
            out.append(json.loads(line))
        return out

    def prepare(self, which: list[int], uri: str, threads: int = 1) -> None:
        """Open (and warm) the guards ``run`` will use, outside any measurement."""
        self._ask(which, {"op": "loop", "uri": uri, "start": 0, "seconds": 0.01, "threads": threads})

    def run(self, which: list[int], uri: str, seconds: float, threads: int = 1) -> tuple[float, float]:
        """Workers ``which`` together on ``uri``: (decisions/s over all of them, CPU s per decision)."""
        out = self._ask(which, {"op": "loop", "uri": uri, "start": time.monotonic() + 0.05, "seconds": seconds,
                                "threads": threads})
        dps = sum(r["dps"] for r in out)
        return dps, sum(r["cpu"] * r["dps"] for r in out) / dps

    def forget(self, uri: str) -> None:
        """Every worker closes its guards on ``uri`` (before the ledger is cleared or deleted)."""
        self._ask(list(range(len(self.procs))), {"op": "forget", "uri": uri})

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.poll() is None:
                    p.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    p.stdin.close()
                p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()


def _scaling(w: Workers, uri: str, counts: list[int], rounds: int,
             seconds: float) -> dict[int, list[tuple[float, float]]]:
    """Per round, each process count in turn (rotating): [(decisions/s, CPU s/decision)] per count."""
    w.prepare(list(range(max(counts))), uri)
    out: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts[r % len(counts):] + counts[:r % len(counts)]:
            out[n].append(w.run(list(range(n)), uri, seconds))
    return out


def _scaling_rows(prefix: str, name: str, res: dict[int, list], targets: dict[int, tuple[str, float]],
                  note: str) -> list[dict]:
    from perf_rows import make_row

    rows = []
    for n in sorted(res)[1:]:
        ratio = statistics.median(a[0] / b[0] for a, b in zip(res[n], res[1]))
        cpu = statistics.median(a[1] / b[1] for a, b in zip(res[n], res[1]))
        tp = lambda k: {"name": f"{k} process{'es' * (k > 1)}", "dps": statistics.median(x[0] for x in res[k]),  # noqa: E731
                        "cpu_us": statistics.median(x[1] for x in res[k]) * 1e6}
        rows.append(make_row(f"{prefix}_{n}p", "workers", f"{n} processes sharing {name} / 1 process", ratio=ratio,
                             cpu_ratio=cpu, num=tp(n), den=tp(1), target=targets.get(n), note=note))
    return rows


def replicas_group(redis_url: str, rounds: int, seconds: float,
                   sqlite_counts: tuple[int, ...] = (1, 2, 4)) -> tuple[list[dict], dict]:
    """Redis with 1 and 2 processes, SQLite (synchronous=FULL, the default) with ``sqlite_counts``."""
    from perf_rows import make_row

    rows, series = [], {}
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="chio-perf-procs-"))
    import perf_common as pc

    cases = [("redis", "Redis", pc.with_query(redis_url, f"prefix=chio-perf-{tag}"), [1, 2], {2: (">=", 1.7)}),
             ("sqlite", "SQLite", f"sqlite:///{tmp / 'shared.db'}", list(sqlite_counts), {})]
    try:
        w = Workers([{}] * max(sqlite_counts + (2,)))
    except Exception as exc:  # noqa: BLE001 - reported as skipped rows
        w, broken = None, f"workers: {type(exc).__name__}: {exc}"
    for prefix, name, uri, counts, targets in cases:
        try:
            if w is None:
                raise RuntimeError(broken)
            res = _scaling(w, uri, counts, rounds, seconds)
            rows += _scaling_rows(prefix, name, res, targets, "authorize+commit; each process its own guard and OPA")
            series[f"{prefix}_processes"] = [[n, statistics.median(x[0] for x in res[n])] for n in counts]
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run is a skipped row
            why = f"skipped: {type(exc).__name__}: {str(exc)[:120]}"
            rows += [make_row(f"{prefix}_{n}p", "workers", f"{n} processes sharing {name} / 1 process",
                              status="skipped", note=why, target=targets.get(n)) for n in counts[1:]]
        finally:
            if w is not None:
                w.forget(uri)
            _cleanup(uri)
    if w is not None:
        w.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return rows, series


def _cleanup(uri: str) -> None:
    if not uri.startswith("redis"):
        return
    try:
        from chio_budget.ledger import open_ledger

        ledger = open_ledger(uri)
        ledger.clear()
        ledger.close()
    except Exception:  # noqa: BLE001 - nothing to clean when the server was not there
        pass


GO_VARIANTS = {"GOGC=100 (default)": {"GOGC": "100"}, "GOGC=400": {"GOGC": "400"}, "GOGC=off": {"GOGC": "off"},
               "GOMAXPROCS=1": {"GOMAXPROCS": "1"}, "GOMAXPROCS=2": {"GOMAXPROCS": "2"}}


def go_env_group(rounds: int, seconds: float, variants: int = len(GO_VARIANTS)) -> tuple[list[dict], dict]:
    """One worker per Go setting (the first ``variants``; memory ledger), each measured alone: the
    time of one decision (1 thread) and decisions/s with 2 threads (a guard each). Each variant is
    paired with a GOGC=100 measurement taken right next to it (which goes first alternates)."""
    from perf_rows import make_row

    names = list(GO_VARIANTS)[:variants]
    w = Workers([GO_VARIANTS[n] for n in names])  # worker i runs under names[i]; 0 is the baseline
    pairs: dict[str, list[tuple[tuple, tuple, tuple, tuple]]] = {n: [] for n in names[1:]}
    try:
        w.prepare(list(range(len(names))), "memory", threads=2)

        def sample(i: int) -> tuple[tuple, tuple]:
            return w.run([i], "memory", seconds), w.run([i], "memory", seconds, threads=2)

        others = list(range(1, len(names)))
        for r in range(rounds):
            for i in others[r % len(others):] + others[:r % len(others)]:
                first, second = (0, i) if r % 2 == 0 else (i, 0)
                got = {first: sample(first), second: sample(second)}
                pairs[names[i]].append((*got[i], *got[0]))
    finally:
        w.close()
    rows = []
    for n, ps in pairs.items():
        # (one, two, base_one, base_two); each a (decisions/s, CPU s per decision)
        cost_ratio = statistics.median(bo[0] / o[0] for o, _, bo, _ in ps)  # time per decision, variant / base
        cpu_ratio = statistics.median(o[1] / bo[1] for o, _, bo, _ in ps)
        tp_ratio = statistics.median(t[0] / bt[0] for _, t, _, bt in ps)
        med = lambda k, j: {"name": k, "wall_us": 1e6 / statistics.median(p[j][0] for p in ps),  # noqa: E731
                            "cpu_us": statistics.median(p[j][1] for p in ps) * 1e6}
        rows.append(make_row(f"go_{n.lower().replace('=', '_')}", "go", f"{n} / GOGC=100: time per decision",
                             ratio=cost_ratio, cpu_ratio=cpu_ratio, num=med(n, 0), den=med(names[0], 2),
                             note=f"authorize+commit, memory, 1 thread; 2 threads (a guard each): "
                                  f"{tp_ratio:.2f}x the decisions/s of GOGC=100"))
    return rows, {}


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker()
