"""``chio-budget diff``: two configurations over one log; exit 0 same, 1 differ, 2 bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.toolkit.simrun import SimSpec, simulate_spec
from support.guards import REGO_DIR
from support.toolkit import rec, write_log

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "CHIO_NO_PROGRESS": "1"})


def policy_dir(tmp_path, name, agent_limit):
    d = tmp_path / name
    d.mkdir()
    (d / "default.yaml").write_text(f"currency: USD\nmax_total: 100000\nmax_per_agent: {agent_limit}\n")
    return d


@pytest.fixture
def log(tmp_path):
    return write_log(tmp_path / "log.jsonl", [rec(f"r{i}", 100 - i, f"a{i % 2}", "s1", "t1" if i % 5 else "shell", 10)
                                              for i in range(30)])


def decisions(log, pol, rego=None):
    out = {}
    simulate_spec(SimSpec((str(log),), str(pol), rego_dir=None if rego is None else str(rego), progress=False),
                  lambda call, d: out.__setitem__(call.receipt_id, d.to_json_dict()))
    return out


def jsonl(stdout):
    lines = [json.loads(x) for x in stdout.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_identical_configurations_exit_0(tmp_path, log):
    a, b = policy_dir(tmp_path, "a", 100), policy_dir(tmp_path, "b", 100)
    r = run("diff", log, "--policies-a", a, "--policies-b", b, "--json", "--jobs", "1")
    assert r.exit_code == 0, r.output
    diffs, summary = jsonl(r.stdout)
    assert diffs == [] and summary["calls"] == 30 and summary["differ"] == 0


def test_every_differing_call_with_both_decisions_and_a_summary_by_scope(tmp_path, log):
    a, b = policy_dir(tmp_path, "a", 100), policy_dir(tmp_path, "b", 60)
    r = run("diff", log, "--policies-a", a, "--policies-b", b, "--json", "--jobs", "1")
    assert r.exit_code == 1, r.output
    diffs, summary = jsonl(r.stdout)
    da, db = decisions(log, a), decisions(log, b)
    expected = sorted(rid for rid in da if da[rid]["allow"] != db[rid]["allow"])
    assert sorted(d["receipt_id"] for d in diffs) == expected and len(expected) == 8
    for d in diffs:
        assert d["a"] == da[d["receipt_id"]] and d["b"] == db[d["receipt_id"]]
    assert [d["timestamp"] for d in diffs] == sorted(d["timestamp"] for d in diffs)  # in the simulated order
    assert summary["differ"] == 8 and summary["denied_only_in_b"] == {"agent": 8}
    assert summary["denied_only_in_a"] == {} and summary["denied_in_both_differently"] == 0
    assert summary["a"]["calls"]["denied"] == 10 and summary["b"]["calls"]["denied"] == 18


def test_rego_dirs_a_and_b(tmp_path, log):
    pol = policy_dir(tmp_path, "p", 10_000)
    rego_b = tmp_path / "rego-b"
    shutil.copytree(REGO_DIR, rego_b)
    (rego_b / "chio" / "budget" / "block.rego").write_text(
        'package chio.budget\n\nviolation contains {"scope": "custom", "code": "blocked"} '
        'if input.request.tool_key == "s1:shell"\n')
    r = run("diff", log, "--policies", pol, "--rego-dir-a", REGO_DIR, "--rego-dir-b", rego_b, "--json", "--jobs", "1")
    assert r.exit_code == 1
    diffs, summary = jsonl(r.stdout)
    assert summary["denied_only_in_b"] == {"custom": 6} and len(diffs) == 6
    assert all(d["tool_key"] == "s1:shell" and d["b"]["violations"][0]["code"] == "blocked" for d in diffs)


def test_two_processes_give_the_same_answer_as_one(tmp_path, log):
    a, b = policy_dir(tmp_path, "a", 100), policy_dir(tmp_path, "b", 60)
    one = run("diff", log, "--policies-a", a, "--policies-b", b, "--json", "--jobs", "1")
    two = run("diff", log, "--policies-a", a, "--policies-b", b, "--json", "--jobs", "2")
    assert (one.exit_code, two.exit_code) == (1, 1)
    assert one.stdout == two.stdout


def test_table_view_lists_the_differences(tmp_path, log):
    a, b = policy_dir(tmp_path, "a", 100), policy_dir(tmp_path, "b", 60)
    r = run("diff", log, "--policies-a", a, "--policies-b", b, "--jobs", "1", "--show", "3")
    assert r.exit_code == 1
    assert "8 decided differently" in r.stdout and "differing calls (first 3 of 8" in r.stdout
    assert "DENY agent" in r.stdout


@pytest.mark.parametrize("args, message", [
    ([], "give --policies-a/--policies-b and/or --rego-dir-a/--rego-dir-b"),
    (["--policies-a", "nowhere"], "nowhere:1: no such policy directory"),
    (["--rates", "nowhere.yaml"], "nowhere.yaml"),
])
def test_bad_input_exits_2(tmp_path, log, args, message):
    r = run("diff", log, *args, "--policies-b", policy_dir(tmp_path, "b", 1), "--jobs", "1") if args else \
        run("diff", log)
    assert r.exit_code == 2 and message in r.output


def test_a_bad_record_exits_2_in_either_process(tmp_path):
    bad = write_log(tmp_path / "bad.jsonl", [rec("r1"), {"schema": 1}])
    a, b = policy_dir(tmp_path, "a", 100), policy_dir(tmp_path, "b", 60)
    r = run("diff", bad, "--policies-a", a, "--policies-b", b, "--jobs", "2")
    assert r.exit_code == 2
    assert f"{bad}:2: schema: must be a string, got integer 1" in r.output


def test_help_documents_exit_codes():
    assert "Exit codes: 0 every call decided the same; 1 some differ; 2 bad input" in run("diff", "--help").output
