"""``chio-budget replay`` on hostile input, through the real CLI and a real SQLite ledger.

The promise under test: every line is validated before any runs, so a bad
line anywhere leaves the ledger untouched (here: never even opened), and a
failure while running is a located ``FILE:LINE: op: ...`` error with exit 2,
never a traceback.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from support.guards import ROOT

CLI = str(Path(sys.executable).parent / "chio-budget")  # .venv/bin/chio-budget: this tree's code
META = {"receipt_id": "r1", "timestamp": 1000, "agent_id": "a1", "tool_server": "s1", "tool_name": "t1"}
GOOD = json.dumps({"op": "record", "meta": META, "cost_units": 100})


def cli(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([CLI, *map(str, args)], input=stdin, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def replay(source, ledger: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return cli("replay", source, "--policies", ROOT / "policies", "--ledger", f"sqlite:///{ledger}", stdin=stdin)


def total_spent(ledger: Path) -> int:
    r = replay("-", ledger, stdin=b'{"op": "total_spent"}\n')
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["total_spent"]


def second_line(tmp_path: Path, line: str) -> tuple[Path, Path]:
    """An events file whose line 1 is a good ``record`` and line 2 is ``line``; and a ledger path."""
    events, ledger = tmp_path / "events.jsonl", tmp_path / "ledger.db"
    events.write_text(GOOD + "\n" + line.replace("META", json.dumps(META)) + "\n")
    return events, ledger


def assert_refused(r: subprocess.CompletedProcess, expected: str, ledger: Path) -> None:
    assert (r.returncode, r.stdout, r.stderr) == (2, "", expected + "\n")
    assert not ledger.exists()  # validation failed before the ledger was opened: nothing recorded


SURROGATE_LINES = {  # line 2 of the file, and the error it must get
    "agent_id": ('{"op": "record", "meta": {"receipt_id": "r2", "timestamp": 1, "agent_id": "\\ud800", '
                 '"tool_server": "s1", "tool_name": "t1"}, "cost_units": 100}', "meta.agent_id"),
    "ignored_field": ('{"op": "record", "meta": {"receipt_id": "r2", "timestamp": 1, "agent_id": "a", '
                      '"tool_server": "s1", "tool_name": "t1", "note": ["ok", "\\udfff"]}, "cost_units": 1}',
                      "meta.note.1"),
    "key": ('{"op": "record", "meta": {"receipt_id": "r2", "timestamp": 1, "agent_id": "a", '
            '"tool_server": "s1", "tool_name": "t1", "\\ud800": 1}, "cost_units": 1}', 'meta."\\ud800"'),
    "op": ('{"op": "\\ud800"}', "op"),
}


@pytest.mark.parametrize("case", sorted(SURROGATE_LINES))
def test_lone_surrogate_anywhere_in_a_line_is_refused_before_anything_runs(tmp_path, case):
    line, path = SURROGATE_LINES[case]
    events, ledger = second_line(tmp_path, line)
    bad = "\\udfff" if case == "ignored_field" else "\\ud800"
    assert_refused(replay(events, ledger), f"{events}:2: {path}: lone surrogate {bad} is not valid Unicode", ledger)
    assert total_spent(ledger) == 0


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_invalid_utf8_is_a_located_error(tmp_path, source):
    events, ledger = tmp_path / "events.jsonl", tmp_path / "ledger.db"
    data = GOOD.encode() + b"\n" + b'{"op": "record", "meta": {"agent_id": "a\xff"}}\n'
    events.write_bytes(data)
    r = replay(events, ledger) if source == "file" else replay("-", ledger, stdin=data)
    name = events if source == "file" else "<stdin>"
    assert_refused(r, f"{name}:2: invalid UTF-8 (byte 0xff at column 41)", ledger)


@pytest.mark.parametrize("line, expected", [
    ('{"op": "record", "op": "check", "meta": META, "cost_units": 1}', "op: duplicate key"),
    ('{"op": "record", "meta": {"receipt_id": "r2", "timestamp": 1, "agent_id": "a", "agent_id": "b", '
     '"tool_server": "s1", "tool_name": "t1"}, "cost_units": 1}', "meta.agent_id: duplicate key"),
])
def test_duplicate_json_keys_are_refused(tmp_path, line, expected):
    events, ledger = second_line(tmp_path, line)
    assert_refused(replay(events, ledger), f"{events}:2: {expected}", ledger)


@pytest.mark.parametrize("line, expected", [
    ('{"op": "record", "meta": META, "cost_units": ' + "9" * 5000 + "}",
     "<json>: integer longer than 100 digits"),
    ('{"op": "check", "meta": ' + "[" * 100_000 + "]" * 100_000 + ', "cost_units": 1}', "<json>: nested too deeply"),
    ('{"op": "record", "meta": META, "cost_units": NaN}', "<json>: NaN is not JSON"),
    ('{"op": "record", "meta": {"receipt_id": "r2", "timestamp": 1, "agent_id": "a", "tool_server": "s1:x", '
     '"tool_name": "y"}, "cost_units": 1}', "meta.tool_server: must not contain ':'"),
])
def test_lines_that_used_to_crash_validation_are_located(tmp_path, line, expected):
    events, ledger = second_line(tmp_path, line)
    r = replay(events, ledger)
    assert (r.returncode, r.stdout) == (2, "")
    [err] = r.stderr.splitlines()
    assert err.startswith(f"{events}:2: {expected}")
    assert not ledger.exists()


def test_lines_are_split_on_newlines_only(tmp_path):
    # JSON allows a raw U+2028 inside a string; str.splitlines() used to cut the line there.
    events, ledger = tmp_path / "events.jsonl", tmp_path / "ledger.db"
    meta = {**META, "agent_id": "a\u2028b\x85c"}
    events.write_text(json.dumps({"op": "record", "meta": meta, "cost_units": 7}, ensure_ascii=False) + "\r\n"
                      + "\n" + json.dumps({"op": "total_spent"}) + "\n")
    r = replay(events, ledger)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['{"recorded":7}', '{"total_spent":7}']


def test_failure_while_running_is_located_exit_2(tmp_path):
    """Another process holds the SQLite write lock: the run stops at the line that needed it."""
    events, ledger = tmp_path / "events.jsonl", tmp_path / "ledger.db"
    assert total_spent(ledger) == 0  # the schema exists
    events.write_text(json.dumps({"op": "total_spent"}) + "\n" + GOOD + "\n" + GOOD + "\n")
    holder = sqlite3.connect(ledger, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        r = cli("replay", events, "--policies", ROOT / "policies", "--ledger",
                f"sqlite:///{ledger}?busy_timeout=0.2")
    finally:
        holder.close()
    assert (r.returncode, r.stdout) == (2, '{"total_spent":0}\n')
    [err] = r.stderr.splitlines()
    assert err.startswith(f"{events}:2: record: ") and "locked" in err
    assert total_spent(ledger) == 0


def test_check_meta_rejects_duplicate_keys_and_surrogates(tmp_path):
    ledger = tmp_path / "ledger.db"
    base = '"receipt_id": "r", "timestamp": 1, "tool_server": "s1", "tool_name": "t1"'
    for meta, expected in [
        ('{' + base + ', "agent_id": "a", "agent_id": "b"}', "--meta: agent_id: duplicate key"),
        ('{' + base + ', "agent_id": "\\ud800"}', "--meta: agent_id: lone surrogate \\ud800 is not valid Unicode"),
        ('{' + base + ', "agent_id": "a", "x": [' + "[" * 5000 + "]" * 5000 + "]}", "--meta: <json>: nested too deeply"),
    ]:
        r = cli("check", "--meta", meta, "--cost", 1, "--policies", ROOT / "policies", "--ledger", f"sqlite:///{ledger}")
        assert (r.returncode, r.stdout, r.stderr) == (2, "", expected + "\n")
