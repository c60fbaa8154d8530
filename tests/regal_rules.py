"""The Regal rules our Rego must pass, over OPA's parsed AST (test support).

Regal cannot be installed from the registries these machines reach, so the
rules that apply to our Rego are written down here from their definitions in
StyraInc/regal (``bundle/regal/rules/...``), run over the JSON AST of OPA's
own parser (``rego.parse_module``) and the source lines:

- ``style/external-reference``: a function may use its arguments, the
  variables it declares and other functions, nothing else (no ``input``,
  ``data`` or rule references);
- ``idiomatic/ambiguous-scope``: a public incremental rule whose only
  METADATA sits on one definition without an explicit ``scope:`` line;
- ``style/line-length``: no line over 120 characters;
- ``performance/with-outside-test-context``: ``with`` only inside ``test_``
  rules;
- ``imports/unresolved-reference``: every ``data.`` reference (directly or
  through an import) reaches a rule or package some module defines, or is
  listed in ``except-paths`` of the Regal config (``.regal/config.yaml``).

Each check returns ``file:row: rule: message`` strings; empty means clean.
Regal's inline ignore directive is honoured: ``# regal ignore:<rule>[,<rule>]``
at the end of the reported line or alone on the line above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from opa_bindings import OpaEngine, OpaError

from chio_budget import rego_metadata, rego_source
from chio_budget.regotest_load import _comments

MAX_LINE = 120


@dataclass
class Parsed:
    path: str
    src: str
    ast: dict[str, Any]
    rows: list[int]  # row of each rule's head, same order as ast["rules"]
    stmts: list[tuple[str, int]]

    @property
    def rules(self) -> list[dict[str, Any]]:
        return self.ast.get("rules") or []


def parse(opa: OpaEngine, path: Path, name: str | None = None) -> Parsed:
    src = path.read_text(encoding="utf-8")
    ast = opa.eval_query("m := rego.parse_module(input.n, input.s)", {"n": name or str(path), "s": src})[0]["m"]
    stmts = rego_source.statements(rego_source.tokenize(src))
    rows = [s.row for s in stmts if s.kind == "rule"]
    assert len(rows) == len(ast.get("rules") or []), f"{path}: rule statements do not line up with OPA's parse"
    return Parsed(name or str(path), src, ast, rows, [(s.kind, s.row) for s in stmts])


def walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Rego's ``walk``: every (path, value) pair, the root included."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def get(node: Any, path: tuple) -> Any:
    for k in path:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def ref_to_string(ref: list[dict]) -> str:
    out = []
    for i, t in enumerate(ref):
        if i == 0 or (t["type"] == "string" and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(t["value"]))):
            out.append(("." if i else "") + str(t["value"]))
        else:
            out.append(f"[{t['value']}]")
    return "".join(out)


def _nested_vars(node: Any) -> list[str]:
    return [v["value"] for _, v in walk(node) if isinstance(v, dict) and v.get("type") == "var"
            and "$" not in str(v["value"])]


def declared_vars(node: Any) -> set[str]:
    """Regal's ``find_vars``: assigned (``:=``, ``=``), ``some``, ``some in``, ``every``, ref index vars."""
    found: set[str] = set()
    for path, v in walk(node):
        last = path[-1] if path else None
        if last == "terms" and isinstance(v, list) and v and v[0].get("type") == "ref":
            op = v[0]["value"][0]
            if op.get("type") == "var" and op.get("value") in ("assign", "eq") and len(v) > 1:
                lhs = v[1]
                found.update([lhs["value"]] if lhs["type"] == "var" else
                             _nested_vars(lhs) if lhs["type"] in ("array", "object") else [])
        if isinstance(v, dict) and v.get("type") == "ref":
            found.update(t["value"] for t in v["value"][1:] if t.get("type") == "var")
        if last == "symbols" and isinstance(v, list) and v:
            if v[0].get("type") == "call":
                args = v[0]["value"]
                found.update(x for a in args[1:-1] for x in _nested_vars(a))
            else:
                found.update(t["value"] for t in v if t.get("type") == "var")
        if last == "terms" and isinstance(v, dict) and "domain" in v:
            for key in ("key", "value"):
                t = v.get(key)
                if isinstance(t, dict) and t.get("type") == "var" and "$" not in t["value"]:
                    found.add(t["value"])
    return found


