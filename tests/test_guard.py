"""The guard's reservation API: reserve -> decide -> commit/release, idempotent."""

from __future__ import annotations

import threading

import pytest

from chio_budget.errors import PolicyError
from chio_budget.guard import BudgetGuard
from chio_budget.ledger import MemoryLedger
from chio_budget.money import MonetaryAmount
from conftest import make_meta, guard_for, rust_policy


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_authorize_holds_then_commit_counts_actual():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(receipt="r1"), 300)
    assert auth.allow
    assert g.total_spent() == 300  # held reservations count against the budget
    assert g.ledger.open_reservations() == 1
    s = auth.commit(actual_units=250)
    assert (s.outcome, s.amount) == ("committed", 250)
    assert g.total_spent() == 250 and g.ledger.open_reservations() == 0
    assert auth.commit().outcome == "already_committed"
    assert auth.release().outcome == "already_committed"
    assert g.total_spent() == 250


def test_release_gives_the_reservation_back():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(), 300)
    assert auth.release().outcome == "released"
    assert auth.release().outcome == "already_released"
    assert auth.commit().outcome == "already_released"
    assert g.total_spent() == 0


def test_held_reservation_is_seen_by_the_next_request():
    g = guard_for(rust_policy())
    first = g.authorize(make_meta(receipt="r1"), 2900)
    assert first.allow
    second = g.authorize(make_meta(receipt="r2"), 200)
    assert not second.allow
    assert second.decision.violation.scope == "agent"
    assert second.decision.violation.current_units == 2900


def test_authorize_is_idempotent_by_receipt_id():
    g = guard_for(rust_policy())
    a = g.authorize(make_meta(receipt="r1"), 1000)
    b = g.authorize(make_meta(receipt="r1"), 1000)
    assert a.allow and b.allow
    assert g.total_spent() == 1000  # not 2000
    a.commit()
    again = g.authorize(make_meta(receipt="r1"), 1000)
    assert not again.allow and "already committed" in again.decision.error
    assert g.total_spent() == 1000


def test_unsettled_reservation_expires_after_ttl():
    clock = FakeClock()
    g = guard_for(rust_policy(), ledger=MemoryLedger(clock=clock), reservation_ttl=30)
    auth = g.authorize(make_meta(), 2900)
    assert g.total_spent() == 2900
    clock.now += 31
    assert g.total_spent() == 0  # an abandoned reservation stops blocking the budget


def test_commit_after_expiry_still_counts_the_spend_once():
    clock = FakeClock()
    g = guard_for(rust_policy(), ledger=MemoryLedger(clock=clock), reservation_ttl=30)
    auth = g.authorize(make_meta(), 2900)
    clock.now += 31
    s = auth.commit(actual_units=2800)
    assert (s.outcome, s.amount) == ("committed_late", 2800)
    assert g.total_spent() == 2800  # the call ran: its cost is never lost
    assert auth.commit(actual_units=2800).outcome == "expired"
    assert g.total_spent() == 2800


def test_commit_above_estimate_is_counted_in_full():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(), 100)
    assert auth.commit(actual_units=5000).amount == 5000
    assert g.total_spent() == 5000  # never under-count what was really spent


def test_bad_cost_is_rejected_before_anything_is_recorded():
    g = guard_for(rust_policy())
    for bad in (-1, 1.5, True, 2**64):
        with pytest.raises(ValueError):
            g.authorize(make_meta(), bad)
        with pytest.raises(ValueError):
            g.record(make_meta(), bad)
    with pytest.raises(ValueError, match="convert first"):
        g.check(make_meta(), MonetaryAmount(units=1, currency="EUR"))
    assert g.total_spent() == 0 and g.ledger.open_reservations() == 0


def test_monetary_amount_in_policy_currency_is_accepted():
    g = guard_for(rust_policy())
    assert g.check(make_meta(), MonetaryAmount(units=100, currency="USD")).allow


def test_rust_json_metadata_is_accepted_with_extra_fields():
    g = guard_for(rust_policy())
    meta = {"receipt_id": "r1", "timestamp": 1000, "session_id": None, "agent_id": "a1",
            "tool_server": "s1", "tool_name": "t1", "total_monetary_cost": {"units": 5, "currency": "USD"}}
    assert g.check(meta, 100).allow


class BrokenLedger(MemoryLedger):
    def totals(self, keys):
        raise ConnectionError("ledger down")

    def reserve(self, *a, **k):
        raise ConnectionError("ledger down")


def test_ledger_failure_denies():
    g = guard_for(rust_policy(), ledger=BrokenLedger())
    d = g.check(make_meta(), 1)
    assert not d.allow and "ledger down" in d.error
    a = g.authorize(make_meta(), 1)
    assert not a.allow and "ledger down" in a.decision.error


def test_from_files_loads_policies_and_picks_policy(policies_dir):
    g = BudgetGuard.from_files(policies_dir, policy_id="default")
    assert g.policy.max_total.units == 10000 and g.engine.name == "embedded"
    with pytest.raises(PolicyError, match="no policy 'nope'"):
        BudgetGuard.from_files(policies_dir, policy_id="nope")


def test_from_files_uses_the_rego_shipped_in_the_package(policies_dir):
    from chio_budget.engines.base import default_rego_dir

    assert (default_rego_dir() / "chio" / "budget" / "decision.rego").is_file()
    g = BudgetGuard.from_files(policies_dir, rego_dir=None)
    assert g.check(make_meta(), 10001).violation.scope == "total"


def test_concurrent_authorize_never_overspends():
    """8 threads race for a 3000 agent budget; committed spend never exceeds it."""
    g = guard_for(rust_policy(max_total=10**9, max_per_session=None, max_per_tool=None))
    committed = []
    lock = threading.Lock()

    def worker(t):
        for i in range(150):
            auth = g.authorize(make_meta("a1", receipt=f"{t}-{i}"), 7)
            if auth.allow:
                auth.commit()
                with lock:
                    committed.append(7)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(committed) == g.total_spent()
    assert g.total_spent() <= 3000
    assert g.total_spent() == 3000 - 3000 % 7  # and the budget was used up, not left idle
