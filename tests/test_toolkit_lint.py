"""``chio-budget lint``: each check, located errors, one summary, exit 0/1."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.toolkit.lint import locate
from support.guards import REGO_DIR, ROOT

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, ["lint", *map(str, args)], env={"COLUMNS": "200", "OPA_BIN": "", **(env or {})})


@pytest.fixture
def tree(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the shipped policies and Rego with one quick Rego test instead of the shipped
    suite (lint runs the tests; the suite itself is run by test-rego), PATH cleared of any opa."""
    pol, rego = tmp_path / "policies", tmp_path / "rego"
    shutil.copytree(ROOT / "policies", pol)
    shutil.copytree(REGO_DIR, rego, ignore=shutil.ignore_patterns("*_test.rego"))
    (rego / "chio" / "budget" / "quick_test.rego").write_text(
        "package chio.budget_test\n\ntest_unknown_policy_never_allows if {\n"
        "\tnot data.chio.budget.decision.allow with input as {\"policy_id\": \"nope\"}\n}\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    return pol, rego


def status(output: str, name: str) -> str:
    """The status column of the summary line whose name column is ``name``."""
    [line] = [x for x in output.splitlines() if x.startswith("  ") and x[11:30].strip() == name]
    return line.split()[0]


def test_a_clean_tree_passes_and_says_what_was_skipped(tree):
    r = run(*tree)
    assert r.exit_code == 0, r.output
    assert status(r.output, "policies") == "ok" and status(r.output, "rego tests") == "ok"
    assert status(r.output, "opa check --strict") == "skipped"
    assert r.output.strip().splitlines()[-1] == "lint: 4 ok, 0 failed, 2 skipped"


def test_bad_yaml_is_located_and_compile_is_skipped(tree):
    pol, rego = tree
    (pol / "team.yaml").write_text("currency: USD\nmax_total: -5\nmax_per_sesion: 1\n")
    r = run(pol, rego)
    assert r.exit_code == 1
    assert status(r.output, "policies") == "failed" and status(r.output, "compile") == "skipped"
    assert f"{pol}/team.yaml:2: max_total.units: must be >= 0, got -5" in r.output
    assert f"{pol}/team.yaml:3: max_per_sesion: unknown key" in r.output


def extra(rego: Path, source: str, name: str = "extra.rego") -> None:
    (rego / "chio" / "budget" / name).write_text(source)


def test_rego_parse_error_has_file_row_col(tree):
    pol, rego = tree
    extra(rego, "package chio.budget\n\nviolation contains v if {\n\t\tv := {\"scope\": \"x\"} +\n}\n")
    r = run(pol, rego)
    assert r.exit_code == 1 and status(r.output, "rego") == "failed"
    assert f"{rego}/chio/budget/extra.rego:5:1: rego_parse_error: unexpected }} token" in r.output
    assert status(r.output, "rego tests") == "failed"  # the test runner cannot load the file either


def test_rego_compile_error_has_file_row_col(tree):
    pol, rego = tree
    extra(rego, "package chio.budget\n\nviolation contains {\"scope\": \"custom\"} if {\n  is_blocked(input.request)\n}\n")
    r = run(pol, rego)
    assert r.exit_code == 1
    assert f"{rego}/chio/budget/extra.rego:4:3: rego_type_error: undefined function is_blocked" in r.output


def test_a_decision_that_breaks_the_contract_fails(tree):
    pol, rego = tree
    extra(rego, "package chio.budget\n\nwarning contains 7 if { true }\n")
    r = run(pol, rego)
    assert r.exit_code == 1 and status(r.output, "rego") == "failed"
    assert "data.chio.budget.decision for policy 'default': engine error: malformed decision: warnings.0" in r.output


def test_a_failing_rego_test_fails_lint(tree):
    pol, rego = tree
    extra(rego, "package chio.budget_test\n\ntest_always_fails if { 1 == 2 }\n", "extra_test.rego")
    r = run(pol, rego)
    assert r.exit_code == 1 and status(r.output, "rego tests") == "failed"
    assert "data.chio.budget_test.test_always_fails: FAIL" in r.output


def _fake_opa(tmp_path: Path, check_out: str, check_rc: int, fmt_out: str) -> Path:
    """A TEST DOUBLE for the `opa` binary (none installs here): answers `check` and `fmt --list`."""
    f = tmp_path / "opa"
    f.write_text("#!/bin/sh\n"
                 f"if [ \"$1\" = check ]; then [ \"$2\" = --strict ] || exit 9; printf '%s' '{check_out}'; exit {check_rc}; fi\n"
                 f"if [ \"$1\" = fmt ]; then [ \"$2\" = --list ] || exit 9; printf '%s' '{fmt_out}'; exit 0; fi\n"
                 "exit 9\n")
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return f


def test_with_opa_check_strict_and_fmt_list_run_and_their_findings_fail(tree, tmp_path):
    opa = _fake_opa(tmp_path, "1 error occurred: rego/x.rego:3: rego_compile_error: unused variable y", 1,
                    "rego/chio/budget/decision.rego\n")
    r = run(*tree, env={"OPA_BIN": str(opa)})
    assert r.exit_code == 1
    assert status(r.output, "opa check --strict") == "failed"
    assert "rego/x.rego:3: rego_compile_error: unused variable y" in r.output
    assert "rego/chio/budget/decision.rego: not formatted (run: opa fmt -w" in r.output


def test_with_a_clean_opa_everything_passes(tree, tmp_path):
    opa = _fake_opa(tmp_path, "", 0, "")
    r = run(*tree, env={"OPA_BIN": str(opa)})
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == "lint: 6 ok, 0 failed, 0 skipped"


def test_a_missing_path_is_bad_input(tmp_path):
    r = run(tmp_path / "nope", REGO_DIR)
    assert r.exit_code == 2 and "nope:1: no such file or directory" in r.output


def test_locate_turns_opa_errors_into_file_row_col():
    src = {"a.rego": "package a\n\n\tp if {\n\t\tfoo(1)\n\t}\n"}
    assert locate("1 error occurred: a.rego:4: rego_type_error: undefined function foo", src) == \
        ["a.rego:4:3: rego_type_error: undefined function foo"]
    two = ("2 errors occurred:\na.rego:3: rego_parse_error: unexpected ident\n\tp if {\n\t  ^\n"
           "a.rego:5: rego_parse_error: x")
    assert locate(two, src) == ["a.rego:3:4: rego_parse_error: unexpected ident", "a.rego:5:2: rego_parse_error: x"]


def test_a_rates_file_is_checked_first_and_its_units_reach_the_policies(tree, tmp_path):
    pol, rego = tree
    (pol / "credits.yaml").write_text("currency: credits\nmax_total: 100\n")
    rates = tmp_path / "rates.yaml"
    rates.write_text('currencies:\n  credits: 1\nrates:\n  credits/USD: {rate: "0.01", updated_at: 1}\n')
    r = run(pol, rego, "--rates", rates)
    assert r.exit_code == 0, r.output
    assert status(r.output, "rates") == "ok" and "1 rate(s), max age 600 s" in r.output
    assert run(pol, rego).exit_code == 1  # without the rates file, 'credits' has no scale
    rates.write_text('rates:\n  EUR/USD: {rate: 1.08, updated_at: 1}\n')
    r = run(pol, rego, "--rates", rates)
    assert r.exit_code == 1 and status(r.output, "rates") == "failed" and status(r.output, "policies") == "skipped"
    assert f"{rates}:2: rates.\"EUR/USD\".rate: must be an exact decimal in quotes" in r.output
