"""Prometheus metrics: per-guard registries, what each metric counts, /metrics over real HTTP."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from chio_budget.metrics import BudgetMetrics
from chain_support import budget, ctx
from conftest import guard_for, rust_policy


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
    m = BudgetMetrics()
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
