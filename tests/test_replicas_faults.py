"""A fleet of kernel replicas on one shared ledger, with faults (issue 13 part 3).

Four processes (``support/fleet_replica.py``), each its own ``BudgetGuard`` with the
real embedded OPA, authorize -> commit/release random costs against a small
budget until it is spent, on PostgreSQL, on a Redis server of the test's own
(``appendonly yes``, ``appendfsync always``) and on a Redis Cluster of the
test's own (durable the same way). While they run, the test:

- SIGKILLs one replica once a quarter of the budget is spent;
- takes the ledger away for a second once 45% is spent: PostgreSQL — every
  replica's backend terminated with ``pg_terminate_backend`` and the
  database unreachable (the replicas connect through loopback proxies that
  refuse connections meanwhile); Redis — the server SIGKILLed and started
  again on the same port; Redis Cluster — the master holding the ledger's
  slot SIGKILLed and started again;
- delays one replica's traffic through a loopback proxy (PostgreSQL, Redis;
  the cluster's clients follow the nodes' own addresses, so no proxy there).

Afterwards, with every reservation settled or expired: spent <= limit on
every limited counter; spent == the sum of the commits the replicas had
acknowledged (plus at most one receipt the killed replica committed before
it could log it, found in the ledger); no receipt acknowledged twice and no
receipt counted twice (every counter equals the sum of its committed
receipts as the ledger records them); nothing held; and every decision made
entirely inside the outage is a deny with a cause (``Decision.error``). The
figures are printed (``-s``) and collected in docs/ledgers.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from chio_budget.ledger import open_ledger
from support.backends import POSTGRES_URL, drop_schema, need_cluster, need_postgres
from support.fleet_replica import POLICY, TTL
from support.guards import ROOT
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow
REPLICAS = 4
KILLED = 1  # the replica that is SIGKILLed
OUTAGE = 1.0  # seconds the ledger is away (PostgreSQL: 2.5, since a call waits pool_timeout for a connection)


def _spawn(uri: str, log: Path, seed: int, go: Path, stop: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "plugin"), str(ROOT / "tests")]),
               GOMAXPROCS="1")
    code = f"import support.fleet_replica as f; f.main({uri!r}, {str(log)!r}, {seed}, {str(go)!r}, {str(stop)!r})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _run(tmp_path: Path, uris: list[str], ledger, outage: Callable[[], tuple[float, float]]) -> dict:
    """Run the fleet with the faults; the events of every replica and the fault times."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    logs = [tmp_path / f"replica-{i}.jsonl" for i in range(REPLICAS)]
    procs = [_spawn(uri, log, seed, go, stop) for seed, (uri, log) in enumerate(zip(uris, logs))]
    try:
        deadline = time.time() + 120
        while not all(any(e["k"] == "ready" for e in _events(log)) for log in logs):
            assert all(p.poll() is None for p in procs), [p.stderr.read().decode()[-2000:] for p in procs
                                                          if p.poll() is not None]
            assert time.time() < deadline, "replicas did not start"
            time.sleep(0.05)
        go.touch()
        t_go, limit, total = time.time(), POLICY["max_total"], "fleet//total/"
        killed_at = window = None
        while any(p.poll() is None for p in procs) and time.time() < t_go + 60:
            spent = ledger.balances([total])[0].spent if window is None else 0  # no polling after the outage
            if killed_at is None and spent >= limit // 4:
                os.kill(procs[KILLED].pid, signal.SIGKILL)
                procs[KILLED].wait()
                killed_at = time.time()
            elif killed_at is not None and window is None and spent >= limit * 45 // 100:
                window = outage()
            time.sleep(0.02)
        stop.touch()
        for p in procs:
            p.wait(30)
        assert window is not None, "the fleet spent the budget before the outage could be injected"
        return {"events": [_events(log) for log in logs], "window": window, "t_go": t_go,
                "t_end": time.time(), "codes": [p.returncode for p in procs],
                "stderr": [p.stderr.read().decode()[-2000:] for p in procs]}
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()


def _settle_all(ledger) -> None:
    """Wait out the TTL (the ledger's own clock) and expire what the dead and the outage left."""
    time.sleep(TTL + 0.5)
    deadline = time.time() + 20
    while True:
        ledger.expire()
        if ledger.open_reservations() == 0:
            return
        assert time.time() < deadline, "reservations still held long after their TTL"
        time.sleep(0.2)


def _audit(run: dict, uri: str, label: str) -> dict:
    """The invariants, checked on a ledger opened afresh (the old connections died in the outage)."""
    ledger = open_ledger(uri)
    try:
        return _check(run, ledger, label)
    finally:
        ledger.close()


