"""The chain guard over the server engine: OPA over real loopback HTTP (a real opa when present)."""

from __future__ import annotations

from chio_budget import BudgetGuard
from chio_budget.chain import GuardChain
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.decisionlog import DecisionLog
from chio_budget.metrics import BudgetMetrics
from support.chain import AllowAll, ctx
from support.guards import POLICIES_DIR


def test_chain_guard_over_an_opa_server_logs_and_fails_closed(opa_server):  # noqa: F811
    events, metrics = [], BudgetMetrics()
    guard = BudgetGuard.from_files(POLICIES_DIR, policy_id="default", engine="server", opa_url=opa_server.url)
    budget = BudgetChainGuard(guard, decision_log=DecisionLog(events.append), metrics=metrics)
    chain = GuardChain([AllowAll(), budget])
    try:
        d = chain.evaluate(ctx("r1"))  # s1:search is priced 5 in policies/default.yaml
        assert d.verdict == "allow"
        assert d.evidence[1].details["estimate"] == {"units": 5, "currency": "USD", "source": "policy price"}
        assert chain.on_invocation_complete("r1", 4)["budget"].committed_units == 4
        ok = events[0]
        assert ok["chio"]["engine"] == "server" and ok["metrics"]["timer_rego_query_eval_ns"] > 0
        assert ok["input"]["totals"] == {"total": 0, "session": 0, "agent": 0, "tool": None}

        opa_server.faults.set(status=500)  # OPA answers every decision with a 500
        d = chain.evaluate(ctx("r2"))
        assert d.verdict == "deny" and "engine error" in d.reason
        assert budget.open_holds() == 0 and guard.total_spent() == 4
        bad = events[-1]
        assert bad["chio"]["event"] == "decision" and bad["result"]["allow"] is False and "error" in bad["result"]
        text = metrics.render().decode()
        assert 'chio_budget_decisions_total{outcome="error",policy_id="default",scope="error"} 1.0' in text
    finally:
        opa_server.faults.clear()
        budget.close()
