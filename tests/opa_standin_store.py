"""What the OPA stand-in holds and how it answers: policies, data, bundles, errors (TEST SUPPORT).

Written from ``v1/server/server.go``, ``v1/server/types/types.go`` and
``v1/server/writer/writer.go``; ``tests/opa_standin.py`` puts HTTP in front
of it. Every answer is what ``opa run --server`` gives for the same request:

- a policy that does not parse or compile: 400 ``invalid_parameter``
  "error(s) occurred while compiling module(s)" with ``errors[]`` of
  ``{code, message, location {file, row, col}}`` (the file is the policy
  id; parse errors also carry ``details {line, idx}``);
- an evaluation error: 500 ``internal_error`` "error(s) occurred while
  evaluating query" with the ``topdown`` error in ``errors[]``;
- data writes under a bundle's roots: 400 ``path X is owned by bundle "name"``;
  a missing document: 404 ``resource_not_found`` ``storage_not_found_error``.

The evaluator (the embedded OPA) reports a location as ``file:row`` only;
the column OPA would also give is recovered by compiling or evaluating the
failing module again under an empty file name, where OPA prints
``row:col`` (compile) or the failing expression's text (evaluation).
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from opa_bindings import OpaEngine, OpaError

COMPILE_MSG = "error(s) occurred while compiling module(s)"
EVAL_MSG = "error(s) occurred while evaluating query"
_ERROR_LINE = re.compile(r"^(?P<file>[^\n]*?):(?P<row>\d+): (?P<code>rego_\w+|eval_\w+): (?P<msg>.*)$")
_ROWCOL = re.compile(r"^(?P<row>\d+):(?P<col>\d+): (?P<code>rego_\w+): (?P<msg>.*)$")


class ApiError(Exception):
    """An error response: status, OPA's code and message, optional ``errors[]``."""

    def __init__(self, status: int, code: str, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def not_found(message: str) -> ApiError:
    return ApiError(404, "resource_not_found", f"storage_not_found_error: {message}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message)


# -- errors with OPA's locations ----------------------------------------------------------------------

def _split_errors(text: str) -> list[str]:
    text = text.split("rego.parse_module: ", 1)[-1].removeprefix("bundle activation failed: ")
    m = re.match(r"^(\d+) errors? occurred:[ \n]", text)
    if not m:
        return [text]
    body = text[m.end():]
    return re.split(r"\n(?=[^\t\n][^\n]*?: (?:rego|eval)_\w+: )", body) if int(m.group(1)) > 1 else [body]


def _details(src: str, row: int, tail: list[str]) -> dict | None:
    """``ParserErrorDetail`` from the ``\\tline\\n\\t   ^`` lines of an error."""
    if len(tail) < 2 or not tail[-1].strip().endswith("^"):
        return None
    shown, caret = tail[-2], tail[-1]
    lines = src.split("\n")
    for i in range(min(row, len(lines)) - 1, -1, -1):
        if lines[i].lstrip("\t") == shown:
            tabs = len(lines[i]) - len(lines[i].lstrip("\t"))
            return {"line": lines[i], "idx": caret.index("^") + tabs}
    return None


def parse_errors(opa: OpaEngine, policy_id: str, src: str) -> list[dict]:
    """OPA's ``errors[]`` for a module that does not parse ([] when it parses)."""
    try:
        opa.eval_query("m := rego.parse_module(\"\", input)", src)
        return []
    except OpaError as exc:
        out = []
        for err in _split_errors(exc.message):
            first, *tail = err.split("\n\t")
            m = _ROWCOL.match(first)
            if not m:
                out.append({"code": "rego_parse_error", "message": first})
                continue
            item = {"code": m["code"], "message": m["msg"],
                    "location": {"file": policy_id, "row": int(m["row"]), "col": int(m["col"])}}
            details = _details(src, int(m["row"]), tail)
            if details:
                item["details"] = details
            out.append(item)
        return out


def _columns(policies: dict[str, str], data: dict, file: str) -> dict[tuple[int, str, str], int]:
    """(row, code, message) -> column of each compile error in ``file``, by compiling it as ``""``."""
    renamed = {("" if pid == file else pid): src for pid, src in policies.items()}
    try:
        build(renamed, data)
        return {}
    except OpaError as exc:
        cols = {}
        for err in _split_errors(exc.message):
            m = _ROWCOL.match(err.split("\n\t")[0])
            if m:
                cols[(int(m["row"]), m["code"], m["msg"])] = int(m["col"])
        return cols


def compile_errors(exc: OpaError, policies: dict[str, str], data: dict) -> list[dict]:
    """``ast.Errors`` of a failed compile as OPA's JSON (message without the detail lines)."""
    out, columns = [], {}
    for err in _split_errors(exc.message):
        m = _ERROR_LINE.match(err.split("\n\t")[0])
        if not m:
            out.append({"code": "rego_compile_error", "message": err})
            continue
        if m["file"] in policies and m["file"] not in columns:
            columns[m["file"]] = _columns(policies, data, m["file"])
        col = columns.get(m["file"], {}).get((int(m["row"]), m["code"], m["msg"]), 0)
        out.append({"code": m["code"], "message": m["msg"],
                    "location": {"file": m["file"], "row": int(m["row"]), "col": col}})
    return out


def build(policies: dict[str, str], data: dict) -> OpaEngine:
    """An engine with everything compiled; ``OpaError`` (the compiler's) when it does not compile."""
    engine = OpaEngine()
    engine.print_handler = lambda _m, _l: None
    try:
        for pid, src in sorted(policies.items()):
            engine.add_policy(pid, src)
        engine.add_data(copy.deepcopy(data))
        engine.eval_query("x := 1")
    except OpaError:
        engine.close()
        raise
    return engine


def eval_error(exc: OpaError, policies: dict[str, str], data: dict, query: str, input: Any) -> ApiError:
    """500 with the ``topdown.Error`` of a failed evaluation, its column recovered."""
    first = exc.message.split("\n")[0]
    m = _ERROR_LINE.match(first)
    if exc.code != "eval_error" or not m:
        return ApiError(500, "internal_error", exc.message.removeprefix("bundle activation failed: "))
    error = {"code": m["code"], "message": m["msg"],
             "location": {"file": m["file"], "row": int(m["row"]), "col": _eval_column(policies, data, query,
                                                                                     input, m["file"], int(m["row"]))}}
    return ApiError(500, "internal_error", EVAL_MSG, [error])


def _eval_column(policies: dict[str, str], data: dict, query: str, input: Any, file: str, row: int) -> int:
    if file not in policies:
        return 0
    try:
        engine = build({("" if pid == file else pid): src for pid, src in policies.items()}, data)
    except OpaError:
        return 0
    try:
        engine.eval_query(query, input)
    except OpaError as exc:
        text = exc.message.split(": eval_", 1)[0]
        line = policies[file].split("\n")[row - 1] if 0 < row <= policies[file].count("\n") + 1 else ""
        return line.find(text) + 1 if text and text in line else 0
    finally:
        engine.close()
    return 0


# -- bundles ------------------------------------------------------------------------------------------

def read_bundle(path: str | Path) -> tuple[dict, dict, dict[str, str]]:
    """``(manifest, data, modules)`` of an OPA bundle, checked against its roots as OPA does."""
    manifest: dict = {}
    data: dict = {}
    modules: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(Path(path).read_bytes()))) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name.lstrip("/")
            blob = tar.extractfile(member).read()  # type: ignore[union-attr]
            if name == ".manifest":
                manifest = json.loads(blob)
            elif name == "data.json" or name.endswith("/data.json"):
                parts = [p for p in name.split("/")[:-1] if p]
                merge_at(data, parts, json.loads(blob))
            elif name.endswith(".rego"):
                modules[name] = blob.decode("utf-8")
    roots = manifest.get("roots", [""])
    package = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
    for mod_path, src in modules.items():
        m = package.search(src)
        pkg = m.group(1).replace(".", "/") if m else ""
        if not any(under(pkg, r) for r in roots):
            raise ValueError(f"manifest roots {roots} do not permit '{pkg}' in module '{mod_path}'")
    return manifest, data, modules


