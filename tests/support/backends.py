"""The ledger backend picker: memory, a real SQLite file, the real Redis (plugin).

Fixtures ``store`` (every backend in turn) and ``shared_store`` (the
backends whose counters two ledger objects - two processes, two replicas -
share). A ``Store`` opens ledger objects on one backend's data and cleans
up after the test.

Redis: ``CHIO_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each
test gets its own key prefix and deletes its keys afterwards, so tests never
collide with each other or with anything else on the server. Without a
reachable server the Redis tests skip and say why, unless
``CHIO_REQUIRE_REDIS=1`` (CI), in which case they fail.
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
_redis_problem: list[str | None] = []


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


def need_redis() -> None:
    """Skip loudly without Redis; fail instead when ``CHIO_REQUIRE_REDIS=1``."""
    problem = redis_problem()
    if problem is None:
        return
    msg = (f"Redis not reachable at {REDIS_URL} ({problem}); start redis-server, "
           "or set CHIO_REQUIRE_REDIS=1 to turn this skip into a failure")
    if os.environ.get("CHIO_REQUIRE_REDIS") == "1":
        pytest.fail("CHIO_REQUIRE_REDIS=1 but " + msg, pytrace=False)
    pytest.skip("REDIS TESTS SKIPPED: " + msg)


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
    share). sqlite: one file in ``tmp_path``. redis: one unique key prefix.
    ``uri`` opens the same data from another process.
    """

    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self.opened: list[Ledger] = []
        self._memory: MemoryLedger | None = None
        self.prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
        if kind == "sqlite":
            self.uri = f"sqlite:///{tmp_path / 'ledger.db'}"
        elif kind == "redis":
            self.uri = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={self.prefix}"
        else:
            self.uri = "memory"

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
        for ledger in self.opened:
            ledger.close()
        if self.kind == "redis":
            delete_redis_prefix(self.prefix)


BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
SHARED_BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def make_store(kind: str, tmp_path: Path) -> Store:
    """A ``Store`` outside a fixture (hypothesis machines, subprocess tests); call ``cleanup()``."""
    if kind == "redis":
        need_redis()
    return Store(kind, tmp_path)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Every backend in turn: memory, a real SQLite file, the real Redis."""
    s = make_store(request.param, tmp_path)
    yield s
    s.cleanup()


@pytest.fixture(params=SHARED_BACKENDS)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path):
    """The backends whose counters outlive a ledger object and are shared."""
    s = make_store(request.param, tmp_path)
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