def _check(run: dict, ledger, label: str) -> dict:
    events = run["events"]
    assert run["codes"][KILLED] == -signal.SIGKILL, run["codes"]
    assert all(c == 0 for i, c in enumerate(run["codes"]) if i != KILLED), run["stderr"]
    decisions = [e for ev in events for e in ev if e["k"] == "d"]
    acks = [e for ev in events for e in ev if e["k"] == "ack"]
    acked = {}
    for a in acks:
        assert a["rid"] not in acked, f"{a['rid']} acknowledged twice"
        acked[a["rid"]] = a
    _settle_all(ledger)
    # every allowed receipt as the ledger records it: committed ones count, nothing else does
    records = {d["rid"]: ledger.get(d["rid"]) for d in decisions if d["allow"]}
    committed = {rid: r for rid, r in records.items() if r is not None and r.state == "committed"}
    unacked = sorted(set(committed) - set(acked))
    assert set(acked) <= set(committed), "an acknowledged commit the ledger does not have"
    assert all(rid.startswith(f"r{KILLED}-") for rid in unacked) and len(unacked) <= 1, \
        f"committed without an acknowledgement, not by the killed replica in flight: {unacked}"
    for rid, a in acked.items():
        assert committed[rid].settled_amount == a["amount"], rid
    balances = dict(ledger.counters())
    want: dict[str, int] = {}
    for r in committed.values():
        for k in r.keys:
            want[k] = want.get(k, 0) + r.settled_amount
    assert {k: b.spent for k, b in balances.items()} == want, "a counter differs from its committed receipts"
    assert all(b.held == 0 for b in balances.values()), "something is still held after the TTL"
    from_acks = sum(a["amount"] for a in acks)
    spent_total = balances["fleet//total/"].spent
    assert spent_total == from_acks + sum(committed[rid].settled_amount for rid in unacked)
    limits = {"fleet//total/": POLICY["max_total"], "fleet//tool/s1:expensive": POLICY["max_per_tool"]["s1:expensive"],
              **{f"fleet//agent/a{i}": POLICY["max_per_agent"] for i in range(4)}}
    over = {k: balances[k].spent - v for k, v in limits.items() if k in balances and balances[k].spent > v}
    assert over == {}, f"overspent: {over}"
    start, end = run["window"]
    inside = [d for d in decisions if d["t0"] >= start and d["t1"] <= end]
    assert inside, "no decision fell inside the outage (the test did not observe it)"
    bad = [d for d in inside if d["allow"] or not d["error"]]
    assert bad == [], f"decisions inside the outage that were not a deny with a cause: {bad[:3]}"
    report = {"decisions": len(decisions), "allowed": sum(d["allow"] for d in decisions),
              "denied_budget": sum(not d["allow"] and not d["error"] for d in decisions),
              "denied_cause": sum(bool(d["error"]) for d in decisions), "outage_decisions": len(inside),
              "outage_s": round(end - start, 2), "acks": len(acks),
              "acks_after_retry": sum(a["outcome"] == "already_committed" for a in acks),
              "settle_errors": sum(e["k"] == "settle_error" for ev in events for e in ev),
              "killed_in_flight_committed": len(unacked), "spent": spent_total, "limit": POLICY["max_total"],
              "run_s": round(run["t_end"] - run["t_go"], 1)}
    print(f"\n{label}: {report}")
    return report


# -- the three shared ledgers -------------------------------------------------------------------


def test_fleet_on_postgres_survives_a_kill_terminated_backends_and_a_partition(tmp_path):
    need_postgres()
    schema, app = f"chio_fleet_{uuid.uuid4().hex[:10]}", f"chio-fleet-{uuid.uuid4().hex[:8]}"
    host_port = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]
    upstream = (host_port.split(":")[0], int(host_port.split(":")[1]))
    proxies = [TcpProxy(upstream), TcpProxy(upstream, delay=0.002)]  # the last replica on a slow path
    query = f"schema={schema}&application_name={app}&pool_min=1&pool_max=2&pool_timeout=0.25"
    uris = [POSTGRES_URL.replace(host_port, f"127.0.0.1:{proxies[i == REPLICAS - 1].port}") + f"?{query}"
            for i in range(REPLICAS)]
    ledger = open_ledger(f"{POSTGRES_URL}?schema={schema}")
    ledger.totals(["fleet//total/"])  # the schema exists before the replicas start

    def outage() -> tuple[float, float]:
        for p in proxies:
            p.down.set()
            p.cut()
        start = time.time()
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         [app])
        time.sleep(2.5 * OUTAGE)
        end = time.time()
        for p in proxies:
            p.down.clear()
        return start, end

    try:
        _audit(_run(tmp_path, uris, ledger, outage), f"{POSTGRES_URL}?schema={schema}", "postgres")
    finally:
        ledger.close()
        for p in proxies:
            p.close()
        drop_schema(schema)


def test_fleet_on_redis_survives_a_kill_and_a_server_killed_and_restarted(tmp_path):
    need_cluster()  # a server of our own: needs redis-server, like the cluster
    from support.redis_servers import RedisServer

    server = RedisServer(durable=True)
    slow = TcpProxy(("127.0.0.1", server.port), delay=0.002)
    prefix = f"chio-fleet-{uuid.uuid4().hex[:8]}"
    uris = [f"{server.url}?prefix={prefix}&socket_timeout=1"] * (REPLICAS - 1) + \
        [f"redis://127.0.0.1:{slow.port}/0?prefix={prefix}&socket_timeout=1"]
    ledger = open_ledger(f"{server.url}?prefix={prefix}")

    def outage() -> tuple[float, float]:
        server.kill()
        start = time.time()
        time.sleep(OUTAGE)
        end = time.time()
        server.start()  # same port, same AOF: every acknowledged write is back
        return start, end

    try:
        _audit(_run(tmp_path, uris, ledger, outage), f"{server.url}?prefix={prefix}", "redis")
    finally:
        ledger.close()
        slow.close()
        server.stop()


def test_fleet_on_redis_cluster_survives_a_kill_and_its_master_killed_and_restarted(tmp_path):
    need_cluster()
    from support.redis_servers import RedisClusterProcess

    cluster = RedisClusterProcess(durable=True)
    prefix = f"chio-fleet-{uuid.uuid4().hex[:8]}"
    uri = f"{cluster.url}?prefix={prefix}&socket_timeout=1"
    ledger = open_ledger(uri)
    master = cluster.owner("{" + prefix + "}:spent")

    def outage() -> tuple[float, float]:
        master.kill()
        start = time.time()
        time.sleep(OUTAGE)
        end = time.time()
        master.start()
        cluster.wait_ok()
        return start, end

    try:
        _audit(_run(tmp_path, [uri] * REPLICAS, ledger, outage), uri, "redis-cluster")
    finally:
        ledger.close()
        cluster.stop()
