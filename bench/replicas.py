"""Replicas sharing one ledger: authorize+commit per second with 1, 2 and 4 processes.

    .venv/bin/python bench/replicas.py [--seconds 3] [--processes 1,2,4] [--backends sqlite,redis,cluster,postgres]

Each process is a kernel replica: its own ``BudgetGuard`` with the embedded
OPA (a Go runtime per process) on the shared ledger, deciding
``authorize`` + ``commit`` in a loop for ``--seconds``. Every cell is run
twice, with ``GOMAXPROCS=1`` in each process and with Go's default (one
thread per core), and reported as decisions per second over all processes
and as the ratio to one process, plus the CPU time per decision of the
replicas (every thread, Go's included) and of the server (Redis: ``INFO
cpu``; PostgreSQL: the replicas' backends in ``/proc``), which do not depend
on what else the machine is doing. Backends: a SQLite file (the one-machine
reference), a Redis server and a 3-master Redis Cluster this script starts
on free loopback ports (``redis-server``/``redis-cli`` needed) and stops,
and PostgreSQL at ``--postgres`` (local, a schema of its own, dropped
afterwards; ``postgres-async`` is the same with ``synchronous_commit=off``).
It reports; a backend that cannot run is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

POLICY = {"id": "bench", "currency": "USD", "max_total": 2**63, "max_per_agent": 2**62,
          "max_per_tool": {"s1:t1": 2**62}}


# -- one replica (run as: python bench/replicas.py --worker URI GO SECONDS ID) -----------------


def worker(uri: str, go: str, seconds: float, ident: str) -> None:
    from chio_budget import BudgetGuard, CostMetadata
    from chio_budget.compiler import data_document
    from chio_budget.engines.embedded import EmbeddedEngine
    from chio_budget.policy import BudgetPolicy

    policy = BudgetPolicy.model_validate(POLICY)
    guard = BudgetGuard(policy, EmbeddedEngine(data_document({policy.id: policy}), ROOT / "rego"), uri)
    meta = CostMetadata(receipt_id="warm", timestamp=1, agent_id=f"a{ident}", tool_server="s1", tool_name="t1")
    guard.authorize(meta, 1).commit(1)  # connections, scripts, plans: warm before the clock starts
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    n, cpu, end = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
        a = guard.authorize(meta.model_copy(update={"receipt_id": f"{ident}-{n}"}), 7)
        if not a.allow or a.commit(5).outcome != "committed":
            raise SystemExit(f"unexpected: {a.decision}")
    print(json.dumps({"n": n, "cpu": time.process_time() - cpu}), flush=True)  # every thread, Go's too
    while not os.path.exists(go.replace("go", "stop")):  # connections stay up until the parent has read
        time.sleep(0.005)
    guard.close()


def measure(uri: str, processes: int, seconds: float, gomaxprocs: str | None,
            server_cpu: Callable[[], float]) -> tuple[float, float, float]:
    """``(decisions per second, replica CPU ms per decision, server CPU ms per decision)`` over
    ``processes`` replicas running together."""
    env = dict(os.environ)
    env.pop("GOMAXPROCS", None)
    if gomaxprocs:
        env["GOMAXPROCS"] = gomaxprocs
    go = Path(tempfile.mkdtemp(prefix="chio-bench-go-")) / "go"
    run = uuid.uuid4().hex[:6]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", uri, str(go), str(seconds), f"{run}{i}"],
                              env=env, stdout=subprocess.PIPE, text=True) for i in range(processes)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a replica did not start")
        server0 = server_cpu()
        go.touch()
        results = [json.loads(p.stdout.readline()) for p in procs]
        server = server_cpu() - server0
        (go.parent / "stop").touch()
        n = sum(r["n"] for r in results)
        return n / seconds, 1000 * sum(r["cpu"] for r in results) / n, 1000 * server / n
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(go.parent, ignore_errors=True)


# -- the backends ----------------------------------------------------------------------------------


class RedisServers:
    """Redis servers of the bench's own: one, or three ``--cluster-enabled yes`` joined by
    ``redis-cli --cluster create`` (so the server CPU it reads is the bench's alone)."""

    def __init__(self, cluster: bool):
        self.dir = Path(tempfile.mkdtemp(prefix="chio-bench-redis-"))
        self.ports, self.procs = [], []
        for _ in range(3 if cluster else 1):
            port = self._port()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"] if cluster else []
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                 "--appendonly", "no", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
        for port in self.ports:
            self._cli(port, "ping", want="PONG")
        if cluster:
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            for port in self.ports:
                self._cli(port, "cluster", "info", want="cluster_state:ok")
            self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"
        else:
            self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    @staticmethod
    def _port() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port < 55000:  # room for a cluster bus port (+10000)
                return port

    @staticmethod
    def _cli(port: int, *args: str, want: str) -> None:
        for _ in range(300):
            out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout
            if want in out:
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis on {port}: no {want!r}")

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_cpu(ports: list[int]) -> Callable[[], float]:
    """CPU seconds the Redis servers on ``ports`` have used (``INFO cpu``), summed."""
    import redis

    clients = [redis.Redis(port=p) for p in ports]
    return lambda: sum(float(c.info("cpu")["used_cpu_user"]) + float(c.info("cpu")["used_cpu_sys"]) for c in clients)


def postgres_cpu(url: str, app: str) -> Callable[[], float]:
    """CPU seconds the backends serving ``application_name = app`` have used (``/proc``; local server)."""
    import psycopg

    def cpu() -> float:
        with psycopg.connect(url, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                               [app])]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--backends", default="sqlite,redis,cluster,postgres,postgres-async")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    if args.worker:
        uri, go, seconds, ident = args.worker
        return worker(uri, go, float(seconds), ident)
    counts = [int(x) for x in args.processes.split(",")]
    print(f"# replicas: {args.seconds:g} s per cell, python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| ledger | GOMAXPROCS | " + " | ".join(f"{n} proc dec/s (x)" for n in counts)
          + " | replica CPU ms/dec | server CPU ms/dec |")
    print("|---|---|" + "---|" * len(counts) + "---|---|")
    for name in args.backends.split(","):
        try:
            bench_backend(name, args, counts)
        except Exception as exc:  # a benchmark reports, it never fails the build
            print(f"| {name} | skipped: {type(exc).__name__}: {str(exc)[:200]} |", flush=True)


