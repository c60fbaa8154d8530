"""``opa test`` through the embedded OPA - test support for machines without ``opa``.

No ``opa`` binary can be installed from the registries these machines reach,
so ``chio-budget test-rego PATH...`` runs the same tests through the embedded
evaluator (OPA v1.20), doing what ``v1/tester/runner.go`` does:

- every rule whose head's ground prefix has a term starting ``test_`` (or
  ``todo_test_``, reported SKIPPED) is a test, in any module; the query is the
  package path extended by the head up to that term;
- a second, third... definition of the same test is renamed ``test_x#01``,
  ``test_x#02`` and run on its own (``rewriteDuplicateTestNames``), so a
  failing duplicate fails;
- a test passes when its value is ``true``; undefined or any other value
  fails; an evaluation error is an ERROR; a partial-object test
  (``test_x[name] if ...``) has one sub-result per key (``true`` passes) and a
  case whose body failed after its key was bound is a failed sub-result (the
  ``internal.test_case`` call OPA's compiler injects is injected here, in the
  source text, at the same point).

Loading (``regotest_load``) follows ``opa test``: METADATA is parsed and an
invalid annotation is an error. Reporting (``regotest_report``) follows
``v1/tester/reporter.go``. The product never depends on this module.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from .rego_source import RegoSourceError
from .regotest_load import LoadError, Loaded, Module, compile_modules, load
from .regotest_plan import TestCase, plan

__all__ = ["LoadError", "RegoRun", "Result", "SubResult", "TestCase", "coverage_report", "load", "plan", "run",
           "run_tests"]


@dataclass
class SubResult:
    name: str
    fail: bool
    sub_results: dict[str, "SubResult"] = field(default_factory=dict)


@dataclass
class Result:
    test: TestCase
    fail: bool = False
    skip: bool = False
    error: str | None = None
    duration_ns: int = 0
    output: str = ""
    sub_results: dict[str, SubResult] = field(default_factory=dict)
    trace: list[dict[str, Any]] | None = None

    @property
    def passed(self) -> bool:
        return not self.fail and not self.skip and self.error is None

    @property
    def outcome(self) -> str:
        if self.passed:
            return "PASS"
        if self.fail:
            return "FAIL"
        return "SKIPPED" if self.skip else "ERROR"


def _evaluate(opa: OpaEngine, query: str, *, trace: bool) -> tuple[bool, Any]:
    """(defined, value) of a test's document; raises OpaError on an evaluation error."""
    try:
        if query.startswith("data."):
            return True, opa.eval_document(query[len("data."):], trace=trace)
        rs = opa.eval_query(f"__chio_test_value := {query}", trace=trace)
        return (True, rs[0]["__chio_test_value"]) if rs else (False, None)
    except OpaUndefinedError:
        return False, None


def run_one(opa: OpaEngine, test: TestCase, *, trace: bool = False) -> Result:
    """``runner.go``'s ``runTest`` for one test rule."""
    result = Result(test)
    if test.skip:
        result.skip = True
        return result
    want_trace = trace or test.doc_kind == "partial_object"
    start = time.perf_counter_ns()
    try:
        defined, value = _evaluate(opa, test.query, trace=want_trace)
    except OpaError as exc:
        result.duration_ns = time.perf_counter_ns() - start
        result.error = exc.message.removeprefix("bundle activation failed: ")
        result.output = _prints(opa)
        return result
    result.duration_ns = time.perf_counter_ns() - start
    result.output = _prints(opa)
    events = opa.last_trace or []
    if want_trace:
        result.trace = events
    if not defined:
        result.fail = True
    elif test.doc_kind == "partial_object":
        result.fail, result.sub_results = _sub_results(value, events, opa)
    elif value is not True:
        result.fail = True
    return result


def _prints(opa: OpaEngine) -> str:
    return "".join(message + "\n" for message, _loc in opa.last_prints)


def _term_to_string(v: Any) -> str:
    """``termToString``: a string as itself, anything else as compact JSON."""
    if isinstance(v, str):
        return v
    return go_json(v)


def go_json(v: Any, indent: int | None = None) -> str:
    """Go's ``encoding/json`` text: sorted keys, HTML-safe escapes, no ``.0`` on whole floats."""
    text = json.dumps(_go_numbers(v), indent=indent, ensure_ascii=False, sort_keys=indent is None,
                      separators=(",", ":") if indent is None else (",", ": "))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _go_numbers(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _go_numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_go_numbers(x) for x in v]
    return v


