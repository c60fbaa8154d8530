"""OPA over HTTP: the one module that talks to an OPA server.

Everything the guard does with a running ``opa run --server`` goes through
here: building the client (``make_client``: opa-python-client 3's
``OpaClient``, whose ``requests`` session and pool are reused by every
call), the decision query under a total deadline (``query``, ``read``),
``push``, policy listing, the ``/health`` and revision waits, and naming
what went wrong (``describe_error``). No other module imports
``opa_client`` or touches its session; the urllib3 side of the deadline
is ``deadline``.

Credentials: a bearer ``token`` is sent as ``Authorization: Bearer``;
``user:pass@`` in the URL as HTTP Basic. Every message this module (and the
engines and CLI above it) prints shows such a URL as ``scheme://***@host``
(``redact``).

The deadline (issue 9 item 4): urllib3's timeouts bound each socket
operation, so a server that trickles its answer one byte at a time would
hold a call for as long as it likes. ``query`` and ``read`` run as a
``deadline.Call``: every operation gets only the time left, a watchdog
thread shuts the call's socket down at the deadline, and a call that ends
past its deadline, however it ended, raises ``DeadlineExceeded``. The
client's adapter carries the pools that make this work; requests without a
``Call`` (push, health, opa_client's own methods) behave as plain
``requests`` ones with the client's per-request ``timeout``.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import time
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import requests
from opa_client import OpaClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..compiler import DATA_ROOT, Compiled, revision_of
from ..errors import EngineError
from .deadline import Call, CallTimeout, DeadlineExceeded, deadline_pools

__all__ = ["PUSH_PREFIX", "DeadlineExceeded", "answered", "cleartext_credentials", "describe_error", "located_errors",
           "make_client", "opa_eval_ns", "policy_ids", "push", "query", "read", "redact", "wait_for_revisions",
           "wait_healthy"]

ROOT = "/".join(DATA_ROOT)  # "chio/budget"
POLICIES = f"{ROOT}/policies"
#: Policy ids ``push`` gives the modules it uploads (and may later delete).
PUSH_PREFIX = "chio-budget/"

_USERINFO = re.compile(r"(?<=://)[^/\s@'\"]*@")


def redact(text: str) -> str:
    """``text`` with the ``user:pass@`` of every URL in it replaced by ``***@``."""
    return _USERINFO.sub("***@", text)


# -- the client ----------------------------------------------------------------------------------------------

class _DeadlineAdapter(HTTPAdapter):
    """``requests``' adapter whose pools tell a ``Call`` which connection it holds (see ``deadline``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = deadline_pools()

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes: per-read bounds only
            manager.pool_classes_by_scheme = deadline_pools()
        return manager


def make_client(opa_url: str, *, token: str | None = None, cert: str | tuple[str, str] | None = None,
                ca_bundle: str | None = None, timeout: float = 1.5, retries: int = 2,
                pool_size: int = 16) -> OpaClient:
    """An ``OpaClient`` for ``opa_url`` (``http[s]://[user:pass@]host[:port]``); ``EngineError`` for a bad one.

    ``cert`` is a client certificate (a PEM path holding cert and key, or a
    ``(cert, key)`` pair) for mutual TLS; ``ca_bundle`` a CA file to verify
    the server with (https only; default: the system's CAs). The client's
    session gets one adapter with a pool of ``pool_size`` connections (the
    client's default of 10 would open and drop connections beyond that under
    concurrency). urllib3 retries a failed connection set-up ``retries``
    times, at once (no back-off sleep, so the retries stay inside a
    decision's deadline); a POST that reached the server is never re-sent.
    ``timeout`` (seconds, finite, > 0) is a whole decision's deadline and
    each other request's per-operation limit.
    """
    shown = redact(opa_url)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise EngineError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    url = urlsplit(opa_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EngineError(f"--opa-url {shown!r}: expected http://host:port or https://host:port")
    if url.path not in ("", "/") or url.query:
        raise EngineError(f"--opa-url {shown!r}: OPA's API is served at the root; remove the path")
    https = url.scheme == "https"
    if ca_bundle and not https:
        raise EngineError(f"--opa-url {shown!r}: a CA bundle needs an https URL")
    if token and url.username is not None:
        raise EngineError(f"--opa-url {shown!r}: give either a token or user:pass@ in the URL, not both")
    host = url.hostname if ":" not in url.hostname else f"[{url.hostname}]"
    try:
        port = url.port or (443 if https else 80)
    except ValueError:
        raise EngineError(f"--opa-url {shown!r}: bad port") from None
    client = OpaClient(host=host, port=port, ssl=(ca_bundle or True) if https else False, cert=cert,
                       token=token, timeout=timeout, retries=retries)
    session = client._session
    if url.username is not None:
        session.auth = (unquote(url.username), unquote(url.password or ""))
    retry = Retry(total=retries, backoff_factor=0, status_forcelist=(500, 502, 504), raise_on_status=False)
    adapter = _DeadlineAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return client


def cleartext_credentials(opa_url: str, token: str | None) -> bool:
    """Would credentials (a token, or ``user:pass@``) travel unencrypted to ``opa_url``?"""
    url = urlsplit(opa_url)
    return url.scheme == "http" and bool(token or url.username is not None)


# -- errors ----------------------------------------------------------------------------------------------------

def describe_error(exc: BaseException) -> str:
    """A short, specific cause for a failed HTTP exchange with OPA (for logs and denies), URLs redacted."""
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeadlineExceeded):
        return str(exc)
    if isinstance(exc, requests.Timeout):
        return "timeout" + (" connecting" if isinstance(exc, requests.ConnectTimeout) else " waiting for OPA")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        try:
            body = r.json()
            detail = f"{body.get('code', '')}: {body.get('message', '')}".strip(": ")
        except Exception:
            detail = r.text[:200].strip()
        return f"HTTP {r.status_code}" + (f" ({detail})" if detail else "")
    if isinstance(exc, requests.ConnectionError):
        return _connection_cause(exc)
    if isinstance(exc, ValueError) and "json" in type(exc).__name__.lower():
        return "malformed response: not JSON"
    located = located_errors(getattr(exc, "errors", None))
    if located:
        return "\n".join(located)
    expression, message = getattr(exc, "expression", None), getattr(exc, "message", None)
    if expression is not None or message is not None:
        return f"{type(exc).__name__}: {expression}: {message}"
    return f"{type(exc).__name__}: {exc}"


