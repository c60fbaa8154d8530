"""A loopback stand-in for ``opa run --server`` - TEST SUPPORT, not part of the product.

No ``opa`` binary can be installed on the machines this project is built on,
so the server-engine tests run against this: a standard-library
``ThreadingHTTPServer`` serving the part of OPA's REST API the guard and
``chio-budget push`` use, evaluated by the real OPA (the embedded
``opa_bindings`` engine, OPA v1.20):

    GET    /health                       200 {}
    GET    /v1/policies                  {"result": [{"id", "raw"}, ...]}
    PUT    /v1/policies/{id}             text/plain Rego; 200 {} or 400 {"code", "message", "errors"}
    GET    /v1/policies/{id}             {"result": {"id", "raw"}} or 404
    DELETE /v1/policies/{id}             200 {} or 404
    PUT    /v1/data/{path}               JSON document; 204
    PATCH  /v1/data/{path}               JSON Patch (add / remove / replace); 204
    DELETE /v1/data/{path}               204 or 404
    GET    /v1/data/{path}               {"result": value} or {} when undefined
    POST   /v1/data/{path}               {"input": ...} -> {"result": value} or {} when undefined

Errors have OPA's body shape ``{"code": ..., "message": ...}``. It loads the
bundles ``chio-budget bundle`` writes (``StandIn(bundle=...)``, like
``opa run --server --bundle``), with its own reader so the bundle format is
checked independently of the writer, and - as OPA does - refuses writes
under a root a loaded bundle owns.

Fault switches (``standin.faults.set(...)``) make it misbehave on matching
requests, for the fail-closed tests: ``delay`` seconds before answering,
answer with HTTP ``status``, ``close`` the connection without answering,
answer 200 with a raw ``body``, or ``trickle`` the real answer one byte
every ``trickle`` seconds (after the first ``trickle_after`` bytes, e.g. the
headers, sent at once), which no per-read timeout ever cuts. With ``upstream=URL`` it forwards every
request to a real OPA instead (a fault-injecting front), so the same tests
run unchanged against a real ``opa`` when one exists.

Every response is written in one ``send`` with ``TCP_NODELAY`` set: headers
and body in separate segments would cost ~40 ms a call (Nagle + delayed ACK).

Run by hand: ``python tests/opa_standin.py --addr 127.0.0.1:8181 --bundle build/bundle.tar.gz``.
"""

from __future__ import annotations

import copy
import gzip
import http.client
import io
import json
import re
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from opa_bindings import OpaEngine, OpaError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


@dataclass
class Faults:
    """What to do wrong, and to which requests (``match``: a ``"METHOD /path"`` prefix).

    The default ``match`` hits only decision queries (``POST /v1/data/``),
    so readiness checks and reads keep working while decisions fail.
    """

    delay: float = 0.0
    status: int | None = None
    close: bool = False
    body: bytes | None = None
    trickle: float = 0.0
    trickle_after: int = 0
    match: str = "POST /v1/data/"
    hits: int = 0
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)

    def set(self, *, delay: float = 0.0, status: int | None = None, close: bool = False,
            body: bytes | None = None, trickle: float = 0.0, trickle_after: int = 0,
            match: str = "POST /v1/data/") -> None:
        self.clear()
        self.delay, self.status, self.close, self.body, self.match = delay, status, close, body, match
        self.trickle, self.trickle_after = trickle, trickle_after

    def clear(self) -> None:
        self._wake.set()  # cut short any delay or trickle in progress
        self._wake = threading.Event()
        self.delay, self.status, self.close, self.body, self.match = 0.0, None, False, None, "POST /v1/data/"
        self.trickle, self.trickle_after = 0.0, 0

    @property
    def active(self) -> bool:
        return bool(self.delay or self.status or self.close or self.body is not None or self.trickle)


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
                _set_path(data, parts, json.loads(blob), merge=True)
            elif name.endswith(".rego"):
                modules[name] = blob.decode("utf-8")
    roots = manifest.get("roots", [""])
    for mod_path, src in modules.items():
        m = _PACKAGE.search(src)
        pkg = m.group(1).replace(".", "/") if m else ""
        if not any(_under(pkg, r) for r in roots):
            raise ValueError(f"{mod_path}: package {pkg} outside manifest roots {roots}")
    for top in _leaf_paths(data):
        if not any(_under(top, r) or _under(r, top) for r in roots):
            raise ValueError(f"data path {top} outside manifest roots {roots}")
    return manifest, data, modules


def _under(path: str, root: str) -> bool:
    path, root = path.strip("/"), root.strip("/")
    return root == "" or path == root or path.startswith(root + "/")


