"""The sidecar's request and response bodies: what ``docs/openapi.json`` describes.

Requests reuse the project's shapes as they stand - ``/v1/evaluate`` takes
the ``kernel.GuardContext`` JSON plus ``policy_id`` and answers the
``kernel.GuardDecision`` JSON; settlement answers ``SettlementResult`` and
revalidation ``HoldStatus`` - so the HTTP contract and the Python API cannot
drift apart. ``ExternalGuardRequest`` is the Rust ``GuardCallContext`` of
``chio-external-guards`` field for field, and ``ExternalGuardResponse`` the
``Verdict`` its ``ExternalGuard::eval`` returns, spelled as the Rust variants.

Every request model forbids unknown fields: a typo is a 422 naming it, not
a silently ignored limit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..kernel import GuardContext
from ..money import Units

_POLICY_ID = Field(None, description="policy to judge the call by (default: the sidecar's --policy-id); "
                                     "an unknown policy is a deny")
_REQUEST_ID = Field(min_length=1, max_length=1024, description="the kernel's request id (the reservation's key)")


class EvaluateRequest(GuardContext):
    """``GuardContext`` (the project's, as it stands) plus the policy to judge it by."""

    policy_id: str | None = _POLICY_ID


class SettleRequest(BaseModel):
    """How a call ended: ``result`` is the Rust ``CostMetadata`` JSON (an object, or its text),
    plain minor units of the policy currency, a ``{units, currency}`` amount, or null for the estimate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = _REQUEST_ID
    status: Literal["completed", "failed", "cancelled"] = "completed"
    result: Units | dict[str, Any] | str | None = Field(
        None, description="actual cost: CostMetadata JSON (object or text), units, {units, currency}, or null")
    policy_id: str | None = Field(None, description="default: the policy that authorized the call (from the ledger)")


class RevalidateRequest(BaseModel):
    """Is the hold of ``request_id`` still live (``revalidate_before_dispatch``)? Reserves nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = _REQUEST_ID
    policy_id: str | None = Field(None, description="default: the policy that authorized the call (from the ledger)")


class ExternalGuardRequest(BaseModel):
    """``chio_guards::external::GuardCallContext``: what ``AsyncGuardAdapter`` hands ``ExternalGuard::eval``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tool_name: str
    agent_id: str
    server_id: str
    arguments_json: str = Field("", description="the tool arguments as JSON text (empty: none)")
    policy_id: str | None = _POLICY_ID


class ExternalGuardResponse(BaseModel):
    """The ``Verdict`` for ``ExternalGuard::eval``: ``Allow`` or ``Deny`` (the Rust variant names)."""

    verdict: Literal["Allow", "Deny"]
    reason: str | None = None
    request_id: str = Field(description="the id the sidecar gave the call (its decision-log events carry it)")


class Window(BaseModel):
    """The window a scope's counter is kept in, containing ``at`` (as in the OPA input's ``windows``)."""

    window: str
    key: str
    start: int | None = None
    resets_at: int | None = None


class ScopeBudget(BaseModel):
    """One limit that applies: its counter's spent, held (live reservations) and what remains."""

    scope: Literal["total", "session", "agent", "tool"]
    session_id: str | None = None
    agent_id: str | None = None
    tool_key: str | None = None
    limit_units: int
    spent_units: int
    held_units: int
    remaining_units: int = Field(description="limit - min(spent + held, 2^64-1), never below 0")
    window: Window


class BudgetResponse(BaseModel):
    policy_id: str
    currency: str
    at: int = Field(description="the Unix second the windows were chosen for")
    scopes: list[ScopeBudget]


class Check(BaseModel):
    ok: bool
    cause: str | None = None


class HealthResponse(BaseModel):
    """200 only when the engine answers and the ledger is reachable; 503 with the cause otherwise."""

    status: Literal["ok", "unavailable"]
    engine: Check
    ledger: Check
    policies: list[str]
    policy_id: str = Field(description="the default policy (--policy-id)")
    worker: int = Field(description="the worker process that answered")


class Problem(BaseModel):
    """A request refused before anything was decided or reserved (401, 404, 413, 503)."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """422: the body (or a query parameter) is malformed; each error names its field. Nothing was reserved."""

    detail: list[FieldError]