class Builtins:
    """Whether a name is one of OPA's built-in functions (asked of the embedded OPA)."""

    def __init__(self, opa: OpaEngine):
        self.opa, self.cache = opa, {}

    def __contains__(self, name: str) -> bool:
        if name not in self.cache:
            try:
                self.opa.eval_query(f"__x := {name}")
                self.cache[name] = False
            except OpaError as exc:
                self.cache[name] = "used as reference, not called" in exc.message
        return self.cache[name]


def _call_context(fn: dict, path: tuple) -> bool:
    """Regal's ``_function_call_ctx``: the var is (part of) a call's operator or an argument."""
    if "terms" in path:
        at = len(path) - 1 - path[::-1].index("terms")
        terms_path = path[:at + 2]
        if len(terms_path) == at + 2 and isinstance(terms_path[-1], int):
            if get(fn, terms_path[:-1] + (terms_path[-1] + 1,)) is not None:
                return True
    parent = get(fn, path[:-4]) if len(path) >= 4 else None
    return isinstance(parent, dict) and parent.get("type") == "call"


def _namespaces(module: Parsed, fn: dict, path: tuple, value: dict, builtins: Builtins) -> bool:
    name = value["value"]
    if any(ref_to_string(r["head"]["ref"]).split(".")[0] == name for r in module.rules if "args" in r["head"]):
        return True
    parent = get(fn, path[:-2])
    if isinstance(parent, dict) and parent.get("type") == "ref" and path[-1] == 0:
        terms = parent["value"]
        for end in range(len(terms), 0, -1):
            if all(t["type"] == "string" for t in terms[1:end]) and ref_to_string(terms[:end]) in builtins:
                return True
    return name in builtins


def external_reference(module: Parsed, builtins: Builtins) -> list[str]:
    out = []
    for rule, row in zip(module.rules, module.rows):
        if "args" not in rule["head"]:
            continue
        allowed = {a["value"] for a in rule["head"]["args"] if a["type"] == "var"}
        allowed |= declared_vars(rule.get("body")) | declared_vars(rule["head"].get("value")) \
            | declared_vars(rule.get("else"))
        for path, value in walk(rule):
            if not (isinstance(value, dict) and value.get("type") == "var"):
                continue
            name = value["value"]
            if name in allowed or "$" in name or _call_context(rule, path):
                continue
            if _namespaces(module, rule, path, value, builtins):
                continue
            out.append(f"{module.path}:{row}: external-reference: {name} in function "
                       f"{ref_to_string(rule['head']['ref'])}")
    return out


def line_length(module: Parsed) -> list[str]:
    return [f"{module.path}:{i}: line-length: {len(line)} characters (max {MAX_LINE})"
            for i, line in enumerate(module.src.split("\n"), 1) if line and len(line) > MAX_LINE]


def _expressions(node: Any) -> Iterator[dict]:
    for _, v in walk(node):
        if isinstance(v, dict) and "terms" in v and "index" in v:
            yield v


def with_outside_test_context(module: Parsed) -> list[str]:
    out = []
    for rule, row in zip(module.rules, module.rows):
        name = ref_to_string(rule["head"]["ref"])
        if name.startswith("test_") or name.startswith("todo_test"):
            continue
        if any(expr.get("with") for expr in _expressions(rule)):
            out.append(f"{module.path}:{row}: with-outside-test-context: `with` in rule {name}")
    return out


def _annotations(module: Parsed) -> dict[int, list[tuple[rego_metadata.Comment, dict]]]:
    """Rule index -> the METADATA blocks attached to it (rule scope: the rule below; document: all of its path)."""
    rule_rows = dict(zip(module.rows, range(len(module.rows))))
    attached: dict[int, list] = {}
    for head, body in rego_metadata.blocks(_comments(module.ast)):
        raw = rego_metadata.parse_block(head, body)
        node = next(((kind, row) for kind, row in module.stmts if row > head.row), None)
        if node is None or node[0] != "rule":
            continue
        index = rule_rows[node[1]]
        scope = raw.get("scope") or ("document" if raw.get("entrypoint") else "rule")
        targets = [index] if scope == "rule" else [
            i for i, r in enumerate(module.rules)
            if ref_to_string(r["head"]["ref"]) == ref_to_string(module.rules[index]["head"]["ref"])]
        for i in targets:
            attached.setdefault(i, []).append((head, raw))
    return attached


