"""The chain member in any currency: one conversion path (the guard's oracle), logged, and the revision gauge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chio_budget import BudgetGuard, MonetaryAmount
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.decisionlog import DecisionLog
from chio_budget.kernel import GuardContext
from chio_budget.metrics import BudgetMetrics
from support.guards import REGO_DIR

T0 = 1_767_225_600


def ctx(request_id: str, **kw) -> GuardContext:
    return GuardContext(request_id=request_id, tool_name="search", server_id="s1", agent_id="agent-7",
                        session_id="sess-1", arguments={}, timestamp=T0 + 12, **kw)


def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    policies, rego = tmp_path / "policies", tmp_path / "rego"
    policies.mkdir()
    (policies / "default.yaml").write_text("currency: USD\nmax_total: 10000\n")
    shutil.copytree(REGO_DIR, rego, ignore=shutil.ignore_patterns("*_test.rego"))
    rates = tmp_path / "rates.yaml"
    rates.write_text('margin_bps: 200\nrates:\n  EUR/USD: {rate: "1.0842", updated_at: 1767225600}\n')
    return policies, rego, rates


def test_a_converted_decision_is_logged_with_the_original_amount_the_rate_and_the_units(tmp_path):
    policies, rego, rates = files(tmp_path)
    log = tmp_path / "decisions.jsonl"
    guard = BudgetGuard.from_files(policies, rego_dir=rego, rates=rates)
    b = BudgetChainGuard(guard, decision_log=DecisionLog(log))
    try:
        d = b.evaluate(ctx("req-42", cost_estimate=MonetaryAmount(units=100, currency="EUR")))
        assert d.verdict == "allow"
        assert d.evidence[0].details["estimate"] == {"units": 112, "currency": "USD", "source": "context"}
        r = b.on_invocation_complete("req-42", {"dimensions": [],
                                                "total_monetary_cost": {"units": 50, "currency": "EUR"}})
        assert (r.outcome, r.committed_units) == ("committed", 57)   # 54.21 -> 55 -> 56.1 -> 57
        assert guard.total_spent() == 57
    finally:
        b.close()
    decision, settlement = (json.loads(x) for x in log.read_text().splitlines())
    print("\nconverted decision, decision-log line:\n" + log.read_text().splitlines()[0])
    assert decision["input"]["cost"] == {"units": 112, "currency": "USD"}
    conv = decision["input"]["conversion"]
    assert conv["original"] == {"units": 100, "currency": "EUR"}
    assert conv["rate"] == {"numerator": 10842, "denominator": 10000, "source": f"{rates}:3",
                            "updated_at": T0, "age_seconds": 12}
    assert (conv["converted_units"], conv["margin_bps"]) == (112, 200)
    assert decision["chio"]["rego_revision"] == guard.rego_revision
    assert decision["bundles"]["chio/budget"]["revision"] == guard.data_revision
    assert settlement["chio"]["event"] == "settlement" and settlement["chio"]["committed_units"] == 57
    [actual] = settlement["chio"]["conversions"]
    assert (actual["original"], actual["converted_units"]) == ({"units": 50, "currency": "EUR"}, 57)


def test_a_stale_rate_is_a_logged_policy_deny_not_an_error(tmp_path):
    policies, rego, rates = files(tmp_path)
    log = tmp_path / "decisions.jsonl"
    b = BudgetChainGuard(BudgetGuard.from_files(policies, rego_dir=rego, rates=rates), decision_log=DecisionLog(log))
    late = GuardContext(request_id="r1", tool_name="search", server_id="s1", agent_id="a", arguments={},
                        timestamp=T0 + 601, cost_estimate=MonetaryAmount(units=100, currency="EUR"))
    d = b.evaluate(late)
    b.close()
    assert d.verdict == "deny" and "601 s old" in d.reason
    (ev,) = (json.loads(x) for x in log.read_text().splitlines())
    assert ev["result"]["violations"][0]["code"] == "rate_stale" and "error" not in ev["result"]
    assert b.guard.total_held() == 0


def test_the_revision_gauge_follows_reloads(tmp_path):
    policies, rego, rates = files(tmp_path)
    metrics = BudgetMetrics()
    guard = BudgetGuard.from_files(policies, rego_dir=rego, rates=rates)
    b = BudgetChainGuard(guard, metrics=metrics)
    try:
        first = (guard.policy_revision, guard.rego_revision)
        assert _info(metrics) == [("default",) + first]
        (policies / "default.yaml").write_text("currency: USD\nmax_total: 20000\n")
        guard.reload()
        assert _info(metrics) == [("default", guard.policy_revision, guard.rego_revision)]
        assert guard.policy_revision != first[0]
        (policies / "default.yaml").write_text("currency: USD\nmax_total: oops\n")
        try:
            guard.reload()
        except Exception:
            pass
        text = metrics.render().decode()
        assert 'chio_budget_reloads_total{outcome="ok",policy_id="default"} 1.0' in text
        assert 'chio_budget_reloads_total{outcome="failed",policy_id="default"} 1.0' in text
        assert b.evaluate(ctx("r1", cost_estimate=15000)).verdict == "allow"  # the reloaded limit holds
    finally:
        b.close()


def _info(metrics: BudgetMetrics) -> list[tuple[str, str, str]]:
    out = []
    for fam in metrics.registry.collect():
        if fam.name == "chio_budget_policy_revision_info":
            out += [(s.labels["policy_id"], s.labels["policy_revision"], s.labels["rego_revision"])
                    for s in fam.samples if s.value == 1]
    return out
