"""A loopback stand-in for ``opa run --server`` - TEST SUPPORT, not part of the product.

No ``opa`` binary can be installed on the machines this project is built on,
so the server-engine tests run against this: a standard-library
``ThreadingHTTPServer`` serving OPA's REST Data, Policy and Health API,
evaluated by the real OPA (the embedded ``opa_bindings`` engine, OPA v1.20).
It answers as ``opa run --server`` does (``v1/server/server.go``; the
answers themselves are in ``opa_standin_store``), and
``tests/test_opa_contract.py`` pins each behaviour against a real ``opa``
when one exists:

    GET    /health[?bundles][?plugins]  200 {} (500 {"error": ...} while not ready)
    GET    /v1/policies                 {"result": [{"ast", "id", "raw"}]}   (/v1/policies/ is a policy id "")
    GET|PUT|DELETE /v1/policies/{id}    404 / 400 with errors[] as OPA
    GET|POST /v1/data[/{path}]          {"result"} | {} undefined, + decision_id (decision logs on),
                                        warning (POST without input), metrics (?metrics), provenance
    PUT|PATCH|DELETE /v1/data[/{path}]  204; 404 on a missing document; 400 under a bundle's roots
    other methods on those paths        405; any other path 404 "404 page not found"

Not served: ``/v1/query``, ``/v1/compile``, ``/v1/config``, ``/v1/status``,
``explain``, ``instrument``, ``strict-builtin-errors``, gzip bodies, YAML
bodies. ``details`` of non-parse compile errors (OPA's type-error
have/want) are not reproduced; their text is dropped from ``message`` as
OPA's JSON has it.

Fault switches (``standin.faults.set(...)``) make it misbehave on matching
requests, for the fail-closed tests: ``delay`` seconds before answering,
answer with HTTP ``status``, ``close`` the connection without answering,
answer 200 with a raw ``body``, or ``trickle`` the real answer one byte
every ``trickle`` seconds (after the first ``trickle_after`` bytes). With
``upstream=URL`` it forwards every request to a real OPA instead (a
fault-injecting front), so the same tests run unchanged against a real ``opa``.

Every response is written in one ``send`` with ``TCP_NODELAY`` set: headers
and body in separate segments would cost ~40 ms a call (Nagle + delayed ACK).

Run by hand: ``python tests/opa_standin.py --addr 127.0.0.1:8181 --bundle build/bundle.tar.gz``.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opa_standin_state import OpaState, flag
from opa_standin_store import ApiError, read_bundle

__all__ = ["ApiError", "Faults", "StandIn", "read_bundle"]


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


class StandIn(OpaState):
    """The stand-in server. ``start()`` binds (the same port again after ``stop()``).

    ``ready=False`` is OPA before its bundle plugin first activated a bundle
    (``/health?bundles`` and ``?plugins`` answer 500); ``decision_logs=True``
    is OPA with decision logging on (every data answer has a ``decision_id``).
    """

    def __init__(self, *, bundle: str | Path | None = None, upstream: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, ready: bool = True, decision_logs: bool = False):
        super().__init__(ready=ready, decision_logs=decision_logs)
        self.host, self.port = host, port
        self.upstream = urlsplit(upstream) if upstream else None
        self.faults = Faults()
        self.requests = 0
        self.connections = 0  # TCP connections accepted: shows whether clients reuse them
        self.last_headers: dict[str, str] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if bundle is not None:
            self.load_bundle(bundle)

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


_METHODS = ("GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS")


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

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_") and name[3:] in _METHODS:
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    # -- plumbing --------------------------------------------------------------

    def _send(self, status: int, body: bytes | None, content_type: str = "application/json") -> None:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
        head = f"HTTP/1.1 {status} {reason}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        elif status not in (204, 304):
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

    def _json(self, status: int, value: Any, pretty: bool = False) -> None:
        """``writer.JSONOK``: an encoder's line (indented with ``?pretty``)."""
        text = json.dumps(value, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
        self._send(status, (text + "\n").encode("utf-8"))

    def _error(self, exc: ApiError) -> None:
        """``writer.Error``: ``ErrorV1`` indented two spaces, then a newline."""
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.errors:
            body["errors"] = exc.errors
        self._send(exc.status, (json.dumps(body, indent=2) + "\n").encode("utf-8"))

    def _handle(self, method: str) -> None:
        standin = self.server.standin
        standin.requests += 1
        standin.last_headers = dict(self.headers.items())
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self._trickle: tuple[float, int, threading.Event] | None = None
        if self._fault(method, url.path):
            return
        if standin.upstream is not None:
            return self._forward(method, raw)
        try:
            self._route(method, url.path, url.query, raw)
        except ApiError as exc:
            self._error(exc)

    def _fault(self, method: str, path: str) -> bool:
        faults = self.server.standin.faults
        if not (faults.active and f"{method} {path}".startswith(faults.match)):
            return False
        faults.hits += 1
        if faults.trickle:
            self._trickle = (faults.trickle, faults.trickle_after, faults._wake)
        if faults.delay:
            faults._wake.wait(faults.delay)
        if faults.close:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if faults.status:
            self._json(faults.status, {"code": "internal_error", "message": f"injected fault: HTTP {faults.status}"})
            return True
        if faults.body is not None:
            self._send(200, faults.body)
            return True
        return False

    def _forward(self, method: str, raw: bytes) -> None:
        up = self.server.standin.upstream
        assert up is not None
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization", "if-none-match")}
            conn.request(method, self.path, body=raw or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self._send(resp.status, body if body or resp.status not in (204, 304, 405) else None,
                       resp.getheader("Content-Type", "application/json"))
        except OSError as exc:
            self._json(502, {"code": "internal_error", "message": f"upstream OPA: {exc}"})
        finally:
            conn.close()

    def _route(self, method: str, path: str, query: str, raw: bytes) -> None:
        """Go's ServeMux patterns of ``initRouters``: exact routes, then 405 catch-alls, then 404."""
        standin = self.server.standin
        params = parse_qs(query, keep_blank_values=True)
        pretty = flag(params, "pretty")
        if path == "/health" and method == "GET":
            return self._health(standin.health(flag(params, "bundles") or flag(params, "bundle"),
                                               flag(params, "plugins")))
        if path.startswith("/health/") and method == "GET":
            return self._health(standin.health_policy(path[len("/health/"):]))
        if path == "/v1/data" or path.startswith("/v1/data/"):
            return self._data(method, path[len("/v1/data"):], params, raw, pretty)
        if path == "/v1/policies" and method == "GET":
            return self._json(200, {"result": standin.list_policies()}, pretty)
        if path.startswith("/v1/policies/") and method in ("GET", "PUT", "DELETE"):
            pid = path[len("/v1/policies/"):]
            if method == "GET":
                return self._json(200, {"result": standin.get_policy(pid)}, pretty)
            if method == "PUT":
                standin.put_policy(pid, raw)
            else:
                standin.delete_policy(pid)
            return self._json(200, {}, pretty)
        if path in ("/v1/policies", "/v1/query") or path.startswith(("/v1/policies/", "/v1/query/")):
            return self._send(405, None)
        self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _health(self, error: str | None) -> None:
        if error is None:
            return self._json(200, {})
        self._send(500, (json.dumps({"error": error}, separators=(",", ":")) + "\n").encode())

    def _data(self, method: str, sub: str, params: dict, raw: bytes, pretty: bool) -> None:
        standin = self.server.standin
        if method in ("GET", "POST"):
            body = standin.query(sub, method, params, raw)
            return self._json(200, body, pretty)
        if method == "PUT":
            status = standin.put_data(sub, raw, if_none_match=self.headers.get("If-None-Match") == "*")
            return self._send(status, None)
        if method == "PATCH":
            standin.patch_data(sub, raw)
            return self._send(204, None)
        if method == "DELETE":
            standin.delete_data(sub)
            return self._send(204, None)
        self._send(405, None)


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