def ambiguous_scope(module: Parsed) -> list[str]:
    names = [ref_to_string(r["head"]["ref"]) for r in module.rules]
    attached = _annotations(module)
    lines = module.src.split("\n")
    out = []
    for name in sorted({n for n in names if names.count(n) > 1 and not n.startswith("_")}):
        with_meta = [i for i, n in enumerate(names) if n == name and attached.get(i)]
        if len(with_meta) != 1 or len(attached[with_meta[0]]) != 1:
            continue
        head, raw = attached[with_meta[0]][0]
        if raw.get("entrypoint"):
            continue
        block = lines[head.row - 1:module.rows[with_meta[0]] - 1]
        if not any(line.startswith("# scope:") for line in block):
            out.append(f"{module.path}:{head.row}: ambiguous-scope: METADATA of incremental rule {name} "
                       "has no explicit scope")
    return out


def _glob(pattern: str, name: str) -> bool:
    """``glob.match(pattern, [], name)``: ``.`` is the delimiter, ``**`` crosses it."""
    rx = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", r"[^.]*").replace("\0", ".*")
    return re.fullmatch(rx, name) is not None


def _static_ref(terms: list[dict]) -> str:
    out = [str(terms[0]["value"])]
    for t in terms[1:]:
        if t["type"] != "string":
            break
        out.append(str(t["value"]))
    return ".".join(out)


def unresolved_reference(modules: list[Parsed], config: dict, builtins: Builtins) -> list[str]:
    cfg = ((config.get("rules") or {}).get("imports") or {}).get("unresolved-reference") or {}
    except_paths = cfg.get("except-paths") or []
    exported = {".".join([ref_to_string(m.ast["package"]["path"])] + [ref_to_string(r["head"]["ref"])])
                for m in modules for r in m.rules}
    exported = {e for e in exported if not _glob("**.test_*", e)}
    prefixes = {tuple(e.split(".")[:i]) for e in exported for i in range(1, e.count(".") + 1)}
    out = []
    for m in modules:
        imports = {imp.get("alias") or imp["path"]["value"][-1]["value"]: _static_ref(imp["path"]["value"])
                   for imp in m.ast.get("imports") or [] if imp["path"]["value"][0]["value"] == "data"}
        local = {ref_to_string(r["head"]["ref"]).split(".")[0] for r in m.rules}
        for rule, row in zip(m.rules, m.rows):
            for _, v in walk(rule):
                if not (isinstance(v, dict) and v.get("type") == "ref" and v["value"][0].get("type") == "var"):
                    continue
                name = _static_ref(v["value"])
                head = name.split(".")[0]
                if head == "input" or head in local or name in builtins:
                    continue
                if head in imports:
                    name = ".".join([imports[head]] + name.split(".")[1:])
                elif not name.startswith("data."):
                    continue
                path = name.split(".")
                if tuple(path) in prefixes or any(".".join(path[:i]) in exported for i in range(1, len(path) + 1)):
                    continue
                if any(_glob(p, name) for p in except_paths):
                    continue
                out.append(f"{m.path}:{row}: unresolved-reference: {name} is defined by no rule or package "
                           "(declare it in .regal/config.yaml except-paths if it is data)")
    return out


_IGNORE = re.compile(r"#\s*regal\s+ignore:\s*([\w,\s-]+)$")


def ignored(module: Parsed, violation: str) -> bool:
    """Is ``file:row: rule: message`` silenced by a ``# regal ignore:rule`` on that row or alone above it?"""
    _, row, rule = violation.split(":", 3)[:3]
    lines = module.src.split("\n")
    row_i = int(row)
    candidates = [lines[row_i - 1]] if 0 < row_i <= len(lines) else []
    if 1 < row_i <= len(lines) + 1 and lines[row_i - 2].lstrip().startswith("#"):
        candidates.append(lines[row_i - 2])
    for line in candidates:
        m = _IGNORE.search(line)
        if m and rule.strip() in {r.strip() for r in m.group(1).split(",")}:
            return True
    return False


def regal_config(root: Path) -> dict:
    path = root / ".regal" / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def lint(paths: list[Path], root: Path) -> list[str]:
    """Every violation of the rules above in the given files (one aggregate for unresolved-reference)."""
    opa = OpaEngine()
    try:
        builtins = Builtins(opa)
        modules = [parse(opa, p, str(p.relative_to(root)) if p.is_relative_to(root) else str(p)) for p in paths]
        out = []
        for m in modules:
            found = line_length(m) + external_reference(m, builtins) + with_outside_test_context(m) + ambiguous_scope(m)
            out += [v for v in found if not ignored(m, v)]
        return out + unresolved_reference(modules, regal_config(root), builtins)
    finally:
        opa.close()


