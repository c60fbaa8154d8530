"""``chio-budget ledger show|adjust|reset|export|import`` on real SQLite files and the real Redis."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.ledger import Balance, counter_key
from chio_budget.toolkit.ledgertool import parse_key, redacted

runner = CliRunner()
A1 = counter_key("p1", "agent", "a1")
A2 = counter_key("p1", "agent", "a/2")
S1 = counter_key("p1", "session", "s1")
T = counter_key("p1", "total")
W = counter_key("p1", "agent", "a1", "2026-11")
OTHER = counter_key("p2", "total")


def run(*args, input=None):
    return runner.invoke(app, ["ledger", *map(str, args)], input=input, env={"COLUMNS": "200"})


def seed(store) -> None:
    led = store.open()
    for key, spent in ((A1, 300), (A2, 40), (S1, 25), (T, 365), (W, 7), (OTHER, 9)):
        led.add([key], spent)


def events(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_show_filters_and_writes_an_audit_event(shared_store, tmp_path):
    seed(shared_store)
    log = tmp_path / "audit.jsonl"
    r = run("show", "--ledger", shared_store.uri, "--policy-id", "p1", "--scope", "agent", "--json", "--log", log)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted((x["id"], x["window"], x["spent"], x["held"]) for x in rows) == \
        [("a/2", "", 40, 0), ("a1", "", 300, 0), ("a1", "2026-11", 7, 0)]
    r = run("show", "--ledger", shared_store.uri, "--policy-id", "p1", "--window", "", "--json")
    assert sorted(json.loads(x)["key"] for x in r.stdout.splitlines()) == sorted([A1, A2, S1, T])
    [ev] = events(log)
    assert ev["chio"]["event"] == "audit" and ev["chio"]["action"] == "show" and ev["input"]["counters"] == 3
    assert "@" in ev["chio"]["who"] and ev["chio"]["why"] is None
    table = run("show", "--ledger", shared_store.uri, "--policy-id", "p1")
    assert "a/2" in table.stdout and "5 counter(s)" in table.stdout


def test_adjust_refunds_never_below_zero_and_is_audited(shared_store, tmp_path):
    seed(shared_store)
    log = tmp_path / "audit.jsonl"
    args = ("adjust", "--ledger", shared_store.uri, "--policy-id", "p1", "--scope", "agent", "--id", "a1",
            "--log", log, "--who", "ops@example", "--reason")
    r = run(*args, "refund for incident 42", "--units", "-120")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"{A1}: spent 300 -> 180 (held 0)"
    r = run(*args, "refund again", "--units", "-500")
    assert r.stdout.strip() == f"{A1}: spent 180 -> 0 (held 0)"  # clamped at 0
    first, second = events(log)
    assert first["chio"] == {"event": "audit", "action": "adjust", "who": "ops@example",
                             "why": "refund for incident 42", "ledger": redacted(shared_store.uri)}
    assert first["input"] == {"key": A1, "delta": -120,  # where a mask rule reaches the agent in the key
                              "before": {"spent": 300, "held": 0}, "after": {"spent": 180, "held": 0}}
    assert second["input"]["after"] == {"spent": 0, "held": 0}
    assert shared_store.open().balances([A1]) == [Balance(0, 0)]


@pytest.mark.parametrize("missing, message", [
    ("--log", "--log: required"), ("--reason", "--reason: required"),
])
def test_a_change_needs_a_log_and_a_reason(shared_store, tmp_path, missing, message):
    seed(shared_store)
    args = {"--log": str(tmp_path / "a.jsonl"), "--reason": "why"}
    del args[missing]
    r = run("adjust", "--ledger", shared_store.uri, "--policy-id", "p1", "--scope", "total", "--units", "5",
            *[x for kv in args.items() for x in kv])
    assert r.exit_code == 2 and message in r.output
    assert shared_store.open().balances([T]) == [Balance(365, 0)]  # nothing changed


@pytest.mark.parametrize("args, message", [
    (["--scope", "agent"], "--id: required for scope 'agent'"),
    (["--scope", "total", "--id", "x"], "--id: the total counter has no id"),
    (["--scope", "team", "--id", "x"], "--scope: must be one of total, session, agent, tool"),
])
def test_adjust_bad_options(tmp_path, args, message):
    r = run("adjust", "--units", "1", *args, "--log", tmp_path / "a.jsonl", "--reason", "x")
    assert r.exit_code == 2 and message in r.output


def test_reset_ends_a_period_holds_stay_and_it_is_audited(shared_store, tmp_path):
    seed(shared_store)
    led = shared_store.open()
    led.reserve("held-1", [A1], 11)
    log = tmp_path / "audit.jsonl"
    r = run("reset", "--ledger", shared_store.uri, "--policy-id", "p1", "--scope", "agent", "--window", "",
            "--log", log, "--reason", "new month")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "reset 2 counter(s) of policy p1: spent 340 -> 0"
    assert led.balances([A1, A2, W, T]) == [Balance(0, 11), Balance(0, 0), Balance(7, 0), Balance(365, 0)]
    [ev] = events(log)
    assert ev["chio"]["action"] == "reset" and ev["chio"]["why"] == "new month" and ev["input"]["keys"] == 2
    assert ev["input"]["before"][A1] == {"spent": 300, "held": 11} and ev["input"]["after"][A1] == {"spent": 0, "held": 11}


def test_export_then_import_moves_counters_and_refuses_a_ledger_with_counters(shared_store, tmp_path):
    seed(shared_store)
    dump = tmp_path / "counters.jsonl"
    log = tmp_path / "audit.jsonl"
    r = run("export", "--ledger", shared_store.uri, "-o", dump, "--log", log)
    assert r.exit_code == 0, r.output
    exported = sorted(json.loads(x)["key"] for x in dump.read_text().splitlines())
    assert exported == sorted([A1, A2, S1, T, W, OTHER])
    target = f"sqlite:///{tmp_path / 'target.db'}"
    ok = run("import", dump, "--ledger", target, "--log", log, "--reason", "move to new host")
    assert ok.exit_code == 0 and ok.stdout.strip() == "imported 6 counter(s)"
    again = run("import", dump, "--ledger", target, "--log", log, "--reason", "twice")
    assert again.exit_code == 1 and "import refused: the ledger already holds counters" in again.output
    merged = run("import", dump, "--ledger", target, "--log", log, "--reason", "merge", "--merge")
    assert merged.exit_code == 0
    shown = run("show", "--ledger", target, "--policy-id", "p1", "--scope", "agent", "--id", "a1", "--window", "",
                "--json")
    assert json.loads(shown.stdout)["spent"] == 600
    actions = [(e["chio"]["action"], e["input"].get("merge")) for e in events(log)]
    assert actions == [("export", None), ("import", False), ("import", True)]  # the refused one changed nothing
    imp = events(log)[1]["input"]
    assert imp["before"][A1] == {"spent": 0, "held": 0} and imp["after"][A1] == {"spent": 300, "held": 0}


@pytest.mark.parametrize("line, message", [
    ('{"key": "k", "spent": -1}', "dump.jsonl:2: spent: must be an integer 0..2^64-1, got -1"),
    ('{"key": "k", "spent": 1, "held": 2}', "dump.jsonl:2: <record>: must be"),
    ('{"key": "a", "spent": 1}', "dump.jsonl:2: key: 'a' already on line 1"),
    ('{"key": "k", "key": "j", "spent": 1}', 'dump.jsonl:2: <json>: duplicate key "key"'),
    ("{", "dump.jsonl:2: <json>: Expecting property name"),
])
def test_a_bad_import_line_is_located_and_nothing_is_imported(tmp_path, line, message):
    dump = tmp_path / "dump.jsonl"
    dump.write_text('{"key": "a", "spent": 1}\n' + line + "\n")
    db = tmp_path / "t.db"
    r = run("import", dump, "--ledger", f"sqlite:///{db}", "--log", tmp_path / "a.jsonl", "--reason", "x")
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "a.jsonl").exists() or (tmp_path / "a.jsonl").read_text() == ""


def test_import_from_stdin(tmp_path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    r = run("import", "-", "--ledger", db, "--log", tmp_path / "a.jsonl", "--reason", "x",
            input='{"key": "p/x/total/", "spent": 5}\n')
    assert r.exit_code == 0 and r.stdout.strip() == "imported 1 counter(s)"


def test_keys_and_credentials():
    assert parse_key(counter_key("p 1", "agent", "a/b", "2026-11")) == \
        {"policy_id": "p 1", "window": "2026-11", "scope": "agent", "id": "a/b"}
    assert parse_key("foreign") == {"policy_id": "", "window": "", "scope": "", "id": "foreign"}
    assert "secret" not in redacted("redis://ops:secret@10.0.0.5:6379/0")


def test_help_documents_exit_codes():
    assert "Exit codes: 0 done; 1 the ledger refused or failed; 2 bad input" in run("--help").output
