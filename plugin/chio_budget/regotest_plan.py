"""Which rules are tests, what each one queries, and the source rewrites they need.

``v1/tester/runner.go`` decides three things before it evaluates anything,
repeated here exactly:

- ``ruleName``/``shouldRun``: walk the ground prefix of the rule's head ref;
  the first term (var or string) starting ``test_`` or ``todo_test_`` makes
  the rule a test, and the ref up to that term is its name (``test_x``,
  ``tests.test_x``, ``tests["test x"]``); ``--run`` filters on
  ``data.<package>.<name>``;
- ``rewriteDuplicateTestNames``: the 2nd, 3rd... ``test_`` rule with the same
  full name is renamed ``<name>#01``, ``#02``... and so runs on its own;
- ``injectTestCaseFunc``: a ``test_`` rule with a ref tail after its name gets
  ``internal.test_case([tail...])`` right after the body literal that binds
  the last of the tail's variables, so a case whose body fails afterwards is
  reported as a failed sub-result.

OPA rewrites its compiled AST; the embedded evaluator only takes source, so
the same rewrites are made in the text: a duplicate's name token becomes a
fresh name of the same length (rows and columns stay put for coverage and
error locations) and the call is inserted on the row of the next literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .rego_source import KEYWORDS, RegoSourceError, Statement, ast_term, body_literals, head_terms, ref_string, span_text
from .regotest_load import Loaded, Module

TEST_PREFIX, SKIP_PREFIX = "test_", "todo_test_"


@dataclass(frozen=True)
class TestCase:
    file: str
    package: str  # data.<package>, as OPA prints it
    name: str  # the rule ref up to the test name, ``#NN`` for duplicates
    query: str  # what is evaluated (a duplicate's renamed rule)
    row: int
    col: int
    doc_kind: str  # complete | partial_set | partial_object
    skip: bool
    alias: tuple[str, str] | None = None  # (renamed rule, name shown) for a duplicate


def _ground_prefix(ref: list[dict]) -> list[dict]:
    out = ref[:1]
    for term in ref[1:]:
        if not _is_ground(term):
            break
        out.append(term)
    return out


def _is_ground(term: Any) -> bool:
    if isinstance(term, dict):
        if term.get("type") == "var":
            return False
        return all(_is_ground(v) for v in term.values())
    if isinstance(term, list):
        return all(_is_ground(v) for v in term)
    return True


def rule_name(head: dict) -> tuple[str, list[dict]]:
    """``ruleName``: the test name and the head ref up to it."""
    name, ref = "", []
    for term in _ground_prefix(head["ref"]):
        ref.append(term)
        name = term["value"] if term["type"] in ("var", "string") else ""
        if name.startswith(TEST_PREFIX) or name.startswith(SKIP_PREFIX):
            break
    return name, ref


def _doc_kind(head: dict) -> str:
    if "key" in head:
        return "partial_object" if "value" in head else "partial_set"
    return "complete"


def _names_in(loaded: Loaded) -> set[str]:
    return {w for m in loaded.modules for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.src)}


def _fresh_name(name: str, taken: set[str]) -> str:
    """A name of the same length as ``name`` that no module uses."""
    for n in range(1, 10**4):
        candidate = f"Z{n:04d}{name[len(TEST_PREFIX):]}"[:len(name)]
        if len(candidate) == len(name) and candidate not in taken and candidate not in KEYWORDS:
            taken.add(candidate)
            return candidate
    raise RegoSourceError(f"no free name for duplicate test {name}")


def _name_token(stmt: Statement, index: int, name: str):
    """The token holding the ``index``-th head term, which must spell ``name``."""
    start, end = head_terms(stmt)[index]
    tok = stmt.tokens[start]
    if end - start == 1 and tok.text in (name, f'"{name}"'):
        return tok
    raise RegoSourceError(f"{tok.row}:{tok.col}: cannot rename duplicate test {name}")


def _calls_test_case(body: list) -> bool:
    found = False

    def walk(x: Any) -> None:
        nonlocal found
        if isinstance(x, dict):
            if x.get("type") == "ref" and [t.get("value") for t in x.get("value", [])[:2]] == ["internal", "test_case"]:
                found = True
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(body)
    return found


def _vars(x: Any, out: set[str]) -> set[str]:
    if isinstance(x, dict):
        if x.get("type") == "var" and isinstance(x.get("value"), str) and not x["value"].startswith("$"):
            out.add(x["value"])
        for v in x.values():
            _vars(v, out)
    elif isinstance(x, list):
        for v in x:
            _vars(v, out)
    return out


def _injection(module: Module, stmt: Statement, rule: dict, ref_len: int) -> tuple[int, str] | None:
    """Where and what ``injectTestCaseFunc`` adds to this rule, or None."""
    tail = rule["head"]["ref"][ref_len:]
    body = rule.get("body") or []
    if not tail or _calls_test_case(body):
        return None
    want = _vars(tail, set())
    last = -1
    for v in want:  # the first literal mentioning each var; the call goes after the latest of those
        first = next((i for i, expr in enumerate(body) if v in _vars(expr, set())), -1)
        last = max(last, first)
    if last >= len(body) - 1:
        return None  # after the last literal: the case's value already tells everything
    literals = body_literals(stmt)
    if literals is None or len(literals) != len(body):
        raise RegoSourceError(f"{stmt.row}:{stmt.col}: cannot locate the body literals of this test")
    spans = head_terms(stmt)[ref_len:]
    args = ", ".join(span_text(module.src, stmt.tokens, s) for s in spans)
    return literals[last + 1].offset, f"internal.test_case([{args}]); "


def plan(loaded: Loaded, run_filter: str | None = None) -> tuple[list[TestCase], dict[str, str]]:
    """Every test to run, in module and rule order, and the rewritten sources."""
    regex = re.compile(run_filter) if run_filter else None
    taken = _names_in(loaded)
    counts: dict[str, int] = {}
    tests: list[TestCase] = []
    edits: dict[str, list[tuple[int, int, str]]] = {}
    for module in sorted(loaded.modules, key=lambda m: m.name):
        pkg = module.package
        for stmt, rule in zip(module.rules, module.ast.get("rules") or []):
            name, ref = rule_name(rule["head"])
            if not (name.startswith(TEST_PREFIX) or name.startswith(SKIP_PREFIX)):
                continue
            terms = [ast_term(t) for t in ref]
            shown, query, alias = list(terms), list(terms), None
            if name.startswith(TEST_PREFIX):
                key = ref_string(_extend(pkg, terms))
                k = counts.get(key, 0)
                counts[key] = k + 1
                if k:
                    tok = _name_token(stmt, len(ref) - 1, name)
                    fresh = _fresh_name(name, taken)
                    edits.setdefault(module.name, []).append(
                        (tok.offset, len(tok.text), tok.text.replace(name, fresh)))
                    shown[-1] = ("var" if len(ref) == 1 else "string", f"{name}#{k:02d}")
                    query[-1] = (query[-1][0], fresh)
                    alias = (fresh, f"{name}#{k:02d}")
                if _doc_kind(rule["head"]) == "partial_object":
                    at = _injection(module, stmt, rule, len(ref))
                    if at:
                        edits.setdefault(module.name, []).append((at[0], 0, at[1]))
            if regex and not regex.search(ref_string(_extend(pkg, shown))):
                continue  # filtered after renaming, as shouldRun runs on the compiled rules
            tests.append(TestCase(module.name, ref_string(pkg), ref_string(shown), ref_string(_extend(pkg, query)),
                                  stmt.row, stmt.col, _doc_kind(rule["head"]), name.startswith(SKIP_PREFIX), alias))
    return tests, _apply(loaded, edits)


def _extend(pkg: list[tuple[str, Any]], ref: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``Ref.Extend``: the rule ref's leading var becomes a string under the package path."""
    head = [("string", ref[0][1])] if ref and ref[0][0] == "var" else ref[:1]
    return pkg + head + ref[1:]


def _apply(loaded: Loaded, edits: dict[str, list[tuple[int, int, str]]]) -> dict[str, str]:
    out = {}
    for name, changes in edits.items():
        src = next(m.src for m in loaded.modules if m.name == name)
        for offset, length, text in sorted(changes, reverse=True):
            src = src[:offset] + text + src[offset + length:]
        out[name] = src
    return out
