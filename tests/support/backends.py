"""The ledger backend picker: memory, a real SQLite file, the real Redis, a real Redis
Cluster, the real PostgreSQL (plugin).

Fixtures ``store`` (every backend in turn) and ``shared_store`` (the
backends whose counters two ledger objects - two processes, two replicas -
share). A ``Store`` opens ledger objects on one backend's data and cleans
up after the test.

Redis: ``CHIO_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each
test gets its own key prefix and deletes its keys afterwards, so tests never
collide with each other or with anything else on the server. Without a
reachable server the Redis tests skip and say why, unless
``CHIO_REQUIRE_REDIS=1`` (CI), in which case they fail.

Redis Cluster: a real 3-master cluster on free loopback ports, started once
per test session on first use (``session_cluster``, also the session fixture
``redis_cluster``; ``support/redis_servers.py``) and stopped by PID when the
session ends; each test gets its own prefix there too. Skipped only where
``redis-server``/``redis-cli`` are not installed, failing instead when
``CHIO_REQUIRE_CLUSTER=1`` (CI).

PostgreSQL: ``CHIO_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets its own
schema, dropped afterwards; without a server the tests skip loudly unless
``CHIO_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from chio_budget.errors import LedgerError
from chio_budget.ledger import Ledger, MemoryLedger, open_ledger

REDIS_URL = os.environ.get("CHIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CHIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_redis_problem: list[str | None] = []
_postgres_problem: list[str | None] = []
_cluster: list = []


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


def postgres_uri(schema: str, query: str = "") -> str:
    return f"{POSTGRES_URL}?schema={schema}" + (f"&{query}" if query else "")


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def need_cluster() -> None:
    from .redis_servers import REDIS_CLI, REDIS_SERVER

    problem = None if REDIS_SERVER and REDIS_CLI else "redis-server and redis-cli are not both installed"
    _need("Redis Cluster", "free loopback ports", problem, "CHIO_REQUIRE_CLUSTER")


_config: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    """Remember the session's config: the cluster stops with it (this module is a plugin)."""
    _config[:] = [config]


def session_cluster() -> str:
    """The session's 3-master Redis Cluster, started on first use and stopped (by PID) when the
    session ends; its URI (``redis+cluster://...``)."""
    need_cluster()
    if not _cluster:
        from .redis_servers import RedisClusterProcess

        _cluster.append(RedisClusterProcess())
        _config[0].add_cleanup(_cluster[0].stop)
    return _cluster[0].url


@pytest.fixture(scope="session")
def redis_cluster() -> str:
    """``session_cluster`` as a fixture."""
    return session_cluster()


def delete_redis_prefix(prefix: str) -> None:
    """Delete every key a ledger with ``prefix`` wrote (its keys share the hash tag ``{prefix}``)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Store:
    """One backend's store; every ``open()`` is a new ledger object on the same data.

    memory: ``open()`` returns the one in-process ledger (it has no store to
    share). sqlite: one file in ``tmp_path``. redis and cluster: one unique
    key prefix. postgres: one unique schema. ``uri`` opens the same data from
    another process.
    """

    def __init__(self, kind: str, tmp_path: Path, cluster_url: str | None = None):
        self.kind, self.cluster_url = kind, cluster_url
        self.opened: list[Ledger] = []
        self._memory: MemoryLedger | None = None
        self.prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
        self.schema = f"chio_test_{uuid.uuid4().hex[:12]}"
        if kind == "sqlite":
            self.uri = f"sqlite:///{tmp_path / 'ledger.db'}"
        elif kind == "redis":
            self.uri = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={self.prefix}"
        elif kind == "cluster":
            self.uri = f"{cluster_url}?prefix={self.prefix}"
        elif kind == "postgres":
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
        if self.kind == "memory":
            if self._memory is None or options:
                self._memory = MemoryLedger(**options)
            return self._memory
        ledger = open_ledger(self.uri, **options)
        self.opened.append(ledger)
        return ledger

    def cleanup(self) -> None:
        if self.kind == "cluster":
            for ledger in self.opened:
                try:
                    ledger.clear()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        for ledger in self.opened:
            ledger.close()
        if self.kind == "redis":
            delete_redis_prefix(self.prefix)
        elif self.kind == "postgres":
            drop_schema(self.schema)


SHARED_BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis),
                   pytest.param("cluster", marks=pytest.mark.cluster),
                   pytest.param("postgres", marks=pytest.mark.postgres)]
BACKENDS = ["memory", *SHARED_BACKENDS]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> Store:
    """A ``Store`` outside a fixture (hypothesis machines, subprocess tests); call ``cleanup()``.
    (``request`` is accepted and not needed.)"""
    if kind == "redis":
        need_redis()
    elif kind == "postgres":
        need_postgres()
    elif kind == "cluster":
        return Store(kind, tmp_path, session_cluster())
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


class Faulty:
    """A real ledger whose chosen operations fail with ``LedgerError``.

    ``reserve_fails="after"``: the reservation is made, then the call fails
    (a reply lost to a timeout); ``"before"``: it fails without running.
    ``release_fails=True``: every release fails without running;
    ``get_fails=True``: every ``get``. Everything else goes to the real
    ledger underneath. The switches may be flipped during a test.
    """

    def __init__(self, inner: Ledger, *, reserve_fails: str | None = None, release_fails: bool = False,
                 get_fails: bool = False):
        self.inner, self.reserve_fails, self.release_fails = inner, reserve_fails, release_fails
        self.get_fails = get_fails
        self.releases: list[tuple[str, str | None]] = []

    def get(self, receipt_id):
        if self.get_fails:
            raise LedgerError("injected: get failed")
        return self.inner.get(receipt_id)

    def reserve(self, receipt_id, keys, cost, ttl=None, **kw):
        if self.reserve_fails == "before":
            raise LedgerError("injected: reserve failed before running")
        r = self.inner.reserve(receipt_id, keys, cost, ttl, **kw)
        if self.reserve_fails == "after":
            raise LedgerError("injected: reserve ran, its reply was lost")
        return r

    def release(self, receipt_id, **kw):
        self.releases.append((receipt_id, kw.get("attempt")))
        if self.release_fails:
            raise LedgerError("injected: release failed")
        return self.inner.release(receipt_id, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)
