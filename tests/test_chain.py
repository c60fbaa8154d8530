"""The guard chain the kernel's way, and the budget guard as a member of it."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from chio_budget import MonetaryAmount
from chio_budget.actual_cost import CostError, actual_units
from chio_budget.chain import GuardChain
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.decisionlog import DecisionLog
from chio_budget.engines.function import FunctionEngine
from chio_budget.kernel import Guard, GuardContext, SettlingGuard
from chio_budget.ledger import MemoryLedger
from chio_budget.metrics import BudgetMetrics
from support.backends import Faulty, Store
from support.chain import AllowAll, DenyOnTool, Pending, Raising, budget, ctx, static_rates
from support.clock import FakeClock
from support.guards import guard_for, rust_policy


# -- kernel semantics of the chain ------------------------------------------


def test_guards_satisfy_the_protocols():
    b = budget()
    assert isinstance(b, Guard) and isinstance(b, SettlingGuard)
    assert isinstance(AllowAll(), Guard) and not isinstance(AllowAll(), SettlingGuard)


def test_all_allow_gives_allow_with_every_guards_evidence_in_order():
    chain = GuardChain([AllowAll(), budget(), DenyOnTool("s1:rm")])
    d = chain.evaluate(ctx("r1"))
    assert d.verdict == "allow"
    assert [e.guard_name for e in d.evidence] == ["allow-all", "budget", "deny-on-tool"]


def test_first_deny_stops_the_chain():
    first, last = DenyOnTool("s1:search"), AllowAll()
    chain = GuardChain([first, last])
    d = chain.evaluate(ctx("r1"))
    assert d.verdict == "deny" and "s1:search is blocked" in d.reason
    assert last.seen == []
    assert [(e.guard_name, e.verdict) for e in d.evidence] == [("deny-on-tool", "deny")]


def test_guard_exception_denies_fail_closed_and_stops():
    after = AllowAll()
    d = GuardChain([Raising(), after]).evaluate(ctx("r1"))
    assert d.verdict == "deny"
    assert d.evidence[-1].guard_name == "exploding" and d.evidence[-1].verdict == "deny"
    assert "exploding error (fail-closed)" in d.evidence[-1].details and "boom" in d.evidence[-1].details
    assert after.seen == []


def test_guard_returning_garbage_denies_fail_closed():
    class Bad:
        name = "bad"

        def evaluate(self, c):
            return True

    d = GuardChain([Bad()]).evaluate(ctx("r1"))
    assert d.verdict == "deny" and "bad error (fail-closed)" in d.evidence[0].details


def test_pending_approval_is_a_deny_and_stops():
    after = AllowAll()
    d = GuardChain([Pending(), after]).evaluate(ctx("r1"))
    assert d.verdict == "deny" and "approval" in d.reason
    assert d.evidence[0].verdict == "pending_approval"
    assert after.seen == []


def test_a_later_deny_releases_the_budget_hold():
    b = budget()
    d = GuardChain([b, DenyOnTool("s1:search")]).evaluate(ctx("r1"))
    assert d.verdict == "deny"
    assert b.guard.total_spent() == 0 and b.open_holds() == 0
    assert b.guard.ledger.open_reservations() == 0


def test_a_later_exception_releases_the_budget_hold():
    b = budget()
    assert GuardChain([b, Raising()]).evaluate(ctx("r1")).verdict == "deny"
    assert b.guard.total_spent() == 0 and b.open_holds() == 0


def test_empty_context_fields_are_refused_at_the_edge():
    with pytest.raises(ValidationError, match="request_id\n  String should have at least 1 character"):
        GuardContext(request_id="", tool_name="t", server_id="s", agent_id="a")
    with pytest.raises(ValidationError, match="cost_estimate"):
        GuardContext(request_id="r", tool_name="t", server_id="s", agent_id="a", cost_estimate=1.5)


def test_a_server_id_with_a_colon_is_a_logged_one_line_deny():
    """Phase-1 finding: the CostMetadata was built outside the guard's try/log block, so a
    ``server_id`` with ':' escaped as a ValidationError (multi-line, never logged)."""
    events = []
    b = budget(decision_log=DecisionLog(events.append))
    d = GuardChain([b]).evaluate(ctx("r1", server="s1:x", tool="y"))
    assert d.verdict == "deny"
    error = "bad request: server_id: must not contain ':' (the tool key is 'server:tool'), got 's1:x'"
    assert d.reason == f"budget: denied: {error}"
    (ev,) = events
    assert ev["result"]["allow"] is False and ev["result"]["error"] == error
    assert ev["input"]["request"]["tool_server"] == "s1:x" and ev["input"]["totals"] is None
    assert b.guard.ledger.open_reservations() == 0


# -- the budget guard: estimate, evidence, hold -------------------------------


def test_estimate_order_context_then_price_then_grant():
    b = budget()
    grant = {"max_cost_per_invocation": {"units": 40, "currency": "USD"}}
    assert b.estimate(ctx("r", cost_estimate=9, grant=grant)) == (9, "context")
    assert b.estimate(ctx("r", grant=grant)) == (5, "policy price")
    assert b.estimate(ctx("r", tool="other", grant=grant)) == (40, "grant max_cost_per_invocation")


def test_no_estimate_denies_and_holds_nothing():
    b = budget()
    d = b.evaluate(ctx("r1", tool="unpriced"))
    assert d.verdict == "deny" and "no cost estimate" in d.reason
    assert b.guard.total_spent() == 0 and b.open_holds() == 0


def test_no_estimate_can_be_configured_to_allow_at_zero():
    b = budget(allow_unpriced=True)
    d = b.evaluate(ctx("r1", tool="unpriced"))
    assert d.verdict == "allow"
    assert d.evidence[0].details["estimate"] == {"units": 0, "currency": "USD", "source": "unpriced (allowed at 0)"}


def test_foreign_estimate_is_converted_by_the_guard_rounding_up_or_denied_without_rate():
    b = budget(rates={"EUR/USD": "1.085"})
    d = b.evaluate(ctx("r", cost_estimate=MonetaryAmount(units=100, currency="EUR")))
    assert d.verdict == "allow"
    assert d.evidence[0].details["estimate"]["units"] == 109  # 108.5 cents rounded against the spender
    assert b.guard.total_held() == 109
    d = budget().evaluate(ctx("r2", cost_estimate=MonetaryAmount(units=100, currency="EUR")))
    assert d.verdict == "deny" and "no usable EUR/USD rate: no rate oracle is configured" in d.reason
    assert [v["code"] for v in d.evidence[0].details["decision"]["violations"]] == ["rate_unavailable"]


def test_allow_holds_a_reservation_keyed_by_request_id():
    b = budget()
    d = b.evaluate(ctx("req-7", cost_estimate=200))
    assert d.verdict == "allow"
    details = d.evidence[0].details
    assert details["request_id"] == "req-7"
    assert details["decision"]["allow"] is True and details["decision"]["violations"] == []
    assert details["decision"]["policy_revision"].startswith("sha256:")
    assert b.open_holds() == 1 and b.guard.ledger.open_reservations() == 1
    assert b.guard.total_held() == 200  # held counts against the budget while the call runs


def test_budget_deny_evidence_carries_the_decision_json():
    b = budget()
    d = b.evaluate(ctx("r1", cost_estimate=10001))
    assert d.verdict == "deny"
    dec = d.evidence[0].details["decision"]
    assert dec["allow"] is False
    assert dec["violations"][0] == {"scope": "total", "limit_units": 10000, "current_units": 0,
                                    "requested_units": 10001, "currency": "USD"}
    assert [v["scope"] for v in dec["violations"]] == ["total", "session", "agent"]
    assert dec["policy_revision"].startswith("sha256:")
    assert "total budget exceeded" in d.reason
    assert b.open_holds() == 0 and b.guard.total_spent() == 0


def test_in_flight_holds_count_against_later_requests():
    b = budget()
    assert b.evaluate(ctx("r1", cost_estimate=2000)).verdict == "allow"
    d = b.evaluate(ctx("r2", cost_estimate=1001))  # agent limit 3000: 2000 held + 1001
    assert d.verdict == "deny"
    assert d.evidence[0].details["decision"]["violations"][0]["scope"] == "agent"


def test_engine_failure_denies_fail_closed():
    def unreachable(input):
        raise ConnectionError("unreachable")

    b = BudgetChainGuard(guard_for(rust_policy(prices={"s1:search": 5}), engine=FunctionEngine(unreachable)))
    d = b.evaluate(ctx("r1"))
    assert d.verdict == "deny" and "engine error" in d.reason
    assert b.guard.total_spent() == 0


# -- settlement --------------------------------------------------------------


def test_settle_none_commits_the_estimate():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1")
    assert (r.outcome, r.committed_units, r.actual_units) == ("committed", 200, None)
    assert b.guard.total_spent() == 200 and b.open_holds() == 0
    assert b.guard.ledger.open_reservations() == 0


def test_settle_plain_units_commits_the_actual():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", 120)
    assert (r.outcome, r.committed_units) == ("committed", 120)
    assert b.guard.total_spent() == 120


RUST_COST_METADATA = {
    "schema": "chio.cost-metadata.v1", "receipt_id": "r1", "timestamp": 1700000000, "session_id": "sess-1",
    "agent_id": "a1", "tool_server": "s1", "tool_name": "search",
    "dimensions": [
        {"dimension": "compute_time", "duration_ms": 150},
        {"dimension": "api_cost", "amount": {"units": 50, "currency": "USD"}, "provider": "openai"},
        {"dimension": "api_cost", "amount": {"units": 25, "currency": "USD"}, "provider": "anthropic"},
        {"dimension": "custom", "name": "tokens", "value": 900, "unit": "tokens"},
    ],
    "total_monetary_cost": {"units": 75, "currency": "USD"},
}


def test_settle_with_rust_cost_metadata_json_commits_total_monetary_cost():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", json.dumps(RUST_COST_METADATA))
    assert (r.outcome, r.committed_units, r.source) == ("committed", 75, "total_monetary_cost")
    assert b.guard.total_spent() == 75


def test_actual_from_dimensions_when_total_is_absent():
    doc = dict(RUST_COST_METADATA)
    del doc["total_monetary_cost"]
    assert actual_units(doc, "USD", {}) == (75, "api_cost dimensions")


def test_cross_currency_dimensions_are_converted_not_skipped():
    # The Rust total skips the EUR dimension; we convert it (rounding up) and take the larger.
    doc = dict(RUST_COST_METADATA, dimensions=RUST_COST_METADATA["dimensions"] + [
        {"dimension": "api_cost", "amount": {"units": 10, "currency": "EUR"}, "provider": "mistral"}])
    assert actual_units(doc, "USD", static_rates({"EUR/USD": "1.05"}), 1000) == (75 + 11, "api_cost dimensions")
    with pytest.raises(CostError, match="cannot convert 10 EUR to USD: no rate oracle"):
        actual_units(doc, "USD")


def test_foreign_total_is_converted_with_the_configured_rate():
    b = budget(rates={"JPY/USD": "0.0067"})  # USD per yen
    b.evaluate(ctx("r1", cost_estimate=500))
    r = b.on_invocation_complete("r1", {"dimensions": [], "total_monetary_cost": {"units": 1000, "currency": "JPY"}})
    assert r.committed_units == 670  # 1000 yen * 0.0067 = 6.70 USD
    assert b.guard.total_spent() == 670


def test_cost_metadata_without_money_commits_the_estimate():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", {"dimensions": [{"dimension": "compute_time", "duration_ms": 3}]})
    assert (r.outcome, r.committed_units, r.actual_units) == ("committed", 200, None)


def test_unreadable_actual_commits_the_estimate_and_says_so():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", "{not json")
    assert (r.outcome, r.committed_units) == ("committed", 200)
    assert "not JSON" in r.error and "estimate committed" in r.error
    assert b.guard.total_spent() == 200


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_or_cancelled_call_releases(status):
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", 999, status=status)
    assert (r.outcome, r.committed_units) == ("released", 0)
    assert b.guard.total_spent() == 0 and b.guard.ledger.open_reservations() == 0


def test_double_settlement_is_a_noop():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    assert b.on_invocation_complete("r1", 150).outcome == "committed"
    again = b.on_invocation_complete("r1", 9000)
    assert again.outcome == "already_settled" and not again.changed
    assert b.on_invocation_complete("r1", status="failed").outcome == "already_settled"
    assert b.guard.total_spent() == 150


def test_actual_above_estimate_is_committed_and_flagged():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    r = b.on_invocation_complete("r1", 260)
    assert (r.outcome, r.committed_units, r.over_estimate) == ("committed", 260, True)
    assert b.guard.total_spent() == 260


def test_settling_an_unknown_or_denied_request_changes_nothing():
    b = budget()
    b.evaluate(ctx("big", cost_estimate=10001))  # denied: its reservation was released at once
    denied = b.on_invocation_complete("big")
    assert (denied.outcome, denied.committed_units, denied.source) == ("already_settled", 0, "no-op (was released)")
    assert b.on_invocation_complete("never-seen", 5).outcome == "unknown"
    assert b.guard.total_spent() == 0 and b.guard.total_held() == 0


def test_a_settled_request_id_cannot_be_authorized_again():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=200))
    b.on_invocation_complete("r1")
    d = b.evaluate(ctx("r1", cost_estimate=200))
    assert d.verdict == "deny" and "already" in d.reason
    assert b.guard.total_spent() == 200


def test_completion_after_the_hold_expired_still_counts_the_spend(clock: FakeClock):
    ledger = MemoryLedger(clock=clock)
    b = BudgetChainGuard(guard_for(rust_policy(prices={"s1:search": 5}), ledger=ledger, reservation_ttl=10))
    b.evaluate(ctx("r1", cost_estimate=200))
    clock.advance(11)
    assert ledger.expire() == ["r1"] and b.guard.total_spent() == 0
    r = b.on_invocation_complete("r1", 180)
    assert (r.outcome, r.committed_units) == ("committed_late", 180)
    assert b.guard.total_spent() == 180


def test_chain_settlement_reaches_the_budget_guard():
    b = budget()
    chain = GuardChain([AllowAll(), b])
    assert chain.evaluate(ctx("r1", cost_estimate=200)).allowed
    out = chain.on_invocation_complete("r1", 90)
    assert list(out) == ["budget"] and out["budget"].committed_units == 90


# -- concurrency: different requests reach the guard at once ------------------


def test_concurrent_requests_never_overspend_and_totals_equal_commits(store: Store):
    policy = rust_policy(max_total=1000, max_per_session=None, max_per_agent=None, max_per_tool=None,
                         prices={"s1:search": 7})
    b = budget(policy, ledger=store.open())
    chain = GuardChain([AllowAll(), b, DenyOnTool("s1:rm")])

    def call(i: int) -> tuple[str, int]:
        rid = f"r{i}"
        d = chain.evaluate(ctx(rid, agent=f"a{i % 5}"))
        if not d.allowed:
            return "deny", 0
        actual = 7 if i % 3 else 5  # some calls cost less than estimated
        r = chain.on_invocation_complete(rid, actual)["budget"]
        assert r.outcome == "committed"
        return "allow", r.committed_units

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(240)))
    allowed = [u for v, u in results if v == "allow"]
    assert allowed, "some requests must fit"
    assert sum(allowed) <= 1000
    assert b.guard.total_spent() == sum(allowed)
    assert b.open_holds() == 0
    assert b.guard.ledger.open_reservations() == 0
    b.guard.close()


def test_concurrent_evaluations_of_one_guard_keep_their_own_evidence():
    b = budget()
    barrier = threading.Barrier(6)

    def call(i):
        barrier.wait()
        d = b.evaluate(ctx(f"r{i}", agent=f"agent-{i}", cost_estimate=i + 1))
        det = d.evidence[0].details
        return det["request_id"], det["estimate"]["units"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(call, range(6)))
    assert got == [(f"r{i}", i + 1) for i in range(6)]


# -- robustness ---------------------------------------------------------------


def test_a_failure_after_the_hold_gives_the_reservation_back():
    class ExplodingMetrics(BudgetMetrics):
        def observe_decision(self, *a):
            raise RuntimeError("metrics backend down")

    b = budget(metrics=ExplodingMetrics())
    d = GuardChain([b]).evaluate(ctx("r1", cost_estimate=200))
    assert d.evidence[0].details == "budget error (fail-closed): RuntimeError: metrics backend down"
    assert b.open_holds() == 0 and b.guard.total_spent() == 0
    assert b.guard.ledger.open_reservations() == 0


def test_the_chain_member_has_no_rates_of_its_own():
    # One conversion path: the guard's oracle (BudgetGuard(rates=...)), not a dict on the member.
    with pytest.raises(TypeError):
        BudgetChainGuard(guard_for(rust_policy()), rates={"EUR": "1.085"})


def test_holds_that_never_report_back_end_by_the_ledger_ttl_and_nothing_stays_in_the_guard(clock: FakeClock):
    """The chain guard keeps no per-call state: an abandoned call's hold is the ledger's to expire."""
    b = budget(ledger=MemoryLedger(clock=clock, ttl=60))
    before = {k: repr(v) for k, v in vars(b).items()}
    for i in range(50):
        b.evaluate(ctx(f"r{i}", cost_estimate=1))
    assert {k: repr(v) for k, v in vars(b).items()} == before, "the chain guard's own state never grows"
    assert b.open_holds() == 50 and b.revalidate("r1").live
    clock.advance(61)
    assert b.revalidate("r1").state == "expired" and b.open_holds() == 0


def test_a_ledger_that_fails_is_a_logged_deny():
    events = []
    ledger = Faulty(MemoryLedger(), reserve_fails="before")
    b = BudgetChainGuard(guard_for(rust_policy(prices={"s1:search": 5}), ledger=ledger),
                         decision_log=DecisionLog(events.append))
    d = GuardChain([b]).evaluate(ctx("r1"))
    assert d.reason == "budget: denied: ledger error: injected: reserve failed before running"
    (ev,) = events
    assert ev["result"]["allow"] is False and ev["result"]["error"] == "ledger error: injected: reserve failed before running"
    assert ev["input"]["cost"] == {"units": 5, "currency": "USD"} and ev["input"]["totals"] is None


# -- property: whatever the order of calls and outcomes, the ledger equals the commits

from hypothesis import given, settings, strategies as st  # noqa: E402

_STEP = st.tuples(
    st.sampled_from(["evaluate", "commit_none", "commit_actual", "fail", "settle_again"]),
    st.integers(min_value=0, max_value=7),  # request slot
    st.integers(min_value=0, max_value=400),  # estimate or actual units
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_STEP, min_size=1, max_size=30))
def test_spend_always_equals_commits_plus_holds_and_never_exceeds_allowed(steps):
    b = budget(rust_policy(max_total=1000, max_per_session=None, max_per_agent=None, max_per_tool=None,
                           prices={"s1:search": 5}))
    committed = 0
    holds: dict[str, int] = {}
    for op, slot, units in steps:
        rid = f"r{slot}"
        if op == "evaluate":
            d = b.evaluate(ctx(rid, cost_estimate=units))
            if d.allowed:
                holds.setdefault(rid, units)  # a retry keeps the first reservation
                assert d.evidence[0].details["estimate"]["units"] == holds[rid]
        else:
            r = (b.on_invocation_complete(rid, status="failed") if op == "fail" else
                 b.on_invocation_complete(rid, units if op == "commit_actual" else None))
            if rid in holds:
                est = holds.pop(rid)
                expected = 0 if op == "fail" else (units if op == "commit_actual" else est)
                assert r.changed and r.committed_units == expected
                committed += expected
            else:
                assert not r.changed
        assert (b.guard.total_spent(), b.guard.total_held()) == (committed, sum(holds.values()))
        assert b.open_holds() == len(holds)
        # Allowed holds never push the counters over the limit (actuals above estimates may).
        assert sum(holds.values()) <= 1000


def test_a_retried_evaluation_keeps_the_first_reservation():
    b = budget()
    b.evaluate(ctx("r1", cost_estimate=100))
    d = b.evaluate(ctx("r1", cost_estimate=250))
    assert d.verdict == "allow"
    assert d.evidence[0].details["estimate"]["units"] == 100
    assert "already held" in d.evidence[0].details["estimate"]["source"]
    assert b.guard.total_held() == 100 and b.open_holds() == 1
    assert b.on_invocation_complete("r1").committed_units == 100
