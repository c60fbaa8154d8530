"""Decision-log masking by a Rego mask rule, as OPA's logs plugin applies it (v1/plugins/logs/mask.go)."""

from __future__ import annotations

import textwrap

import pytest

from chio_budget.errors import DecisionLogError
from chio_budget.engines.mask import LogMask, MaskRule, rules_of

EVENT = {
    "labels": {"id": "i", "version": "v"}, "decision_id": "d1", "timestamp": "2026-01-01T00:00:00Z",
    "path": "chio/budget/decision",
    "input": {"policy_id": "default", "request": {"agent_id": "a1", "session_id": "s1", "tool_key": "s1:t"}},
    "result": {"allow": False, "violations": [{"scope": "total"}, {"scope": "agent", "agent_id": "a1"}]},
    "metrics": {"timer_rego_query_eval_ns": 5}, "chio": {"request_id": "r1"},
}


def mask_dir(tmp_path, rego: str):
    d = tmp_path / "mask"
    d.mkdir(exist_ok=True)
    (d / "mask.rego").write_text(textwrap.dedent(rego).lstrip("\n"))
    return d


def test_a_mask_rule_keeps_agent_ids_out_and_lists_what_it_erased(tmp_path):
    mask = LogMask(mask_dir(tmp_path, """
        package system.log

        mask contains "/input/request/agent_id"

        mask contains sprintf("/result/violations/%d/agent_id", [i]) if input.result.violations[i].agent_id
    """))
    try:
        out = mask.apply(EVENT)
    finally:
        mask.close()
    assert "agent_id" not in out["input"]["request"]
    assert out["result"]["violations"][1] == {"scope": "agent"}
    assert sorted(out["erased"]) == ["/input/request/agent_id", "/result/violations/1/agent_id"]
    assert "masked" not in out
    assert EVENT["input"]["request"]["agent_id"] == "a1"  # the caller's event is not changed


def test_upsert_overwrites_and_creates_and_is_listed_as_masked(tmp_path):
    mask = LogMask(mask_dir(tmp_path, """
        package system.log

        mask contains {"op": "upsert", "path": "/input/request/session_id", "value": "***"}

        mask contains {"op": "upsert", "path": "/input/redacted/by", "value": "policy"}
    """))
    try:
        out = mask.apply(EVENT)
    finally:
        mask.close()
    assert out["input"]["request"]["session_id"] == "***"
    assert out["input"]["redacted"] == {"by": "policy"}
    assert sorted(out["masked"]) == ["/input/redacted/by", "/input/request/session_id"]


def test_missing_paths_are_skipped_and_whole_parts_can_go():
    event = {**EVENT}
    for rule in rules_of(["/input/nothing/here", "/result"]):
        rule.apply(event)
    assert "result" not in event and event["erased"] == ["/result"]


def test_the_mask_sees_only_opas_event_fields(tmp_path):
    mask = LogMask(mask_dir(tmp_path, """
        package system.log

        mask contains "/input/policy_id" if not input.metrics
        mask contains "/input/request" if input.chio
    """))
    try:
        out = mask.apply(EVENT)
    finally:
        mask.close()
    assert out["erased"] == ["/input/policy_id"]  # metrics and chio are not in the mask's input


@pytest.mark.parametrize("rule,message", [
    ("", "mask must be non-empty"),
    ("input/x", "mask must be slash-prefixed"),
    ("/chio/request_id", "mask prefix not allowed: chio"),
    ({"op": "delete", "path": "/input/x"}, "mask op is not supported: delete"),
    (5, "invalid mask rule format encountered: int"),
])
def test_invalid_rules_are_refused_as_opa_refuses_them(rule, message):
    with pytest.raises(DecisionLogError, match=message):
        rules_of([rule])


def test_paths_are_escaped_as_opa_escapes_them():
    assert str(MaskRule("/input/a b/c;d")) == "/input/a%20b/c%3Bd"


def test_an_undefined_mask_changes_nothing_and_a_failing_one_raises(tmp_path):
    quiet = LogMask(mask_dir(tmp_path, "package system.log\n\nmask contains 1 if false\n"))
    try:
        assert quiet.apply(EVENT) == EVENT  # an empty set of rules
    finally:
        quiet.close()
    broken = LogMask(mask_dir(tmp_path, "package system.log\n\nmask := x if x := 1 / input.input.zero\n"))
    try:
        with pytest.raises(DecisionLogError, match="decision-log mask failed"):
            broken.apply({**EVENT, "input": {"zero": 0}})
    finally:
        broken.close()
