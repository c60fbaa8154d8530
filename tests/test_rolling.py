"""Rolling windows through the guard: buckets, ageing out, resets_at, and concurrency on every ledger (issue 11).

``policies/burst-guard.yaml`` is the realistic example (a session may spend
20 USD in any hour, an agent 100 USD in any 24 hours); the exact-window cases
use a 60 s window, whose buckets are 1 s.
"""

from __future__ import annotations

import threading

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.ledger import counter_key
from chio_budget.policy import parse_policy
from support.guards import guard_for
from support.windows import spend
from support.guards import POLICIES_DIR

T = 1772964000  # 2026-03-08T10:00:00Z, a multiple of 60 and of 1800

MINUTE = parse_policy("id: minute\ncurrency: USD\nmax_total: 1000000000\n"
                      "max_per_agent: {units: 1000, window: {rolling: 60}}\n", "minute.yaml")


def meta(receipt: str, t: int, agent: str = "a1", session: str | None = None) -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=t, agent_id=agent, session_id=session, tool_server="s1",
                        tool_name="t1")


def test_an_exact_window_forgets_spend_when_it_leaves(store):
    guard = guard_for(MINUTE, ledger=store.open())
    assert spend(guard, meta("r1", T), 1000).allow
    denied = spend(guard, meta("r2", T + 59), 1)  # T is still in (T+59-60, T+59]
    assert not denied.allow
    assert denied.decision.violations[0].model_dump() == {
        "scope": "agent", "agent_id": "a1", "limit_units": 1000, "current_units": 1000, "requested_units": 1,
        "currency": "USD", "window": "rolling", "resets_at": T + 60}
    allowed = spend(guard, meta("r3", T + 60), 1000)  # T has left
    assert allowed.allow and allowed.input["totals"]["agent"] == 0


def test_a_bucket_counts_until_its_last_second_leaves(store):
    # burst-guard: session 2000 in any 3600 s, 60 s buckets. Spend at T lands in bucket [T, T+59].
    guard = BudgetGuard.from_files(POLICIES_DIR, "burst-guard", ledger=store.open())
    assert spend(guard, meta("r1", T, session="s"), 2000).allow
    still = spend(guard, meta("r2", T + 59 + 3599, session="s"), 1)  # the bucket's last second is in the window
    assert not still.allow and still.decision.violations[0].resets_at == T + 59 + 3600
    assert spend(guard, meta("r3", T + 59 + 3600, session="s"), 2000).allow  # all of it has left
    guard.engine.close()


def test_spend_is_counted_in_the_bucket_of_its_request_and_read_by_later_ones(store):
    guard = BudgetGuard.from_files(POLICIES_DIR, "burst-guard", ledger=store.open())
    for i, t in enumerate([T, T + 600, T + 1200, T + 1800]):
        assert spend(guard, meta(f"r{i}", t, session="s"), 400).allow
    later = guard.check(meta("peek", T + 2400, session="s"), 0)
    assert later.allow and [w["threshold"] for w in later.warnings] == []
    auth = guard.authorize(meta("r9", T + 2400, session="s"), 401)  # 1600 + 401 > 2000
    assert not auth.allow and auth.input["totals"]["session"] == 1600
    # One unit too many: the oldest bucket ([T, T+59]) leaving frees enough. A retry then fits.
    assert auth.decision.violations[0].resets_at == T + 59 + 3600
    assert not spend(guard, meta("r10", T + 59 + 3599, session="s"), 401).allow
    assert spend(guard, meta("r11", T + 59 + 3600, session="s"), 401).allow
    buckets = [counter_key("burst-guard", "session", "s", window=f"r:60:{t}") for t in (T, T + 600, T + 2400)]
    assert [b.spent for b in guard.ledger.balances(buckets)] == [400, 400, 0]
    guard.engine.close()


def test_rolling_limit_under_concurrency_never_overspends(store):
    """8 threads at one instant: the window (and its older buckets) is read atomically with
    each reservation, so the last units of the rolling limit are spent exactly once."""
    ledger = store.open()
    guard = guard_for(MINUTE, ledger=ledger)
    guard.record(meta("old", T - 30), 400)  # older buckets of the same window
    guard.record(meta("older", T - 59), 100)
    guard.record(meta("gone", T - 60), 10**6)  # outside (T-60, T]
    committed: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(25):
            cost = 1 + (w * 7 + i * 13) % 40
            auth = guard.authorize(meta(f"w{w}-{i}", T), cost)
            if auth.allow:
                auth.commit()
                with lock:
                    committed.append(cost)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert 500 + sum(committed) <= 1000
    assert 1000 - (500 + sum(committed)) < 40, "the limit was reached (some requests were denied near it)"
    assert guard.ledger.totals([counter_key("minute", "agent", "a1", window=f"r:1:{T}")]) == [sum(committed)]
    assert guard.ledger.open_reservations() == 0
