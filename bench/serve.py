"""The sidecar under load: evaluate + settle round trips over HTTP next to the same calls in-process.

For each set-up and each number of concurrent clients (1, 8, 32) it runs a fixed
number of round trips - ``POST /v1/evaluate`` (allowed, a hold) then
``POST /v1/settle`` (committed) - and prints round trips per second and the p50
and p99 of one round trip:

    in-process   the worker's own Sidecar (the chain guard of the policy), called
                 from N threads: what the same calls cost without HTTP
    http 1w      chio-budget serve --workers 1, N httpx.AsyncClient connections
    http 2w      chio-budget serve --workers 2 (a shared ledger only)

and the HTTP layer's cost as ratios to in-process at the same ledger and concurrency:
p50 latency, throughput, and CPU per round trip (the server processes' CPU, read from
/proc, against the in-process run's; the steadiest of the three on a busy machine).
The client runs in this process, on the same cores as the server: read latency and
throughput as what one machine does end to end. Reports; never fails.

    .venv/bin/python bench/serve.py [round_trips_per_run] [--ledgers memory,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugin")]

import httpx  # noqa: E402

from chio_budget.serve.options import ServeOptions  # noqa: E402
from chio_budget.serve.sidecar import Sidecar  # noqa: E402

CLIENTS = (1, 8, 32)
POLICY = "currency: USD\nmax_total: 18000000000000000000\nprices:\n  \"s1:search\": 5\n"


def body(rid: str, n: int) -> dict:
    return {"request_id": rid, "tool_name": "search", "server_id": "s1", "agent_id": f"agent-{n % 64}",
            "arguments": {"q": "benchmark"}}


def summary(latencies: list[float], wall: float, cpu: float) -> dict:
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3, "cpu": cpu / len(latencies) * 1e3}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (the workers), from /proc."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def in_process(options: ServeOptions, clients: int, total: int) -> dict:
    side = Sidecar(options)
    member = side.member(None)
    counter, lock, out = itertools.count(), threading.Lock(), []
    for i in range(20):  # warm-up
        member.evaluate(body(f"warm-{uuid.uuid4()}", i))

    def run() -> None:
        mine = []
        while (n := next(counter)) < total:
            rid = f"ip-{uuid.uuid4()}"
            t = time.perf_counter()
            assert member.evaluate(body(rid, n)).allowed
            assert member.on_invocation_complete(rid).outcome == "committed"
            mine.append(time.perf_counter() - t)
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    side.close()
    return summary(out, wall, cpu)


async def over_http(url: str, pid: int, clients: int, total: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:
        for i in range(20):  # warm-up, and every connection opened
            await c.post("/v1/evaluate", json=body(f"warm-{uuid.uuid4()}", i))
        counter, out = itertools.count(), []

        async def run() -> None:
            while (n := next(counter)) < total:
                rid = f"http-{uuid.uuid4()}"
                t = time.perf_counter()
                d = await c.post("/v1/evaluate", json=body(rid, n))
                assert d.json()["verdict"] == "allow", d.text
                s = await c.post("/v1/settle", json={"request_id": rid})
                assert s.json()["outcome"] == "committed", s.text
                out.append(time.perf_counter() - t)

        t0, c0 = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(run() for _ in range(clients)))
        return summary(out, time.perf_counter() - t0, cpu_seconds(pid) - c0)


def start(policies: Path, ledger: str, workers: int) -> tuple[subprocess.Popen, str]:
    cmd = [str(ROOT / ".venv" / "bin" / "chio-budget"), "serve", "--policies", str(policies), "--port", "0",
           "--ledger", ledger, "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split(" ", 1)[0]
            break
    else:
        raise SystemExit(f"{' '.join(cmd)} did not start")
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # type: ignore[union-attr]
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            seen.add(httpx.get(url + "/health", timeout=5).json()["worker"])
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("round_trips", nargs="?", type=int, default=800)
    ap.add_argument("--ledgers", default="memory,sqlite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(POLICY)
    print(f"bench/serve.py: {args.round_trips} evaluate+settle round trips per run; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| ledger | set-up | clients | round trips/s | p50 ms | p99 ms | CPU ms/rt | p50 ratio | rt/s ratio | "
          "CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.ledgers.split(","):
        uri = "memory" if kind == "memory" else f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"
        base = {c: in_process(ServeOptions(policies, ledger=uri), c, args.round_trips) for c in CLIENTS}
        for c in CLIENTS:
            r = base[c]
            print(f"| {kind} | in-process | {c} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu']:.2f} "
                  "| 1.00 | 1.00 | 1.00 |")
        for workers in (1, 2):
            if workers > 1 and kind == "memory":
                continue
            proc, url = start(policies, uri, workers)
            try:
                for c in CLIENTS:
                    r = asyncio.run(over_http(url, proc.pid, c, args.round_trips))
                    b = base[c]
                    print(f"| {kind} | http {workers}w | {c} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                          f"{r['cpu']:.2f} | {r['p50'] / b['p50']:.2f} | {b['rps'] / r['rps']:.2f} | "
                          f"{r['cpu'] / b['cpu']:.2f} |", flush=True)
            finally:
                stop(proc)


if __name__ == "__main__":
    main()
