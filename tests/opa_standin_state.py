"""The OPA stand-in's server logic, handler by handler of ``v1/server/server.go`` (TEST SUPPORT).

``OpaState`` is what ``opa run --server`` keeps (policies, data, the bundles
it activated) and one method per handler; ``tests/opa_standin.py`` routes
HTTP to it. Every change rebuilds the embedded evaluator, so a failed write
leaves the previous state serving, as OPA's aborted transactions do.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from opa_bindings import OpaEngine, OpaError

from opa_standin_store import (COMPILE_MSG, ApiError, bad_request, build, compile_errors, eval_error, make_dir,
                               not_found, parse_errors, path_parts, read, read_bundle, write)

OPA_VERSION = "1.20.2"  # the version of the embedded evaluator
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ref(parts: list[str]) -> str:
    """``stringPathToRef``: a number segment is an array index, anything else a key."""
    out = "data"
    for p in parts:
        if '"' in p:
            raise ApiError(500, "internal_error", f"invalid_parameter: invalid path: invalid ref term '{p}'")
        if p.isdigit():
            out += f"[{int(p)}]"
        elif _IDENT.match(p):
            out += "." + p
        else:
            out += f"[{json.dumps(p)}]"
    return out


def _decode(raw: bytes, what: str, *, required: bool = False) -> Any:
    """A JSON body or parameter; empty is None, or Go's decoder's ``EOF`` where a value is required."""
    if not raw.strip():
        if required:
            raise bad_request("EOF")
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"{what}{exc}") from None


def flag(params: dict[str, list[str]], name: str) -> bool:
    """``getBoolParam(url, name, true)``: present without a value, or any value ``true``."""
    values = params.get(name)
    if values is None:
        return False
    if values == [""]:
        return True
    return any(v.lower() == "true" for v in values)


class OpaState:
    def __init__(self, *, ready: bool = True, decision_logs: bool = False):
        self._lock = threading.RLock()
        self._policies: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._bundles: dict[str, dict] = {}  # name -> manifest
        self._prepared: set[str] = set()
        self._scratch = OpaEngine()
        self._engine = build({}, {})
        # Queries in flight per engine: a swap closes the old engine only when its last query is
        # done, as OPA's MVCC store lets a read transaction finish on the snapshot it began with.
        self._inflight: dict[int, int] = {}
        self._retired: dict[int, OpaEngine] = {}
        self.ready, self.decision_logs = ready, decision_logs

    # -- bundles ---------------------------------------------------------------

    def load_bundle(self, path: str | Path) -> None:
        """Activate a bundle as ``opa run --bundle PATH`` does (name: the path as given)."""
        manifest, data, modules = read_bundle(path)
        name = str(path)
        with self._lock:
            policies = {f"{name}/{p}": src for p, src in modules.items()}
            data.setdefault("system", {}).setdefault("bundles", {})[name] = {"manifest": manifest, "etag": ""}
            self._swap(policies, data)
            self._bundles = {name: manifest}

    @property
    def bundle_revision(self) -> str | None:
        return next(iter(self._bundles.values()), {}).get("revision")

    def _check_path_scope(self, parts: list[str]) -> None:
        """``checkPathScope``: no writes under a root an activated bundle owns."""
        spath = "/".join(parts)
        if not spath and self._bundles:
            raise bad_request("can't write to document root with bundle roots configured")
        for name, manifest in self._bundles.items():
            for root in manifest.get("roots", [""]):
                if root == "":
                    raise bad_request(f'all paths owned by bundle "{name}"')
                a, b = parts, root.strip("/").split("/")
                if all(x == y for x, y in zip(a, b)):
                    raise bad_request(f'path {spath} is owned by bundle "{name}"')

    # -- health ------------------------------------------------------------------

    def health(self, bundles: bool, plugins: bool) -> str | None:
        if bundles and not self.ready:
            return "one or more bundles are not activated"
        if plugins and not self.ready:
            return "one or more plugins are not up"
        return None

    def health_policy(self, sub: str) -> str | None:
        query = _ref(["system", "health", *path_parts(sub)])
        engine = self._acquire()
        try:
            rs = engine.eval_query(f"__h := {query}", {"plugin_state": {}, "plugins_ready": self.ready})
        except OpaError as exc:
            return exc.message
        finally:
            self._release(engine)
        if not rs:
            return f"health check ({query}) was undefined"
        return None if rs[0]["__h"] is True else f"health check ({query}) returned unexpected value"

    # -- policies ----------------------------------------------------------------

    def _ast(self, pid: str, src: str) -> Any:
        try:
            return self._scratch.eval_query("m := rego.parse_module(input.id, input.src)", {"id": pid, "src": src})[0]["m"]
        except OpaError:
            return None

    def list_policies(self) -> list[dict]:
        with self._lock:
            return [{"ast": self._ast(pid, src), "id": pid, "raw": src} for pid, src in sorted(self._policies.items())]

    def get_policy(self, pid: str) -> dict:
        with self._lock:
            if pid not in self._policies:
                raise not_found(f"policy id {json.dumps(pid)}")
            return {"ast": self._ast(pid, self._policies[pid]), "id": pid, "raw": self._policies[pid]}

    def _check_policy_scope(self, src: str) -> None:
        ast = self._ast("", src)
        if ast:
            self._check_path_scope([t["value"] for t in ast["package"]["path"][1:]])

    def put_policy(self, pid: str, raw: bytes) -> None:
        with self._lock:
            if pid in self._policies:
                self._check_policy_scope(self._policies[pid])
                if self._policies[pid].encode() == raw:
                    return
            src = raw.decode("utf-8", errors="replace")
            errors = parse_errors(self._scratch, pid, src)
            if errors:
                raise ApiError(400, "invalid_parameter", COMPILE_MSG, errors)
            self._check_policy_scope(src)
            self._swap({**self._policies, pid: src}, self._data)

    def delete_policy(self, pid: str) -> None:
        with self._lock:
            if pid not in self._policies:
                raise not_found(f"policy id {json.dumps(pid)}")
            self._check_policy_scope(self._policies[pid])
            self._swap({k: v for k, v in self._policies.items() if k != pid}, self._data, code="invalid_operation")

    def _swap(self, policies: dict[str, str], data: dict, *, code: str = "invalid_parameter",
              data_write: bool = False) -> None:
        try:
            engine = build(policies, data)
        except OpaError as exc:
            if data_write:  # ast.CheckPathConflicts on a data write: the error text, no errors[]
                raise bad_request(exc.message.removeprefix("bundle activation failed: ")) from None
            raise ApiError(400, code, COMPILE_MSG, compile_errors(exc, policies, data)) from None
        old, self._engine = self._engine, engine
        self._policies, self._data = policies, data
        self._prepared.clear()
        if self._inflight.get(id(old)):
            self._retired[id(old)] = old
        else:
            old.close()

    def _acquire(self) -> OpaEngine:
        """The engine in force, counted in until ``_release`` (call under ``_lock`` or alone)."""
        with self._lock:
            engine = self._engine
            self._inflight[id(engine)] = self._inflight.get(id(engine), 0) + 1
            return engine

    def _release(self, engine: OpaEngine) -> None:
        with self._lock:
            self._inflight[id(engine)] -= 1
            if not self._inflight[id(engine)]:
                del self._inflight[id(engine)]
                retired = self._retired.pop(id(engine), None)
                if retired is not None:
                    retired.close()

    # -- data --------------------------------------------------------------------

    def put_data(self, sub: str, raw: bytes, *, if_none_match: bool = False) -> int:
        value = _decode(raw, "", required=True)
        parts = path_parts(sub)
        with self._lock:
            self._check_path_scope(parts)
            data = copy.deepcopy(self._data)
            try:
                read(data, parts)
                if if_none_match:
                    return 304
            except ApiError:
                make_dir(data, parts[:-1])
            write(data, parts, "add", value)
            self._swap(self._policies, data, data_write=True)
        return 204

    def patch_data(self, sub: str, raw: bytes) -> None:
        ops = _decode(raw, "", required=True)
        if not isinstance(ops, list):
            raise bad_request("json: cannot unmarshal object into Go value of type []types.PatchV1")
        root = path_parts(sub)
        with self._lock:
            data = copy.deepcopy(self._data)
            for op in ops:
                kind = op.get("op") if isinstance(op, dict) else None
                if kind not in ("add", "remove", "replace"):
                    raise bad_request(f"bad patch operation: {kind if kind is not None else ''}")
                parts = root + [p.replace("~1", "/").replace("~0", "~")
                                for p in str(op.get("path", "")).strip("/").split("/") if p]
                self._check_path_scope(parts)
                write(data, parts, kind, op.get("value"))
            self._swap(self._policies, data, data_write=True)

    def delete_data(self, sub: str) -> None:
        parts = path_parts(sub)
        with self._lock:
            self._check_path_scope(parts)
            data = copy.deepcopy(self._data)
            read(data, parts)
            write(data, parts, "remove")
            self._swap(self._policies, data, data_write=True)

    # -- queries -----------------------------------------------------------------

    def query(self, sub: str, method: str, params: dict[str, list[str]], raw: bytes) -> dict:
        """``v1DataGet`` / ``v1DataPost``: the response object."""
        start = time.perf_counter_ns()
        missing_input = False
        if method == "POST":
            request = _decode(raw, "body contains malformed input document: ")
            if request is not None and not isinstance(request, dict):
                raise bad_request("body contains malformed input document: json: cannot unmarshal "
                                  f"{type(request).__name__} into Go value of type types.DataRequestV1")
            input = (request or {}).get("input")
            missing_input = input is None
        else:
            given = params.get("input")
            input = _decode(given[-1].encode(), "parameter contains malformed input document: ") if given else None
        parse_ns = time.perf_counter_ns() - start
        query = _ref(path_parts(sub))
        with self._lock:
            engine, policies, data = self._acquire(), self._policies, self._data
            cached = f"{method}:{query}" in self._prepared
            self._prepared.add(f"{method}:{query}")
        eval_start = time.perf_counter_ns()
        try:
            rs = engine.eval_query(f"__x := {query}", input)
        except OpaError as exc:
            raise eval_error(exc, policies, data, f"__x := {query}", input) from None
        finally:
            self._release(engine)
        eval_ns = time.perf_counter_ns() - eval_start
        return self._response(rs, params, cached, missing_input,
                              {"parse": parse_ns, "eval": eval_ns, "start": start})

    def _response(self, rs: list, params: dict, cached: bool, missing_input: bool, ns: dict) -> dict:
        body: dict[str, Any] = {}
        if flag(params, "provenance"):
            body["provenance"] = self.provenance()
        if flag(params, "metrics") or flag(params, "instrument"):
            body["metrics"] = self._metrics(cached, ns)
        if rs:
            body["result"] = rs[0]["__x"]
        if missing_input:
            body["warning"] = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
        if self.decision_logs:
            body["decision_id"] = str(uuid.uuid4())
        return body

    @staticmethod
    def _metrics(cached: bool, ns: dict) -> dict[str, int]:
        """``m.All()`` of a data query: integer nanoseconds and the prepared-query cache counter."""
        out = {"counter_server_query_cache_hit": int(cached), "timer_rego_input_parse_ns": ns["parse"],
               "timer_rego_query_eval_ns": ns["eval"]}
        if not cached:
            out.update({"timer_rego_query_compile_ns": 0, "timer_rego_query_parse_ns": 0})
        out["timer_server_handler_ns"] = time.perf_counter_ns() - ns["start"]
        return dict(sorted(out.items()))

    def provenance(self) -> dict:
        """``getProvenance``: OPA's version and each activated bundle's revision."""
        p: dict[str, Any] = {"version": OPA_VERSION, "build_commit": "", "build_timestamp": "", "build_hostname": ""}
        bundles = {name: {"revision": m.get("revision", "")} for name, m in self._bundles.items()}
        if bundles:
            p = {"bundles": bundles, **p}
        return p