def bench_backend(name: str, args: argparse.Namespace, counts: list[int]) -> None:
    """Both GOMAXPROCS settings on one backend; CPU figures are from the largest process count."""
    from chio_budget.ledger import open_ledger

    tmp = Path(tempfile.mkdtemp(prefix="chio-bench-replicas-"))
    servers = RedisServers(cluster=name == "cluster") if name in ("redis", "cluster") else None
    tag = uuid.uuid4().hex[:8]
    pg = f"{args.postgres}?schema=chio_bench_{tag}&pool_max=1&application_name=chio-bench-{tag}"
    uri = {"sqlite": f"sqlite:///{tmp / 'r.db'}", "postgres": pg,
           "postgres-async": pg + "&options=-c%20synchronous_commit%3Doff"}.get(name)
    uri = uri or f"{servers.url}?prefix=chio-bench-{tag}"
    server_cpu: Callable[[], float] = (redis_cpu(servers.ports) if servers else
                                       postgres_cpu(args.postgres, f"chio-bench-{tag}") if "postgres" in name
                                       else (lambda: 0.0))
    ledger = open_ledger(uri)
    ledger.totals(["bench//total/"])  # creates the schema (PostgreSQL) before the replicas race for it
    try:
        for gomax in ("1", None):
            runs = [measure(uri, n, args.seconds, gomax, server_cpu) for n in counts]
            cells = " | ".join(f"{r:,.0f} ({r / runs[0][0]:.2f}x)" for r, _, _ in runs)
            server = "-" if name == "sqlite" else f"{runs[-1][2]:.2f}"
            print(f"| {name} | {gomax or 'default'} | {cells} | {runs[-1][1]:.2f} | {server} |", flush=True)
    finally:
        if hasattr(ledger, "drop"):
            ledger.drop()
        ledger.close()
        if servers:
            servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
