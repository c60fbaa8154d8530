"""Issue 9 item 4: the server engine's ``timeout`` bounds a decision's TOTAL time.

A server that trickles its answer one byte at a time never trips a per-read
timeout (every read gets a byte in time), so only a deadline on the whole
exchange (connect + send + every read) stops it. Each decision runs in a
worker thread joined with a generous bound derived from the timeout, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from chio_budget import BudgetGuard, EngineError
from chio_budget.engines import make_engine
from chio_budget.engines.deadline import Call
from support.guards import POLICIES_DIR, make_meta
from support.opa import REPO_COMPILED, engine_input

SLACK = 2.0  # seconds on top of the timeout: generous, never a tight wall-time claim


def _decide_within(engine, inp, bound: float):
    """``engine.decide(inp)`` in a thread; the decision, or None if it was still running after ``bound`` s."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(engine.decide(inp)), daemon=True)
    worker.start()
    worker.join(bound)
    return None if worker.is_alive() else out[0]


@pytest.mark.parametrize("trickle, trickle_after, timeout", [
    (1.0, 0, 1.5),     # the audit's repro: the whole answer, status line first, one byte a second
    (0.3, 120, 0.8),   # headers at once, then the body byte by byte
], ids=["whole_answer", "body_only"])
def test_a_trickling_server_is_cut_at_the_deadline_and_the_decision_denies(opa_server, trickle, trickle_after,
                                                                           timeout):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url, timeout=timeout, retries=0)
    try:
        assert engine.decide(engine_input(1)).allow  # healthy first: the same engine, the same pool
        opa_server.faults.set(trickle=trickle, trickle_after=trickle_after)
        d = _decide_within(engine, engine_input(1), timeout + SLACK)
        assert d is not None, f"the decision was still running {timeout + SLACK}s after it started"
        assert not d.allow and d.violations == []
        assert d.error.startswith("engine error: timeout"), d.error
        assert opa_server.faults.hits == 1  # one request, cut; never sent twice
        opa_server.faults.clear()
        assert engine.decide(engine_input(1)).allow  # the cut connection is not reused
    finally:
        opa_server.faults.clear()
        engine.close()


def test_authorize_through_a_trickling_server_denies_and_holds_nothing(opa_server):
    guard = BudgetGuard.from_files(POLICIES_DIR, engine="server", opa_url=opa_server.url, timeout=1.0, retries=0)
    try:
        opa_server.faults.set(trickle=0.5)
        out: list = []
        worker = threading.Thread(target=lambda: out.append(guard.authorize(make_meta(receipt="slow"), 100)),
                                  daemon=True)
        worker.start()
        worker.join(1.0 + SLACK)
        assert out, "authorize was still waiting on OPA past the deadline"
        assert not out[0].allow and "timeout" in out[0].decision.error
        assert guard.total_spent() == 0 and guard.ledger.open_reservations() == 0
    finally:
        opa_server.faults.clear()
        guard.close()


def test_the_watchdog_cuts_only_a_connection_the_call_still_holds():
    """A connection given back to the pool (``_put_conn`` -> ``detach``) is never cut for the old call."""
    mine, peer = socket.socketpair()
    try:
        conn = SimpleNamespace(sock=mine)
        late = Call(time.monotonic() + 60, 60)
        late.attach(conn)
        late.detach(conn)  # back in the pool; another call may take it now
        late.expire()
        peer.sendall(b"x")
        assert late.expired and mine.recv(1) == b"x"  # still a working connection
        holder = Call(time.monotonic() + 60, 60)
        holder.attach(conn)
        holder.expire()
        assert mine.recv(1) == b""  # cut: a blocked read would have returned at once
    finally:
        mine.close()
        peer.close()


def test_a_finished_call_is_never_cut():
    mine, peer = socket.socketpair()
    try:
        done = Call(time.monotonic() + 60, 60)
        done.attach(SimpleNamespace(sock=mine))
        done.finish()
        done.expire()
        peer.sendall(b"y")
        assert not done.fired and mine.recv(1) == b"y"
    finally:
        mine.close()
        peer.close()


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), None])
def test_a_timeout_that_bounds_nothing_is_refused(timeout):
    with pytest.raises(EngineError, match="timeout must be a finite number of seconds > 0"):
        make_engine("server", REPO_COMPILED, opa_url="http://127.0.0.1:1", timeout=timeout)


def test_a_closed_engine_denies_rather_than_deciding_without_a_deadline(opa_server):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url)
    engine.close()
    d = engine.decide(engine_input(1))
    assert not d.allow and d.error == "engine error: the engine is closed"
