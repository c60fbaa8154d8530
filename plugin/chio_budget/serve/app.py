"""The sidecar's HTTP surface (FastAPI): routes, the request gate, fail-closed error answers.

A thin shell: each route validates its body (pydantic, a 422 naming the
field, nothing reserved) and hands it to the worker's ``Sidecar``, which
asks the chain guard of the policy named. Nothing here decides.

- ``Gate`` (pure ASGI, before any route) refuses a request without the
  bearer token (401, compared in constant time) and a body over
  ``--max-body-bytes`` (413), whether announced by ``Content-Length`` or
  streamed, before the body is parsed.
- Every answer names the worker process that gave it (``chio-worker: <pid>``).
- Every JSON answer is ASCII (a lone surrogate echoed from a request cannot
  fail the encoding), and an unexpected error is never a 500: on
  ``/v1/evaluate`` and ``/v1/external-guard`` it is a deny verdict with the
  cause, elsewhere a 503 with the cause.
"""

from __future__ import annotations

import hmac
import json
import os
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LedgerError, WindowError
from ..kernel import GuardDecision
from ..money import U64_MAX
from ..settlement import HoldStatus, SettlementResult
from .models import (BudgetResponse, EvaluateRequest, ExternalGuardRequest, ExternalGuardResponse, HealthResponse,
                     Problem, RevalidateRequest, SettleRequest, ValidationProblem)
from .sidecar import GUARD_NAME, Sidecar, UnknownPolicy

TITLE = "chio-budget sidecar"
VERSION = "1"
DESCRIPTION = """The budget guard as a service the Chio kernel calls (`chio-budget serve`).

Two contracts: the full one (`/v1/evaluate`, `/v1/settle`, `/v1/revalidate`) for a
purpose-built kernel adapter, and `/v1/external-guard` for the `AsyncGuardAdapter` of
`chio-external-guards` as it exists today. Every verdict fails closed: an unknown policy or
any internal error is a deny, never a 5xx. See docs/kernel.md."""
_MSG_MAX = 500


class AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: always encodable, one line."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class Gate:
    """Bearer token and body bound, before routing. Refusals are JSON ``{"detail": ...}``."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.expected = f"Bearer {token}".encode("ascii") if token else None
        self.worker = str(os.getpid()).encode("ascii")  # the answering worker, on every response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await _refuse(send, 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"})
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await _refuse(send, 413, f"request body over {self.max_body} bytes")
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _refuse(send, 413, f"request body over {self.max_body} bytes")
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"chio-worker", self.worker)]
            await send(message)

        await self.app(scope, replay, tagged)


async def _refuse(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    response = AsciiJSON({"detail": detail}, status_code=status, headers=headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(sidecar: Sidecar | None, *, token: str | None = None, max_body: int = 1_048_576) -> FastAPI:
    """The ASGI app over ``sidecar`` (None: the routes only, e.g. to print the OpenAPI document)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if sidecar is not None:
            sidecar.close()  # after the last request in flight has its answer

    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  default_response_class=AsciiJSON, lifespan=lifespan)
    app.add_middleware(Gate, token=token, max_body=max_body)  # type: ignore[arg-type]
    _errors(app)
    _routes(app, sidecar)
    document = _openapi(app)
    app.openapi = lambda: document  # type: ignore[method-assign]  # fixed: the committed docs/openapi.json
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        return AsciiJSON({"detail": [{"loc": [str(x) if not isinstance(x, int) else x for x in e["loc"]],
                                      "msg": str(e["msg"])[:_MSG_MAX], "type": e["type"]} for e in exc.errors()]},
                         status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def refused(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not parse the body (too deep, a number too long...)
            return AsciiJSON({"detail": [{"loc": ["body"], "msg": f"unreadable JSON: {exc.detail}"[:_MSG_MAX],
                                          "type": "json_invalid"}]}, status_code=422)
        return AsciiJSON({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        cause = f"{type(exc).__name__}: {exc}"[:_MSG_MAX]
        if request.url.path == "/v1/evaluate":
            return AsciiJSON(GuardDecision.deny(GUARD_NAME, f"{GUARD_NAME} error (fail-closed): {cause}")
                             .model_dump(mode="json"))
        if request.url.path == "/v1/external-guard":
            return AsciiJSON({"verdict": "Deny", "reason": f"{GUARD_NAME} error (fail-closed): {cause}",
                              "request_id": ""})
        return AsciiJSON({"detail": f"internal error (fail-closed): {cause}"}, status_code=503)


_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong bearer token (with --token-file)"},
    413: {"model": Problem, "description": "body over --max-body-bytes"},
    422: {"model": ValidationProblem, "description": "malformed body: each error names its field; nothing reserved"},
}


def _routes(app: FastAPI, sidecar: Sidecar | None) -> None:
    def side() -> Sidecar:
        assert sidecar is not None, "no sidecar behind this app"
        return sidecar

    _contract(app, side)
    _reports(app, side)


def _contract(app: FastAPI, side: Callable[[], Sidecar]) -> None:
    """The calls a kernel adapter makes: evaluate, settle, revalidate, external-guard."""

    @app.post("/v1/evaluate", response_model=None, tags=["full contract"],
              responses={200: {"model": GuardDecision, "description": "the verdict (a deny is a 200 too)"},
                         **_REFUSALS})
    def evaluate(body: EvaluateRequest) -> Response:
        """Estimate, reserve and decide one tool call (`GuardContext`); idempotent by `request_id`:
        a retry holds nothing more and returns the first answer."""
        return AsciiJSON(side().evaluate(body, body.policy_id).model_dump(mode="json"))

    @app.post("/v1/settle", response_model=None, tags=["full contract"],
              responses={200: {"model": SettlementResult, "description": "how the hold ended (idempotent)"},
                         **_REFUSALS})
    def settle(body: SettleRequest) -> Response:
        """Commit the actual cost (or the estimate) or release the hold of a failed or cancelled call."""
        return AsciiJSON(asdict(side().settle(body.request_id, body.result, body.status, body.policy_id)))

    @app.post("/v1/revalidate", response_model=None, tags=["full contract"],
              responses={200: {"model": HoldStatus, "description": "`live` only while the hold is held"},
                         **_REFUSALS})
    def revalidate(body: RevalidateRequest) -> Response:
        """For `revalidate_before_dispatch`: is the call's hold still live? Reserves nothing."""
        return AsciiJSON(asdict(side().revalidate(body.request_id, body.policy_id)))

    @app.post("/v1/external-guard", response_model=None, tags=["today's adapter"],
              responses={200: {"model": ExternalGuardResponse}, **_REFUSALS})
    def external_guard(body: ExternalGuardRequest) -> Response:
        """`GuardCallContext` in, `Verdict` out: the policy's price for the tool is reserved and
        committed at once (no price: deny). A retried call is counted again (over-counts, never under)."""
        reason, request_id = side().external(body.model_dump(), body.policy_id)
        verdict = "Allow" if reason is None else "Deny"
        return AsciiJSON({"verdict": verdict, "reason": reason, "request_id": request_id})


def _reports(app: FastAPI, side: Callable[[], Sidecar]) -> None:
    """What an operator reads: the budget, health, metrics."""

    @app.get("/v1/budget", response_model=None, tags=["reports"],
             responses={200: {"model": BudgetResponse}, 404: {"model": Problem, "description": "unknown policy"},
                        503: {"model": Problem, "description": "the ledger cannot be read"}, **_REFUSALS})
    def budget(policy_id: str | None = None, agent_id: str | None = None, session_id: str | None = None,
               tool: str | None = Query(None, description="the tool key, server:tool"),
               at: int | None = Query(None, ge=0, le=U64_MAX, description="Unix second (default: now)")) -> Response:
        """Spent, held and remaining of every limit that applies, in its window containing `at`."""
        try:
            return AsciiJSON(side().budget(policy_id, at, agent_id=agent_id, session_id=session_id, tool_key=tool))
        except UnknownPolicy as exc:
            return AsciiJSON({"detail": str(exc)}, status_code=404)
        except WindowError as exc:
            return AsciiJSON({"detail": [{"loc": ["query", "at"], "msg": str(exc), "type": "value_error"}]},
                             status_code=422)
        except LedgerError as exc:
            return AsciiJSON({"detail": f"ledger error: {exc}"}, status_code=503)

    @app.get("/health", response_model=None, tags=["operations"],
             responses={200: {"model": HealthResponse}, 401: _REFUSALS[401],
                        503: {"model": HealthResponse, "description": "engine or ledger down (the cause)"}})
    def health() -> Response:
        """200 only when the engine answers and the ledger is reachable; 503 with the cause otherwise."""
        report = side().health()
        return AsciiJSON(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/metrics", response_class=Response, tags=["operations"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: _REFUSALS[401]})
    def metrics() -> Response:
        """This worker's Prometheus metrics (each worker has its own counters)."""
        return Response(side().metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, plus the bearer scheme (required when the sidecar has a token)."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "the token in --token-file; every endpoint needs it when one is set"}}
    doc["security"] = [{"bearer": []}, {}]
    return _exact_bounds(doc)


def _exact_bounds(node: Any) -> Any:
    """FastAPI's OpenAPI models hold ``minimum``/``maximum`` as floats, and 2^64-1 as a float is
    2^64: put the integers back (a u64 bound must say exactly 18446744073709551615)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("minimum", "maximum") and isinstance(v, float) and v.is_integer():
                node[k] = U64_MAX if v == float(U64_MAX) else int(v)
            else:
                _exact_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _exact_bounds(v)
    return node


def openapi_json(app: FastAPI) -> str:
    """The document as committed in ``docs/openapi.json`` (sorted keys, two-space indent)."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
