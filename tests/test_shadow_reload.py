"""A shadow follows its own guard's reloads: the next version of a policy is edited while it runs.

Before, ``ShadowPolicy`` kept the policy and engine it was built with; after the shadow's
guard reloaded, that engine was closed and every shadow decision was an "engine has been
closed" error. Now both are read from the guard on each call (its version held while its
engine decides), and limits the new version adds are tracked by the enforced guard from
the reload on. Real embedded OPA, real files.
"""

from __future__ import annotations

import json

from chio_budget import BudgetGuard
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.decisionlog import DecisionLog
from chio_budget.shadow import ShadowPolicy
from support.chain import ctx
from support.guards import guard_for, make_meta, rust_policy

ENFORCED = rust_policy(prices={"s1:search": 5})


def shadow_events(log):
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["chio"]["event"] == "shadow"]


def test_a_shadow_evaluates_on_its_guards_version_in_force_after_a_reload(tmp_path):
    (tmp_path / "default.yaml").write_text("currency: USD\nmax_total: 10000\n")
    shadow = ShadowPolicy(BudgetGuard.from_files(tmp_path))
    e = guard_for(rust_policy()).evaluate(make_meta(), 100)
    assert shadow.evaluate(e.input, e.decision).decision.allow
    (tmp_path / "default.yaml").write_text("currency: USD\nmax_total: 50\n")
    shadow._guard.reload()
    d = shadow.evaluate(e.input, e.decision).decision
    assert d.error is None and not d.allow and [v.scope for v in d.violations] == ["total"]
    assert d.violations[0].limit_units == 50


def test_a_chain_guards_shadow_follows_reloads_and_its_new_limits_are_counted(tmp_path):
    nxt = tmp_path / "next"
    nxt.mkdir()
    (nxt / "default.yaml").write_text("currency: USD\nmax_total: 100000\n")
    log = tmp_path / "d.jsonl"
    b = BudgetChainGuard(guard_for(rust_policy(max_per_agent=None, prices={"s1:search": 5})),
                         shadows=[BudgetGuard.from_files(nxt)], decision_log=DecisionLog(log))
    assert b.evaluate(ctx("r1", cost_estimate=200)).verdict == "allow"
    b.on_invocation_complete("r1", 200)
    # The next version gains an agent limit the enforced policy does not have.
    (nxt / "default.yaml").write_text("currency: USD\nmax_total: 100000\nmax_per_agent: 300\n")
    b.shadows[0]._guard.reload()
    assert b.evaluate(ctx("r2", cost_estimate=200)).verdict == "allow"
    b.on_invocation_complete("r2", 200)
    assert b.evaluate(ctx("r3", cost_estimate=200)).verdict == "allow"  # enforced: no agent limit
    first, second, third = shadow_events(log)
    assert first["result"]["allow"] and first["input"]["totals"]["agent"] is None
    assert "error" not in second["result"], second["result"]
    # Counted from the reload on: r1's 200 was spent before the agent counter was kept.
    assert second["result"]["allow"] and second["input"]["totals"]["agent"] == 0
    assert not third["result"]["allow"] and third["input"]["totals"]["agent"] == 200
    v = third["result"]["violations"][0]
    assert (v["scope"], v["limit_units"], v["current_units"], v["requested_units"]) == ("agent", 300, 200, 200)
    assert third["chio"]["diff"]["agree"] is False and third["chio"]["diff"]["only_shadow"] == ["agent"]
    b.close()
