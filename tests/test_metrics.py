"""Prometheus metrics: per-guard registries, what each metric counts, /metrics over real HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from prometheus_client.parser import text_string_to_metric_families

from chio_budget import Decision
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.engines.function import FunctionEngine
from chio_budget.metrics import BudgetMetrics
from support.chain import budget, ctx
from support.guards import guard_for, rust_policy


def samples(m: BudgetMetrics) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m, name, **labels):
    return samples(m).get((name, tuple(sorted(labels.items()))), 0.0)


def test_decisions_by_outcome_and_primary_scope():
    m = BudgetMetrics()
    b = budget(metrics=m)
    b.evaluate(ctx("r1", cost_estimate=10))
    b.evaluate(ctx("r2", cost_estimate=10001))  # total, session, agent
    b.evaluate(ctx("r3", tool="unpriced"))  # no estimate: error
    assert value(m, "chio_budget_decisions_total", policy_id="default", outcome="allow", scope="none") == 1
    assert value(m, "chio_budget_decisions_total", policy_id="default", outcome="deny", scope="total") == 1
    assert value(m, "chio_budget_decisions_total", policy_id="default", outcome="error", scope="error") == 1
    for scope in ("total", "session", "agent"):
        assert value(m, "chio_budget_violations_total", policy_id="default", scope=scope) == 1
    # OPA was asked twice (r3 never reached it)
    assert value(m, "chio_budget_eval_seconds_count", policy_id="default", engine="embedded") == 2


def test_reservations_open_follows_holds_and_settlements():
    m = BudgetMetrics()
    b = budget(metrics=m)
    b.evaluate(ctx("r1", cost_estimate=10))
    b.evaluate(ctx("r2", cost_estimate=10))
    assert value(m, "chio_budget_reservations_open", policy_id="default") == 2
    b.on_invocation_complete("r1")
    b.on_invocation_complete("r2", status="failed")
    assert value(m, "chio_budget_reservations_open", policy_id="default") == 0


def test_spend_by_scope_counts_committed_units_only():
    m = BudgetMetrics(agent_labels=True)
    b = budget(metrics=m)
    b.evaluate(ctx("r1", cost_estimate=100))
    b.on_invocation_complete("r1", 80)
    b.evaluate(ctx("r2", agent="a2", cost_estimate=100))
    b.on_invocation_complete("r2", 130)  # over the estimate
    b.evaluate(ctx("r3", cost_estimate=100))
    b.on_invocation_complete("r3", status="cancelled")
    spend = "chio_budget_spend_units_total"
    assert value(m, spend, policy_id="default", currency="USD", scope="total", key="") == 210
    assert value(m, spend, policy_id="default", currency="USD", scope="agent", key="a1") == 80
    assert value(m, spend, policy_id="default", currency="USD", scope="agent", key="a2") == 130
    assert value(m, spend, policy_id="default", currency="USD", scope="tool", key="s1:search") == 210
    assert value(m, "chio_budget_settlements_total", policy_id="default", outcome="committed") == 2
    assert value(m, "chio_budget_settlements_total", policy_id="default", outcome="released") == 1
    assert value(m, "chio_budget_over_estimate_total", policy_id="default") == 1
    assert b.guard.total_spent() == 210  # the metric agrees with the ledger


def test_each_guard_has_its_own_registry():
    m1, m2 = BudgetMetrics(), BudgetMetrics()
    budget(metrics=m1).evaluate(ctx("r1", cost_estimate=1))
    assert value(m1, "chio_budget_decisions_total", policy_id="default", outcome="allow", scope="none") == 1
    assert value(m2, "chio_budget_decisions_total", policy_id="default", outcome="allow", scope="none") == 0


def test_shadow_disagreements_are_counted():
    m = BudgetMetrics()
    b = budget(metrics=m, shadows=[guard_for(rust_policy(id="next", max_total=5))])
    b.evaluate(ctx("r1", cost_estimate=1))
    b.evaluate(ctx("r2", cost_estimate=9))
    assert value(m, "chio_budget_shadow_disagreements_total", policy_id="default", shadow_policy_id="next") == 1


def test_metrics_endpoint_serves_over_real_http_on_loopback():
    m = BudgetMetrics()
    b = budget(metrics=m)
    b.evaluate(ctx("r1", cost_estimate=10))
    server, thread = m.serve(port=0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert 'chio_budget_decisions_total{outcome="allow",policy_id="default",scope="none"} 1.0' in body
        assert "chio_budget_eval_seconds_bucket" in body
    finally:
        server.shutdown()
        server.server_close()


# -- label cardinality: every label value set is bounded (issue 9 item 10) ------


def series(m: BudgetMetrics) -> int:
    """How many series a scrape of ``/metrics`` returns (one per sample line)."""
    return len(samples(m))


def run_distinct_agents(m: BudgetMetrics, n: int, *, new_tools: bool = False) -> BudgetChainGuard:
    """``n`` allowed and settled calls, each from a new agent in a new session (and on a new tool)."""
    allow = Decision(allow=True, policy_id="default")
    policy = rust_policy(max_total=10**12, max_per_session=None, max_per_agent=None, max_per_tool=None)
    b = BudgetChainGuard(guard_for(policy, engine=FunctionEngine(lambda i: allow)), metrics=m)
    for i in range(n):
        tool = f"tool-{i}" if new_tools else "search"
        assert b.evaluate(ctx(f"r{i}", tool=tool, agent=f"agent-{i}", session=f"sess-{i}", cost_estimate=5)).allowed
        assert b.on_invocation_complete(f"r{i}", 5).outcome == "committed"
    return b


def test_ten_thousand_distinct_agents_give_a_bounded_number_of_series():
    m = BudgetMetrics()
    run_distinct_agents(m, 10_000)
    spend = {dict(labels)["scope"]: v for (name, labels), v in samples(m).items()
             if name == "chio_budget_spend_units_total"}
    assert spend == {"total": 50_000, "tool": 50_000}  # no series per agent or session by default
    assert series(m) < 60  # (was 20,027: one spend series, and its _created, per agent)


def test_tool_label_values_are_capped_and_the_rest_folded_into_other():
    m = BudgetMetrics(max_label_values=50)
    run_distinct_agents(m, 300, new_tools=True)
    tools = {dict(labels)["key"]: v for (name, labels), v in samples(m).items()
             if name == "chio_budget_spend_units_total" and dict(labels)["scope"] == "tool"}
    assert len(tools) == 51 and tools["s1:tool-0"] == 5 and tools["other"] == 5 * 250
    assert value(m, "chio_budget_label_values_folded_total", label="tool") == 250


def test_agent_and_session_labels_are_opt_in_and_capped():
    m = BudgetMetrics(agent_labels=True, session_labels=True, max_label_values=100)
    run_distinct_agents(m, 1_000, new_tools=True)
    spend = [dict(labels) for name, labels in samples(m) if name == "chio_budget_spend_units_total"]
    for scope in ("agent", "session", "tool"):
        keys = {x["key"] for x in spend if x["scope"] == scope}
        assert len(keys) == 101 and "other" in keys
    key = {"agent": "agent-0", "session": "sess-0", "tool": "s1:tool-0"}
    for scope in ("agent", "session", "tool"):
        assert value(m, "chio_budget_spend_units_total", policy_id="default", currency="USD", scope=scope,
                     key=key[scope]) == 5
        assert value(m, "chio_budget_spend_units_total", policy_id="default", currency="USD", scope=scope,
                     key="other") == 5 * 900
        assert value(m, "chio_budget_label_values_folded_total", label=scope) == 900


def test_violation_scopes_from_policy_extensions_are_capped_too():
    m = BudgetMetrics(max_label_values=3)
    # A team's rule that (wrongly) puts a request field into the scope must not grow the metrics.
    engine = FunctionEngine(lambda i: {"allow": False, "violations": [
        {"scope": "per-agent-" + i["request"]["agent_id"], "code": "x"}]})
    b = BudgetChainGuard(guard_for(rust_policy(), engine=engine), metrics=m)
    for i in range(20):
        assert b.evaluate(ctx(f"r{i}", agent=f"agent-{i}", cost_estimate=1)).verdict == "deny"
    scopes = {dict(labels)["scope"] for name, labels in samples(m) if name == "chio_budget_violations_total"}
    assert scopes == {"per-agent-agent-0", "per-agent-agent-1", "per-agent-agent-2", "other"}
    assert value(m, "chio_budget_decisions_total", policy_id="default", outcome="deny", scope="other") == 17


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_max_label_values_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="max_label_values must be an int >= 0"):
        BudgetMetrics(max_label_values=bad)
