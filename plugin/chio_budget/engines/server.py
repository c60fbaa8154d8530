"""OPA as a server (``opa run --server``), asked over HTTP.

The production shape OPA recommends: a sidecar or host daemon holding the
Rego and the compiled data (loaded from ``chio-budget bundle`` or written by
``chio-budget push``); the guard POSTs ``{"input": ...}`` to
``/v1/data/chio/budget/decision``. All HTTP is in ``opa_http``; this module
holds what the guard promises about it.

Promises:

* One client (one ``requests`` session and its connection pool) per
  engine, reused by every decision; ``decide`` is safe to call from many
  threads at once (the pool is sized by ``pool_size``).
* ``timeout`` bounds each decision as a whole - connect, send and every
  read, plus the look-up that names why a decision was undefined - not each
  socket operation: past it the connection is cut and the decision is a
  deny whose error starts ``engine error: timeout``.
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
* ``decide_many(inputs)`` asks for ``data.chio.budget.batch.decisions``
  (``rego/chio/budget/batch.rego``) with up to ``batch_size`` inputs a
  request, each request under one ``timeout``; every answer is judged as
  ``decide`` judges one (revision check and undefined cause included). A
  batch the server cannot answer as a batch (no ``batch.rego`` loaded, an
  HTTP error from an evaluation one input broke) is decided one by one; a
  connection failure or timeout denies that request's inputs with the
  cause, as ``decide`` would deny each.
* Retries (``retries``) apply only to setting up a connection, at once
  (no back-off, so they stay inside the deadline): a decision request that
  reached OPA is never sent twice.
* ``user:pass@`` in ``opa_url`` never appears in a message (``url`` is
  the redacted form).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..compiler import DECISION_PATH, Compiled, as_compiled
from ..decision import Decision
from ..errors import EngineError
from ..rego_files import rego_modules
from . import opa_http
from .base import BATCH_PATH, batch_input, judge_batch
from .deadline import Watchdog

#: Inputs per batched request (each request has one ``timeout``).
BATCH_SIZE = 100


class ServerEngine:
    name = "server"

    def __init__(self, client: Any, compiled: Compiled | Mapping[str, Any], *, url: str = "",
                 ready_timeout: float = 10.0, verify_revision: bool = True):
        """``client`` from ``opa_http.make_client``; ``compiled`` is what this guard compiled
        (``compiler.compile_all``; a whole data document is read into one).

        Waits for the server (see the module docstring); ``EngineError`` if
        it never becomes ready. The engine owns ``client`` and closes it.
        """
        self._client = client
        self.url = opa_http.redact(url or client.root_url)
        self.timeout = client.timeout
        self.verify_revision = verify_revision
        self.revisions: dict[str, str | None] = dict(as_compiled(compiled).revisions)
        self._also: dict[str, str | None] = {}  # a reload's revisions, while the guard switches over
        try:
            self._watchdog = Watchdog(client.timeout)
            opa_http.wait_healthy(client, self.url, ready_timeout)
            if verify_revision:
                opa_http.wait_for_revisions(client, self.url, self.revisions, ready_timeout)
        except BaseException:
            client.close_connection()
            raise

    @classmethod
    def from_options(cls, compiled: Compiled, rego_dir: str | Path | None = None, opa_url: str | None = None,
                     *, token: str | None = None, cert: str | tuple[str, str] | None = None,
                     ca_bundle: str | None = None, timeout: float = 1.5, retries: int = 2, pool_size: int = 16,
                     ready_timeout: float | None = None, verify_revision: bool = True, push: bool = False,
                     **unknown: Any) -> "ServerEngine":
        """What ``make_engine("server", ...)`` calls. ``opa_url`` defaults to env ``CHIO_OPA_URL``,
        ``ready_timeout`` to env ``CHIO_OPA_READY_TIMEOUT``, else 10 seconds.

        ``push=True`` uploads the compiled data and the Rego of ``rego_dir``
        before waiting (handy for a bare ``opa run --server``); otherwise
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
        client = opa_http.make_client(opa_url, token=token, cert=cert, ca_bundle=ca_bundle, timeout=timeout,
                                      retries=retries, pool_size=pool_size)
        if push:
            try:
                opa_http.wait_healthy(client, opa_url, ready_timeout)
                opa_http.push(client, compiled, rego_modules(rego_dir))
            except BaseException:
                client.close_connection()
                raise
        return cls(client, compiled, url=opa_url, ready_timeout=ready_timeout, verify_revision=verify_revision)

    # -- deciding ------------------------------------------------------------

    def decide(self, input: dict[str, Any]) -> Decision:
        return self.decide_measured(input)[0]

    def decide_measured(self, input: dict[str, Any]) -> tuple[Decision, int | None]:
        """The decision and OPA's own evaluation time in ns (``?metrics``; None when OPA gave none)."""
        raw_id = input.get("policy_id") if isinstance(input, dict) else None
        policy_id = raw_id if isinstance(raw_id, str) else None
        try:
            call = self._watchdog.start()
        except RuntimeError as exc:  # closed: no deadline to keep, so no decision either
            return Decision.deny_error(f"engine error: {exc}", policy_id), None
        try:
            return self._decide(input, policy_id, call)
        except Exception as exc:  # the promise is "never raises": anything left over denies too
            return Decision.deny_error(f"engine error: {opa_http.describe_error(exc)}", policy_id), None
        finally:
            call.finish()

    def _decide(self, input: dict[str, Any], policy_id: str | None, call: Any) -> tuple[Decision, int | None]:
        try:
            body = opa_http.query(self._client, DECISION_PATH, input, call, metrics=True)
        except Exception as exc:
            return Decision.deny_error(f"engine error: {opa_http.describe_error(exc)}", policy_id), None
        return self._judge(body, policy_id, call), opa_http.opa_eval_ns(body)

    def _judge(self, body: Any, policy_id: str | None, call: Any) -> Decision:
        if not isinstance(body, dict):
            return Decision.deny_error("engine error: malformed response: not a JSON object", policy_id)
        if "result" not in body:
            return Decision.deny_error(f"engine error: {self._undefined_cause(policy_id, call)}", policy_id)
        d = Decision.from_opa(body["result"], policy_id)
        if d.error is not None:
            return d.model_copy(update={"error": f"engine error: {d.error}"})
        if self.verify_revision:
            want = self.revisions.get(policy_id) if policy_id is not None else None
            if want is None:
                return Decision.deny_error(
                    f"engine error: revision mismatch: OPA decided for policy {policy_id!r}, "
                    "which this guard did not compile", policy_id)
            if d.policy_revision != want and d.policy_revision != self._also.get(policy_id):
                return Decision.deny_error(
                    f"engine error: revision mismatch: OPA decided with policy revision {d.policy_revision}, "
                    f"this guard compiled {want}", policy_id)
        return d

    def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[Decision]:
        """``[self.decide(i) for i in inputs]`` in one request per ``BATCH_SIZE`` inputs (module docstring)."""
        inputs = list(inputs)
        if len(inputs) < 2:
            return [self.decide(i) for i in inputs]
        out: list[Decision] = []
        for start in range(0, len(inputs), BATCH_SIZE):
            out += self._decide_batch(inputs[start:start + BATCH_SIZE])
        return out

    def _decide_batch(self, inputs: list[Any]) -> list[Decision]:
        try:
            call = self._watchdog.start()
        except RuntimeError:  # closed: each is denied as decide denies it
            return [self.decide(i) for i in inputs]
        try:
            try:
                body = opa_http.query(self._client, BATCH_PATH, batch_input(inputs), call)
            except Exception as exc:
                if opa_http.answered(exc):  # OPA refused the batch (say one input broke it): one by one
                    return [self.decide(i) for i in inputs]
                cause = f"engine error: {opa_http.describe_error(exc)}"
                return [Decision.deny_error(cause, _policy_id(i)) for i in inputs]
            results = body.get("result") if isinstance(body, dict) else None
            return judge_batch(results, inputs, self.decide,
                               lambda slot, inp: self._judge(_slot_body(slot), _policy_id(inp), call))
        finally:
            call.finish()

    def accept_revisions(self, revisions: dict[str, str | None]) -> None:
        """Also accept decisions made on ``revisions`` (``{}``: stop) while a reload switches over.

        A reload pushes the new version to the server before the guard swaps
        engines; decisions in flight on this engine may already be answered
        from the new version, which is then what they name - not a mismatch.
        """
        self._also = dict(revisions)

    def _undefined_cause(self, policy_id: str | None, call: Any) -> str:
        """Name why OPA answered ``{}``; same wording as the embedded engine where they overlap."""
        if policy_id not in self.revisions:
            return "decision undefined: unknown policy_id %r" % (policy_id,)
        try:
            served = opa_http.read(self._client, f"{opa_http.POLICIES}/{policy_id}", call)
        except Exception:
            return "decision undefined"
        if isinstance(served, dict) and "result" not in served:
            return f"decision undefined: the OPA server has no policy {policy_id!r}"
        return "decision undefined"

    def close(self) -> None:
        self._watchdog.close()
        self._client.close_connection()

    def __enter__(self) -> "ServerEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _policy_id(input: Any) -> str | None:
    raw = input.get("policy_id") if isinstance(input, dict) else None
    return raw if isinstance(raw, str) else None


def _slot_body(slot: Mapping[str, Any]) -> dict[str, Any]:
    """A batch slot as the body of a single query: ``{"result": d}``, or ``{}`` when undefined."""
    return {"result": slot["decision"]} if "decision" in slot else {}
