"""YAML -> Rego data: the DESIGN shape, deterministic to the byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from chio_budget.compiler import (Compiled, as_compiled, canonical_json, compile_all, compile_dir, compile_policies,
                                  compile_policy, data_document, data_revision, revision_of)
from support.guards import rust_policy


def test_entry_has_design_shape_and_absent_limits_are_absent_keys():
    full = compile_policy(rust_policy())
    rest = {k: v for k, v in full.items() if k != "revision"}
    assert rest == {"currency": "USD", "max_total": 10000, "max_per_session": 5000, "max_per_agent": 3000,
                    "max_per_tool": {"s1:expensive": 500}}
    assert full["revision"] == "sha256:" + hashlib.sha256(canonical_json(rest)).hexdigest()
    bare = compile_policy(rust_policy(max_per_session=None, max_per_agent=None, max_per_tool=None))
    assert set(bare) == {"currency", "max_total", "revision"}


def test_revision_changes_with_any_limit():
    assert compile_policy(rust_policy())["revision"] != compile_policy(rust_policy(max_total=10001))["revision"]


def test_compile_is_byte_for_byte_deterministic(policies_dir, tmp_path):
    (policies_dir / "zeta.yaml").write_text("currency: JPY\nmax_per_tool: {\"b:x\": 1, \"a:y\": 2}\nmax_total: 9\n")
    first = compile_dir(policies_dir)
    assert compile_dir(policies_dir) == first
    doc = json.loads(first)
    assert list(doc["chio"]["budget"]["policies"]) == ["default", "zeta"]
    assert doc["chio"]["budget"]["policies"]["zeta"]["max_per_tool"] == {"a:y": 2, "b:x": 1}


def test_u64_limits_survive_compilation_exactly(tmp_path):
    (tmp_path / "big.yaml").write_text("currency: USD\nmax_total: 18446744073709551615\n")
    doc = json.loads(compile_dir(tmp_path))
    assert doc["chio"]["budget"]["policies"]["big"]["max_total"] == 2**64 - 1


def test_cli_compile_writes_data_json(policies_dir, tmp_path):
    out = tmp_path / "build" / "data.json"
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "compile", str(policies_dir), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == compile_dir(policies_dir)


def test_cli_compile_reports_located_errors_and_writes_nothing(tmp_path):
    (tmp_path / "bad.yaml").write_text("currency: USD\nmax_total: 5\nmax_per_tool:\n  \"s1:x\": -5\n")
    out = tmp_path / "build" / "data.json"
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "compile", str(tmp_path), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f'{tmp_path}/bad.yaml:4: max_per_tool."s1:x".units: must be >= 0, got -5'
    assert not out.exists()


def test_compile_all_is_the_one_reading_of_the_document_layout():
    policies = {"default": rust_policy(), "other": rust_policy(id="other", max_total=5)}
    compiled = compile_all(policies)
    assert compiled.budget == compile_policies(policies)
    assert compiled.document == {"chio": {"budget": compiled.budget}} == data_document(policies)
    assert compiled.revision == revision_of(compiled.budget) == data_revision(policies)
    assert compiled.revisions == {pid: compile_policy(p)["revision"] for pid, p in policies.items()}
    assert compiled.policy_ids == ("default", "other")
    again = Compiled.from_document(json.loads(canonical_json(compiled.document)))
    assert (again.budget, again.revision, again.revisions) == (compiled.budget, compiled.revision, compiled.revisions)
    assert as_compiled(compiled) is compiled and as_compiled(compiled.document).revisions == compiled.revisions