def _leaf_paths(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        p = f"{prefix}/{k}" if prefix else k
        out.extend(_leaf_paths(v, p) if isinstance(v, dict) and v else [p])
    return out


def _set_path(doc: dict, parts: list[str], value: Any, *, merge: bool = False) -> None:
    if not parts:
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_parameter", "the root document must be an object")
        if not merge:
            doc.clear()
        doc.update(value)
        return
    node = doc
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ApiError(400, "invalid_parameter", f"path /{'/'.join(parts)}: {p} is not an object")
        node = nxt
    if merge and isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
        node[parts[-1]].update(value)
    else:
        node[parts[-1]] = value


def _patch_path(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/") if p != ""]


class StandIn:
    """The stand-in server. ``start()`` binds (the same port again after ``stop()``)."""

    def __init__(self, *, bundle: str | Path | None = None, upstream: str | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.upstream = urlsplit(upstream) if upstream else None
        self.faults = Faults()
        self.requests = 0
        self.connections = 0  # TCP connections accepted: shows whether clients reuse them
        self.last_headers: dict[str, str] = {}
        self._lock = threading.RLock()
        self._policies: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._roots: list[str] = []
        self.bundle_revision: str | None = None
        self._engine = self._build(self._policies, self._data)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if bundle is not None:
            self.load_bundle(bundle)

    # -- state ---------------------------------------------------------------

    def load_bundle(self, path: str | Path) -> None:
        """Replace everything with the bundle's contents (what ``opa run --bundle`` activates)."""
        manifest, data, modules = read_bundle(path)
        with self._lock:
            ids = {f"{Path(path).name}/{p}": src for p, src in modules.items()}
            self._engine = self._build(ids, data)
            self._policies, self._data = ids, data
            self._roots = list(manifest.get("roots", [""]))
            self.bundle_revision = manifest.get("revision")

    @staticmethod
    def _build(policies: dict[str, str], data: dict[str, Any]) -> OpaEngine:
        engine = OpaEngine()
        engine.print_handler = lambda _m, _l: None
        try:
            for pid, src in sorted(policies.items()):
                engine.add_policy(pid, src)
            engine.add_data(copy.deepcopy(data))
            engine.eval_query("x := 1")  # compiles everything: conflicts surface here, not on a query
        except OpaError as exc:
            engine.close()
            code = "invalid_parameter"
            raise ApiError(400, code, "error(s) occurred while compiling module(s)",
                           [{"code": exc.code, "message": exc.message}]) from None
        return engine

    def _owned(self, path: str) -> None:
        for root in self._roots:
            if _under(path, root) or _under(root, path):
                raise ApiError(400, "invalid_parameter", f"path \"/{path}\" is owned by bundle")

    def put_policy(self, pid: str, src: str) -> None:
        with self._lock:
            m = _PACKAGE.search(src)
            if m:
                self._owned(m.group(1).replace(".", "/"))
            policies = {**self._policies, pid: src}
            self._engine = self._build(policies, self._data)
            self._policies = policies

    def delete_policy(self, pid: str) -> None:
        with self._lock:
            if pid not in self._policies:
                raise ApiError(404, "resource_not_found", f"storage_not_found_error: policy id {pid!r}")
            policies = {k: v for k, v in self._policies.items() if k != pid}
            self._engine = self._build(policies, self._data)
            self._policies = policies

    def write_data(self, parts: list[str], op: str, value: Any = None) -> None:
        with self._lock:
            self._owned("/".join(parts))
            data = copy.deepcopy(self._data)
            if op == "put":
                _set_path(data, parts, value)
            elif op == "delete":
                node: Any = data
                for p in parts[:-1]:
                    node = node.get(p) if isinstance(node, dict) else None
                if not parts or not isinstance(node, dict) or parts[-1] not in node:
                    raise ApiError(404, "resource_not_found", f"storage_not_found_error: /{'/'.join(parts)}: document missing")
                del node[parts[-1]]
            elif op == "patch":
                base = data
                for p in parts:
                    base = base.setdefault(p, {})
                for step in value if isinstance(value, list) else [None]:
                    if not isinstance(step, dict) or step.get("op") not in ("add", "remove", "replace"):
                        raise ApiError(400, "invalid_parameter", "patch: each operation needs op add|remove|replace")
                    target = _patch_path(step.get("path", ""))
                    if step["op"] == "remove":
                        node = base
                        for p in target[:-1]:
                            node = node[p]
                        node.pop(target[-1], None)
                    else:
                        _set_path(base, target, step.get("value"))
            self._engine = self._build(self._policies, data)
            self._data = data

    def evaluate(self, parts: list[str], input: Any = None) -> tuple[bool, Any]:
        """``(defined, value)`` of ``data.<parts>`` with ``input``."""
        engine = self._engine
        try:
            if all(_IDENT.match(p) for p in parts):
                rs = engine.eval_query("x := data" + "".join("." + p for p in parts), input)
            else:
                rs = engine.eval_query("x := data" + "".join(f"[{json.dumps(p)}]" for p in parts), input)
        except OpaError as exc:
            raise ApiError(500, "internal_error", f"{exc.code}: {exc.message}") from None
        return (True, rs[0]["x"]) if rs else (False, None)

    # -- server --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "StandIn":
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self.port), _Handler)
        httpd.standin = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"opa-standin-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (as if OPA died); state is kept."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.faults._wake.set()
        httpd.shutdown()
        httpd.server_close()
        for conn in list(httpd.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: StandIn

    def __init__(self, *args: Any, **kwargs: Any):
        self.conns: set[socket.socket] = set()
        super().__init__(*args, **kwargs)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout fault, stop()) is expected here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.conns.add(self.connection)
        with self.server.standin._lock:
            self.server.standin.connections += 1

    def finish(self) -> None:
        self.server.conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing --------------------------------------------------------------

    def _send(self, status: int, body: bytes | None, content_type: str = "application/json") -> None:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
        head = f"HTTP/1.1 {status} {reason}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        elif status != 204:
            head += "Content-Length: 0\r\n"
        head += "\r\n"
        raw = head.encode("latin-1") + (body or b"")
        if self._trickle is None:
            self.wfile.write(raw)  # one send
            return
        interval, after, wake = self._trickle
        self.wfile.write(raw[:after])
        for i in range(after, len(raw)):
            if wake.wait(interval):  # faults cleared: send the rest at once
                self.wfile.write(raw[i:])
                return
            self.wfile.write(raw[i:i + 1])

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def _handle(self, method: str) -> None:
        standin = self.server.standin
        standin.requests += 1
        standin.last_headers = dict(self.headers.items())
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        faults = standin.faults
        self._trickle: tuple[float, int, threading.Event] | None = None
        if faults.active and f"{method} {url.path}".startswith(faults.match):
            faults.hits += 1
            if faults.trickle:
                self._trickle = (faults.trickle, faults.trickle_after, faults._wake)
            if faults.delay:
                faults._wake.wait(faults.delay)
            if faults.close:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if faults.status:
                return self._json(faults.status, {"code": "internal_error",
                                                  "message": f"injected fault: HTTP {faults.status}"})
            if faults.body is not None:
                return self._send(200, faults.body)
        if standin.upstream is not None:
            return self._forward(method, raw)
        try:
            self._route(method, url.path, url.query, raw)
        except ApiError as exc:
            body = {"code": exc.code, "message": exc.message}
            if exc.errors:
                body["errors"] = exc.errors
            self._json(exc.status, body)

    def _forward(self, method: str, raw: bytes) -> None:
        up = self.server.standin.upstream
        assert up is not None
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            conn.request(method, self.path, body=raw or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self._send(resp.status, body if body or resp.status != 204 else None,
                       resp.getheader("Content-Type", "application/json"))
        except OSError as exc:
            self._json(502, {"code": "internal_error", "message": f"upstream OPA: {exc}"})
        finally:
            conn.close()

    def _route(self, method: str, path: str, query: str, raw: bytes) -> None:
        standin = self.server.standin
        if path == "/health" and method == "GET":
            return self._json(200, {})
        if path.rstrip("/") == "/v1/policies" and method == "GET":
            return self._json(200, {"result": [{"id": k, "raw": v} for k, v in sorted(standin._policies.items())]})
        if path.startswith("/v1/policies/"):
            pid = unquote(path[len("/v1/policies/"):])
            if method == "PUT":
                standin.put_policy(pid, raw.decode("utf-8"))
                return self._json(200, {})
            if method == "GET":
                if pid not in standin._policies:
                    raise ApiError(404, "resource_not_found", f"storage_not_found_error: policy id {pid!r}")
                return self._json(200, {"result": {"id": pid, "raw": standin._policies[pid]}})
            if method == "DELETE":
                standin.delete_policy(pid)
                return self._json(200, {})
        if path == "/v1/data" or path.startswith("/v1/data/"):
            parts = [unquote(p) for p in path[len("/v1/data"):].split("/") if p]
            if method in ("PUT", "PATCH", "POST"):
                try:
                    body = json.loads(raw) if raw else None
                except ValueError as exc:
                    raise ApiError(400, "invalid_parameter", f"body contains malformed JSON: {exc}") from None
            if method == "PUT":
                standin.write_data(parts, "put", body)
                return self._send(204, None)
            if method == "PATCH":
                standin.write_data(parts, "patch", body)
                return self._send(204, None)
            if method == "DELETE":
                standin.write_data(parts, "delete")
                return self._send(204, None)
            if method in ("GET", "POST"):
                if method == "POST" and body is not None and not isinstance(body, dict):
                    raise ApiError(400, "invalid_parameter", "body must be an object with an input")
                defined, value = standin.evaluate(parts, (body or {}).get("input") if method == "POST" else None)
                return self._json(200, {"result": value} if defined else {})
        raise ApiError(404, "resource_not_found", f"no such endpoint: {method} {path}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="OPA REST API stand-in (test support)")
    ap.add_argument("--addr", default="127.0.0.1:8181")
    ap.add_argument("--bundle")
    args = ap.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    s = StandIn(bundle=args.bundle, host=host or "127.0.0.1", port=int(port)).start()
    print(f"OPA stand-in listening on {s.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        s.stop()


if __name__ == "__main__":
    main()
