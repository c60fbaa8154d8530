"""``chio-budget test-rego`` behaves like ``opa test`` (v1/tester/runner.go, reporter.go, cmd/test.go).

Each behaviour is pinned against a small module written here; with a real
``opa`` (``OPA_BIN`` or PATH) the same modules also go through ``opa test``
and must give the same exit code and summary.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.regotest import run as run_summary
from chio_budget.regotest_report import go_duration
from support.guards import REGO_DIR

runner = CliRunner()
DURATION = r"\((?:\d+(?:\.\d+)?(?:ns|µs|ms|s)|0s)\)"


def write(tmp_path, name: str, src: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    return path


def invoke(*args):
    return runner.invoke(app, ["test-rego", *[str(a) for a in args]])


def opa_test(opa_bin, *args):
    return subprocess.run([opa_bin, "test", *[str(a) for a in args]], capture_output=True, text=True)


def summary(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^(PASS|FAIL|SKIPPED|ERROR): \d+/\d+$", line)]


# -- exit codes (cmd/test.go: runTests) ------------------------------------------------------------

def test_a_failing_test_exits_2(tmp_path):
    write(tmp_path, "a_test.rego", """
        package a_test

        test_ok if true

        test_fails if 1 == 2
    """)
    r = invoke(tmp_path)
    assert r.exit_code == 2, r.output
    assert summary(r.stdout) == ["PASS: 1/2", "FAIL: 1/2"]


def test_an_erroring_test_exits_2_and_prints_the_error_under_it(tmp_path):
    write(tmp_path, "e_test.rego", """
        package e_test

        test_divides if {
        	x := 1 / 0
        	x == 1
        }
    """)
    r = invoke(tmp_path)
    assert r.exit_code == 2, r.output
    lines = r.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("data.e_test.test_divides: ERROR (")))
    assert lines[at - 1] == f"{tmp_path}/e_test.rego:3:"
    assert lines[at + 1] == f"  {tmp_path}/e_test.rego:4: eval_builtin_error: div: divide by zero"
    assert summary(r.stdout) == ["ERROR: 1/1"]


def test_a_skipped_test_exits_2_unless_exit_zero_on_skipped(tmp_path):
    write(tmp_path, "s_test.rego", """
        package s_test

        test_ok if true

        todo_test_later if false
    """)
    r = invoke(tmp_path)
    assert r.exit_code == 2, r.output
    assert "data.s_test.todo_test_later: SKIPPED\n" in r.stdout  # no duration on a skipped test
    assert summary(r.stdout) == ["PASS: 1/2", "SKIPPED: 1/2"]
    assert invoke(tmp_path, "-z").exit_code == 0
    assert invoke(tmp_path, "--exit-zero-on-skipped").exit_code == 0


def test_no_tests_at_all_exits_0_and_prints_nothing(tmp_path):
    write(tmp_path, "lib.rego", "package lib\n\nx := 1\n")
    r = invoke(tmp_path)
    assert (r.exit_code, r.stdout) == (0, "")
    r = invoke(tmp_path, "--fail-on-empty")
    assert r.exit_code == 1 and "no tests were run" in r.stderr


def test_help_documents_the_exit_code_exception():
    r = runner.invoke(app, ["test-rego", "--help"])
    text = " ".join(r.stdout.split())
    assert "Exit codes are `opa test`'s" in text and "precedence" in text and "-z" in text


def test_a_file_that_does_not_parse_exits_1_with_opas_loader_message(tmp_path):
    write(tmp_path, "bad_test.rego", "package x_test\n\ntest_a if {\n")
    r = invoke(tmp_path)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"1 error occurred during loading: {tmp_path}/bad_test.rego:4: rego_parse_error: ")
    assert r.stdout == ""


def test_a_module_that_does_not_compile_exits_1(tmp_path):
    write(tmp_path, "c_test.rego", "package c_test\n\ntest_x if y == 1\n")
    r = invoke(tmp_path)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"1 error occurred: {tmp_path}/c_test.rego:3: rego_unsafe_var_error: var y is unsafe")


# -- duplicates (rewriteDuplicateTestNames) --------------------------------------------------------

def test_duplicate_test_names_run_separately_and_a_failing_duplicate_fails(tmp_path):
    write(tmp_path, "d_test.rego", """
        package d_test

        test_same if true

        test_same if false

        test_same if {
        	print("third")
        	true
        }
    """)
    r = invoke(tmp_path, "-v")
    assert r.exit_code == 2, r.output
    assert re.search(rf"^data\.d_test\.test_same: PASS {DURATION}$", r.stdout, re.M)
    assert re.search(rf"^data\.d_test\.test_same#01: FAIL {DURATION}$", r.stdout, re.M)
    assert re.search(rf"^data\.d_test\.test_same#02: PASS {DURATION}$", r.stdout, re.M)
    assert f"{tmp_path}/d_test.rego:5:\ndata.d_test.test_same#01: FAIL" in r.stdout
    assert "\n\n  third\n\n" in r.stdout  # print output, indented between blank lines
    assert summary(r.stdout) == ["PASS: 2/3", "FAIL: 1/3"]


def test_duplicate_ref_head_tests_are_renamed_in_brackets(tmp_path):
    write(tmp_path, "r_test.rego", """
        package r_test

        tests.test_one if true

        tests.test_one if false
    """)
    r = invoke(tmp_path, "-v")
    assert r.exit_code == 2
    assert "data.r_test.tests.test_one: PASS" in r.stdout
    assert 'data.r_test.tests["test_one#01"]: FAIL' in r.stdout


# -- rules that are not plain boolean tests (runTest, subResults) ----------------------------------

def test_non_boolean_set_and_ref_head_tests_follow_runner_go(tmp_path):
    write(tmp_path, "k_test.rego", """
        package k_test

        test_number := 5

        test_set contains 1

        test_undefined if input.nothing

        tests.test_ref_head if true

        tests["test_with space"] if false

        group.test_object.nested := true
    """)
    r = invoke(tmp_path, "-v")
    assert r.exit_code == 2
    out = r.stdout
    for name, outcome in (("test_number", "FAIL"), ("test_set", "FAIL"), ("test_undefined", "FAIL"),
                          ("tests.test_ref_head", "PASS"), ('tests["test_with space"]', "FAIL"),
                          ("group.test_object", "FAIL")):  # the test is the object {"nested": true}
        assert re.search(rf"^data\.k_test\.{re.escape(name)}: {outcome} {DURATION}$", out, re.M), (name, out)
    assert summary(out) == ["PASS: 1/6", "FAIL: 5/6"]


def test_partial_object_tests_report_one_sub_result_per_case(tmp_path):
    write(tmp_path, "p_test.rego", """
        package p_test

        test_all_pass[note] if {
        	some note in ["a", "b"]
        	true
        }

        test_cases[tc.note] if {
        	some tc in [{"note": "one", "x": 1}, {"note": "two", "x": 2}, {"note": "three", "x": 1}]
        	tc.x == 1
        }
    """)
    r = invoke(tmp_path, "-v")
    assert r.exit_code == 2, r.output
    out = r.stdout
    assert re.search(rf"^data\.p_test\.test_all_pass: PASS {DURATION}\n  a: PASS\n  b: PASS$", out, re.M), out
    # "two" never produced a value: the injected test-case call saw it start, so it failed.
    assert re.search(rf"^data\.p_test\.test_cases: FAIL {DURATION}\n  one: PASS\n  three: PASS\n  two: FAIL$",
                     out, re.M), out
    assert summary(out) == ["PASS: 4/5", "FAIL: 1/5"]  # leaf sub-results are counted


def test_a_failing_sub_result_is_shown_without_verbose(tmp_path):
    write(tmp_path, "q_test.rego", """
        package q_test

        test_cases[name] if {
        	some name, want in {"yes": true, "no": false}
        	want
        }
    """)
    r = invoke(tmp_path)
    assert r.exit_code == 2
    assert re.search(rf"^data\.q_test\.test_cases: FAIL {DURATION}\n  no: FAIL$", r.stdout, re.M), r.stdout
    assert "yes: PASS" not in r.stdout


# -- METADATA (loader with ProcessAnnotation: true) -------------------------------------------------

@pytest.mark.parametrize("block,message", [
    ("# METADATA\n# scope: bogus\n",
     "rego_parse_error: invalid annotation scope 'bogus'. Use one of 'rule', 'document', 'package', or 'subpackages'"),
    ("# METADATA\n# scope: package\n", "rego_parse_error: annotation scope 'package' must be applied to package (have rule)"),
    ("# METADATA\n# scope: rule\n# entrypoint: true\n",
     "rego_parse_error: annotation entrypoint applied to non-document or package scope 'rule'"),
    ("# METADATA\n# title: [unclosed\n", "rego_parse_error: yaml: line 2:"),
    ("# METADATA\n# title: [a, b]\n", "rego_parse_error: yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into string"),
    ("# METADATA\n# authors:\n#   - {nickname: x}\n", "rego_parse_error: invalid author definition map[nickname:x]:"),
    ("# METADATA\n# schemas:\n#   - input: not.a.schema\n", "rego_parse_error: invalid schema reference"),
])
def test_an_invalid_annotation_is_a_load_error(tmp_path, block, message):
    write(tmp_path, "m_test.rego", f"package m_test\n\n{block}test_x if true\n")
    r = invoke(tmp_path)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(f"1 error occurred during loading: {tmp_path}/m_test.rego:"), r.stderr
    assert message in r.stderr


def test_valid_annotations_load(tmp_path):
    write(tmp_path, "v_test.rego", """
        # METADATA
        # title: tests
        # authors:
        #   - Jane Doe <jane@example.com>
        # related_resources:
        #   - https://example.com
        package v_test

        # METADATA
        # title: a test
        # schemas:
        #   - input: schema.input
        test_x if true
    """)
    assert invoke(tmp_path).exit_code == 0


# -- output, json format, coverage ------------------------------------------------------------------

def test_go_duration_format():
    assert [go_duration(n) for n in (0, 800, 1_500, 12_345_678, 1_000_000_000, 62_500_000_000, 3_725_000_000_000)] \
        == ["0s", "800ns", "1.5µs", "12.345678ms", "1s", "1m2.5s", "1h2m5s"]


def test_format_json_lists_results_as_opa_does(tmp_path):
    write(tmp_path, "j_test.rego", "package j_test\n\ntest_ok if true\n\ntest_no if false\n\ntodo_test_x if true\n")
    r = invoke(tmp_path, "--format", "json")
    assert r.exit_code == 2
    results = json.loads(r.stdout)
    assert [(x["package"], x["name"], x.get("fail", False), x.get("skip", False)) for x in results] == [
        ("data.j_test", "test_ok", False, False), ("data.j_test", "test_no", True, False),
        ("data.j_test", "todo_test_x", False, True)]
    assert results[0]["location"] == {"file": f"{tmp_path}/j_test.rego", "row": 3, "col": 1}
    assert isinstance(results[0]["duration"], int) and results[2]["duration"] == 0


def test_coverage_prints_opas_json_report(tmp_path):
    write(tmp_path, "lib.rego", "package lib\n\nallow if input.x == 1\n\nunused if input.y == 2\n")
    write(tmp_path, "lib_test.rego", "package lib_test\n\ntest_allow if data.lib.allow with input as {\"x\": 1}\n")
    r = invoke(tmp_path, "--coverage")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert set(report) == {"files", "covered_lines", "not_covered_lines", "coverage"}
    lib = report["files"][f"{tmp_path}/lib.rego"]
    assert {rng["start"]["row"] for rng in lib["not_covered"]} == {5}
    assert {rng["start"]["row"] for rng in lib["covered"]} == {3}
    assert report["coverage"] < 100
    assert r.stdout.startswith('{\n  "files": {\n')  # indented two spaces, like OPA's encoder


def test_threshold_exits_2_below_it_and_1_when_out_of_range(tmp_path):
    write(tmp_path, "lib.rego", "package lib\n\nallow if input.x == 1\n\nunused if input.y == 2\n")
    write(tmp_path, "lib_test.rego", "package lib_test\n\ntest_allow if data.lib.allow with input as {\"x\": 1}\n")
    r = invoke(tmp_path, "--threshold", "100")
    assert r.exit_code == 2
    assert re.match(r"Code coverage threshold not met: got \d+\.\d\d instead of 100\.00", r.stderr)
    assert invoke(tmp_path, "--threshold", "10").exit_code == 0
    r = invoke(tmp_path, "--threshold", "101")
    assert r.exit_code == 1 and "Code coverage threshold must be between 0 and 100" in r.stderr


def test_coverage_with_a_failing_test_exits_1_and_names_it(tmp_path):
    write(tmp_path, "f_test.rego", "package f_test\n\ntest_no if false\n")
    r = invoke(tmp_path, "--coverage")
    assert r.exit_code == 1
    assert re.match(rf"data\.f_test\.test_no: FAIL {DURATION}", r.stderr)


def test_shipped_rego_tests_pass_with_full_coverage():
    r = invoke(REGO_DIR, "-v")
    assert r.exit_code == 0, r.output
    assert re.search(rf"^data\.chio\.budget_test\.test_within_budget_allows: PASS {DURATION}$", r.stdout, re.M)
    cov = invoke(REGO_DIR, "--threshold", "100")
    assert cov.exit_code == 0, cov.output
    assert json.loads(cov.stdout)["coverage"] == 100


def test_summary_api_for_lint_reports_outcomes(tmp_path):
    write(tmp_path, "a_test.rego", "package a_test\n\ntest_ok if true\n\ntest_no if false\n")
    result = run_summary(tmp_path)
    assert [(t.ref, t.outcome) for t in result.tests] == [("data.a_test.test_ok", "PASS"), ("data.a_test.test_no", "FAIL")]
    assert not result.ok and result.count("PASS") == 1


# -- against a real opa when one exists -----------------------------------------------------------

def _fixture_dirs(tmp_path):
    cases = {
        "dups": "package d_test\n\ntest_same if true\n\ntest_same if false\n",
        "kinds": "package k_test\n\ntest_number := 5\n\ntests.test_ref_head if true\n\ntodo_test_x if true\n",
        "cases": ("package p_test\n\ntest_cases[tc.note] if {\n\tsome tc in [{\"note\": \"one\", \"x\": 1}, "
                  "{\"note\": \"two\", \"x\": 2}]\n\ttc.x == 1\n}\n"),
        "metadata": "package m_test\n\n# METADATA\n# scope: bogus\ntest_x if true\n",
        "empty": "package lib\n\nx := 1\n",
    }
    out = []
    for name, src in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "x_test.rego").write_text(src)
        out.append(tmp_path / name)
    return out


def test_real_opa_test_agrees_when_opa_is_installed(opa_bin, tmp_path):
    """With a real ``opa`` the same Rego (ours and the fixtures above) gives the same codes and summaries."""
    if not opa_bin:
        pytest.skip("no opa binary (OPA_BIN unset, none on PATH): the embedded runner covers the Rego tests")
    for d in [REGO_DIR, *_fixture_dirs(tmp_path)]:
        theirs, ours = opa_test(opa_bin, d, "-v"), invoke(d, "-v")
        assert ours.exit_code == theirs.returncode, (d, theirs.stdout, theirs.stderr, ours.output)
        assert summary(ours.stdout) == summary(theirs.stdout), (d, theirs.stdout, ours.stdout)
    theirs = opa_test(opa_bin, REGO_DIR, "--threshold", "100")
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