def located_errors(errors: Any, file_of: Any = None) -> list[str]:
    """OPA's ``errors[]`` (a refused policy) as ``file:row:col: code: message`` lines.

    ``file_of`` maps the file OPA names (the policy id) to the one to show.
    An entry without a location is shown as ``code: message``.
    """
    out = []
    for err in errors if isinstance(errors, list) else []:
        if not isinstance(err, dict):
            continue
        text = f"{err.get('code', '')}: {str(err.get('message', '')).splitlines()[0] if err.get('message') else ''}"
        loc = err.get("location")
        if isinstance(loc, dict) and loc.get("file") is not None:
            file = file_of(loc["file"]) if file_of else loc["file"]
            text = f"{file}:{loc.get('row', 0)}:{loc.get('col', 0)}: {text}"
        out.append(text)
    return out


def answered(exc: BaseException) -> bool:
    """Did OPA answer (an HTTP error status), as opposed to a connection failure or a timeout?"""
    return isinstance(exc, requests.HTTPError) and exc.response is not None and not isinstance(exc, DeadlineExceeded)


def _connection_cause(exc: BaseException) -> str:
    """Find the socket-level reason inside requests' and urllib3's wrappers."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            return "connection closed by OPA before it answered"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host: {e}"
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return f"connection failed: {exc}"


# -- deciding: one call, one deadline --------------------------------------------------------------------------

def query(client: OpaClient, path: str, input: Any, call: Call, *, metrics: bool = False) -> Any:
    """``POST /v1/data/<path>`` with ``{"input": input}``; the JSON body (``{}`` when undefined).

    With ``metrics`` the query asks for OPA's own metrics (``?metrics``): the
    body then has ``metrics.timer_rego_query_eval_ns``, OPA's evaluation time.
    Bounded by ``call``'s deadline as a whole (``DeadlineExceeded``); any
    other failure raises what ``requests`` raised (``describe_error`` names it).
    """
    params = {"metrics": "true"} if metrics else None
    return _exchange(client, "POST", path, call, json={"input": input}, params=params)


def opa_eval_ns(body: Any) -> int | None:
    """OPA's ``timer_rego_query_eval_ns`` from a ``?metrics`` answer (None when absent or not an int)."""
    metrics = body.get("metrics") if isinstance(body, dict) else None
    value = metrics.get("timer_rego_query_eval_ns") if isinstance(metrics, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read(client: OpaClient, path: str, call: Call) -> Any:
    """``GET /v1/data/<path>`` within ``call``'s deadline; the JSON body (``{}`` when undefined)."""
    return _exchange(client, "GET", path, call)


def _exchange(client: OpaClient, method: str, path: str, call: Call, **kwargs: Any) -> Any:
    try:
        r = client._session.request(method, f"{client.root_url}/data/{path}", timeout=CallTimeout(call), **kwargs)
        r.raise_for_status()
        body = r.json()
    except Exception as exc:
        if call.expired:
            raise DeadlineExceeded(call.seconds) from exc
        raise
    if call.expired:  # an answer after the deadline is not used, whichever way it came
        raise DeadlineExceeded(call.seconds)
    return body


# -- push and listing ----------------------------------------------------------------------------------------

def policy_ids(client: OpaClient) -> list[str]:
    """``GET /v1/policies`` (OPA's documented path) on the client's session.

    The client's own ``get_policies_list`` asks for ``/v1/policies/`` with a
    trailing slash, which is not the documented endpoint; this one request
    bypasses it and keeps everything else (session, headers, TLS, timeout).
    """
    r = client._session.get(f"{client.root_url}/policies", timeout=client.timeout)
    r.raise_for_status()
    return [p.get("id") for p in r.json().get("result", []) if isinstance(p, dict) and p.get("id")]


def push(client: OpaClient, compiled: Compiled, modules: Mapping[str, str], *,
         source_dir: str | None = None) -> str:
    """PUT ``modules`` and ``compiled``'s data to the server; return the revision read back.

    A module OPA refuses is reported with OPA's locations, each error as
    ``<source_dir>/<module path>:row:col: code: message`` (``source_dir``:
    where the modules were read from; without it, the module path).

    Idempotent: pushing the same thing twice leaves the server as after one
    push. Modules first, then data (a push is not atomic, which is why the
    read-back is the point where it counts as done). Modules an earlier push
    made (ids under ``PUSH_PREFIX``) that no longer exist are deleted.
    Raises ``EngineError`` naming the step that failed, including when the
    revision read back differs (someone else wrote in between, or a bundle
    owns ``chio/budget`` on that server).
    """
    step = "list policies"
    try:
        existing = [p for p in policy_ids(client) if p.startswith(PUSH_PREFIX)]
        wanted = {PUSH_PREFIX + path: src for path, src in modules.items()}
        for pid, src in sorted(wanted.items()):
            step = f"PUT /v1/policies/{pid}"
            client.update_policy_from_string(src, pid, rego_compat=False)
        for pid in sorted(set(existing) - set(wanted)):
            step = f"DELETE /v1/policies/{pid}"
            client.delete_policy(pid)
        step = f"PUT /v1/data/{ROOT}"
        client.update_or_create_data(compiled.budget, ROOT)
        step = f"GET /v1/data/{POLICIES}"
        body = client.get_data(POLICIES)
    except Exception as exc:
        located = located_errors(getattr(exc, "errors", None), lambda f: _source_file(f, source_dir))
        cause = ("\n" + "\n".join(redact(line) for line in located)) if located else " " + describe_error(exc)
        raise EngineError(f"push failed at {step}:{cause}") from None
    got = revision_of({"policies": body.get("result")})
    if got != compiled.revision:
        raise EngineError(f"push: the server's data revision is {got}, expected {compiled.revision}")
    return got


def _source_file(policy_id: str, source_dir: str | None) -> str:
    """The local file of a module ``push`` uploaded as ``PUSH_PREFIX + path``."""
    if not policy_id.startswith(PUSH_PREFIX):
        return policy_id
    path = policy_id[len(PUSH_PREFIX):]
    return f"{source_dir.rstrip('/')}/{path}" if source_dir else path


# -- start-up waits ------------------------------------------------------------------------------------------

def wait_healthy(client: OpaClient, url: str, ready_timeout: float) -> None:
    """Until ``GET /health`` answers 200, for at most ``ready_timeout`` s; else ``EngineError``."""
    try:
        client.wait_for_ready(timeout=ready_timeout, interval=0.05)
    except Exception:
        raise EngineError(f"OPA at {redact(url)} did not become healthy within {ready_timeout:g}s "
                          "(GET /health); is `opa run --server` running there?") from None


def revision_problem(client: OpaClient, revisions: Mapping[str, str | None]) -> str | None:
    """Why the server's ``data.chio.budget.policies`` differ from ``revisions``, or None when they match."""
    try:
        body = client.get_data(POLICIES)
    except Exception as exc:
        return f"cannot read data.{ROOT.replace('/', '.')}.policies: {describe_error(exc)}"
    served = body.get("result")
    if not isinstance(served, dict):
        return f"data.{ROOT.replace('/', '.')}.policies is not an object"
    for pid, want in sorted(revisions.items()):
        got = served[pid].get("revision") if isinstance(served.get(pid), dict) else None
        if got is None:
            return f"the server has no policy {pid!r}"
        if got != want:
            return f"policy {pid!r} is at revision {got} on the server, {want} here"
    return None


def wait_for_revisions(client: OpaClient, url: str, revisions: Mapping[str, str | None],
                       ready_timeout: float) -> None:
    """Until the server serves exactly ``revisions`` (``{policy_id: revision}``), for at most ``ready_timeout`` s.

    Also covers an OPA still downloading its bundle. ``EngineError`` naming
    the difference when it never happens.
    """
    deadline = time.monotonic() + ready_timeout
    while True:
        problem = revision_problem(client, revisions)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise EngineError(
                f"OPA at {redact(url)} does not serve this guard's policies: {problem} "
                "(load the bundle from `chio-budget bundle` or run `chio-budget push`)")
        time.sleep(0.1)