def _sub_result(name: str, v: Any) -> SubResult:
    if v is None:
        return SubResult("", False)
    if isinstance(v, dict):
        fail, subs = _sub_results(v, [], None)
        return SubResult(name, fail, subs)
    if isinstance(v, bool):
        return SubResult(name, not v)
    return SubResult(name, True)


def _update(results: dict[str, SubResult], path: list[str]) -> bool:
    """``SubResultMap.update``: a test case that started but produced no value failed."""
    entry = results.get(path[0])
    if entry is None:
        entry = results[path[0]] = SubResult(path[0], True)
    if len(path) == 1:
        return entry.fail
    if _update(entry.sub_results, path[1:]):
        entry.fail = True
        return True
    return False


def _test_case_path(node: str, opa: OpaEngine | None) -> list[str] | None:
    m = re.fullmatch(r"internal\.test_case\((.*)\)", node, re.S)
    if not m:
        return None
    try:
        args = json.loads(m.group(1))
    except ValueError:
        if opa is None:
            return None
        rs = opa.eval_query(f"__chio_case := {m.group(1)}")
        args = rs[0]["__chio_case"] if rs else None
    return [_term_to_string(a) for a in args] if isinstance(args, list) else None


def _sub_results(value: Any, trace: list[dict[str, Any]], opa: OpaEngine | None) -> tuple[bool, dict[str, SubResult]]:
    if value is None:
        return True, {}
    fail = False
    results: dict[str, SubResult] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            results[k] = _sub_result(k, v)
            fail = fail or results[k].fail
    for event in trace:
        if event.get("op") == "TestCase":
            path = _test_case_path(event.get("node", ""), opa)
            if path and _update(results, path):
                fail = True
    return fail, results


def run_tests(loaded: Loaded, tests: list[TestCase], sources: dict[str, str]) -> tuple[list[Result], OpaEngine]:
    """Run every planned test; returns the results and the engine (caller closes it)."""
    opa = compile_modules(loaded.modules, loaded.data, sources)
    return [run_one(opa, t) for t in tests], opa


def coverage_report(opa: OpaEngine, tests: list[TestCase]) -> dict[str, Any]:
    """OPA's own coverage report over every module, from one evaluation of all tests.

    ``opa test --coverage`` keeps one coverage tracer across all tests; evaluating
    every (non-skipped) test in a single query gives the embedded evaluator the
    same set of hits, so the report is OPA's, not a re-implementation of it.
    """
    parts = [f"__c{i} := [v | v := {t.query}]" for i, t in enumerate(tests) if not t.skip]
    opa.eval_query("; ".join(parts) or "x := true", coverage=True)
    return opa.last_coverage or {"files": {}, "covered_lines": 0, "not_covered_lines": 0, "coverage": 0}


def module_of(loaded: Loaded, name: str) -> Module:
    return next(m for m in loaded.modules if m.name == name)


def failure_trace(opa: OpaEngine, test: TestCase) -> list[dict[str, Any]]:
    """The evaluation trace of a failed test (for ``-v``), from a second evaluation."""
    try:
        _evaluate(opa, test.query, trace=True)
    except OpaError:
        pass
    events = opa.last_trace or []
    if test.alias:  # show a renamed duplicate under the name OPA gives it
        fresh, shown = test.alias
        events = [{k: v.replace(fresh, shown) if isinstance(v, str) else v for k, v in e.items()} for e in events]
    return events



@dataclass
class RegoTest:
    """One test's outcome in the summary shape ``run()`` has always returned."""

    file: str
    ref: str  # data.<package>.<name>
    outcome: str  # PASS | FAIL | ERROR | SKIPPED
    detail: str = ""
    seconds: float = 0.0


@dataclass
class RegoRun:
    tests: list[RegoTest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(t.outcome in ("PASS", "SKIPPED") for t in self.tests)

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.tests)


def run(*paths: str | Path, run_filter: str | None = None) -> RegoRun:
    """Load, plan and run the tests under ``paths``; a load or compile error is in ``errors``.

    For callers that want a summary (``chio-budget lint``); ``test-rego`` uses
    the steps directly.
    """
    out = RegoRun()
    try:
        loaded = load([str(p) for p in paths])
        tests, sources = plan(loaded, run_filter)
        results, opa = run_tests(loaded, tests, sources)
    except (LoadError, RegoSourceError) as exc:
        out.errors.append(str(exc))
        return out
    opa.close()
    out.results = results
    for r in results:
        detail = r.error or ("undefined" if r.fail and not r.sub_results else "")
        out.tests.append(RegoTest(r.test.file, f"{r.test.package}.{r.test.name}", r.outcome, detail,
                                  r.duration_ns / 1e9))
    return out
