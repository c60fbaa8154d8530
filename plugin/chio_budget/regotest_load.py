"""Loading for ``chio-budget test-rego``: files, parse, METADATA, data, compile.

Mirrors what ``opa test PATH...`` does before it runs anything
(``cmd/test.go``, ``v1/loader/loader.go``): every ``.rego``, ``.json``,
``.yaml``/``.yml`` file under each path is loaded (other files in a
directory are ignored); modules are parsed with OPA's parser with
annotations processed, so an invalid METADATA block is a load error; JSON
and YAML documents are merged into ``data`` under the path of the
directories below the argument; then everything is compiled. A load or
compile failure is reported the way OPA formats it and ends the run with
exit code 1, before any test runs.

This is the one reader that does not go through ``rego_files.rego_modules``:
``opa test`` loads data files too, names modules by the path it walked and
treats a directory without tests as zero tests, not as an error.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from opa_bindings import OpaEngine, OpaError

from . import rego_metadata, rego_source
from .rego_source import RegoSourceError, Statement


class LoadError(Exception):
    """Loading or compiling failed; ``str()`` is OPA's message for it."""


@dataclass
class Module:
    name: str  # the file path as OPA names the module
    src: str
    ast: dict[str, Any]
    rules: list[Statement]  # one per rule of ``ast["rules"]``, same order

    @property
    def package(self) -> list[tuple[str, Any]]:
        return [rego_source.ast_term(t) for t in self.ast["package"]["path"]]


@dataclass
class Loaded:
    modules: list[Module] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _walk(path: str, depth: int = 0, parents: tuple[str, ...] = ()):
    """``(file, data path, depth)`` for every file under ``path``, as OPA's loader walks it."""
    if not os.path.isdir(path):
        yield path, parents, depth
        return
    if depth > 0:
        parents = parents + (os.path.basename(path),)
    for name in sorted(os.listdir(path)):
        yield from _walk(os.path.normpath(os.path.join(path, name)), depth + 1, parents)


def _parse_errors(message: str) -> list[str]:
    text = message.split("rego.parse_module: ", 1)[-1]
    m = re.match(r"^(\d+) errors? occurred:[ \n]", text)
    if not m:
        return [text]
    body = text[m.end():]
    return re.split(r"\n(?=[^\t\n][^\n]*: rego_\w+_error: )", body) if int(m.group(1)) > 1 else [body]


def _comments(ast: dict[str, Any]) -> list[rego_metadata.Comment]:
    out = []
    for c in ast.get("comments") or []:
        text = base64.b64decode(c["Text"]).decode("utf-8")
        out.append(rego_metadata.Comment(c["Location"]["row"], c["Location"]["col"], text.rstrip("\r")))
    return out


def _locate(name: str, src: str, ast: dict[str, Any]) -> tuple[list[Statement], list[Statement]]:
    """All statements and the rule statements, checked against OPA's parse."""
    stmts = rego_source.statements(rego_source.tokenize(src))
    rules = [s for s in stmts if s.kind == "rule"]
    ast_rules = ast.get("rules") or []
    if len(rules) != len(ast_rules):
        raise RegoSourceError(f"found {len(rules)} rules where OPA parsed {len(ast_rules)}")
    for stmt, rule in zip(rules, ast_rules):
        want = rule["head"]["ref"][0]["value"]
        got = stmt.tokens[stmt.head_start()].text
        if got != want:
            raise RegoSourceError(f"{stmt.row}:{stmt.col}: found rule {got!r} where OPA parsed {want!r}")
    return stmts, rules


def _load_module(opa: OpaEngine, name: str, src: str) -> Module | list[str]:
    try:
        ast = opa.eval_query("m := rego.parse_module(input.name, input.src)", {"name": name, "src": src})[0]["m"]
    except OpaError as exc:
        return _parse_errors(exc.message)
    try:
        stmts, rules = _locate(name, src, ast)
    except RegoSourceError as exc:
        return [f"{name}: chio-budget test-rego cannot locate the rules of this file ({exc}); "
                "format it with `opa fmt`"]
    kinds = [(s.kind, s.row) for s in stmts]
    errors = rego_metadata.check(name, src, _comments(ast), kinds)
    return errors or Module(name, src, ast, rules)


def _load_document(path: str, text: str) -> Any:
    if path.endswith(".json"):
        return json.loads(text)
    return yaml.safe_load(text)


def _merge(into: dict[str, Any], doc: dict[str, Any]) -> bool:
    for k, v in doc.items():
        if k in into and isinstance(into[k], dict) and isinstance(v, dict):
            if not _merge(into[k], v):
                return False
        elif k in into:
            return False
        else:
            into[k] = v
    return True


def load(paths: list[str]) -> Loaded:
    """Every module and document under ``paths``, or ``LoadError`` naming all problems."""
    errors: list[str] = []
    out = Loaded()
    opa = OpaEngine()
    opa.print_handler = lambda _m, _l: None
    try:
        for arg in paths:
            for path, parents, depth in _walk(arg):
                _load_file(opa, path, parents, depth, out, errors)
    finally:
        opa.close()
    if errors:
        if len(errors) == 1:
            raise LoadError("1 error occurred during loading: " + errors[0])
        raise LoadError(f"{len(errors)} errors occurred during loading:\n" + "\n".join(errors))
    return out


def _load_file(opa: OpaEngine, path: str, parents: tuple[str, ...], depth: int, out: Loaded,
               errors: list[str]) -> None:
    ext = os.path.splitext(path)[1]
    if ext not in (".rego", ".json", ".yaml", ".yml"):
        if depth == 0:
            errors.append(f"{path}: can't recognize file type")
        return
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"open {path}: {getattr(exc, 'strerror', None) or exc}")
        return
    if ext == ".rego":
        loaded = _load_module(opa, path, text)
        if isinstance(loaded, list):
            errors.extend(loaded)
        else:
            out.modules.append(loaded)
        return
    try:
        doc = _load_document(path, text)
    except (ValueError, yaml.YAMLError) as exc:
        errors.append(f"{path}: {exc}")
        return
    for p in reversed(parents):
        doc = {p: doc}
    if not isinstance(doc, dict):
        errors.append(f"{path}: document must be of type object")
    elif not _merge(out.data, doc):
        errors.append(f"{path}: merge error")


def compile_modules(modules: list[Module], data: dict[str, Any], sources: dict[str, str] | None = None,
                    ) -> OpaEngine:
    """An engine holding every module (``sources`` overrides the text) and the data,
    compiled; ``LoadError`` with OPA's compiler message when it does not compile."""
    opa = OpaEngine()
    opa.print_handler = lambda _m, _l: None
    try:
        for m in modules:
            opa.add_policy(m.name, (sources or {}).get(m.name, m.src))
        if data:
            opa.add_data(data)
        opa.eval_query("x := true")
    except OpaError as exc:
        opa.close()
        raise LoadError(exc.message.removeprefix("bundle activation failed: ")) from None
    return opa
