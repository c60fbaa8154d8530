"""The Chio kernel's guard shapes: a tool call, a guard, its verdict and evidence.

These are the types every guard speaks - the budget guard, the host's other
guards, and ``GuardChain`` itself. They depend on nothing but ``money``, so
any module (the chain, the budget member, the WASM adapter) can import them
without pulling in OPA or a ledger.

- ``GuardContext``: one tool call as the kernel presents it.
- ``GuardDecision``: a verdict (``allow`` | ``deny`` | ``pending_approval``)
  with every guard's ``GuardEvidence`` and a one-line ``reason`` for denies.
- ``Guard`` / ``SettlingGuard``: the protocols (a name and ``evaluate``; a
  settling guard also hears how the call ended).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .money import MonetaryAmount, Units

Verdict = Literal["allow", "deny", "pending_approval"]
InvocationStatus = Literal["completed", "failed", "cancelled"]


class GuardEvidence(BaseModel):
    """One guard's say in a decision: ``{guard_name, verdict, details}``."""

    model_config = ConfigDict(frozen=True)
    guard_name: str
    verdict: Verdict
    details: Any = None


class GuardDecision(BaseModel):
    """A guard's (or the chain's) answer. ``reason`` is a one-line summary for denies."""

    model_config = ConfigDict(frozen=True)
    verdict: Verdict
    evidence: list[GuardEvidence] = []
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @classmethod
    def allow(cls, guard_name: str, details: Any = None) -> "GuardDecision":
        return cls(verdict="allow", evidence=[GuardEvidence(guard_name=guard_name, verdict="allow", details=details)])

    @classmethod
    def deny(cls, guard_name: str, reason: str, details: Any = None) -> "GuardDecision":
        return cls(verdict="deny", reason=reason,
                   evidence=[GuardEvidence(guard_name=guard_name, verdict="deny",
                                           details=details if details is not None else reason)])


class Grant(BaseModel):
    """The part of the matched capability grant the budget guard reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    max_cost_per_invocation: MonetaryAmount | None = None


class GuardContext(BaseModel):
    """One tool call as the kernel presents it to its guards.

    ``cost_estimate`` is plain minor units of the policy currency or a
    ``MonetaryAmount``; ``timestamp`` (Unix seconds) defaults to now.
    ``metadata`` keeps anything else the host passes (scopes, paths...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = Field(min_length=1)
    tool_name: str
    server_id: str
    agent_id: str
    arguments: Any = Field(default_factory=dict)
    session_id: str | None = None
    cost_estimate: MonetaryAmount | Units | None = None
    grant: Grant | None = None
    timestamp: Units | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def tool_key(self) -> str:
        return f"{self.server_id}:{self.tool_name}"


@runtime_checkable
class Guard(Protocol):
    """The kernel's guard: a name and a verdict per call. Must be thread-safe."""

    name: str

    def evaluate(self, ctx: GuardContext) -> GuardDecision: ...


@runtime_checkable
class SettlingGuard(Guard, Protocol):
    """A guard that holds something per call and must hear how the call ended."""

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> Any: ...
