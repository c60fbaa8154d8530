"""The guard's reservation API: reserve -> decide -> commit/release, idempotent, fail closed."""

from __future__ import annotations

import math
import threading

import pytest

from chio_budget.decision import Decision
from chio_budget.engines.function import FunctionEngine
from chio_budget.errors import AmountError, LedgerError, PolicyError
from chio_budget.guard import BudgetGuard, Evaluation
from chio_budget.ledger import MemoryLedger, open_ledger
from chio_budget.money import MonetaryAmount
from support.backends import Faulty, Store
from support.clock import FakeClock
from support.guards import U64_MAX, guard_for, make_meta, rust_policy

TOTAL_ONLY = dict(max_per_session=None, max_per_agent=None, max_per_tool=None)


def test_authorize_holds_then_commit_counts_actual():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(receipt="r1"), 300)
    assert auth.allow
    assert (g.total_spent(), g.total_held(), g.remaining()) == (0, 300, 9700)  # held counts against the budget
    assert g.ledger.open_reservations() == 1
    s = auth.commit(actual_units=250)
    assert (s.outcome, s.amount) == ("committed", 250)
    assert (g.total_spent(), g.total_held(), g.remaining()) == (250, 0, 9750)
    assert g.ledger.open_reservations() == 0
    assert auth.commit().outcome == "already_committed"
    assert auth.release().outcome == "already_committed"
    assert g.total_spent() == 250


def test_release_gives_the_reservation_back():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(), 300)
    assert auth.release().outcome == "released"
    assert auth.release().outcome == "already_released"
    assert auth.commit().outcome == "already_released"
    assert (g.total_spent(), g.total_held()) == (0, 0)


def test_held_reservation_is_seen_by_the_next_request():
    g = guard_for(rust_policy())
    first = g.authorize(make_meta(receipt="r1"), 2900)
    assert first.allow
    second = g.authorize(make_meta(receipt="r2"), 200)
    assert not second.allow
    assert second.decision.violation.scope == "agent"
    assert second.decision.violation.current_units == 2900
    assert second.input["totals"]["agent"] == 2900, "the authorization carries the exact OPA input"


def test_authorize_is_idempotent_by_receipt_id():
    g = guard_for(rust_policy())
    a = g.authorize(make_meta(receipt="r1"), 1000)
    b = g.authorize(make_meta(receipt="r1"), 1000)
    assert a.allow and b.allow
    assert g.total_held() == 1000  # not 2000
    a.commit()
    again = g.authorize(make_meta(receipt="r1"), 1000)
    assert not again.allow and again.decision.error == "receipt 'r1' was already committed"
    assert g.total_spent() == 1000


def test_unsettled_reservation_expires_after_ttl(clock: FakeClock):
    g = guard_for(rust_policy(), ledger=MemoryLedger(clock=clock), reservation_ttl=30)
    g.authorize(make_meta(), 2900)
    assert g.total_held() == 2900
    clock.advance(31)
    assert (g.total_spent(), g.total_held()) == (0, 0)  # an abandoned reservation stops blocking the budget


def test_commit_after_expiry_still_counts_the_spend_once(clock: FakeClock):
    g = guard_for(rust_policy(), ledger=MemoryLedger(clock=clock), reservation_ttl=30)
    auth = g.authorize(make_meta(), 2900)
    clock.advance(31)
    s = auth.commit(actual_units=2800)
    assert (s.outcome, s.amount) == ("committed_late", 2800)
    assert g.total_spent() == 2800  # the call ran: its cost is never lost
    assert auth.commit(actual_units=2800).outcome == "already_committed"
    assert g.total_spent() == 2800


def test_commit_above_estimate_is_counted_in_full():
    g = guard_for(rust_policy())
    auth = g.authorize(make_meta(), 100)
    assert auth.commit(actual_units=5000).amount == 5000
    assert g.total_spent() == 5000  # never under-count what was really spent


