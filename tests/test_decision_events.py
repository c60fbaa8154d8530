"""Decision-log events are OPA's EventV1 (v1/plugins/logs/plugin.go), checked against the shipped JSON schema.

Each event has its own decision_id; settlement and shadow events link to their decision with
``chio.parent_decision_id``; labels carry id and version; ``bundles`` is keyed by bundle name with
the ``.manifest`` revision; ``metrics.timer_rego_query_eval_ns`` is an integer (OPA's own on the
server engine); a ``data.system.log.mask`` rule keeps agent ids out.
"""

from __future__ import annotations

import json
import textwrap
from importlib import resources

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from chio_budget import BudgetGuard
from chio_budget.bundle import bundle_contents
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.cli import app
from chio_budget.decisionlog import DecisionLog, chio_budget_version, explain, find_decision, read_events
from chio_budget.engines.mask import LogMask
from chio_budget.policy import parse_policy
from support.chain import budget, ctx
from support.guards import POLICIES_DIR, guard_for, rust_policy

SCHEMA = json.loads((resources.files("chio_budget") / "schemas" / "decision-event-v1.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)

AGENT_MASK = """
    package system.log

    mask contains "/input/request/agent_id"

    mask contains sprintf("/result/violations/%d/agent_id", [i]) if input.result.violations[i].agent_id
"""


def log_mask(tmp_path, rego: str) -> LogMask:
    """A ``LogMask`` over one ``package system.log`` file holding ``rego``."""
    d = tmp_path / "mask"
    d.mkdir()
    (d / "mask.rego").write_text(textwrap.dedent(rego).lstrip())
    return LogMask(d)


def errors(event: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(event)]


def kinds(events: list[dict]) -> list[str]:
    return [e["chio"]["event"] for e in events]


def scripted(log: DecisionLog, **kw) -> BudgetChainGuard:
    """Allow r1 (settled above its estimate), deny r2 on the agent limit, with one stricter shadow."""
    b = budget(decision_log=log, shadows=[guard_for(rust_policy(id="next", max_total=2000))], **kw)
    b.evaluate(ctx("r1", cost_estimate=2900))
    b.on_invocation_complete("r1", 2950)
    b.evaluate(ctx("r2", cost_estimate=200))
    return b


def test_the_schema_is_a_valid_draft_2020_12_schema_and_not_vacuous():
    Draft202012Validator.check_schema(SCHEMA)
    good = {"decision_id": "d", "timestamp": "2026-01-01T00:00:00.123456789Z", "labels": {"id": "i", "version": "v"},
            "path": "chio/budget/decision", "bundles": {"chio/budget": {"revision": "r"}},
            "metrics": {"timer_rego_query_eval_ns": 7}, "chio": {"event": "decision"}}
    assert errors(good) == []
    bad = [
        {**good, "metrics": {"timer_rego_query_eval_ns": None}},  # never null
        {**good, "metrics": {"timer_rego_query_eval_ns": 1.5}},
        {**good, "labels": {"id": "i"}},  # version missing
        {**good, "bundles": {"chio/budget": {"revision": None}}},
        {**good, "chio": {"event": "settlement"}},  # no parent
        {**good, "chio": {"event": "shadow", "parent_decision_id": "p"}, "metrics": {}},
        {**good, "timestamp": "yesterday"},
        {**good, "erased": ["/chio/request"]},  # OPA masks only /input, /result, /nd_builtin_cache
        {k: v for k, v in good.items() if k != "decision_id"},
    ]
    assert all(errors(b) for b in bad), [b for b in bad if not errors(b)]


def test_every_event_of_a_call_validates_has_its_own_id_and_links_to_its_decision():
    events: list[dict] = []
    b = scripted(DecisionLog(events.append, labels={"id": "kernel-1", "team": "payments"}))
    assert kinds(events) == ["decision", "shadow", "settlement", "decision", "shadow"]
    assert [errors(e) for e in events] == [[]] * 5
    assert len({e["decision_id"] for e in events}) == 5
    d1, s1, settle, d2, s2 = events
    assert s1["chio"]["parent_decision_id"] == settle["chio"]["parent_decision_id"] == d1["decision_id"]
    assert s2["chio"]["parent_decision_id"] == d2["decision_id"]
    assert "parent_decision_id" not in d1["chio"] and "type" not in d1
    assert all(e["labels"] == {"id": "kernel-1", "team": "payments", "version": chio_budget_version()} for e in events)
    assert d1["bundles"] == {"chio/budget": {"revision": b.guard.data_revision}}
    assert s1["bundles"] == {"chio/budget": {"revision": b.shadows[0]._guard.data_revision}}
    for e in (d1, s1, d2, s2):  # embedded: OPA has no timer of its own here, the call's wall time is it
        ns = e["metrics"]["timer_rego_query_eval_ns"]
        assert type(ns) is int and ns > 0 and ns == e["chio"]["client_wall_ns"]
    assert "metrics" not in settle and settle["input"]["request"]["agent_id"] == "a1"


def test_a_warning_event_links_to_its_decision_and_a_mask_reaches_its_agent_ids(tmp_path):
    rules = textwrap.dedent(AGENT_MASK) + textwrap.dedent("""
        mask contains "/input/counter" if contains(input.input.counter, "/agent/")

        mask contains sprintf("/result/warnings/%d/agent_id", [i]) if input.result.warnings[i].agent_id
    """)
    policy = parse_policy("id: soft\ncurrency: USD\nmax_total: 1000\nmax_per_agent: {units: 600, warn_at: [0.5]}\n",
                          "soft.yaml")
    events: list[dict] = []
    mask = log_mask(tmp_path, rules)
    try:
        b = BudgetChainGuard(guard_for(policy), decision_log=DecisionLog(events.append, mask=mask))
        assert b.evaluate(ctx("r1", cost_estimate=400)).verdict == "allow"
    finally:
        mask.close()
    assert kinds(events) == ["decision", "warning"] and [errors(e) for e in events] == [[], []]
    decision, warning = events
    assert warning["chio"]["parent_decision_id"] == decision["decision_id"] != warning["decision_id"]
    assert (warning["chio"]["scope"], warning["chio"]["threshold_bps"]) == ("agent", 5000)
    assert warning["erased"] == ["/input/counter", "/result/warnings/0/agent_id"]
    assert '"a1"' not in json.dumps(warning) and '"a1"' not in json.dumps(decision["result"])  # (UUIDs hold a1)


def test_an_audit_event_validates_and_keeps_the_ledger_key_where_a_mask_reaches_it(tmp_path):
    mask = log_mask(tmp_path, 'package system.log\n\nmask contains "/input/key" if contains(input.input.key, "/agent/")\n')
    try:
        log = DecisionLog([].append, mask=mask)
        ev = mask.apply(log.audit_event(action="adjust", who="ops@h", why="refund", ledger="memory://",
                                        key="p//agent/a1", delta=-5))
    finally:
        mask.close()
    assert errors(ev) == [] and ev["chio"]["event"] == "audit" and "parent_decision_id" not in ev["chio"]
    assert ev["input"] == {"delta": -5} and ev["erased"] == ["/input/key"]


def test_labels_get_a_fresh_instance_id_and_our_version_as_opa_does():
    a, b = DecisionLog([].append), DecisionLog([].append, labels={"version": "mine"})
    assert a.labels["id"] != b.labels["id"] and len(a.labels["id"]) == 36
    assert a.labels["version"] == b.labels["version"] == chio_budget_version()  # config cannot override it


def test_a_decision_denied_before_opa_was_asked_has_a_zero_timer_not_null():
    events: list[dict] = []
    budget(decision_log=DecisionLog(events.append)).evaluate(ctx("r1", tool="unpriced"))
    (ev,) = events
    assert errors(ev) == [] and ev["metrics"] == {"timer_rego_query_eval_ns": 0}


def test_bundles_carry_the_revision_of_the_bundle_manifest(tmp_path):
    events: list[dict] = []
    guard = BudgetGuard.from_files(POLICIES_DIR, policy_id="default")
    b = BudgetChainGuard(guard, decision_log=DecisionLog(events.append, bundle_name="budget"))
    try:
        b.evaluate(ctx("r1"))
    finally:
        b.close()
    manifest = bundle_contents(POLICIES_DIR).manifest
    assert events[0]["bundles"] == {"budget": {"revision": manifest["revision"]}}


def test_on_the_server_engine_the_timer_is_opas_own_and_the_call_time_is_separate(opa_server):
    events: list[dict] = []
    guard = BudgetGuard.from_files(POLICIES_DIR, policy_id="default", engine="server", opa_url=opa_server.url)
    b = BudgetChainGuard(guard, decision_log=DecisionLog(events.append))
    try:
        for i in range(3):
            b.evaluate(ctx(f"r{i}"))
    finally:
        b.close()
    assert [errors(e) for e in events] == [[]] * 3
    for e in events:
        opa_ns, wall = e["metrics"]["timer_rego_query_eval_ns"], e["chio"]["client_wall_ns"]
        assert type(opa_ns) is int and 0 < opa_ns < wall  # OPA's evaluation is inside the HTTP call
    assert events[0]["bundles"]["chio/budget"]["revision"] == bundle_contents(POLICIES_DIR).revision


def test_a_mask_rule_keeps_agent_ids_out_of_every_event(tmp_path):
    log = tmp_path / "d.jsonl"
    mask = log_mask(tmp_path, AGENT_MASK)
    try:
        scripted(DecisionLog(log, mask=mask))
    finally:
        mask.close()
    text = log.read_text()
    assert '"a1"' not in text and "'a1'" not in text
    events = list(read_events(log))
    assert [errors(e) for e in events] == [[]] * 5
    assert [e["erased"] for e in events] == [["/input/request/agent_id"]] * 3 + [
        ["/input/request/agent_id", "/result/violations/0/agent_id"],
        ["/input/request/agent_id", "/result/violations/1/agent_id"]]  # the shadow: total and agent
    assert events[3]["result"]["violations"][0]["limit_units"] == 3000  # the money is kept


def test_a_failing_mask_is_a_failed_write_and_the_call_is_denied(tmp_path):
    mask = log_mask(tmp_path, 'package system.log\n\nmask contains "/chio/request_id"\n')
    try:
        b = budget(decision_log=DecisionLog([].append, mask=mask))
        out = b.evaluate(ctx("r1", cost_estimate=1))
    finally:
        mask.close()
    assert out.verdict == "deny" and "mask prefix not allowed: chio" in out.reason
    assert b.open_holds() == 0


def test_explain_follows_the_parent_link_from_any_event_of_a_call(tmp_path):
    log = tmp_path / "d.jsonl"
    scripted(DecisionLog(log))
    d1, s1, settle, d2, _ = list(read_events(log))
    for some_id in (d1["decision_id"], s1["decision_id"], settle["decision_id"]):
        found = find_decision(read_events(log), some_id)
        assert [e["decision_id"] for e in found] == [d1["decision_id"], s1["decision_id"], settle["decision_id"]]
    text = explain(find_decision(read_events(log), settle["decision_id"]))
    assert f"decision {d1['decision_id']}" in text and "settled   committed" in text and "shadow    policy next" in text
    assert d2["decision_id"] not in text
    result = CliRunner().invoke(app, ["explain", settle["decision_id"], "--log", str(log)])
    assert result.exit_code == 0 and f"decision {d1['decision_id']}" in result.output, result.output


def test_explain_still_reads_a_log_written_before_the_parent_link(tmp_path):
    log = tmp_path / "old.jsonl"
    old = [{"type": "decision", "decision_id": "x", "input": {}, "result": {"allow": True}, "chio": {}},
           {"type": "settlement", "decision_id": "x", "chio": {"outcome": "committed", "committed_units": 3}}]
    log.write_text("".join(json.dumps(e) + "\n" for e in old))
    text = explain(find_decision(read_events(log), "x"))
    assert "decision x" in text and "settled   committed" in text and "committed 3" in text


@pytest.mark.parametrize("sink", ["stream", "file"])
def test_written_lines_validate_as_they_are_read_back(tmp_path, sink):
    import io
    stream = io.StringIO()
    target = stream if sink == "stream" else tmp_path / "d.jsonl"
    scripted(DecisionLog(target))
    raw = stream.getvalue() if sink == "stream" else (tmp_path / "d.jsonl").read_text()
    assert [errors(json.loads(line)) for line in raw.splitlines()] == [[]] * 5
