"""The rules docs/architecture.md states, checked on the source: dependency direction, no
import circle, third-party libraries in one home each, and module size.

The import graph is read from the source (``ast``), every import counted, including
the ones inside functions and under ``TYPE_CHECKING``: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support.guards import ROOT

PACKAGE = ROOT / "plugin" / "chio_budget"

# Bottom to top. A module may import modules of a lower tier only; inside ``ledger`` and
# ``engines`` a module may also import its own subpackage (checked for circles below).
TIERS: list[set[str]] = [
    {"errors", "text"},
    {"currencies", "yamlsafe", "watch", "windows", "rego_source", "rego_metadata"},
    {"money"},
    {"limits"},
    {"policy", "cost", "decision", "kernel", "settlement", "rates", "rego_files", "metrics", "regotest_load",
     "bundle_sign"},
    {"conversion", "compiler", "rust_model", "rates_file", "regotest_plan", "ledger"},
    {"actual_cost", "authorization", "engines", "bundle", "decisionlog", "counters", "regotest"},
    {"loaded", "soft_limits", "opa_input", "regotest_report"},
    {"batch", "reload"},
    {"guard", "shadow", "chain", "wasm", "chain_settle"},
    {"chain_guard"},
    {"replay", "demo", "cli_rates", "cli_regotest", "cli_bundle", "toolkit", "serve"},
    {"cli_serve"},
    {"cli", ""},  # "" is the package itself (its __init__)
]

# Third-party libraries with exactly one home (a module, or a subpackage's modules).
ONE_HOME = {
    "opa_client": {"engines.opa_http"},
    "requests": {"engines.opa_http"},
    "opa_bindings": {"engines.embedded", "engines.mask", "regotest", "regotest_load"},
    "redis": {"ledger.redis", "ledger.redis_cluster"},
    "psycopg": {"ledger.postgres", "ledger.postgres_schema"},
    "psycopg_pool": {"ledger.postgres"},
    "sqlite3": {"ledger.sqlite", "ledger.sqlite_schema"},
    "prometheus_client": {"metrics"},
    "babel": {"currencies"},
    "watchfiles": {"watch"},
    "typer": {"cli", "cli_rates", "cli_regotest", "cli_bundle", "cli_serve", "toolkit.cli", "toolkit.cli_report",
              "toolkit.cli_lint", "toolkit.cli_simulate", "toolkit.cli_ledger"},
    "matplotlib": {"toolkit.charts"},
    "fastapi": {"serve.app"},
    "starlette": {"serve.app"},
    "uvicorn": {"serve.runner"},
}

MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """``{"guard": path, "ledger.memory": path, "ledger": .../ledger/__init__.py, "": __init__}``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level third-party names) that ``name`` imports."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(p for p in [*base, node.module or ""] if p)
            elif (node.module or "").split(".")[0] == "chio_budget":
                target = (node.module or "").removeprefix("chio_budget").lstrip(".")
            else:
                theirs.add((node.module or "").split(".")[0])
                continue
            for alias in node.names:  # ``from . import x`` may name a submodule
                sub = f"{target}.{alias.name}" if target else alias.name
                ours.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "chio_budget":
                    ours.add(alias.name.removeprefix("chio_budget").lstrip("."))
                else:
                    theirs.add(top)
    ours.discard(name)
    return ours, theirs


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _tier(name: str) -> int:
    head = name.split(".")[0]
    for i, tier in enumerate(TIERS):
        if name in tier or head in tier:
            return i
    raise AssertionError(f"chio_budget.{name} is in no tier: add it to TIERS and to docs/architecture.md")


def test_every_module_has_a_tier():
    for name in MODULES:
        _tier(name)


def test_dependencies_point_down_the_tiers():
    wrong = []
    for name, (ours, _) in GRAPH.items():
        for dep in ours:
            same_subpackage = "." in name + dep and name.split(".")[0] == dep.split(".")[0]
            if not same_subpackage and _tier(dep) >= _tier(name):
                wrong.append(f"{name or 'chio_budget'} (tier {_tier(name)}) imports {dep} (tier {_tier(dep)})")
    assert wrong == []


def test_there_is_no_import_circle():
    graph = {name: ours for name, (ours, _) in GRAPH.items() if name}  # the package root only re-exports
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert (cycle := visit(start, [start])) is None, " -> ".join(cycle)


@pytest.mark.parametrize("library", sorted(ONE_HOME))
def test_a_third_party_library_has_one_home(library):
    users = {name for name, (_, theirs) in GRAPH.items() if library in theirs}
    assert users <= ONE_HOME[library], f"{library} imported outside its home: {sorted(users - ONE_HOME[library])}"


def test_no_module_is_over_400_lines():
    over = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert over == {}


def test_every_module_imports():
    """Every module, imported in a fresh interpreter (its optional extras installed): a circle
    the static graph missed, or a module that only works after another, fails here."""
    names = [f"chio_budget.{n}" if n else "chio_budget" for n in sorted(MODULES, key=lambda n: (-n.count("."), n))]
    script = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT / "plugin"), "PATH": ""})
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr[-3000:]