def test_bad_cost_is_rejected_before_anything_is_recorded():
    g = guard_for(rust_policy())
    for bad in (-1, 1.5, True, 2**64):
        with pytest.raises(AmountError):
            g.authorize(make_meta(), bad)
        with pytest.raises(AmountError):
            g.record(make_meta(), bad)
    # A foreign cost without a rate oracle: check/authorize deny (a policy decision), record refuses.
    d = g.check(make_meta(), MonetaryAmount(units=1, currency="EUR"))
    assert [v.code for v in d.violations] == ["rate_unavailable"] and d.error is None
    assert not g.authorize(make_meta(), MonetaryAmount(units=1, currency="EUR")).allow
    with pytest.raises(AmountError, match="no rate oracle"):
        g.record(make_meta(), MonetaryAmount(units=1, currency="EUR"))
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
        raise LedgerError("ledger down")

    def reserve(self, *a, **k):
        raise LedgerError("ledger down")


def test_ledger_failure_denies():
    g = guard_for(rust_policy(), ledger=BrokenLedger())
    d = g.check(make_meta(), 1)
    assert not d.allow and "ledger down" in d.error
    a = g.authorize(make_meta(), 1)
    assert not a.allow and "ledger down" in a.decision.error and a.input is None


def test_evaluate_returns_the_input_sent_and_the_eval_time():
    g = guard_for(rust_policy())
    g.record(make_meta(), 700)
    e = g.evaluate(make_meta(), 50)
    assert isinstance(e, Evaluation) and e.decision.allow and e.eval_ns > 0
    assert e.input["totals"] == {"total": 700, "session": 700, "agent": 700, "tool": None}
    assert e.input["cost"] == {"units": 50, "currency": "USD"}
    assert g.check(make_meta(), 50) == e.decision


def test_from_files_loads_policies_and_picks_policy(policies_dir):
    with BudgetGuard.from_files(policies_dir, policy_id="default") as g:
        assert g.policy.max_total.units == 10000 and g.engine.name == "embedded"
    with pytest.raises(PolicyError, match="no policy 'nope'"):
        BudgetGuard.from_files(policies_dir, policy_id="nope")


def test_with_block_closes_engine_and_ledger(policies_dir, tmp_path):
    with BudgetGuard.from_files(policies_dir, ledger=f"sqlite:///{tmp_path / 'w.db'}") as g:
        g.record(make_meta(), 5)
        assert g.ledger._conn is not None
    assert g.ledger._conn is None, "the ledger was closed on leaving the block"


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


# -- counters only where a limit reads them (issue 9 item 10) ---------------------------------


def test_counter_keys_are_only_the_counters_a_limit_reads():
    full = guard_for(rust_policy())
    assert set(full.counter_keys(make_meta(tool="expensive"))) == {"total", "session", "agent", "tool"}
    assert set(full.counter_keys(make_meta(tool="cheap", session=None))) == {"total", "agent"}
    bare = guard_for(rust_policy(**TOTAL_ONLY))
    assert set(bare.counter_keys(make_meta(tool="expensive"))) == {"total"}
    e = bare.evaluate(make_meta(), 5)
    assert e.decision.allow and e.input["totals"] == {"total": 0, "session": None, "agent": None, "tool": None}


def test_fresh_agent_and_session_ids_keep_no_counters_without_such_limits():
    """20,000 calls, each with a new agent and session id: the memory ledger keeps O(1) counters."""
    ledger = MemoryLedger()
    allow_all = FunctionEngine(lambda input: Decision(allow=True, policy_id=input["policy_id"]))
    g = BudgetGuard(rust_policy(max_per_session=None, max_per_agent=None), allow_all, ledger)
    for i in range(10_000):
        meta = make_meta(f"agent-{i}", tool="expensive" if i % 2 else "t1", receipt=f"r{i}", session=f"sess-{i}")
        g.record(meta, 1)
        assert g.authorize(meta, 1).commit().outcome == "committed"
    assert len(list(ledger.counters())) == 2, "the total and the one listed tool; no per-agent or per-session counter"
    assert g.total_spent() == 20_000


# -- issue 9 regressions ----------------------------------------------------------------------