def under(path: str, root: str) -> bool:
    path, root = path.strip("/"), root.strip("/")
    return root == "" or path == root or path.startswith(root + "/")


def merge_at(doc: dict, parts: list[str], value: Any) -> None:
    node = doc
    for p in parts:
        node = node.setdefault(p, {})
    if isinstance(value, dict):
        node.update(value)


# -- data (storage/inmem semantics) -------------------------------------------------------------------

def path_parts(raw: str) -> list[str]:
    """``storage.ParsePathEscaped`` of a URL path below ``/v1/data``."""
    from urllib.parse import unquote

    return [unquote(p) for p in raw.strip("/").split("/") if p]


def _show(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _index(node: Any, key: str, parts: list[str]) -> Any:
    if isinstance(node, dict) and key in node:
        return node[key]
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    raise not_found(f"{_show(parts)}: document missing")


def read(data: dict, parts: list[str]) -> Any:
    node: Any = data
    for i, key in enumerate(parts):
        node = _index(node, key, parts[:i + 1])
    return node


def write(data: dict, parts: list[str], op: str, value: Any = None) -> None:
    """``storage.Write``: add needs the parent, remove and replace need the target."""
    if not parts:
        if op == "remove":
            raise bad_request("storage_invalid_patch_error: root cannot be removed")
        if not isinstance(value, dict):
            raise bad_request("storage_invalid_patch_error: root must be object")
        data.clear()
        data.update(value)
        return
    parent = read(data, parts[:-1])
    key = parts[-1]
    if isinstance(parent, dict):
        if op != "add" and key not in parent:
            raise not_found(f"{_show(parts)}: document missing")
        if op == "remove":
            del parent[key]
        else:
            parent[key] = value
    elif isinstance(parent, list):
        _write_array(parent, parts, op, value)
    else:
        raise not_found(f"{_show(parts)}: document missing")


def _write_array(parent: list, parts: list[str], op: str, value: Any) -> None:
    key = parts[-1]
    if op == "add" and key == "-":
        parent.append(value)
        return
    if not key.isdigit() or int(key) > len(parent) or (op != "add" and int(key) >= len(parent)):
        raise not_found(f"{_show(parts)}: document missing")
    i = int(key)
    if op == "add":
        parent.insert(i, value)
    elif op == "remove":
        del parent[i]
    else:
        parent[i] = value


def make_dir(data: dict, parts: list[str]) -> None:
    """``storage.MakeDir``: create missing parent objects for a PUT."""
    node = data
    for i, p in enumerate(parts):
        nxt = node.get(p) if isinstance(node, dict) else None
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ApiError(404, "resource_conflict", f"storage_write_conflict_error: {_show(parts[:i + 1])}")
        node = nxt
