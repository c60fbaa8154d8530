"""``chio-budget lint policies/ rego/``: every check a change should pass, one summary.

In order: the rates file when one is given (located errors; its declared
currency units are what the policies may use), the YAML policies (located
errors), their compilation to the Rego data document, the Rego - parsed file
by file by ``regotest.run`` (the ``opa test`` stand-in, whose results are
also the Rego tests' check), compiled with that data in the embedded engine
(errors as ``file:row:col``), and the decision evaluated through it once
per policy (it must be defined and well-formed) - and, only with a real
``opa`` binary (``OPA_BIN``, then ``PATH``), ``opa check --strict`` and
``opa fmt --list``. A check whose input failed is skipped, not failed twice.

Columns: OPA prints a parse error with the source line and a caret, so its
column is exact; a compile error carries only a row, so its column is that of
the name the message is about on that row (else the row's first character).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChioBudgetError, EngineError, PolicyError

_ERROR = re.compile(r"^(?P<file>.+?):(?P<row>\d+): (?P<code>rego_\w+): (?P<msg>.*)$")
_NAMED = re.compile(r"(?:undefined function|undefined ref:|var|rule|conflicting rules|function) ([\w.\[\]\"]+)")


@dataclass
class Check:
    """One line of the summary: ``status`` is ``ok``, ``failed`` or ``skipped``."""

    name: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)


def opa_binary() -> str | None:
    return os.environ.get("OPA_BIN") or shutil.which("opa")


def _column(source_line: str, caret: str | None, msg: str) -> int:
    if caret is not None:  # OPA trims the line's leading tabs and shifts the caret by as many
        tabs = len(source_line) - len(source_line.lstrip("\t"))
        return caret.index("^") + tabs + 1
    m = _NAMED.search(msg)
    if m:
        name = m.group(1).split(".")[-1].strip('"[]')
        at = source_line.find(name) if name else -1
        if at >= 0:
            return at + 1
    return len(source_line) - len(source_line.lstrip()) + 1


def locate(message: str, sources: dict[str, str]) -> list[str]:
    """OPA's error text -> ``file:row:col: code: message`` lines (column worked out from the source)."""
    out: list[str] = []
    lines = message.split("\n")
    for i, line in enumerate(lines):
        m = _ERROR.match(line.split("error occurred: ")[-1].split("errors occurred: ")[-1])
        if not m:
            continue
        row = int(m["row"])
        src = sources.get(m["file"], "").split("\n")
        source_line = src[row - 1] if 0 < row <= len(src) else ""
        caret = lines[i + 2][1:] if i + 2 < len(lines) and lines[i + 2].lstrip("\t ").startswith("^") else None
        out.append(f"{m['file']}:{row}:{_column(source_line, caret, m['msg'])}: {m['code']}: {m['msg']}")
    return out or [message]


def check_rates(rates: Path | None) -> tuple[Check | None, Any]:
    """The ``--rates`` file (None: no check, the built-in currencies)."""
    from ..currencies import DEFAULT_CURRENCIES
    from ..rates_file import load_rates

    if rates is None:
        return None, DEFAULT_CURRENCIES
    try:
        oracle = load_rates(rates)
    except ChioBudgetError as exc:
        return Check("rates", "failed", "the rates file has errors", str(exc).splitlines()), None
    given = sum(1 for *_, derived in oracle.pairs() if not derived)
    return Check("rates", "ok", f"{given} rate(s), max age {oracle.max_age_seconds} s"), oracle.currencies


def check_policies(policies_dir: Path, currencies: Any) -> tuple[Check, Any]:
    from ..policy import load_policies

    if currencies is None:
        return Check("policies", "skipped", "the rates file did not load"), None
    try:
        loaded = load_policies(policies_dir, currencies=currencies)
    except PolicyError as exc:
        return Check("policies", "failed", f"{len(exc.errors)} error(s)", list(exc.errors)), None
    ids = ", ".join(sorted(loaded))
    return Check("policies", "ok", f"{len(loaded)} polic{'y' if len(loaded) == 1 else 'ies'} ({ids})"), loaded


def check_compile(policies: Any) -> Check:
    from ..compiler import data_revision

    if policies is None:
        return Check("compile", "skipped", "the policies did not load")
    return Check("compile", "ok", f"data revision {data_revision(policies)[:19]}...")


