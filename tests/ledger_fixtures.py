"""Fixtures and helpers for the ledger tests: real SQLite files, a real Redis.

Import what you use into the test module (``from ledger_fixtures import
store``); pytest then finds the fixtures there. Kept out of ``conftest.py``
on purpose (that file belongs to the core).

Redis: ``CHIO_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each
test gets its own key prefix and deletes its keys afterwards, so tests never
collide with each other or with anything else on the server. Without a
reachable server the Redis tests skip and say why, unless
``CHIO_REQUIRE_REDIS=1`` (CI), in which case they fail.

Redis Cluster: a real 3-master cluster on free loopback ports, started once
per test session on first use (``session_cluster``, also the session fixture
``redis_cluster``; ``redis_servers.py``) and stopped by PID when the session
ends; each test gets its own prefix there too. Skipped
only where ``redis-server``/``redis-cli`` are not installed, and failing
instead when ``CHIO_REQUIRE_CLUSTER=1`` (CI).

PostgreSQL: ``CHIO_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets its own
schema, dropped afterwards; without a server the tests skip loudly unless
``CHIO_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from chio_budget.ledger import Ledger, MemoryLedger

REDIS_URL = os.environ.get("CHIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CHIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_redis_problem: list[str | None] = []
_postgres_problem: list[str | None] = []


def redis_problem() -> str | None:
    """None when Redis answers PING, else why not (checked once per process)."""
    if not _redis_problem:
        try:
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2).ping()
            _redis_problem.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable Redis"
            _redis_problem.append(f"{type(exc).__name__}: {exc}")
    return _redis_problem[0]


def _need(name: str, url: str, problem: str | None, env: str) -> None:
    """Skip loudly when ``problem``; fail instead when ``env=1`` (CI)."""
    if problem is None:
        return
    msg = f"{name} not reachable at {url} ({problem}); start it, or set {env}=1 to turn this skip into a failure"
    if os.environ.get(env) == "1":
        pytest.fail(f"{env}=1 but " + msg, pytrace=False)
    pytest.skip(f"{name.upper()} TESTS SKIPPED: " + msg)


def need_redis() -> None:
    _need("Redis", REDIS_URL, redis_problem(), "CHIO_REQUIRE_REDIS")


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per process)."""
    if not _postgres_problem:
        try:
            import psycopg

            with psycopg.connect(POSTGRES_URL, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            _postgres_problem.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable PostgreSQL"
            _postgres_problem.append(f"{type(exc).__name__}: {str(exc).strip()}")
    return _postgres_problem[0]


def need_postgres() -> None:
    _need("PostgreSQL", POSTGRES_URL, postgres_problem(), "CHIO_REQUIRE_POSTGRES")


def need_cluster() -> None:
    from redis_servers import REDIS_CLI, REDIS_SERVER

    problem = None if REDIS_SERVER and REDIS_CLI else "redis-server and redis-cli are not both installed"
    _need("Redis Cluster", "free loopback ports", problem, "CHIO_REQUIRE_CLUSTER")


_cluster: list = []


def session_cluster(config: pytest.Config) -> str:
    """The session's 3-master Redis Cluster, started on first use and stopped (by PID) when the
    session ends; its URI (``redis+cluster://...``). Any test module can reach it this way,
    without importing a fixture."""
    need_cluster()
    if not _cluster:
        from redis_servers import RedisClusterProcess

        _cluster.append(RedisClusterProcess())
        config.add_cleanup(_cluster[0].stop)
    return _cluster[0].url


@pytest.fixture(scope="session")
def redis_cluster(pytestconfig: pytest.Config) -> str:
    """``session_cluster`` as a fixture."""
    return session_cluster(pytestconfig)


def postgres_uri(schema: str, query: str = "") -> str:
    return f"{POSTGRES_URL}?schema={schema}" + (f"&{query}" if query else "")


class FakeClock:
    """A clock the test moves by hand, so TTL tests never wait on wall time."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Store:
    """One backend's store; every ``open()`` is a new ledger object on the same data.

    memory: ``open()`` returns the one in-process ledger (it has no store to
    share). sqlite: one file in ``tmp_path``. redis: one unique key prefix.
    postgres: one unique schema.
    """

    def __init__(self, kind: str, tmp_path: Path, cluster_url: str | None = None):
        self.kind, self.cluster_url = kind, cluster_url
        self.opened: list[Ledger] = []
        self._memory: MemoryLedger | None = None
        if kind == "sqlite":
            self.uri = f"sqlite:///{tmp_path / 'ledger.db'}"
        elif kind == "redis":
            self.prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
            self.uri = f"{REDIS_URL}?prefix={self.prefix}"
        elif kind == "cluster":
            self.prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
            self.uri = f"{cluster_url}?prefix={self.prefix}"
        elif kind == "postgres":
            self.schema = f"chio_test_{uuid.uuid4().hex[:12]}"
            self.uri = postgres_uri(self.schema)
        else:
            self.uri = "memory"

    def another(self, tmp_path: Path) -> "Store":
        """A second, empty store of the same kind (another file, prefix or schema)."""
        return Store(self.kind, tmp_path, self.cluster_url)

    @property
    def shared(self) -> bool:
        """True when two ledger objects (processes, replicas) see the same counters."""
        return self.kind != "memory"

    def open(self, **options: Any) -> Ledger:
        from chio_budget.ledger import open_ledger

        if self.kind == "memory":
            if self._memory is None or options:
                self._memory = MemoryLedger(**options)
            return self._memory
        ledger = open_ledger(self.uri, **options)
        self.opened.append(ledger)
        return ledger

    def cleanup(self) -> None:
        for ledger in self.opened:
            try:
                if self.kind in ("redis", "cluster"):
                    ledger.clear()  # type: ignore[attr-defined]
                elif self.kind == "postgres":
                    ledger.drop()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            ledger.close()
        if self.kind == "postgres" and not self.opened:
            _drop_schema(self.schema)


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


SHARED_BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis),
                   pytest.param("cluster", marks=pytest.mark.cluster),
                   pytest.param("postgres", marks=pytest.mark.postgres)]
BACKENDS = ["memory", *SHARED_BACKENDS]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> Store:
    """A store of ``kind``; the cluster needs ``request`` (to reach the session's cluster)."""
    if kind == "redis":
        need_redis()
    elif kind == "postgres":
        need_postgres()
    elif kind == "cluster":
        need_cluster()
        assert request is not None, "the cluster store needs the test's request"
        return Store(kind, tmp_path, session_cluster(request.config))
    return Store(kind, tmp_path)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Every backend in turn: memory, a real SQLite file, the real Redis, a Redis Cluster, PostgreSQL."""
    s = make_store(request.param, tmp_path, request)
    yield s
    s.cleanup()


@pytest.fixture(params=SHARED_BACKENDS)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path):
    """The backends whose counters outlive a ledger object and are shared."""
    s = make_store(request.param, tmp_path, request)
    yield s
    s.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ledger_with_clock(store: Store, clock: Callable[[], float], **options: Any) -> Ledger:
    return store.open(clock=clock, **options)


# -- the overspend workload (threads, processes, crash child, bench) --------------------------

# Skewed on purpose (sess-0 and a0 are busy) so every scope's limit binds in one run.
SESSIONS = ["sess-0"] * 3 + [f"sess-{i}" for i in range(1, 6)] + [None, None]
AGENTS = ["a0"] * 3 + ["a1", "a2", "a3"]
TOOLS = [("s1", "expensive"), ("s1", "cheap"), ("s2", "search"), ("s3", "other")]
MAX_COST = 250


def tight_policy(total_ops: int):
    """Limits on every scope, sized so each binds well before ``total_ops`` requests end.

    Expected committed spend a request is about 0.6 x 125 units; the total
    limit is a fifth of that demand; the busy session, the busy agent and the
    limited tools reach theirs first.
    """
    from chio_budget.policy import BudgetPolicy

    demand = max(total_ops, 50) * 75
    return BudgetPolicy.model_validate({
        "id": "tight", "currency": "USD",
        "max_total": demand // 5,
        "max_per_session": demand // 30,
        "max_per_agent": demand // 16,
        "max_per_tool": {"s1:expensive": demand // 40, "s2:search": demand // 12},
    })


def run_requests(guard, worker: int, n: int, seed: int, start: "Callable[[], None] | None" = None) -> dict:
    """``n`` authorize -> commit/release/abandon calls of random cost through ``guard``.

    Returns what a careful caller knows afterwards: every commit the ledger
    confirmed (receipt, scope keys, amount), the abandoned receipts, counts.
    Allowed calls commit an actual cost no larger than the estimate (so a
    committed total above a limit can only come from a race), sometimes
    commit twice (must be a no-op), release, or walk away (TTL expiry).
    """
    from chio_budget import CostMetadata

    rnd = random.Random(seed * 1000 + worker)
    committed: list[tuple[str, dict[str, str], int]] = []
    out = {"committed": committed, "abandoned": [], "allowed": 0, "denied": 0, "errors": 0,
           "denied_scopes": {}, "double_commit_changed": 0}
    if start is not None:
        start()
    for i in range(n):
        server, tool = rnd.choice(TOOLS)
        meta = CostMetadata(receipt_id=f"w{worker}-{seed}-{i}", timestamp=1000 + i, session_id=rnd.choice(SESSIONS),
                            agent_id=rnd.choice(AGENTS), tool_server=server, tool_name=tool)
        cost = rnd.randint(0, MAX_COST)
        a = guard.authorize(meta, cost)
        if not a.allow:
            out["denied"] += 1
            if a.decision.error:
                out["errors"] += 1
            for v in a.decision.violations:
                out["denied_scopes"][v.scope] = out["denied_scopes"].get(v.scope, 0) + 1
            continue
        out["allowed"] += 1
        roll = rnd.random()
        if roll < 0.80:
            actual = rnd.randint(0, cost) if roll < 0.6 else None
            s = a.commit(actual)
            if s.outcome in ("committed", "committed_late"):
                committed.append((meta.receipt_id, guard.counter_keys(meta), s.amount))
            if rnd.random() < 0.1 and a.commit(actual).changed:
                out["double_commit_changed"] += 1
        elif roll < 0.95:
            a.release()
        else:
            out["abandoned"].append(meta.receipt_id)
    return out


def merge_results(results: list[dict]) -> dict:
    merged = {"committed": [], "abandoned": [], "allowed": 0, "denied": 0, "errors": 0, "denied_scopes": {},
              "double_commit_changed": 0}
    for r in results:
        merged["committed"] += r["committed"]
        merged["abandoned"] += r["abandoned"]
        for k in ("allowed", "denied", "errors", "double_commit_changed"):
            merged[k] += r[k]
        for scope, n in r["denied_scopes"].items():
            merged["denied_scopes"][scope] = merged["denied_scopes"].get(scope, 0) + n
    return merged


def audit(policy, ledger, committed: "list[tuple[str, dict[str, str], int]]") -> dict:
    """Compare what was committed with the limits and with the ledger.

    ``overspend``: units committed beyond a limit, summed over every limited
    counter (must be 0). ``mismatch``: counters whose ledger value differs
    from the sum of the commits touching them (must be empty). Call after
    every reservation is settled or expired.
    """
    sums: dict[str, int] = {}
    limit_of: dict[str, int] = {}
    for _, keys, amount in committed:
        for scope, key in keys.items():
            sums[key] = sums.get(key, 0) + amount
            limit = _limit(policy, scope, key)
            if limit is not None:
                limit_of[key] = limit
    seen = sorted(sums)
    values = dict(zip(seen, ledger.totals(seen))) if seen else {}
    over = {k: sums[k] - limit_of[k] for k in limit_of if sums[k] > limit_of[k]}
    mismatch = {k: (values[k], sums[k]) for k in seen if values[k] != sums[k]}
    return {"overspend": sum(over.values()), "over": over, "mismatch": mismatch,
            "committed_units": sum(a for _, _, a in committed), "commits": len(committed),
            "limited_counters": len(limit_of)}


def _limit(policy, scope: str, key: str) -> int | None:
    from urllib.parse import unquote

    if scope == "total":
        return policy.max_total.units
    if scope == "session":
        return policy.max_per_session.units if policy.max_per_session else None
    if scope == "agent":
        return policy.max_per_agent.units if policy.max_per_agent else None
    tool = unquote(key.rsplit("/", 1)[1])
    m = policy.max_per_tool.get(tool) if policy.max_per_tool else None
    return None if m is None else m.units


def embedded_guard(policy, ledger, **kw):
    """A ``BudgetGuard`` with the real embedded OPA over ``ledger`` (URI or object)."""
    from chio_budget import BudgetGuard
    from chio_budget.compiler import data_document
    from chio_budget.engines.embedded import EmbeddedEngine

    engine = EmbeddedEngine(data_document({policy.id: policy}), Path(__file__).resolve().parent.parent / "rego")
    return BudgetGuard(policy, engine, ledger, **kw)


def process_worker(uri: str, total_ops: int, worker: int, n: int, seed: int, go_file: str) -> dict:
    """One process of the multi-process test: its own guard, the shared ledger URI."""
    import time as _time

    guard = embedded_guard(tight_policy(total_ops), uri, reservation_ttl=3600)

    def wait_for_go() -> None:  # start together so the processes really contend
        while not os.path.exists(go_file):
            _time.sleep(0.005)

    try:
        return run_requests(guard, worker, n, seed, start=wait_for_go)
    finally:
        guard.close()


def crash_child(uri: str, log_path: str, seed: int) -> None:
    """Authorize/commit forever on ``uri``; log ``receipt amount`` only after commit returns.

    The parent kills this process with SIGKILL at an arbitrary point. The log
    is written with one ``os.write`` per line on an O_APPEND descriptor, so a
    line is either there whole or not at all.
    """
    from chio_budget.policy import BudgetPolicy

    policy = BudgetPolicy.model_validate({"id": "crash", "currency": "USD", "max_total": 10**12,
                                          "max_per_session": 10**9, "max_per_agent": 10**10})
    guard = embedded_guard(policy, uri, reservation_ttl=60)
    from chio_budget import CostMetadata

    rnd = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = 0
    while True:
        i += 1
        server, tool = rnd.choice(TOOLS)
        meta = CostMetadata(receipt_id=f"crash-{seed}-{i}", timestamp=i, session_id=rnd.choice(SESSIONS),
                            agent_id=rnd.choice(AGENTS), tool_server=server, tool_name=tool)
        a = guard.authorize(meta, rnd.randint(1, 1000))
        if not a.allow:
            continue
        if rnd.random() < 0.85:
            s = a.commit(rnd.randint(0, 1000))
            if s.outcome == "committed":
                os.write(fd, f"{meta.receipt_id} {s.amount}\n".encode())
        elif rnd.random() < 0.5:
            a.release()
        # else: walk away; the reservation must expire, never count as spend


# -- fault injection over a real ledger ------------------------------------------------------


class Faulty:
    """A real ledger whose chosen operations fail with ``LedgerError``.

    ``reserve_fails="after"``: the reservation is made, then the call fails
    (a reply lost to a timeout); ``"before"``: it fails without running.
    ``release_fails=True``: every release fails without running. Everything
    else goes to the real ledger underneath.
    """

    def __init__(self, inner, *, reserve_fails: str | None = None, release_fails: bool = False):
        self.inner, self.reserve_fails, self.release_fails = inner, reserve_fails, release_fails
        self.releases: list[tuple[str, str | None]] = []

    def reserve(self, receipt_id, keys, cost, ttl=None, **kw):
        from chio_budget.errors import LedgerError

        if self.reserve_fails == "before":
            raise LedgerError("injected: reserve failed before running")
        r = self.inner.reserve(receipt_id, keys, cost, ttl, **kw)
        if self.reserve_fails == "after":
            raise LedgerError("injected: reserve ran, its reply was lost")
        return r

    def release(self, receipt_id, **kw):
        from chio_budget.errors import LedgerError

        self.releases.append((receipt_id, kw.get("attempt")))
        if self.release_fails:
            raise LedgerError("injected: release failed")
        return self.inner.release(receipt_id, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def late_commit_worker(uri: str, receipt_id: str, go_file: str, skew: float) -> str:
    """One process of the late-commit test: wait for the go file, commit ``receipt_id`` with a
    clock ``skew`` seconds ahead (past its TTL); the outcome."""
    import time as _time

    from chio_budget.ledger import open_ledger

    ledger = open_ledger(uri, clock=lambda: _time.time() + skew)
    try:
        while not os.path.exists(go_file):
            _time.sleep(0.002)
        return ledger.commit(receipt_id).outcome
    finally:
        ledger.close()


# -- workers of the extension tests (module level: spawned processes import them) ---------------


def _opened_and_started(ledger, start):
    """``(ledger, close?)``: a URI is opened here; ``start`` is a callable or a go file to wait for."""
    import time as _time

    from chio_budget.ledger import open_ledger

    opened = isinstance(ledger, str)
    if opened:
        ledger = open_ledger(ledger)
    if callable(start):
        start()
    elif start is not None:
        while not os.path.exists(start):
            _time.sleep(0.002)
    return ledger, opened


def window_worker(ledger, worker: int, n: int, start=None) -> int:
    """``n`` reservations of 7 on either bucket of a two-bucket window (limit 100), each
    reading the other bucket; keeps a hold only when it fits, releases it otherwise.
    Returns how many holds it kept."""
    ledger, opened = _opened_and_started(ledger, start)
    buckets = [("p/b2/total/", "p/b1/total/"), ("p/b1/total/", "p/b2/total/")]
    kept = 0
    try:
        for i in range(n):
            key, other = buckets[(worker + i) % 2]
            rid = f"win-{worker}-{i}"
            if ledger.reserve(rid, [key], 7, reads={key: [other]}).before[0] + 7 <= 100:
                kept += 1
            else:
                ledger.release(rid)
        return kept
    finally:
        if opened:
            ledger.close()


def fleet_worker(uri: str, worker: int, n: int, marks: list[str], go_file: str) -> tuple[int, list[str]]:
    """``window_worker`` on ``uri`` once the go file exists, then every mark tried once:
    ``(holds kept, the marks this process was first to set)``."""
    ledger, _ = _opened_and_started(uri, go_file)
    try:
        return window_worker(ledger, worker, n), [m for m in marks if ledger.mark_once(m, ttl=3600)]
    finally:
        ledger.close()
