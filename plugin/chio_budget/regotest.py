"""``opa test`` through the embedded OPA - test support for machines without ``opa``.

No ``opa`` binary can be installed from the registries these machines reach,
so ``chio-budget test-rego DIR`` runs the same ``*_test.rego`` files through
the embedded evaluator: tests are discovered with OPA's own parser
(``rego.parse_module``), each ``test_*`` rule is evaluated as
``data.<package>.<rule>`` and passes iff it is ``true``; ``todo_test_*`` rules
are skipped, as ``opa test`` does. Output follows ``opa test -v``. The
product never depends on this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opa_bindings import OpaEngine, OpaError

from .errors import EngineError
from .rego_files import rego_modules


@dataclass
class RegoTest:
    file: str
    package: list[str]
    name: str
    outcome: str = "PASS"  # PASS | FAIL | ERROR | SKIPPED
    detail: str = ""
    seconds: float = 0.0

    @property
    def ref(self) -> str:
        return "data." + ".".join(self.package + [self.name])


@dataclass
class RegoRun:
    tests: list[RegoTest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    coverage: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and all(t.outcome in ("PASS", "SKIPPED") for t in self.tests)

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.tests)


def _rule_ref(package: list[str], name: str) -> str:
    return "data" + "".join(f"[{json.dumps(s)}]" for s in package + [name])


def _ast_package(ast: dict) -> list[str]:
    return [term["value"] for term in ast["package"]["path"][1:]]


def run(directory: str | Path, *, coverage: bool = False) -> RegoRun:
    root = Path(directory)
    result = RegoRun()
    try:
        sources = rego_modules(root, include_tests=True, full_paths=True)
    except EngineError as exc:
        result.errors.append(str(exc))
        return result
    opa = OpaEngine()
    opa.print_handler = lambda _m, _l: None
    try:
        discovered: list[RegoTest] = []
        for name, src in sources.items():
            try:
                ast = opa.eval_query("m := rego.parse_module(input.name, input.src)", {"name": name, "src": src})[0]["m"]
                opa.add_policy(name, src)
            except OpaError as exc:
                result.errors.append(exc.message.split("rego.parse_module: ", 1)[-1])
                continue
            package = _ast_package(ast)
            seen: set[str] = set()
            for rule in ast.get("rules", []):
                rname = rule["head"].get("name") or ""
                if rname in seen:
                    continue
                if rname.startswith("test_") or rname.startswith("todo_test_"):
                    seen.add(rname)
                    t = RegoTest(name, package, rname)
                    if rname.startswith("todo_test_"):
                        t.outcome = "SKIPPED"
                    discovered.append(t)
        for data_file in sorted(root.rglob("data.json")) if root.is_dir() else []:
            opa.add_data(json.loads(data_file.read_text(encoding="utf-8")))
        if result.errors:
            return result
        covered: dict[str, set[int]] = {}
        not_covered: dict[str, set[int]] = {}
        for t in discovered:
            if t.outcome == "SKIPPED":
                continue
            start = time.perf_counter()
            try:
                rs = opa.eval_query(f"x := {_rule_ref(t.package, t.name)}", coverage=coverage)
                if not rs:
                    t.outcome, t.detail = "FAIL", "undefined"
                elif rs[0].get("x") is not True:
                    t.outcome, t.detail = "FAIL", f"= {json.dumps(rs[0].get('x'))}"
            except OpaError as exc:
                t.outcome, t.detail = "ERROR", exc.message
            t.seconds = time.perf_counter() - start
            if coverage and opa.last_coverage:
                for path, rep in opa.last_coverage.get("files", {}).items():
                    for span in rep.get("covered") or []:
                        covered.setdefault(path, set()).update(range(span["start"]["row"], span["end"]["row"] + 1))
                    for span in rep.get("not_covered") or []:
                        not_covered.setdefault(path, set()).update(range(span["start"]["row"], span["end"]["row"] + 1))
        result.tests = discovered
        if coverage:
            files_cov = {}
            total_c = total_n = 0
            for path in sorted(set(covered) | set(not_covered)):
                c = covered.get(path, set())
                n = not_covered.get(path, set()) - c
                total_c += len(c)
                total_n += len(n)
                files_cov[path] = {"covered_lines": len(c), "not_covered_lines": len(n),
                                   "not_covered": sorted(n),
                                   "coverage": round(100.0 * len(c) / max(len(c) + len(n), 1), 2)}
            result.coverage = {"files": files_cov, "covered_lines": total_c, "not_covered_lines": total_n,
                               "coverage": round(100.0 * total_c / max(total_c + total_n, 1), 2)}
        return result
    finally:
        opa.close()


def render(run_: RegoRun, *, verbose: bool = False) -> str:
    """``opa test``-style text; ends with ``PASS: n/m`` or ``FAIL: n/m``."""
    lines: list[str] = list(run_.errors)
    if verbose:
        by_file: dict[str, list[RegoTest]] = {}
        for t in run_.tests:
            by_file.setdefault(t.file, []).append(t)
        for f, tests in by_file.items():
            lines.append(f"{f}:")
            for t in tests:
                ms = f" ({t.seconds * 1000:.3f}ms)" if t.outcome != "SKIPPED" else ""
                detail = f"\n  {t.detail}" if t.detail else ""
                lines.append(f"{t.ref}: {t.outcome}{ms}{detail}")
            lines.append("")
    else:
        for t in run_.tests:
            if t.outcome in ("FAIL", "ERROR"):
                lines.append(f"{t.file}: {t.ref}: {t.outcome} {t.detail}".rstrip())
    if run_.coverage is not None:
        for path, rep in run_.coverage["files"].items():
            missing = ",".join(map(str, rep["not_covered"])) or "-"
            lines.append(f"coverage {path}: {rep['coverage']}% (not covered: lines {missing})")
        lines.append(f"coverage: {run_.coverage['coverage']}%")
    lines.append("-" * 80)
    total = len(run_.tests)
    passed = run_.count("PASS")
    if run_.count("SKIPPED"):
        lines.append(f"SKIPPED: {run_.count('SKIPPED')}/{total}")
    if run_.ok:
        lines.append(f"PASS: {passed}/{total}")
    else:
        lines.append(f"PASS: {passed}/{total}")
        failed = run_.count("FAIL") + run_.count("ERROR")
        lines.append(f"FAIL: {failed}/{total}" if not run_.errors else f"ERROR: {len(run_.errors)} file(s) did not parse")
    lines.append(f"rego: {passed} passed, {run_.count('FAIL') + run_.count('ERROR')} failed")
    return "\n".join(lines)