def check_rego(rego_dir: Path, policies: Any, tests: Any) -> Check:
    """Parse every file (``tests``: the test runner's pass over them), compile the policy modules
    with the data in the embedded engine, and evaluate the decision once per policy through it."""
    from ..compiler import Compiled, compile_all
    from ..engines.embedded import EmbeddedEngine
    from ..rego_files import rego_modules

    if tests.errors:
        errors = [line for e in tests.errors for line in locate(e, _sources(rego_dir))]
        return Check("rego", "failed", f"{len(errors)} parse error(s)", errors)
    try:
        sources = rego_modules(rego_dir, full_paths=True)
        compiled = compile_all(policies) if policies is not None else Compiled.from_budget({"policies": {}})
        engine = EmbeddedEngine(compiled, modules=sources)
    except EngineError as exc:
        errors = locate(str(exc).removeprefix("embedded OPA: "), _sources(rego_dir))
        return Check("rego", "failed", f"{len(errors)} compile error(s)", errors)
    with engine:
        errors = _probe_decisions(engine, policies or {})
    if errors:
        return Check("rego", "failed", "the decision is not well-formed", errors)
    return Check("rego", "ok", f"{len(sources)} module(s) compile; decision defined for every policy")


def _sources(rego_dir: Path) -> dict[str, str]:
    from ..rego_files import rego_modules

    try:
        return rego_modules(rego_dir, include_tests=True, full_paths=True)
    except EngineError:
        return {}


def _probe_decisions(engine: Any, policies: Any) -> list[str]:
    """Each policy's decision on a zero-cost call (the guard's own input) must be well-formed."""
    from ..cost import CostMetadata
    from ..opa_input import build_input

    meta = CostMetadata(receipt_id="lint", timestamp=0, agent_id="lint", tool_server="lint", tool_name="probe")
    errors = []
    for pid, policy in sorted(policies.items()):
        probe = build_input(meta, 0, {"total": 0, "agent": 0, "tool": 0}, policy=policy)
        d = engine.decide(probe)
        if d.error is not None:
            errors.append(f"data.chio.budget.decision for policy {pid!r}: {d.error}")
    return errors


def check_rego_tests(tests: Any) -> Check:
    failed = [f"{t.file}: {t.ref}: {t.outcome} {t.detail}".rstrip() for t in tests.tests
              if t.outcome in ("FAIL", "ERROR")]
    passed, skipped = tests.count("PASS"), tests.count("SKIPPED")
    summary = f"{passed} passed, {len(failed)} failed" + (f", {skipped} skipped" if skipped else "")
    if tests.ok and tests.tests:
        return Check("rego tests", "ok", summary)
    return Check("rego tests", "failed", summary if tests.tests else "no tests found", tests.errors + failed)


def check_opa(opa: str | None, rego_dir: Path) -> list[Check]:
    """``opa check --strict`` and ``opa fmt --list`` with a real binary; skipped without one."""
    if opa is None:
        why = "no opa binary (set OPA_BIN or put opa on PATH)"
        return [Check("opa check --strict", "skipped", why), Check("opa fmt --list", "skipped", why)]
    out = []
    check = _run([opa, "check", "--strict", str(rego_dir)])
    out.append(Check("opa check --strict", "ok" if check.returncode == 0 else "failed",
                     "no issues" if check.returncode == 0 else "issues found", _lines(check)))
    fmt = _run([opa, "fmt", "--list", str(rego_dir)])
    unformatted = [f"{f}: not formatted (run: opa fmt -w {f})" for f in fmt.stdout.split()]
    ok = fmt.returncode == 0 and not unformatted
    out.append(Check("opa fmt --list", "ok" if ok else "failed", "formatted" if ok else
                     f"{len(unformatted)} file(s) to format", unformatted or ([] if ok else _lines(fmt))))
    return out


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {exc}")


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def lint(policies_dir: Path, rego_dir: Path, *, opa: str | None = None, rates: Path | None = None) -> list[Check]:
    """Every check, in order; ``opa`` is the binary to use (None: none)."""
    rates_check, currencies = check_rates(rates)
    pol, loaded = check_policies(policies_dir, currencies)
    comp = check_compile(loaded)
    from ..regotest import run as run_rego_tests

    tests = run_rego_tests(rego_dir)  # one pass: parse errors for "rego", results for "rego tests"
    checks = [pol, comp, check_rego(rego_dir, loaded, tests), check_rego_tests(tests), *check_opa(opa, rego_dir)]
    return ([rates_check] if rates_check else []) + checks
