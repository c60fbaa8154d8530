"""Replicas sharing one ledger: authorize+commit per second with 1, 2 and 4 processes.

    .venv/bin/python bench/replicas.py [--seconds 3] [--processes 1,2,4] [--backends sqlite,redis,cluster,postgres]

Each process is a kernel replica: its own ``BudgetGuard`` with the embedded
OPA (a Go runtime per process) on the shared ledger, deciding
``authorize`` + ``commit`` in a loop for ``--seconds``. Every cell is run
twice, with ``GOMAXPROCS=1`` in each process and with Go's default (one
thread per core), and reported as decisions per second over all processes
and as the ratio to one process. Backends: a SQLite file (the one-machine
reference), the Redis at ``--redis``, a 3-master Redis Cluster this script
starts on free loopback ports (``redis-server``/``redis-cli`` needed) and
stops, and PostgreSQL at ``--postgres`` (a schema of its own, dropped
afterwards; ``postgres-async`` is the same with ``synchronous_commit=off``).
For Redis and the cluster it also reads the server's own time
per script call (``INFO commandstats``): the ceiling of one ledger prefix,
which lives in one slot on one master. It reports; a backend that cannot run
is skipped with the reason.
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
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
        a = guard.authorize(meta.model_copy(update={"receipt_id": f"{ident}-{n}"}), 7)
        if not a.allow or a.commit(5).outcome != "committed":
            raise SystemExit(f"unexpected: {a.decision}")
    print(json.dumps({"n": n}), flush=True)
    guard.close()


def measure(uri: str, processes: int, seconds: float, gomaxprocs: str | None) -> float:
    """Decisions per second over ``processes`` replicas running together."""
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
        go.touch()
        counts = [json.loads(p.stdout.readline())["n"] for p in procs]
        return sum(counts) / seconds
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(go.parent, ignore_errors=True)


# -- the backends ----------------------------------------------------------------------------------


class Cluster:
    """Three ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="chio-bench-cluster-"))
        self.ports, self.procs = [], []
        for _ in range(3):
            port = self._port()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(self.dir), "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
        for port in self.ports:
            self._cli(port, "ping", want="PONG")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            self._cli(port, "cluster", "info", want="cluster_state:ok")
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    @staticmethod
    def _port() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port < 55000:  # room for the bus port (+10000)
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


def usec_per_script(client_of) -> str:
    """Mean server time of one script call (EVALSHA), from INFO commandstats of the serving node."""
    try:
        stats = client_of().info("commandstats")
        node = stats.get("cmdstat_evalsha") or next(
            (v["cmdstat_evalsha"] for v in stats.values() if isinstance(v, dict) and "cmdstat_evalsha" in v), None)
        return f"{float(node['usec_per_call']):.0f} us" if node else "?"
    except Exception as exc:  # noqa: BLE001 - a benchmark reports
        return f"? ({type(exc).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--backends", default="sqlite,redis,cluster,postgres,postgres-async")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    if args.worker:
        uri, go, seconds, ident = args.worker
        return worker(uri, go, float(seconds), ident)
    counts = [int(x) for x in args.processes.split(",")]
    print(f"# replicas: {args.seconds:g} s per cell, python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| ledger | GOMAXPROCS | " + " | ".join(f"{n} proc dec/s (x)" for n in counts) + " | server time/script |")
    print("|---|---|" + "---|" * len(counts) + "---|")
    for name in args.backends.split(","):
        try:
            bench_backend(name, args, counts)
        except Exception as exc:  # a benchmark reports, it never fails the build
            print(f"| {name} | skipped: {type(exc).__name__}: {str(exc)[:200]} |", flush=True)


def bench_backend(name: str, args: argparse.Namespace, counts: list[int]) -> None:
    from chio_budget.ledger import open_ledger

    tmp = Path(tempfile.mkdtemp(prefix="chio-bench-replicas-"))
    cluster = Cluster() if name == "cluster" else None
    tag = uuid.uuid4().hex[:8]
    uri = {"sqlite": f"sqlite:///{tmp / 'r.db'}", "redis": f"{args.redis}?prefix=chio-bench-{tag}",
           "postgres": f"{args.postgres}?schema=chio_bench_{tag}&pool_max=1",
           "postgres-async": f"{args.postgres}?schema=chio_bench_{tag}&pool_max=1"
                             "&options=-c%20synchronous_commit%3Doff"}.get(name)
    uri = uri or f"{cluster.url}?prefix=chio-bench-{tag}"
    ledger = open_ledger(uri)
    ledger.totals(["bench//total/"])  # creates the schema (PostgreSQL) before the replicas race for it
    try:
        for gomax in ("1", None):
            rates = [measure(uri, n, args.seconds, gomax) for n in counts]
            cells = " | ".join(f"{r:,.0f} ({r / rates[0]:.2f}x)" for r in rates)
            server = "-"
            if name in ("redis", "cluster"):
                server = usec_per_script(lambda: ledger.client.get_node_from_key(ledger.keys[1]).redis_connection
                                         if name == "cluster" else ledger.client)
            print(f"| {name} | {gomax or 'default'} | {cells} | {server} |", flush=True)
    finally:
        if hasattr(ledger, "clear"):
            ledger.clear()
        if hasattr(ledger, "drop"):
            ledger.drop()
        ledger.close()
        if cluster:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
