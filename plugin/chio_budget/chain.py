"""The kernel's guard chain: guards in order, the first deny stops, errors deny.

The Chio kernel runs its guards in registration order for each tool call:
the first deny stops the chain, a guard that raises denies (fail closed), a
``pending_approval`` is a deny for the call at hand, and different requests
reach the same guard concurrently. ``GuardChain`` runs guards exactly that
way. The types it speaks live in ``kernel``; the budget guard as a member of
a chain is ``chain_guard.BudgetChainGuard``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .kernel import Guard, GuardContext, GuardDecision, GuardEvidence, InvocationStatus


def _name(guard: Any) -> str:
    return getattr(guard, "name", type(guard).__name__)


class GuardChain:
    """Runs guards the kernel's way: in order, first deny stops, errors deny.

    A deny (from any cause) after a settling guard already allowed cancels
    that guard's hold (``on_invocation_complete(..., status="cancelled")``),
    because the call will not run. The real kernel may not do this; there,
    register the budget guard last or rely on the reservation TTL.
    """

    def __init__(self, guards: Sequence[Guard] = ()):
        self.guards: list[Guard] = list(guards)

    def register(self, guard: Guard) -> "GuardChain":
        self.guards.append(guard)
        return self

    def evaluate(self, ctx: GuardContext) -> GuardDecision:
        evidence: list[GuardEvidence] = []
        allowed: list[Guard] = []
        for guard in self.guards:
            name = _name(guard)
            try:
                d = guard.evaluate(ctx)
                if not isinstance(d, GuardDecision):
                    raise TypeError(f"returned {type(d).__name__}, not GuardDecision")
            except Exception as exc:
                msg = f"{name} error (fail-closed): {type(exc).__name__}: {exc}"
                evidence.append(GuardEvidence(guard_name=name, verdict="deny", details=msg))
                return self._deny(ctx, evidence, allowed, msg)
            evidence.extend(d.evidence or [GuardEvidence(guard_name=name, verdict=d.verdict)])
            if d.verdict == "allow":
                allowed.append(guard)
                continue
            if d.verdict == "pending_approval":
                return self._deny(ctx, evidence, allowed, f"{name} requires approval (pending_approval is a deny)")
            return self._deny(ctx, evidence, allowed, d.reason or f"denied by {name}")
        return GuardDecision(verdict="allow", evidence=evidence)

    @staticmethod
    def _deny(ctx: GuardContext, evidence: list[GuardEvidence], allowed: list[Guard], reason: str) -> GuardDecision:
        for g in allowed:
            settle = getattr(g, "on_invocation_complete", None)
            if settle is not None:
                try:
                    settle(ctx.request_id, None, status="cancelled")
                except Exception:
                    pass  # the hold then ends by TTL expiry; the deny stands either way
        return GuardDecision(verdict="deny", evidence=evidence, reason=reason)

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> dict[str, Any]:
        """Settle every settling guard; returns ``{guard name: its result or the error}``."""
        out: dict[str, Any] = {}
        for g in self.guards:
            settle = getattr(g, "on_invocation_complete", None)
            if settle is None:
                continue
            name = _name(g)
            try:
                out[name] = settle(request_id, result, status=status)
            except Exception as exc:
                out[name] = f"{name} settlement error: {type(exc).__name__}: {exc}"
        return out
