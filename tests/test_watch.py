"""The watcher calls back once per burst of changes to the files it watches, and only those."""

from __future__ import annotations

import threading
from pathlib import Path

from chio_budget.watch import Watcher


def test_a_burst_of_edits_is_one_callback_and_other_files_are_ignored(tmp_path: Path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text("x")
    rates = tmp_path / "rates.yaml"
    rates.write_text("r")
    got: list[set[str]] = []
    seen = threading.Event()

    def on_change(paths: set[str]) -> None:
        got.append(paths)
        seen.set()

    with Watcher([policies, rates], on_change, quiet_ms=100) as w:
        (tmp_path / "notes.txt").write_text("ignored")
        (policies / "README.md").write_text("ignored too")
        for i in range(5):
            (policies / "a.yaml").write_text(f"x{i}")
        rates.write_text("r2")
        assert seen.wait(10)
    changed = set().union(*got)
    assert changed == {str((policies / "a.yaml").resolve()), str(rates.resolve())}
    assert w.errors == 0


def test_a_failing_callback_is_counted_and_watching_goes_on(tmp_path: Path):
    calls = []
    second = threading.Event()

    def on_change(paths: set[str]) -> None:
        calls.append(paths)
        if len(calls) == 1:
            raise RuntimeError("bad reload")
        second.set()

    with Watcher([tmp_path], on_change, quiet_ms=50) as w:
        (tmp_path / "a.rego").write_text("package x")
        for _ in range(100):
            if calls:
                break
            threading.Event().wait(0.05)
        (tmp_path / "b.rego").write_text("package y")
        assert second.wait(10)
    assert w.errors == 1
