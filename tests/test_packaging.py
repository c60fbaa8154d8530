"""The wheel ships the Rego, the Lua scripts, the SQL schema and the decision-log JSON schema, so a ``pip install``
needs no source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from support.guards import ROOT


@pytest.mark.slow
def test_wheel_contains_the_decision_policy(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True)
    if r.returncode != 0 and "No matching distribution found for setuptools" in r.stderr:
        pytest.skip("cannot fetch the build backend (no package index reachable)")
    assert r.returncode == 0, r.stderr[-2000:]
    [wheel] = tmp_path.glob("chio_budget_guard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "chio_budget/rego/chio/budget/decision.rego" in names
    assert "chio_budget/cli.py" in names
    shipped = {p.relative_to(ROOT / "plugin").as_posix() for d in ("lua", "sql")
               for p in (ROOT / "plugin" / "chio_budget" / "ledger" / d).iterdir() if p.suffix in (".lua", ".sql")}
    assert {"chio_budget/ledger/lua/reserve.lua", "chio_budget/ledger/sql/schema.sql"} <= shipped
    assert shipped <= names, f"scripts and schemas missing from the wheel: {sorted(shipped - names)}"
    assert "chio_budget/schemas/decision-event-v1.schema.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "chio-budget = chio_budget.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
