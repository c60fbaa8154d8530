"""Fixtures and helpers for the ledger tests: real SQLite files, a real Redis.

Import what you use into the test module (``from ledger_fixtures import
store``); pytest then finds the fixtures there. Kept out of ``conftest.py``
on purpose (that file belongs to the core).

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
from typing import Any, Callable

import pytest

from chio_budget.ledger import Ledger, MemoryLedger

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
    """

    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self.opened: list[Ledger] = []
        self._memory: MemoryLedger | None = None
        if kind == "sqlite":
            self.uri = f"sqlite:///{tmp_path / 'ledger.db'}"
        elif kind == "redis":
            self.prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
            self.uri = f"{REDIS_URL}?prefix={self.prefix}"
        else:
            self.uri = "memory"

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
            if self.kind == "redis":
                try:
                    ledger.clear()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            ledger.close()


BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
SHARED_BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def make_store(kind: str, tmp_path: Path) -> Store:
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ledger_with_clock(store: Store, clock: Callable[[], float], **options: Any) -> Ledger:
    return store.open(clock=clock, **options)
