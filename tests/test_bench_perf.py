"""``make bench`` cannot rot: ``bench/perf.py --quick`` runs every group at tiny sizes (a few
seconds) and leaves a ``results.json`` of the documented shape, a figure, and the doc's section.

Only the shape is checked, never a number: speed is measured by ``make bench``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.guards import ROOT

STATUSES = {"PASS", "MISS", "info", "n/a", "skipped"}
ROW_KEYS = {"id", "group", "label", "ratio", "cpu_ratio", "num", "den", "target", "status", "note"}
# Every row of a quick run (a full run adds 4 processes on SQLite and three more Go settings).
IDS = {"trivial_vs_bare", "rego_allow_vs_0f1dbcc", "rego_deny_vs_0f1dbcc", "check_vs_bare",
       "authorize_commit_vs_bare", "check_vs_rust_model", "counters_1m_vs_10", "tools_10k_vs_10",
       "backend_sqlite", "backend_sqlite_normal", "backend_redis", "backend_postgres",
       "threads_one_guard", "threads_guard_each", "redis_2p", "sqlite_2p", "batch_engine", "batch_guard",
       "shadow_beside_vs_own", "shadow_beside_vs_none", "go_gogc_400"}
TARGETED = {"rego_allow_vs_0f1dbcc", "rego_deny_vs_0f1dbcc", "check_vs_bare", "authorize_commit_vs_bare",
            "counters_1m_vs_10", "tools_10k_vs_10", "threads_one_guard", "redis_2p"}


@pytest.mark.slow
def test_quick_run_writes_results_figure_and_doc_section(tmp_path):
    doc = tmp_path / "performance.md"
    original = (ROOT / "docs" / "performance.md").read_text()
    doc.write_text(original)
    out, png = tmp_path / "results.json", tmp_path / "performance.png"
    cmd = [sys.executable, str(ROOT / "bench" / "perf.py"), "--quick", "--out", str(out), "--figure", str(png),
           "--write-doc", "--doc", str(doc),
           "--redis", os.environ.get("CHIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
           "--postgres", os.environ.get("CHIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["schema"] == 1 and result["quick"] is True
    assert set(result["features"]) == {"engine_pool", "decide_many", "check_many"}
    assert {"cpu", "python", "opa", "sqlite", "load_average_at_start"} <= set(result["machine"])
    assert result["runtime_s"] > 0
    rows = {row["id"]: row for row in result["rows"]}
    assert len(rows) == len(result["rows"]), "row ids are unique"
    assert IDS <= set(rows)
    for row in result["rows"]:
        assert set(row) == ROW_KEYS and row["status"] in STATUSES, row
        if row["status"] in ("PASS", "MISS", "info"):
            assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
            assert {"name"} <= set(row["num"]) and {"name"} <= set(row["den"]), row
        else:
            assert row["note"], row  # n/a and skipped say why
    for rid in TARGETED:
        assert rows[rid]["target"] and rows[rid]["status"] in {"PASS", "MISS", "skipped"}, rows[rid]
    for rid in ("batch_engine", "batch_guard"):
        feature = "decide_many" if rid == "batch_engine" else "check_many"
        assert (rows[rid]["status"] == "n/a") == (not result["features"][feature]), rows[rid]
    assert {"cost", "threads_one_guard", "threads_guard_each"} <= set(result["series"])

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = doc.read_text()
    begin, end = "<!-- perf:results:begin", "<!-- perf:results:end -->"
    assert written.split(begin)[0] == original.split(begin)[0]
    assert written.split(end)[1] == original.split(end)[1]
    assert "| trivial Rego" in written.split(begin)[1].split(end)[0]
    assert r.stdout.count("\n| ") >= len(IDS)  # the table was printed


@pytest.mark.slow
def test_some_groups_only_still_write_a_figure(tmp_path):
    """``--only batch`` has no per-decision costs: the figure is drawn without them (it crashed on
    a log scale with nothing to draw)."""
    out, png = tmp_path / "results.json", tmp_path / "performance.png"
    cmd = [sys.executable, str(ROOT / "bench" / "perf.py"), "--quick", "--only", "batch", "--out", str(out),
           "--figure", str(png)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["id"] for row in json.loads(out.read_text())["rows"]}
    assert {"batch_engine", "batch_guard", "shadow_beside_vs_own", "shadow_beside_vs_none"} == rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
