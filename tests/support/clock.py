"""The fake clock: time that moves only when a test moves it (plugin: ``clock``)."""

from __future__ import annotations

import pytest


class FakeClock:
    """A clock the test moves by hand, so TTL tests never wait on wall time.

    Pass it as a ledger's ``clock=`` (every backend takes one).
    """

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
