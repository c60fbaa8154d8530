"""Decision log: OPA-shaped JSON lines, money never dropped, fail-closed writes, explain, shadow."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.decisionlog import DecisionLog, chio_budget_version, event_kind, explain, find_decision, read_events
from chio_budget.errors import DecisionLogError
from chio_budget.engines.function import FunctionEngine
from chio_budget.shadow import ShadowPolicy
from support.chain import budget, ctx
from support.guards import U64_MAX, guard_for, make_meta, rust_policy

OPA_FIELDS = {"decision_id", "timestamp", "path", "input", "result", "bundles", "metrics", "labels"}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_decision_event_has_the_opa_decision_log_shape(tmp_path):
    log = tmp_path / "decisions.jsonl"
    b = budget(decision_log=DecisionLog(log, labels={"id": "kernel-1"}))
    d = b.evaluate(ctx("r1", cost_estimate=200))
    (ev,) = lines(log)
    assert OPA_FIELDS <= set(ev) and ev["chio"]["event"] == "decision" and "type" not in ev
    assert ev["decision_id"] == d.evidence[0].details["decision_id"]
    assert ev["path"] == "chio/budget/decision" and ev["labels"] == {"id": "kernel-1", "version": chio_budget_version()}
    assert ev["timestamp"].endswith("Z")
    assert ev["input"] == {
        "policy_id": "default",
        "request": {"receipt_id": "r1", "timestamp": 1000, "agent_id": "a1", "session_id": "sess-1",
                    "tool_server": "s1", "tool_name": "search", "tool_key": "s1:search"},
        "cost": {"units": 200, "currency": "USD"},
        "totals": {"total": 0, "session": 0, "agent": 0, "tool": None},
    }
    assert ev["result"]["allow"] is True
    assert ev["bundles"] == {"chio/budget": {"revision": b.guard.data_revision}}
    assert ev["result"]["policy_revision"] == b.guard.policy_revision != b.guard.data_revision
    assert isinstance(ev["metrics"]["timer_rego_query_eval_ns"], int) and ev["metrics"]["timer_rego_query_eval_ns"] > 0
    assert ev["chio"]["verdict"] == "allow" and ev["chio"]["estimate_source"] == "context"


def test_money_fields_are_exact_at_u64_scale_and_never_dropped(tmp_path):
    log = tmp_path / "d.jsonl"
    # (limit 2^64-2: with a 2^64-1 limit nothing exceeds it, as in Rust's saturating check)
    policy = rust_policy(max_total=U64_MAX - 1, max_per_session=None, max_per_agent=None, max_per_tool=None)
    b = budget(policy, decision_log=DecisionLog(log))
    b.guard.record(make_meta(tool="search", receipt="seed"), U64_MAX - 10)
    b.evaluate(ctx("r1", cost_estimate=20))  # denied: U64_MAX-10 + 20 saturates > limit
    b.evaluate(ctx("r2", cost_estimate=9))  # allowed exactly to the limit
    b.on_invocation_complete("r2")
    b.on_invocation_complete("r3")  # unknown: no event
    deny, allow, settle = lines(log)
    assert deny["result"]["violations"][0] == {"scope": "total", "limit_units": U64_MAX - 1,
                                               "current_units": U64_MAX - 10, "requested_units": 20,
                                               "currency": "USD"}
    assert deny["input"]["totals"]["total"] == U64_MAX - 10
    assert allow["result"]["allow"] is True
    assert settle["chio"]["event"] == "settlement" and settle["chio"]["parent_decision_id"] == allow["decision_id"]
    assert settle["decision_id"] not in (allow["decision_id"], deny["decision_id"])
    c = settle["chio"]
    for key in ("estimate_units", "actual_units", "committed_units", "currency"):
        assert key in c
    assert (c["estimate_units"], c["committed_units"], c["actual_units"]) == (9, 9, None)
    assert settle["input"]["request"]["tool_key"] == "s1:search"


def test_no_estimate_is_logged_with_its_cost_fields_present(tmp_path):
    log = tmp_path / "d.jsonl"
    budget(decision_log=DecisionLog(log)).evaluate(ctx("r1", tool="unpriced"))
    (ev,) = lines(log)
    assert ev["input"]["cost"] == {"units": None, "currency": "USD"}
    assert ev["result"]["allow"] is False and "no cost estimate" in ev["result"]["error"]


def test_callable_sink_gets_every_event():
    got = []
    b = budget(decision_log=DecisionLog(got.append))
    b.evaluate(ctx("r1", cost_estimate=200))
    b.on_invocation_complete("r1", 300)
    assert [e["chio"]["event"] for e in got] == ["decision", "settlement"]
    assert got[1]["chio"]["over_estimate"] is True and got[1]["chio"]["kernel_settlement"] == "failed"
    json.dumps(got)  # JSON-safe as handed over


def test_a_failing_log_denies_and_gives_the_reservation_back():
    def broken(event):
        raise OSError("disk full")

    b = budget(decision_log=DecisionLog(broken))
    d = b.evaluate(ctx("r1", cost_estimate=200))
    assert d.verdict == "deny" and "decision log error (fail-closed)" in d.reason and "disk full" in d.reason
    assert b.guard.total_spent() == 0 and b.open_holds() == 0


def test_concurrent_writes_never_interleave(tmp_path):
    log = tmp_path / "d.jsonl"
    b = budget(decision_log=DecisionLog(log))

    def call(i):
        b.evaluate(ctx(f"r{i}", agent=f"ag{i}", cost_estimate=1))
        b.on_invocation_complete(f"r{i}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(call, range(60)))
    evs = lines(log)  # every line parses
    assert len(evs) == 120
    by_id = {}
    for e in evs:
        by_id.setdefault(e["chio"].get("parent_decision_id", e["decision_id"]), []).append(event_kind(e))
    assert len(by_id) == 60 and all(sorted(t) == ["decision", "settlement"] for t in by_id.values())
    assert len({e["decision_id"] for e in evs}) == 120
    # each decision logged the OPA input of its own request (the engine record is per thread)
    for e in evs:
        if event_kind(e) == "decision":
            assert e["input"]["request"]["receipt_id"] == e["chio"]["request_id"]
            assert e["input"]["request"]["agent_id"] == "ag" + e["chio"]["request_id"][1:]


# -- shadow mode --------------------------------------------------------------


def test_shadow_is_logged_and_diffed_but_never_enforced(tmp_path):
    log = tmp_path / "d.jsonl"
    strict = guard_for(rust_policy(max_total=300, prices={"s1:search": 5}))
    b = budget(decision_log=DecisionLog(log), shadows=[strict])
    assert b.evaluate(ctx("r1", cost_estimate=200)).verdict == "allow"
    b.on_invocation_complete("r1")
    assert b.evaluate(ctx("r2", cost_estimate=200)).verdict == "allow"  # shadow would deny: 200 + 200 > 300
    evs = lines(log)
    shadows = [e for e in evs if event_kind(e) == "shadow"]
    assert [s["chio"]["diff"]["agree"] for s in shadows] == [True, False]
    second = shadows[1]
    assert second["chio"]["parent_decision_id"] == [e for e in evs if event_kind(e) == "decision"][1]["decision_id"]
    assert second["bundles"] == {"chio/budget": {"revision": strict.data_revision}}
    assert second["input"]["totals"]["total"] == 200  # the enforced counters, not the shadow's own
    assert second["chio"]["enforced"] is False
    assert second["chio"]["diff"]["only_shadow"] == ["total"]
    assert second["result"]["violations"][0]["limit_units"] == 300
    # The shadow never reserved or recorded anything anywhere.
    assert strict.total_spent() == 0 and strict.ledger.open_reservations() == 0
    assert (b.guard.total_spent(), b.guard.total_held()) == (200, 200)
    text = explain(find_decision(read_events(log), second["decision_id"]))
    assert "DISAGREES with enforced" in text and "shadow-only violation: total" in text


def test_a_broken_shadow_never_affects_the_call(tmp_path):
    def down(input):
        raise RuntimeError("shadow down")

    log = tmp_path / "d.jsonl"
    b = budget(decision_log=DecisionLog(log), shadows=[ShadowPolicy(guard_for(rust_policy(), FunctionEngine(down)))])
    assert b.evaluate(ctx("r1", cost_estimate=1)).verdict == "allow"
    (shadow,) = [e for e in lines(log) if event_kind(e) == "shadow"]
    assert "shadow down" in shadow["result"]["error"] and shadow["chio"]["diff"]["agree"] is False


def test_a_shadow_with_a_limit_the_enforced_policy_lacks_is_judged_on_real_counters(tmp_path):
    """Phase-1 finding: the enforced input had ``totals.agent: null`` (no agent limit to read it),
    so a shadow with an agent limit answered ``invalid_input`` instead of judging."""
    log = tmp_path / "d.jsonl"
    enforced = rust_policy(max_per_session=None, max_per_agent=None, prices={"s1:search": 5})
    shadow = guard_for(rust_policy(id="next", max_per_session=None, max_per_agent=250))
    b = budget(enforced, decision_log=DecisionLog(log), shadows=[shadow])
    assert set(b.guard.counter_keys(make_meta(agent="a1"))) == {"total", "agent"}  # tracked for the shadow
    for i, agent in enumerate(["a1", "a1", "a2"]):
        assert b.evaluate(ctx(f"r{i}", agent=agent, cost_estimate=200)).verdict == "allow"
        b.on_invocation_complete(f"r{i}")
    judged = [(e["input"]["totals"]["agent"], e["result"]["allow"], e["result"].get("error"),
               [v["scope"] for v in e["result"]["violations"]]) for e in lines(log) if event_kind(e) == "shadow"]
    assert judged == [(0, True, None, []), (200, False, None, ["agent"]), (0, True, None, [])]


# -- explain ------------------------------------------------------------------


def test_explain_prints_a_past_decision_readably(tmp_path):
    log = tmp_path / "d.jsonl"
    b = budget(decision_log=DecisionLog(log))
    b.evaluate(ctx("r1", cost_estimate=2900))
    b.on_invocation_complete("r1", 2950)
    d = b.evaluate(ctx("r2", cost_estimate=200))
    deny_id = d.evidence[0].details["decision_id"]
    text = explain(find_decision(read_events(log), deny_id))
    assert deny_id in text and "DENY" in text
    assert "agent 'a1' budget exceeded: 2950 spent + 200 requested > limit 3000 USD" in text
    assert "s1:search" in text and "sess-1" in text

    allow_id = json.loads(log.read_text().splitlines()[0])["decision_id"]
    result = CliRunner().invoke(app, ["explain", allow_id, "--log", str(log)])
    assert result.exit_code == 0, result.output
    assert "ALLOW" in result.output and "committed 2950 USD" in result.output
    assert "actual above estimate" in result.output


def test_explain_cli_errors(tmp_path):
    log = tmp_path / "d.jsonl"
    log.write_text('{"decision_id": "x", "type": "decision"}\nnot json\n')
    r = CliRunner().invoke(app, ["explain", "nope", "--log", str(log)])
    assert r.exit_code == 2 and f"{log}:2:" in r.output
    log.write_text('{"decision_id": "x", "type": "decision"}\n')
    r = CliRunner().invoke(app, ["explain", "nope", "--log", str(log)])
    assert r.exit_code == 1 and "no event with decision_id 'nope'" in r.output
    r = CliRunner().invoke(app, ["explain", "x", "--log", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "cannot read" in r.output


# -- one event, one line: separators in strings are escaped (issue 9 item 11) --


def test_line_separators_in_request_fields_are_escaped_so_an_event_stays_one_line(tmp_path):
    log = tmp_path / "d.jsonl"
    odd = "a\u2028b\u0085c\u2029d\u00e9"  # LINE SEPARATOR, NEXT LINE, PARAGRAPH SEPARATOR, and a plain é
    b = budget(decision_log=DecisionLog(log))
    b.evaluate(ctx("r1", agent=odd, session=odd, cost_estimate=1))
    b.on_invocation_complete("r1")
    raw = log.read_bytes()
    assert raw.isascii() and b"\\u2028" in raw and b"\\u0085" in raw and b"\\u2029" in raw
    decision, settlement = raw.decode().splitlines()  # str.splitlines also splits at U+2028/U+0085/U+2029
    assert json.loads(decision)["input"]["request"]["agent_id"] == odd
    assert json.loads(settlement)["input"]["request"]["session_id"] == odd


# -- the file follows logrotate, and can rotate itself by size (issue 9 item 10) --


def request_ids(path):
    return [e["chio"]["request_id"] for e in lines(path)]


def test_the_log_is_reopened_after_a_logrotate_rename(tmp_path):
    path = tmp_path / "d.jsonl"
    b = budget(decision_log=DecisionLog(path))
    b.evaluate(ctx("r1", cost_estimate=1))
    path.rename(tmp_path / "d.jsonl.1")  # what logrotate does (without copytruncate)
    b.evaluate(ctx("r2", cost_estimate=1))
    b.evaluate(ctx("r3", cost_estimate=1))
    assert request_ids(tmp_path / "d.jsonl.1") == ["r1"]
    assert request_ids(path) == ["r2", "r3"]


def test_the_log_is_recreated_after_the_file_is_deleted(tmp_path):
    path = tmp_path / "d.jsonl"
    b = budget(decision_log=DecisionLog(path))
    b.evaluate(ctx("r1", cost_estimate=1))
    path.unlink()
    b.evaluate(ctx("r2", cost_estimate=1))
    assert request_ids(path) == ["r2"]


def event(log, i):
    return log.decision_event(decision_id=f"d{i}", input={"pad": "x" * 300}, result={"allow": True},
                              revision=None, eval_ns=1, chio={"request_id": f"r{i}"})


def test_size_based_rotation_keeps_backup_count_files_each_within_max_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_bytes=2000, backup_count=2)
    size = len(json.dumps(event(log, 0), separators=(",", ":"))) + 1
    per_file = 2000 // size
    for i in range(40):
        log.write(event(log, i))
    log.close()
    files = [path.with_name(f"d.jsonl.{n}") for n in (2, 1)] + [path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    assert all(0 < p.stat().st_size <= 2000 for p in files)
    kept = [rid for p in files for rid in request_ids(p)]
    assert kept == [f"r{i}" for i in range(40 - len(kept), 40)]  # the newest, in order, none lost in between
    assert len(kept) > 2 * per_file


def test_an_event_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_bytes=100, backup_count=1)
    log.write(event(log, 0))
    log.write(event(log, 1))
    assert request_ids(path) == ["r1"] and request_ids(tmp_path / "d.jsonl.1") == ["r0"]


@pytest.mark.parametrize("kw, msg", [
    ({"max_bytes": 0}, "max_bytes must be an int > 0"),
    ({"max_bytes": 1.5}, "max_bytes must be an int > 0"),
    ({"max_bytes": 100, "backup_count": 0}, "backup_count must be an int >= 1"),
])
def test_bad_rotation_options_are_refused(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        DecisionLog(tmp_path / "d.jsonl", **kw)


def test_rotation_needs_a_file_sink():
    with pytest.raises(ValueError, match="max_bytes needs a file path sink"):
        DecisionLog([].append, max_bytes=100)


def test_a_vanished_log_directory_denies_until_it_is_back(tmp_path):
    path = tmp_path / "logs" / "d.jsonl"
    b = budget(decision_log=DecisionLog(path))
    assert b.evaluate(ctx("r1", cost_estimate=1)).allowed
    path.unlink()
    path.parent.rmdir()
    d = b.evaluate(ctx("r2", cost_estimate=1))
    assert d.verdict == "deny" and "decision log error (fail-closed)" in d.reason and "FileNotFoundError" in d.reason
    assert b.open_holds() == 1 and b.guard.ledger.open_reservations() == 1  # only r1's hold; r2's was given back
    path.parent.mkdir()
    assert b.evaluate(ctx("r3", cost_estimate=1)).allowed
    assert request_ids(path) == ["r3"]


def test_writing_after_close_is_a_decision_log_error(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl")
    log.close()
    with pytest.raises(DecisionLogError, match="closed"):
        log.write(event(log, 0))
