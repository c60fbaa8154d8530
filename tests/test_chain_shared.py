"""The per-call book lives in the ledger: any process sharing it settles or revalidates a call.

Two ``BudgetChainGuard`` objects over two ledger objects on one store (a
real SQLite file, the real Redis) stand for two kernel processes; the race
test uses real processes.
"""

from __future__ import annotations

import multiprocessing

from chio_budget.chain_guard import BudgetChainGuard, HoldStatus
from chio_budget.decisionlog import DecisionLog
from chio_budget.engines.function import FunctionEngine
from chio_budget.ledger import MemoryLedger
from chio_budget.metrics import BudgetMetrics
from support.backends import Faulty, Store
from support.chain import ctx
from support.clock import FakeClock
from support.guards import guard_for, rust_policy
from support.workload import settle_worker

POLICY = dict(max_total=1000, max_per_session=None, max_per_agent=500, max_per_tool=None, prices={"s1:search": 5})


def two_processes(shared_store: Store, **kw) -> tuple[BudgetChainGuard, BudgetChainGuard]:
    """The authorizing process (real OPA) and another one that never saw the call."""
    policy = rust_policy(**POLICY)
    first = BudgetChainGuard(guard_for(policy, ledger=shared_store.open()), **kw)
    other = BudgetChainGuard(guard_for(policy, FunctionEngine(lambda _i: {"allow": False}),
                                       ledger=shared_store.open()), **kw)
    return first, other


def test_a_call_authorized_in_one_process_settles_in_another(shared_store: Store):
    first, other = two_processes(shared_store)
    assert first.evaluate(ctx("r1", cost_estimate=200)).allowed
    r = other.on_invocation_complete("r1", 150)
    assert (r.outcome, r.estimate_units, r.actual_units, r.committed_units) == ("committed", 200, 150, 150)
    assert r.decision_id == first.guard.ledger.get("r1").book["decision_id"]
    again = first.on_invocation_complete("r1", 150)
    assert (again.outcome, again.committed_units, again.source) == ("already_settled", 150, "no-op (was committed)")
    assert (first.guard.total_spent(), first.guard.total_held()) == (150, 0)


def test_a_failed_call_is_released_from_another_process(shared_store: Store):
    first, other = two_processes(shared_store)
    assert first.evaluate(ctx("r1", cost_estimate=200)).allowed
    assert other.on_invocation_complete("r1", status="failed").outcome == "released"
    assert (first.guard.total_spent(), first.guard.total_held()) == (0, 0)


def test_the_book_holds_what_settlement_needs(shared_store: Store):
    first, _ = two_processes(shared_store)
    d = first.evaluate(ctx("r1"))
    book = first.guard.ledger.get("r1").book
    assert book == {
        "policy_id": "default", "currency": "USD", "decision_id": d.evidence[0].details["decision_id"],
        "request": {"receipt_id": "r1", "timestamp": 1000, "agent_id": "a1", "session_id": "sess-1",
                    "tool_server": "s1", "tool_name": "search", "tool_key": "s1:search"},
        "estimate": {"units": 5, "currency": "USD", "source": "policy price"},
        "keys": {"total": "default//total/", "agent": "default//agent/a1"},
        "identity": {"policy_id": "default", "agent_id": "a1", "session_id": "sess-1", "tool_key": "s1:search"},
    }


def test_settling_twice_from_two_processes_counts_once(shared_store: Store, tmp_path):
    first, _ = two_processes(shared_store)
    assert first.evaluate(ctx("r1", cost_estimate=200)).allowed
    go = tmp_path / "go"
    mp = multiprocessing.get_context("spawn")
    policy_doc = rust_policy(**POLICY).model_dump(mode="json", exclude_none=True)
    with mp.Pool(2) as pool:
        outcomes = [pool.apply_async(settle_worker, (shared_store.uri, policy_doc, "r1", 120, str(go)))
                    for _ in range(2)]
        go.touch()
        got = sorted(o.get(timeout=120) for o in outcomes)
    assert got == ["already_settled", "committed"]
    assert (first.guard.total_spent(), first.guard.total_held()) == (120, 0)


def test_revalidate_sees_the_hold_from_another_process_and_reserves_nothing(shared_store: Store):
    first, other = two_processes(shared_store)
    d = first.evaluate(ctx("r1", cost_estimate=200))
    held = first.guard.ledger.balances(["default//total/"])
    h = other.revalidate("r1")
    assert (h.live, h.state, h.estimate_units, h.decision_id) == (True, "held", 200,
                                                                  d.evidence[0].details["decision_id"])
    assert h.expires_at == first.guard.ledger.get("r1").expires_at
    assert first.guard.ledger.balances(["default//total/"]) == held and other.open_holds() == 1
    other.on_invocation_complete("r1")
    assert other.revalidate("r1") == HoldStatus("r1", False, "committed", 200, h.expires_at, h.decision_id)
    assert other.revalidate("never-seen") == HoldStatus("never-seen", False, "unknown")


def test_revalidate_after_expiry_is_not_live(store: Store, clock: FakeClock):
    b = BudgetChainGuard(guard_for(rust_policy(**POLICY), ledger=store.open(clock=clock), reservation_ttl=30))
    b.evaluate(ctx("r1"))
    assert b.revalidate("r1").live
    clock.advance(31)
    h = b.revalidate("r1")
    assert (h.live, h.state) == (False, "expired")
    assert b.on_invocation_complete("r1").outcome == "committed_late"


def test_revalidate_and_settle_never_touch_another_policys_receipt(shared_store: Store):
    first, _ = two_processes(shared_store)
    first.evaluate(ctx("r1"))
    stranger = BudgetChainGuard(guard_for(rust_policy(id="other", **POLICY), ledger=shared_store.open()))
    assert stranger.revalidate("r1").state == "unknown"
    assert stranger.on_invocation_complete("r1").outcome == "unknown"
    assert first.revalidate("r1").live


def test_a_failing_ledger_is_an_error_for_revalidate_and_settle():
    ledger = Faulty(MemoryLedger())
    b = BudgetChainGuard(guard_for(rust_policy(**POLICY), ledger=ledger))
    b.evaluate(ctx("r1"))
    ledger.get_fails = True
    assert b.revalidate("r1") == HoldStatus("r1", False, "error", error="ledger error: injected: get failed")
    r = b.on_invocation_complete("r1")
    assert (r.outcome, r.error) == ("error", "ledger error: injected: get failed")
    ledger.get_fails = False
    assert b.on_invocation_complete("r1").outcome == "committed", "the hold stayed: settlement can be retried"


def test_failed_orphan_cleanups_are_counted_in_the_metrics():
    """The guard's ``event_hooks["cleanup_failed"]`` feed ``chio_budget_orphan_cleanup_failures_total``."""
    metrics = BudgetMetrics()
    events = []
    ledger = Faulty(MemoryLedger(), reserve_fails="after", release_fails=True)
    b = BudgetChainGuard(guard_for(rust_policy(**POLICY), ledger=ledger), metrics=metrics,
                         decision_log=DecisionLog(events.append))
    d = b.evaluate(ctx("r1"))
    assert d.reason == "budget: denied: ledger error: injected: reserve ran, its reply was lost"
    assert b.guard.orphan_cleanup_failures == 1
    assert metrics.registry.get_sample_value("chio_budget_orphan_cleanup_failures_total",
                                             {"policy_id": "default"}) == 1.0
    assert metrics.registry.get_sample_value("chio_budget_reservations_open", {"policy_id": "default"}) == 1.0
    assert [e["chio"]["event"] for e in events] == ["decision"]
