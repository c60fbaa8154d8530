"""OPA as a server (``opa run --server``), queried with opa-python-client.

The production shape OPA recommends: a sidecar or host daemon holding the
Rego and the compiled data (loaded from ``chio-budget bundle`` or written by
``chio-budget push``); the guard POSTs ``{"input": ...}`` to
``/v1/data/chio/budget/decision``.

Promises:

* One ``OpaClient`` (one ``requests`` session and its connection pool) per
  engine, reused by every decision; ``decide`` is safe to call from many
  threads at once (the pool is sized by ``pool_size``).
* ``decide`` never raises. A refused or dropped connection, a timeout, an
  HTTP 4xx/5xx, ``{}`` (the decision is undefined), a result that is not the
  decision shape, a policy the server does not have, or a decision computed
  from other data than this guard compiled: each is a deny whose
  ``Decision.error`` starts ``engine error:`` and names the cause.
* Construction waits until ``GET /health`` answers 200 and (unless
  ``verify_revision=False``) until the server's
  ``data.chio.budget.policies[id].revision`` equals the locally compiled one
  for every policy, for at most ``ready_timeout`` seconds; otherwise it
  raises ``EngineError`` saying which of the two never happened. With
  ``push=True`` it first pushes the data and Rego itself.
* Retries (``retries``, urllib3's) apply only to setting up a connection:
  a decision request that reached OPA is never sent twice.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import PolicyNotFoundError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..compiler import DATA_ROOT, DECISION_PATH
from ..decision import Decision
from ..errors import EngineError

_PACKAGE = ".".join(DATA_ROOT)  # "chio.budget"
_RULE = DECISION_PATH.rsplit("/", 1)[1]  # "decision"
_POLICIES = "/".join(DATA_ROOT) + "/policies"


def describe_error(exc: BaseException) -> str:
    """A short, specific cause for a failed HTTP exchange with OPA (for logs and denies)."""
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
    if isinstance(exc, ValueError) and "json" in type(exc).__name__.lower():
        return "malformed response: not JSON"
    expression, message = getattr(exc, "expression", None), getattr(exc, "message", None)
    if expression is not None or message is not None:
        return f"{type(exc).__name__}: {expression}: {message}"
    return f"{type(exc).__name__}: {exc}"


def make_client(opa_url: str, *, token: str | None = None, cert: str | tuple[str, str] | None = None,
                ca_bundle: str | None = None, timeout: float = 1.5, retries: int = 2,
                pool_size: int = 16) -> OpaClient:
    """An ``OpaClient`` for ``opa_url`` (``http[s]://host[:port]``).

    ``cert`` is a client certificate (a PEM path holding cert and key, or a
    ``(cert, key)`` pair) for mutual TLS; ``ca_bundle`` a CA file to verify
    the server with (https only; default: the system's CAs). One wrap of the
    client: its session's adapter is re-mounted with a pool of ``pool_size``
    connections (the client's default of 10 would open and drop connections
    beyond that under concurrency), keeping the client's retry settings.
    """
    url = urlsplit(opa_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EngineError(f"--opa-url {opa_url!r}: expected http://host:port or https://host:port")
    if url.path not in ("", "/") or url.query:
        raise EngineError(f"--opa-url {opa_url!r}: OPA's API is served at the root; remove the path")
    https = url.scheme == "https"
    if ca_bundle and not https:
        raise EngineError(f"--opa-url {opa_url!r}: a CA bundle needs an https URL")
    host = url.hostname if ":" not in url.hostname else f"[{url.hostname}]"
    try:
        port = url.port or (443 if https else 80)
    except ValueError:
        raise EngineError(f"--opa-url {opa_url!r}: bad port") from None
    client = OpaClient(host=host, port=port, ssl=(ca_bundle or True) if https else False, cert=cert,
                       token=token, timeout=timeout, retries=retries)
    retry = Retry(total=retries, backoff_factor=0.3, status_forcelist=(500, 502, 504), raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)
    return client


class ServerEngine:
    name = "server"

    def __init__(self, client: OpaClient, data: Mapping[str, Any], *, url: str = "",
                 ready_timeout: float = 10.0, verify_revision: bool = True):
        """``data`` is the whole data document this guard compiled (``compiler.data_document``).

        Waits for the server (see the module docstring); ``EngineError`` if
        it never becomes ready. The engine owns ``client`` and closes it.
        """
        self._client = client
        self.url = url or client.root_url
        self.timeout = client.timeout
        self.verify_revision = verify_revision
        policies = data.get(DATA_ROOT[0], {}).get(DATA_ROOT[1], {}).get("policies", {})
        self.revisions: dict[str, str] = {pid: p.get("revision") for pid, p in policies.items()}
        try:
            self._wait_until_ready(ready_timeout)
        except BaseException:
            client.close_connection()
            raise

    @classmethod
    def from_options(cls, data: Mapping[str, Any], rego_dir: str | Path | None = None, opa_url: str | None = None,
                     *, token: str | None = None, cert: str | tuple[str, str] | None = None,
                     ca_bundle: str | None = None, timeout: float = 1.5, retries: int = 2, pool_size: int = 16,
                     ready_timeout: float | None = None, verify_revision: bool = True, push: bool = False,
                     **unknown: Any) -> "ServerEngine":
        """What ``make_engine("server", ...)`` calls. ``opa_url`` defaults to env ``CHIO_OPA_URL``,
        ``ready_timeout`` to env ``CHIO_OPA_READY_TIMEOUT``, else 10 seconds.

        ``push=True`` uploads ``data`` and the Rego of ``rego_dir`` before
        waiting (handy for a bare ``opa run --server``); otherwise
        ``rego_dir`` is unused: the server's Rego is whatever it loaded.
        """
        if unknown:
            raise EngineError(f"server engine: unknown option(s) {', '.join(sorted(unknown))}")
        opa_url = opa_url or os.environ.get("CHIO_OPA_URL")
        if ready_timeout is None:
            try:
                ready_timeout = float(os.environ.get("CHIO_OPA_READY_TIMEOUT") or 10.0)
            except ValueError:
                raise EngineError("CHIO_OPA_READY_TIMEOUT: expected seconds, e.g. 10") from None
        if not opa_url:
            raise EngineError("server engine: no OPA URL (pass opa_url=..., --opa-url or set CHIO_OPA_URL)")
        client = make_client(opa_url, token=token, cert=cert, ca_bundle=ca_bundle, timeout=timeout,
                             retries=retries, pool_size=pool_size)
        if push:
            from ..bundle import BundleContents, ROOT, push as push_to
            from ..compiler import revision_of
            from .base import rego_modules

            budget = dict(data.get(DATA_ROOT[0], {}).get(DATA_ROOT[1], {}))
            try:
                _wait_healthy(client, opa_url, ready_timeout)
                push_to(client, BundleContents(revision_of(budget), [ROOT], budget, rego_modules(rego_dir)))
            except BaseException:
                client.close_connection()
                raise
        return cls(client, data, url=opa_url, ready_timeout=ready_timeout, verify_revision=verify_revision)

    # -- readiness -----------------------------------------------------------

    def _revision_problem(self) -> str | None:
        """Why the server's data is not the data this guard compiled, or None when it is."""
        try:
            body = self._client.get_data(_POLICIES)
        except Exception as exc:
            return f"cannot read data.{_PACKAGE}.policies: {describe_error(exc)}"
        served = body.get("result")
        if not isinstance(served, dict):
            return f"data.{_PACKAGE}.policies is not an object"
        for pid, want in sorted(self.revisions.items()):
            got = served.get(pid, {}).get("revision") if isinstance(served.get(pid), dict) else None
            if got is None:
                return f"the server has no policy {pid!r}"
            if got != want:
                return f"policy {pid!r} is at revision {got} on the server, {want} here"
        return None

    def _wait_until_ready(self, ready_timeout: float) -> None:
        deadline = time.monotonic() + ready_timeout
        _wait_healthy(self._client, self.url, ready_timeout)
        if not self.verify_revision:
            return
        while True:
            problem = self._revision_problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"OPA at {self.url} does not serve this guard's policies: {problem} "
                    "(load the bundle from `chio-budget bundle` or run `chio-budget push`)")
            time.sleep(0.1)

    # -- deciding ------------------------------------------------------------

    def decide(self, input: dict[str, Any]) -> Decision:
        raw_id = input.get("policy_id") if isinstance(input, dict) else None
        policy_id = raw_id if isinstance(raw_id, str) else None
        try:
            return self._decide(input, policy_id)
        except Exception as exc:  # the promise is "never raises": anything left over denies too
            return Decision.deny_error(f"engine error: {type(exc).__name__}: {exc}", policy_id)

    def _decide(self, input: dict[str, Any], policy_id: str | None) -> Decision:
        try:
            body = self._client.query_rule(input, _PACKAGE, _RULE)
        except Exception as exc:
            return Decision.deny_error(f"engine error: {describe_error(exc)}", policy_id)
        if not isinstance(body, dict):
            return Decision.deny_error("engine error: malformed response: not a JSON object", policy_id)
        if "result" not in body:
            return Decision.deny_error(f"engine error: {self._undefined_cause(policy_id)}", policy_id)
        d = Decision.from_opa(body["result"], policy_id)
        if d.error is not None:
            return d.model_copy(update={"error": f"engine error: {d.error}"})
        if self.verify_revision:
            want = self.revisions.get(policy_id) if policy_id is not None else None
            if want is None:
                return Decision.deny_error(
                    f"engine error: revision mismatch: OPA decided for policy {policy_id!r}, "
                    "which this guard did not compile", policy_id)
            if d.policy_revision != want:
                return Decision.deny_error(
                    f"engine error: revision mismatch: OPA decided with policy revision {d.policy_revision}, "
                    f"this guard compiled {want}", policy_id)
        return d

    def _undefined_cause(self, policy_id: str | None) -> str:
        """Name why OPA answered ``{}``; same wording as the embedded engine where they overlap."""
        if policy_id not in self.revisions:
            return "decision undefined: unknown policy_id %r" % (policy_id,)
        try:
            self._client.get_data(f"{_POLICIES}/{policy_id}")
        except PolicyNotFoundError:
            return f"decision undefined: the OPA server has no policy {policy_id!r}"
        except Exception:
            pass
        return "decision undefined"

    def close(self) -> None:
        self._client.close_connection()


def _wait_healthy(client: OpaClient, url: str, ready_timeout: float) -> None:
    try:
        client.wait_for_ready(timeout=ready_timeout, interval=0.05)
    except Exception:
        raise EngineError(f"OPA at {url} did not become healthy within {ready_timeout:g}s "
                          "(GET /health); is `opa run --server` running there?") from None