def test_denied_huge_cost_leaves_committed_spend_untouched(store: Store):
    """Issue 9 item 1: a denied 2^64-1 reservation used to saturate and then subtract the full
    cost on release, resetting the counter to 0."""
    g = guard_for(rust_policy(max_total=10_000, **TOTAL_ONLY), ledger=store.open())
    for i in range(10):
        assert g.authorize(make_meta(receipt=f"ok{i}"), 1000).commit().outcome == "committed"
    for i in range(3):
        denied = g.authorize(make_meta(receipt=f"huge{i}"), U64_MAX)
        assert not denied.allow and denied.decision.violation.scope == "total"
        assert g.total_spent() == 10_000 and g.remaining() == 0
        assert g.total_held() == 0
    assert not g.authorize(make_meta(receipt="one-more"), 1).allow


def test_reused_receipt_for_another_request_is_denied(store: Store):
    """Issue 9 item 7: the same receipt id with another agent, session or tool was a KeyError."""
    g = guard_for(rust_policy(), ledger=store.open())
    assert g.authorize(make_meta("a1", receipt="r1"), 100).allow
    for other in (make_meta("a2", receipt="r1"), make_meta(tool="expensive", receipt="r1"),
                  make_meta(session="sess-2", receipt="r1")):
        d = g.authorize(other, 100).decision
        assert not d.allow and d.error == "receipt 'r1' is already held for a different request"
    assert g.total_held() == 100 and g.ledger.open_reservations() == 1


def test_reused_receipt_for_another_request_is_denied_even_when_the_counters_are_the_same(store: Store):
    """Issue 9 item 7, second half: under a policy with only a total limit every request has
    the same counter keys, so comparing keys let another agent/session/tool take over r1's hold."""
    g = guard_for(rust_policy(**TOTAL_ONLY), ledger=store.open())
    assert g.authorize(make_meta("a1", receipt="r1"), 100).allow
    for other in (make_meta("a2", receipt="r1"), make_meta(tool="expensive", receipt="r1"),
                  make_meta(session="sess-2", receipt="r1"), make_meta(session=None, receipt="r1")):
        assert g.counter_keys(other) == g.counter_keys(make_meta("a1"))
        d = g.authorize(other, 100).decision
        assert (d.allow, d.error) == (False, "receipt 'r1' is already held for a different request")
    assert g.authorize(make_meta("a1", receipt="r1"), 100).allow  # the same request: a retry
    assert g.total_held() == 100 and g.ledger.open_reservations() == 1


def test_the_guard_stores_the_request_identity_with_the_callers_book(store: Store):
    g = guard_for(rust_policy(**TOTAL_ONLY), ledger=store.open())
    g.authorize(make_meta("a1", receipt="r1"), 100, book={"note": "mine"})
    g.authorize(make_meta("a1", receipt="r2", session=None), 100)
    ident = {"policy_id": "default", "agent_id": "a1", "session_id": "sess-1", "tool_key": "s1:t1"}
    assert g.ledger.get("r1").book == {"note": "mine", "identity": ident}
    assert g.ledger.get("r2").book == {"identity": dict(ident, session_id=None)}


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, -math.inf])
def test_ttl_must_be_finite_and_positive(bad, tmp_path):
    """Issue 9 item 8: a TTL of 0 or -5 released reservations before their decision (overspend)."""
    with pytest.raises(LedgerError, match="ttl"):
        guard_for(rust_policy(), reservation_ttl=bad)
    for uri in ("memory://", f"sqlite:///{tmp_path / 't.db'}", "redis://127.0.0.1:6379/0"):
        with pytest.raises(LedgerError, match="ttl"):
            open_ledger(f"{uri}?ttl={bad}")
    with pytest.raises(LedgerError, match="ttl"):
        MemoryLedger(ttl=bad)
    with pytest.raises(LedgerError, match="ttl"):
        MemoryLedger().reserve("r1", ["k"], 1, ttl=bad)


def test_memory_ledger_expires_on_the_monotonic_clock():
    """Issue 9 item 8: the memory ledger measured TTLs on the wall clock, so a +700 s step expired
    every reservation. Its expiry is now on ``time.monotonic``, which no clock step moves."""
    import time

    before = time.monotonic()
    r = MemoryLedger().reserve("r1", ["k"], 1, ttl=60)
    assert before + 60 <= r.expires_at <= time.monotonic() + 60


