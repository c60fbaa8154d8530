"""Soft-limit warnings are emitted once per threshold, window and counter, across processes (issue 11)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.chain import GuardChain
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.decisionlog import DecisionLog
from chio_budget.errors import LedgerError
from chio_budget.kernel import GuardContext
from chio_budget.metrics import BudgetMetrics
from chio_budget.policy import parse_policy
from support.guards import guard_for
from support.backends import SHARED_BACKENDS, make_store

T = 1772964000  # 2026-03-08T10:00:00Z; the next UTC day starts at T + 50400
DAILY = parse_policy("id: soft\ncurrency: USD\nwindow: daily\nwarn_at: [0.5, 0.8]\nmax_total: 1000\n"
                     "max_per_agent: {units: 600, warn_at: [0.9], window: all_time}\n", "soft.yaml")


def meta(receipt: str, t: int = T, agent: str = "a1") -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=t, agent_id=agent, tool_server="s1", tool_name="t1")


def warned_guard(ledger, seen: list):
    return guard_for(DAILY, ledger=ledger, on_warning=seen.append)


def test_a_crossing_is_emitted_once_then_never_again_in_its_window(store):
    seen: list = []
    guard = warned_guard(store.open(), seen)
    for i in range(4):  # 400: below 50%
        assert guard.authorize(meta(f"r{i}", agent=f"x{i}"), 100).allow
    assert seen == []
    auth = guard.authorize(meta("r4", agent="x4"), 100)  # 500: reaches 50% of the day's 1000
    assert [(e.scope, e.threshold_bps) for e in auth.warnings_emitted] == [("total", 5000)]
    assert [e.warning["threshold"] for e in seen] == [0.5]
    assert seen[0].warning["window"] == "daily" and seen[0].counter == "soft/d:2026-03-08@UTC/total/"
    assert seen[0].describe() == "total daily budget at 50%: 400 spent + 100 requested >= 50% of 1000 USD"
    guard.authorize(meta("r5", agent="x5"), 50)  # 550: past 50% again, but not crossing
    assert len(seen) == 1
    d = guard.check(meta("peek"), 0)  # the decision still reports it; checks never emit
    assert [w["threshold"] for w in d.warnings] == [0.5] and len(seen) == 1


def test_each_threshold_and_each_counter_warns_on_its_own(store):
    seen: list = []
    guard = warned_guard(store.open(), seen)
    auth = guard.authorize(meta("big"), 560)  # total 56% (0.5) and agent a1 560/600 = 93% (0.9)
    assert sorted((e.scope, e.threshold_bps) for e in auth.warnings_emitted) == [("agent", 9000), ("total", 5000)]
    guard.authorize(meta("more", agent="a2"), 300)  # total 86%: crosses 0.8
    assert [(e.scope, e.threshold_bps) for e in seen] == [("total", 5000), ("agent", 9000), ("total", 8000)]


def test_a_new_window_warns_afresh(store):
    seen: list = []
    guard = warned_guard(store.open(), seen)
    guard.authorize(meta("d1", agent="x"), 500)
    guard.authorize(meta("d2", T + 50400, agent="y"), 500)  # the next UTC day
    assert [(e.counter, e.threshold_bps) for e in seen] == [
        ("soft/d:2026-03-08@UTC/total/", 5000), ("soft/d:2026-03-09@UTC/total/", 5000)]


def test_denied_calls_never_emit(store):
    seen: list = []
    guard = warned_guard(store.open(), seen)
    auth = guard.authorize(meta("huge"), 1001)
    assert not auth.allow and [w["threshold"] for w in auth.decision.warnings] == [0.5, 0.8, 0.9]
    assert seen == [] and auth.warnings_emitted == ()


def test_a_released_crossing_is_not_emitted_twice(store):
    seen: list = []
    guard = warned_guard(store.open(), seen)
    first = guard.authorize(meta("a", agent="x"), 500)
    first.release()  # the call failed: the counter drops back below 50%
    guard.authorize(meta("b", agent="y"), 500)  # crosses again in the same window
    assert len(seen) == 1


def test_a_failing_mark_skips_the_warning_and_counts_it(store):
    seen: list = []
    ledger = store.open()

    class BrokenMarks:
        def __getattr__(self, name):
            return getattr(ledger, name)

        def mark_once(self, mark, ttl=None):
            raise LedgerError("marks unavailable")

    guard = warned_guard(BrokenMarks(), seen)
    assert guard.authorize(meta("r"), 500).allow  # the call is not denied for it
    assert seen == [] and guard.warning_mark_failures == 1


def test_a_raising_callback_does_not_break_the_call(store):
    def boom(event):
        raise RuntimeError("observer bug")

    guard = guard_for(DAILY, ledger=store.open(), on_warning=boom)
    assert guard.authorize(meta("r"), 500).allow


def test_the_chain_logs_a_warning_event_and_counts_it(store):
    out = io.StringIO()
    metrics = BudgetMetrics()
    budget = BudgetChainGuard(guard_for(DAILY, ledger=store.open()), decision_log=DecisionLog(out),
                              metrics=metrics)
    chain = GuardChain([budget])
    ctx = GuardContext(request_id="req-1", tool_name="t1", server_id="s1", agent_id="a1", arguments={},
                       cost_estimate=500, timestamp=T)
    assert chain.evaluate(ctx).allowed
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["chio"]["event"] for e in events] == ["decision", "warning"]
    warning = events[1]
    assert warning["chio"]["parent_decision_id"] == events[0]["decision_id"] != warning["decision_id"]
    assert warning["chio"]["threshold_bps"] == 5000 and warning["input"]["counter"] == "soft/d:2026-03-08@UTC/total/"
    assert warning["result"]["warnings"][0]["threshold"] == 0.5 and warning["chio"]["request_id"] == "req-1"
    assert b'chio_budget_warnings_total{policy_id="soft",scope="total",threshold="0.5"} 1.0' in metrics.render()


# -- across processes ----------------------------------------------------------------------------


def _process(uri: str, worker: int, go: str) -> int:
    """One kernel process: 10 calls of 20 units, counting the warnings its guard emitted."""
    seen: list = []
    guard = guard_for(DAILY, ledger=uri, on_warning=seen.append)
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(10):
        auth = guard.authorize(meta(f"p{worker}-{i}", agent=f"p{worker}"), 20)
        if auth.allow:
            auth.commit()
    guard.close()
    return len(seen)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_exactly_once_across_processes(kind, tmp_path):
    store = make_store(kind, tmp_path)
    go = str(tmp_path / "go")
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(4, mp_context=ctx) as pool:
            futures = [pool.submit(_process, store.uri, w, go) for w in range(4)]
            time.sleep(0.5)  # let them start, then go together
            open(go, "w").close()
            emitted = [f.result(timeout=120) for f in futures]
    finally:
        store.open()  # so cleanup() clears the redis prefix
        store.cleanup()
    # 4 x 10 x 20 = 800 of the day's 1000: the 50% and 80% thresholds, each emitted by exactly one process.
    assert sum(emitted) == 2
