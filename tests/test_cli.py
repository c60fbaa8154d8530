"""The CLI as operators use it: replay, check, demo (test-rego: tests/test_regotest.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from support.guards import ROOT, U64_MAX

runner = CliRunner()
META = {"receipt_id": "r1", "timestamp": 1000, "session_id": "sess-1", "agent_id": "a1",
        "tool_server": "s1", "tool_name": "t1"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def lines(*events):
    return "".join(json.dumps(e) + "\n" for e in events)


def test_replay_emits_one_json_line_per_event(policies_dir, tmp_path):
    f = tmp_path / "events.jsonl"
    f.write_text(lines(
        {"op": "check", "meta": META, "cost_units": 100},
        {"op": "record", "meta": META, "cost_units": 2900},
        {"op": "check", "meta": META, "cost_units": 200},
        {"op": "authorize", "meta": {**META, "receipt_id": "r2", "agent_id": "a2"}, "cost_units": 50},
        {"op": "authorize", "meta": {**META, "receipt_id": "r3"}, "cost_units": 200},
        {"op": "remaining"},
        {"op": "total_spent"},
    ))
    r = run("replay", f, "--policies", policies_dir, "--policy-id", "default")
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[0]["allow"] is True
    assert out[1] == {"recorded": 2900}
    assert out[2]["allow"] is False
    assert out[2]["violations"] == [{"scope": "agent", "agent_id": "a1", "limit_units": 3000,
                                     "current_units": 2900, "requested_units": 200, "currency": "USD"}]
    assert out[3]["allow"] is True  # authorize allowed: recorded
    assert out[4]["allow"] is False  # denied: nothing recorded
    assert out[5] == {"remaining": 10000 - 2950}
    assert out[6] == {"total_spent": 2950}


@pytest.mark.parametrize("bad_line, message", [
    ('{"op": "check", "meta": {"receipt_id": "r1"}, "cost_units": 1}', ":2: meta.timestamp: Field required"),
    ('{"op": "record", "meta": META, "cost_units": -5}', ":2: cost_units: must be >= 0, got -5"),
    ('{"op": "record", "meta": META, "cost_units": 1.5}', ":2: cost_units: must be an integer number of minor units"),
    ('{"op": "record", "meta": META, "cost_units": 18446744073709551616}', ":2: cost_units: must be <= 2^64-1"),
    ('{"op": "spend", "meta": META, "cost_units": 1}', ":2: op: must be one of"),
    ('{"op": "record", "meta": META}', ":2: cost_units: required for op 'record'"),
    ('{"op": "record", "meta": META, "cost_units": 1, "x": 1}', ":2: x: unknown field"),
    ('{"op": "record", ', ":2: <json>: Expecting property name"),
])
def test_replay_bad_line_is_located_and_nothing_is_recorded(tmp_path, bad_line, message):
    db = tmp_path / "events.jsonl"
    good = json.dumps({"op": "record", "meta": META, "cost_units": 7})
    db.write_text(good + "\n" + bad_line.replace("META", json.dumps(META)) + "\n" + good + "\n")
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "replay", str(db), "--policies",
                        str(ROOT / "policies")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""  # validated before running: not even line 1 was recorded
    [err] = r.stderr.strip().splitlines()
    assert err.startswith(str(db)) and message in err


def test_replay_from_stdin_with_u64_amounts(tmp_path):
    pol = tmp_path / "p"
    pol.mkdir()
    (pol / "default.yaml").write_text(f"currency: USD\nmax_total: {U64_MAX}\n")
    events = lines({"op": "record", "meta": META, "cost_units": U64_MAX - 10},
                   {"op": "record", "meta": META, "cost_units": 20},
                   {"op": "total_spent"}, {"op": "check", "meta": META, "cost_units": 0})
    r = runner.invoke(app, ["replay", "-", "--policies", str(pol)], input=events)
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[2] == {"total_spent": U64_MAX}
    assert out[3]["allow"] is True


def test_check_exit_codes(policies_dir):
    ok = run("check", "--meta", json.dumps(META), "--cost", 100, "--policies", policies_dir)
    assert ok.exit_code == 0 and json.loads(ok.stdout)["allow"] is True
    denied = run("check", "--meta", json.dumps(META), "--cost", 10001, "--policies", policies_dir)
    assert denied.exit_code == 1
    assert json.loads(denied.stdout)["violations"][0]["scope"] == "total"
    bad = run("check", "--meta", '{"receipt_id": "r"}', "--cost", 1, "--policies", policies_dir)
    assert bad.exit_code == 2 and "--meta: timestamp: Field required" in bad.stderr


def test_check_reports_policy_errors_located(tmp_path):
    (tmp_path / "default.yaml").write_text("currency: USD\nmax_total: nope\n")
    r = run("check", "--meta", json.dumps(META), "--cost", 1, "--policies", tmp_path)
    assert r.exit_code == 2
    assert f"{tmp_path}/default.yaml:2: max_total.units: must be a plain decimal integer of minor units, got nope" in r.stderr


def test_demo_prints_decisions_and_remaining():
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "demo", "--policies", str(ROOT / "policies")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "DENY" in r.stdout and "allow" in r.stdout
    assert '{"scope":"tool","tool_key":"s1:expensive","limit_units":500' in r.stdout
    assert "4 of 12 calls denied" in r.stdout
    assert "spent 10000 of 10000 USD" in r.stdout
    # the windows scene (team-monthly): a warning, the daily cap, the reset at Berlin midnight, the cap
    assert "warning: agent at 80% of 3000 (2000 + 500)" in r.stdout
    assert '"window":"daily","resets_at":1773010800}' in r.stdout
    assert "03-09 00:00:00 a1 cost  400" in r.stdout and "allow 03-09 00:00:00" in r.stdout
    assert '{"scope":"invocation","limit_units":500,"requested_units":600,"currency":"EUR"}' in r.stdout


def test_compile_to_a_directory_is_a_clear_error(policies_dir, tmp_path):
    r = run("compile", policies_dir, "-o", tmp_path)
    assert (r.exit_code, type(r.exception)) == (2, SystemExit)  # no traceback (it was IsADirectoryError)
    assert r.stderr == f"{tmp_path}: cannot write the data document: is a directory\n"


def test_compile_under_a_file_is_a_clear_error(policies_dir, tmp_path):
    (tmp_path / "f").write_text("")
    r = run("compile", policies_dir, "-o", tmp_path / "f" / "data.json")
    assert (r.exit_code, type(r.exception)) == (2, SystemExit)
    assert r.stderr.startswith(f"{tmp_path}/f/data.json: cannot write the data document: ")
