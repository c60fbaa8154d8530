"""Done-when: a three-guard chain over a scripted agent session, end to end.

allow-all -> budget -> deny-on-tool, the real embedded OPA, each ledger backend
(memory, SQLite file, Redis), the decision log in a real file, metrics on their
own registry.
Each step checks the verdict, who said what (evidence), the settlement and,
at the end, the decision log line by line.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chio_budget.chain import GuardChain
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.cli import app
from chio_budget.decisionlog import DecisionLog
from chio_budget.metrics import BudgetMetrics
from support.backends import Store
from support.chain import AllowAll, DenyOnTool, ctx
from support.guards import guard_for, rust_policy


def rust_cost(receipt: str, units: int) -> str:
    """The Rust ``CostMetadata`` JSON the kernel hands over after the call."""
    return json.dumps({
        "schema": "chio.cost-metadata.v1", "receipt_id": receipt, "timestamp": 1000, "session_id": "sess-1",
        "agent_id": "a1", "tool_server": "s1", "tool_name": "search",
        "dimensions": [{"dimension": "compute_time", "duration_ms": 40},
                       {"dimension": "api_cost", "amount": {"units": units, "currency": "USD"}, "provider": "p"}],
        "total_monetary_cost": {"units": units, "currency": "USD"},
    })


def test_scripted_session_through_a_three_guard_chain(store: Store, tmp_path):
    policy = rust_policy(max_total=1000, max_per_session=600, max_per_agent=500, max_per_tool=None,
                         prices={"s1:search": 100, "s1:summarize": 250})
    log_path = tmp_path / "decisions.jsonl"
    metrics = BudgetMetrics()
    pid = policy.id
    budget = BudgetChainGuard(guard_for(policy, ledger=store.open()), decision_log=DecisionLog(log_path),
                              metrics=metrics)
    allow_all, deny_rm = AllowAll(), DenyOnTool("s1:rm")
    chain = GuardChain([allow_all, budget, deny_rm])

    def step(rid, tool, agent="a1", **kw):
        d = chain.evaluate(ctx(rid, tool=tool, agent=agent, **kw))
        return d, [(e.guard_name, e.verdict) for e in d.evidence]

    # 1. search: priced 100, actually cost 80 (from the Rust cost metadata)
    d, ev = step("r1", "search")
    assert d.verdict == "allow" and ev == [("allow-all", "allow"), ("budget", "allow"), ("deny-on-tool", "allow")]
    assert d.evidence[1].details["estimate"] == {"units": 100, "currency": "USD", "source": "policy price"}
    assert chain.on_invocation_complete("r1", rust_cost("r1", 80))["budget"].committed_units == 80

    # 2. summarize: priced 250, settled without a cost -> the estimate
    d, ev = step("r2", "summarize")
    assert d.verdict == "allow"
    assert chain.on_invocation_complete("r2")["budget"].committed_units == 250

    # 3. rm: the budget allows (and holds), the last guard denies -> the hold is given back
    d, ev = step("r3", "rm", cost_estimate=10)
    assert d.verdict == "deny" and "s1:rm is blocked" in d.reason
    assert ev == [("allow-all", "allow"), ("budget", "allow"), ("deny-on-tool", "deny")]
    assert budget.open_holds() == 0 and budget.guard.total_spent() == 330

    # 4. summarize again: agent a1 would reach 330 + 250 > 500 -> budget denies, last guard never asked
    seen_before = len(deny_rm.seen)
    d, ev = step("r4", "summarize")
    assert d.verdict == "deny" and ev == [("allow-all", "allow"), ("budget", "deny")]
    assert len(deny_rm.seen) == seen_before
    viol = d.evidence[1].details["decision"]["violations"]
    assert viol == [{"scope": "agent", "agent_id": "a1", "limit_units": 500, "current_units": 330,
                     "requested_units": 250, "currency": "USD"}]
    r4_decision_id = d.evidence[1].details["decision_id"]

    # 5. another agent in the same session: allowed, but the call fails -> released
    d, _ = step("r5", "search", agent="a2")
    assert d.verdict == "allow"
    assert chain.on_invocation_complete("r5", status="failed")["budget"].outcome == "released"

    # 6. allowed at 100, actually cost 300: committed anyway and flagged
    d, _ = step("r6", "search", agent="a2")
    assert d.verdict == "allow"
    s6 = chain.on_invocation_complete("r6", 300)["budget"]
    assert (s6.outcome, s6.committed_units, s6.over_estimate) == ("committed", 300, True)
    assert chain.on_invocation_complete("r6", 300)["budget"].outcome == "already_settled"

    # 7. session sess-1 is at 630 > 600 now: denied on the session limit
    d, _ = step("r7", "search", agent="a2")
    assert d.verdict == "deny"
    assert d.evidence[1].details["decision"]["violations"][0]["scope"] == "session"

    assert budget.guard.total_spent() == 630 and budget.guard.remaining() == 370
    assert budget.open_holds() == 0 and budget.guard.ledger.open_reservations() == 0
    ids = [f"r{i}" for i in range(1, 8)]
    assert allow_all.seen == ids

    # The decision log: one decision per budget evaluation, one settlement per hold.
    events = [json.loads(x) for x in log_path.read_text().splitlines()]
    decisions = [e for e in events if e["chio"]["event"] == "decision"]
    settlements = [e for e in events if e["chio"]["event"] == "settlement"]
    assert [e["chio"]["request_id"] for e in decisions] == ids
    assert [e["chio"]["verdict"] for e in decisions] == ["allow", "allow", "allow", "deny", "allow", "allow", "deny"]
    assert [(e["chio"]["request_id"], e["chio"]["outcome"], e["chio"]["committed_units"]) for e in settlements] == [
        (ids[0], "committed", 80), (ids[1], "committed", 250), (ids[2], "released", 0), (ids[4], "released", 0),
        (ids[5], "committed", 300)]
    assert settlements[-1]["chio"]["kernel_settlement"] == "failed"  # actual above estimate
    by_id = {e["decision_id"]: e for e in decisions}
    assert all(s["chio"]["parent_decision_id"] in by_id for s in settlements)
    assert sum(s["chio"]["committed_units"] for s in settlements) == budget.guard.total_spent()
    assert decisions[3]["input"]["totals"] == {"total": 330, "session": 330, "agent": 330, "tool": None}

    # The metrics saw the same story.
    text = metrics.render().decode()
    assert f'chio_budget_decisions_total{{outcome="deny",policy_id="{pid}",scope="agent"}} 1.0' in text
    assert f'chio_budget_spend_units_total{{currency="USD",key="",policy_id="{pid}",scope="total"}} 630.0' in text

    # And an operator can read the denied decision back.
    out = CliRunner().invoke(app, ["explain", r4_decision_id, "--log", str(log_path)])
    assert out.exit_code == 0, out.output
    assert "DENY" in out.output and "agent 'a1' budget exceeded: 330 spent + 250 requested > limit 500 USD" in out.output
    budget.close()