def test_failed_reserve_releases_what_this_attempt_created(store: Store):
    """Issue 9 item 9: a reserve whose reply was lost (it ran) left an orphan hold until the TTL."""
    ledger = Faulty(store.open(), reserve_fails="after")
    g = guard_for(rust_policy(), ledger=ledger)
    a = g.authorize(make_meta(receipt="r1"), 2500)
    assert not a.allow and "reply was lost" in a.decision.error
    assert ledger.open_reservations() == 0 and ledger.totals(list(g.counter_keys(make_meta()).values()))[0] == 0
    assert (g.total_held(), g.orphan_cleanup_failures) == (0, 0)
    assert ledger.releases == [("r1", a.attempt)] and a.attempt


def test_failed_retry_never_releases_the_first_attempts_hold(store: Store):
    ledger = Faulty(store.open())
    g = guard_for(rust_policy(), ledger=ledger)
    first = g.authorize(make_meta(receipt="r1"), 2500)
    assert first.allow
    ledger.reserve_fails = "after"
    retry = g.authorize(make_meta(receipt="r1"), 2500)
    assert not retry.allow and retry.attempt != first.attempt
    assert g.total_held() == 2500 and ledger.open_reservations() == 1, "the first attempt's hold is kept"
    assert first.commit().outcome == "committed" and g.total_spent() == 2500


def test_attempt_tokens_are_unique_in_a_process_and_across_a_fork():
    """The attempt token tells a retry's hold from the first attempt's, also between processes
    sharing a ledger: a forked child must not repeat its parent's tokens."""
    import os

    from chio_budget.ledger.base import attempt_token

    mine = [attempt_token() for _ in range(10_000)]
    assert len(set(mine)) == len(mine) and all(len(t) == 32 and int(t, 16) >= 0 for t in mine)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next tokens, to the parent
        os.write(write, "".join(attempt_token() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    theirs = [text[i:i + 32] for i in range(0, len(text), 32)]
    assert len(theirs) == 100
    parent_next = [attempt_token() for _ in range(100)]
    assert not set(theirs) & set(parent_next + mine)
    assert {t[:16] for t in theirs} != {t[:16] for t in parent_next}


def test_failed_cleanup_is_counted_and_reported(store: Store):
    ledger = Faulty(store.open(), reserve_fails="after", release_fails=True)
    g = guard_for(rust_policy(), ledger=ledger)
    seen = []
    g.event_hooks["cleanup_failed"].append(lambda rid, exc: seen.append((rid, str(exc))))
    d = g.authorize(make_meta(receipt="r1"), 100).decision
    assert not d.allow and "reply was lost" in d.error
    assert g.orphan_cleanup_failures == 1 and seen == [("r1", "injected: release failed")]
    assert g.total_held() == 100, "the orphan is still there; its TTL gives it back"


def test_deny_path_release_failing_is_still_a_deny(store: Store):
    """Issue 8: the release on the deny path was unguarded, so its LedgerError escaped."""
    ledger = Faulty(store.open(), release_fails=True)
    g = guard_for(rust_policy(), ledger=ledger)
    a = g.authorize(make_meta(receipt="r1"), 5000)
    assert not a.allow and a.decision.violation.scope == "agent" and a.decision.error is None
    assert g.orphan_cleanup_failures == 1
    ledger.release_fails = False
    assert g.ledger.release("r1").outcome == "released"


def test_tracking_another_policy_keeps_its_counters_without_changing_decisions():
    enforced = rust_policy(**TOTAL_ONLY)
    shadow = rust_policy(id="next", max_per_session=100, max_per_agent=200, max_per_tool={"s1:x": 5})
    g = guard_for(enforced, track=[shadow])
    assert g.counter_keys(make_meta(tool="x")) == {
        "total": "default//total/", "session": "default//session/sess-1", "agent": "default//agent/a1",
        "tool": "default//tool/s1:x"}
    assert set(g.counter_keys(make_meta(tool="t1", session=None))) == {"total", "agent"}
    g.track(shadow)  # tracking twice is tracking once
    assert g.tracked == (shadow,)
    assert g.authorize(make_meta(receipt="r1"), 300).allow, "no limit of the tracked policy applies here"
    e = g.evaluate(make_meta(receipt="r2"), 1)
    assert e.input["totals"] == {"total": 300, "session": 300, "agent": 300, "tool": None}
