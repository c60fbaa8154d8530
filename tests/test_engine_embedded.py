"""The embedded engine: real OPA in-process, failing closed on anything odd."""

from __future__ import annotations

import shutil
import threading

import pytest

from chio_budget.compiler import compile_all
from chio_budget.engines import make_engine
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.errors import EngineError
from chio_budget.guard import BudgetGuard
from chio_budget.rego_files import rego_modules
from support.guards import REGO_DIR, make_meta, rust_policy
from decision_cases import CASES


@pytest.fixture
def rego_copy(tmp_path):
    d = tmp_path / "rego"
    shutil.copytree(REGO_DIR, d)
    return d


def engine_with(rego_dir, policy=None):
    policy = policy or rust_policy()
    return EmbeddedEngine(compile_all({policy.id: policy}), rego_dir)


def input_of(case_id):
    return next(c for c in CASES if c.id == case_id).input


def test_security_team_extension_file_adds_a_violation(rego_copy):
    (rego_copy / "chio" / "budget" / "after_hours.rego").write_text(
        'package chio.budget\n\n'
        'violation contains {"scope": "custom", "code": "blocked_tool", "message": "s1:t1 is blocked"} if {\n'
        '\tinput.request.tool_key == "s1:t1"\n}\n')
    d = engine_with(rego_copy).decide(input_of("total_budget_exceeded"))
    assert not d.allow and d.error is None
    assert [v.scope for v in d.violations] == ["total", "session", "agent", "custom"]
    assert d.violations[-1].model_dump() == {"scope": "custom", "code": "blocked_tool", "message": "s1:t1 is blocked"}
    assert "s1:t1 is blocked" in d.reason()


def test_unrecognised_violation_shape_denies_without_crashing(rego_copy):
    (rego_copy / "chio" / "budget" / "odd.rego").write_text(
        'package chio.budget\n\nviolation contains {"scope": "total", "why": 42} if true\n')
    d = engine_with(rego_copy).decide(input_of("within_budget"))
    assert not d.allow and d.error is None
    assert d.violations[0].model_dump() == {"scope": "total", "why": 42}


@pytest.mark.parametrize("replacement, cause", [
    ('decision := "yes"', "malformed decision: expected an object"),
    ('decision := {"allow": "true", "violations": []}', "allow is not a boolean"),
    ('decision := {"allow": true}', "missing ['violations']"),
    ('decision := {"allow": true, "violations": [{"scope": "custom"}]}', "allow with violations"),
    ('decision := {"allow": true, "violations": ["nope"]}', "malformed decision: violations.0"),
    ('decision := {"allow": true, "violations": [], "x": input.cost.units / 0}', "divide by zero"),
])
def test_malformed_decisions_deny_with_cause(rego_copy, replacement, cause):
    path = rego_copy / "chio" / "budget" / "decision.rego"
    src = path.read_text()
    start = src.index("decision := {")
    end = src.index("}\n", start) + 2
    path.write_text(src[:start] + replacement + "\n" + src[end:])
    d = engine_with(rego_copy).decide(input_of("within_budget"))
    assert d.allow is False
    assert d.error and d.error.startswith("engine error:") and cause in d.error


def test_unknown_policy_id_is_an_engine_error_deny():
    d = engine_with(REGO_DIR).decide(input_of("unknown_policy_id"))
    assert not d.allow
    assert d.error == "engine error: decision undefined: unknown policy_id 'nope'"


def test_rego_syntax_error_fails_at_start_up_with_location(rego_copy):
    (rego_copy / "chio" / "budget" / "broken.rego").write_text("package chio.budget\n\nviolation contains x if {\n")
    with pytest.raises(EngineError, match="broken.rego:4: rego_parse_error"):
        engine_with(rego_copy)


def test_missing_rego_dir_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="no such Rego directory"):
        engine_with(tmp_path / "nope")


def test_test_modules_are_not_loaded_into_the_engine(rego_copy):
    (rego_copy / "chio" / "budget" / "zzz_test.rego").write_text("package chio.budget_test\n\nx := 1 / 0\n")
    assert engine_with(rego_copy).decide(input_of("within_budget")).allow


def test_engine_is_shared_safely_between_threads():
    engine = engine_with(REGO_DIR)
    cases = [c for c in CASES if c.expected is not None and c.data == CASES[0].data]
    failures = []

    def worker():
        for _ in range(25):
            for c in cases:
                got = engine.decide(c.input).to_json_dict()
                if got != c.expected:
                    failures.append((c.id, got))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_guard_denies_when_the_engine_fails(rego_copy):
    path = rego_copy / "chio" / "budget" / "decision.rego"
    src = path.read_text()
    broken = src.replace('"allow": allow,', '"allow": 1 / 0,').replace('"allow": true,', '"allow": 1 / 0,')
    assert broken.count('"allow": 1 / 0,') == 2, "the decision's two bodies (common case and else) both break"
    path.write_text(broken)
    guard = BudgetGuard(rust_policy(), engine_with(rego_copy))
    auth = guard.authorize(make_meta(), 1)
    assert not auth.allow and auth.decision.error.startswith("engine error:")
    assert guard.total_spent() == 0 and guard.ledger.open_reservations() == 0


def test_rego_files_are_read_in_one_place_with_tests_only_when_asked(rego_copy):
    (rego_copy / "chio" / "budget" / "zzz_test.rego").write_text("package chio.budget_test\n")
    plain = rego_modules(rego_copy)
    assert "chio/budget/decision.rego" in plain and "chio/budget/zzz_test.rego" not in plain
    every = rego_modules(rego_copy, include_tests=True, full_paths=True)
    assert str(rego_copy / "chio/budget/zzz_test.rego") in every
    single = rego_copy / "chio" / "budget" / "decision.rego"
    assert rego_modules(single) == {"decision.rego": single.read_text()}


def test_make_engine_takes_compiled_policies_and_refuses_options_it_would_ignore():
    compiled = compile_all({"default": rust_policy()})
    engine = make_engine("embedded", compiled, REGO_DIR)
    try:
        assert engine.decide(input_of("within_budget")).allow
    finally:
        engine.close()
    with pytest.raises(EngineError, match="embedded engine: unknown option.*timeout"):
        make_engine("embedded", compiled, REGO_DIR, timeout=1)
