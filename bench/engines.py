"""Decision latency: server engine (HTTP to OPA) next to the embedded engine.

Same 5,000 inputs, one run, each decision timed on its own with
``perf_counter_ns``, the engines taking turns input by input (so machine
load hits them alike); prints median and p99 per engine (and a parity
count). A third line times the same POST through a stock ``OpaClient``
(``query_rule``: no total deadline, per-read timeouts only), so the cost of
the server engine's deadline machinery shows as the difference.
The server runs in a process of its own: a real ``opa run --server`` when
``OPA_BIN``/PATH has one, else the loopback stand-in started by its command
line (``python tests/opa_standin.py --addr ... --bundle ...``: Python HTTP in
front of the same embedded OPA, so its numbers include that server's own
Python overhead). ``--opa-url`` measures a server already running (it must
serve this repository's bundle). Nothing from the test suite is imported.
Measures only; never fails on time.

    .venv/bin/python bench/engines.py [-n 5000] [--opa-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES_DIR, REGO_DIR = ROOT / "policies", ROOT / "rego"
sys.path[:0] = [str(ROOT / "plugin")]

import requests  # noqa: E402
from opa_client import OpaClient  # noqa: E402

from chio_budget.compiler import compile_all  # noqa: E402
from chio_budget.decision import Decision  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.engines.opa_http import make_client  # noqa: E402
from chio_budget.engines.server import ServerEngine  # noqa: E402
from chio_budget.policy import load_policies  # noqa: E402
from chio_budget.bundle import write_bundle  # noqa: E402


def start_server(bundle: Path) -> tuple[str, str, subprocess.Popen]:
    """``(url, what it is, process)``: a real ``opa`` serving ``bundle``, else the stand-in, healthy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{sock.getsockname()[1]}"
    opa = os.environ.get("OPA_BIN") or shutil.which("opa")
    if opa:
        cmd, kind = [opa, "run", "--server", "--addr", addr, "--log-level", "error", "--bundle", str(bundle)], f"opa ({opa})"
    else:
        cmd = [sys.executable, str(ROOT / "tests" / "opa_standin.py"), "--addr", addr, "--bundle", str(bundle)]
        kind = "stand-in in its own process (no opa binary found)"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, deadline = f"http://{addr}", time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return url, kind, proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{' '.join(cmd)} did not become healthy: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)


def inputs(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        session = rnd.choice([None, "sess-1", "sess-2"])
        tool = rnd.choice(["search", "expensive", "t1"])
        out.append({
            "policy_id": "default",
            "request": {"receipt_id": f"r{i}", "timestamp": 1000 + i, "agent_id": f"a{rnd.randrange(5)}",
                        "session_id": session, "tool_server": "s1", "tool_name": tool, "tool_key": f"s1:{tool}"},
            "cost": {"units": rnd.randrange(0, 600), "currency": "USD"},
            "totals": {"total": rnd.randrange(0, 10500), "session": None if session is None else rnd.randrange(0, 5200),
                       "agent": rnd.randrange(0, 3100), "tool": rnd.randrange(0, 600)},
        })
    return out


def timed(deciders: dict, batch: list[dict]) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Time each decider on every input, taking turns input by input."""
    for inp in batch[:200]:  # warm-up: connections, prepared queries
        for decide in deciders.values():
            decide(inp)
    lat: dict[str, list[float]] = {name: [] for name in deciders}
    results: dict[str, list] = {name: [] for name in deciders}
    for inp in batch:
        for name, decide in deciders.items():
            t0 = time.perf_counter_ns()
            out = decide(inp)
            lat[name].append((time.perf_counter_ns() - t0) / 1e6)
            results[name].append(out)
    return lat, results


def summary(name: str, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return (f"{name:<28} median {statistics.median(lat):7.3f} ms   p99 {q[98]:7.3f} ms   "
            f"mean {statistics.fmean(lat):7.3f} ms   max {max(lat):7.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--opa-url", help="a running OPA serving this repository's bundle (default: start one)")
    args = ap.parse_args()
    data = compile_all(load_policies(POLICIES_DIR))
    batch = inputs(args.n)
    proc = None
    if args.opa_url:
        url, kind = args.opa_url.rstrip("/"), f"running at {args.opa_url}"
    else:
        bundle = ROOT / "build" / "bench-bundle.tar.gz"
        write_bundle(POLICIES_DIR, REGO_DIR, bundle)
        url, kind, proc = start_server(bundle)
    embedded = EmbeddedEngine(data, REGO_DIR)
    remote = ServerEngine(make_client(url), data, url=url)
    host, _, port = url.removeprefix("http://").partition(":")
    stock = OpaClient(host=host, port=int(port), timeout=1.5, retries=2)
    try:
        lat, res = timed({"embedded": lambda i: embedded.decide(i).to_json_dict(),
                          "server": lambda i: remote.decide(i).to_json_dict(),
                          "stock": lambda i: Decision.from_opa(stock.query_rule(i, "chio.budget", "decision")
                                                               .get("result"), i["policy_id"]).to_json_dict()},
                         batch)
        session, health = requests.Session(), url + "/health"
        h_lat = []
        for _ in range(len(batch)):  # the transport alone: no evaluation
            t0 = time.perf_counter_ns()
            session.get(health, timeout=5)
            h_lat.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        embedded.close()
        remote.close()
        stock.close_connection()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    same = sum(a == b == c for a, b, c in zip(res["embedded"], res["server"], res["stock"]))
    allowed = sum(r["allow"] for r in res["embedded"])
    print(f"{args.n} decisions each, same inputs ({allowed} allowed, {args.n - allowed} denied); server: {kind}")
    print(summary("embedded (in-process OPA)", lat["embedded"]))
    print(summary("server engine (HTTP)", lat["server"]))
    print(summary("  same POST, stock OpaClient", lat["stock"]))
    print(summary("  HTTP alone (GET /health)", h_lat))
    print(f"identical decision JSON: {same}/{args.n}")


if __name__ == "__main__":
    main()
