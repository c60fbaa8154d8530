"""Adapter for the WASM guard world ``chio:guard/guard@0.2.0``.

The world exports ``evaluate(guard-request) -> verdict`` where ``verdict`` is
``allow`` or ``deny(string)``. ``WasmGuardAdapter`` puts any ``Guard`` (the
budget guard, or a whole ``GuardChain``) behind that signature, so the same
guard can back a componentized guard (e.g. built with componentize-py). It
takes ``chio_guard.GuardRequest``-shaped objects - attribute access or dict
keys - without depending on that package.

Field mapping (``guard-request`` -> ``GuardContext``):

=========================  ==================================================
``tool_name``              ``tool_name``
``server_id``              ``server_id``
``agent_id``               ``agent_id``
``arguments`` (JSON text)  ``arguments`` (parsed; invalid JSON denies)
``scopes``,                ``metadata`` (kept verbatim for guards that want
``action_type``,           them; the budget guard does not read them)
``extracted_path``,
``extracted_target``,
``filesystem_roots``,
``matched_grant_index``
=========================  ==================================================

The 0.2.0 record has no request id, session id or cost. When the host's
object carries them anyway (``request_id``, ``session_id``,
``cost_estimate``, ``max_cost_per_invocation``) they are used; otherwise a
request id is generated and there is no session (so session limits do not
apply, as in the Rust enforcer without a session).

The world has no "invocation complete" call either, so by default
(``settle="commit"``) an allowed call's estimate is committed at once: the
budget is charged the estimate, never less. With ``settle="hold"`` the
reservation is kept for a host that calls ``on_invocation_complete`` itself
with the request id it supplied.

``pending_approval`` has no counterpart in the world and becomes
``deny(reason)``; an exception in the guard becomes ``deny`` as well (fail
closed). ``evaluate`` never raises.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Literal

from .kernel import GuardContext, GuardDecision

_META_FIELDS = ("scopes", "action_type", "extracted_path", "extracted_target", "filesystem_roots",
                "matched_grant_index")


@dataclass(frozen=True)
class Allow:
    """``verdict::allow``."""

    tag: str = "allow"


@dataclass(frozen=True)
class Deny:
    """``verdict::deny(reason)``; ``value`` is the componentize-py name of the payload."""

    reason: str
    tag: str = "deny"

    @property
    def value(self) -> str:
        return self.reason


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def request_to_context(request: Any, request_id: str | None = None) -> GuardContext:
    """Map a ``guard-request`` (object or dict) to a ``GuardContext``; ``ValueError`` if unusable."""
    missing = [f for f in ("tool_name", "server_id", "agent_id") if not isinstance(_get(request, f), str)]
    if missing:
        raise ValueError(f"guard-request: missing or non-string {', '.join(missing)}")
    raw = _get(request, "arguments", "{}")
    if raw is None or raw == "":
        args: Any = {}
    elif isinstance(raw, (str, bytes)):
        try:
            args = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"guard-request: arguments is not valid JSON: {exc.msg}") from None
    else:
        args = raw
    rid = _get(request, "request_id") or request_id or f"wasm-{uuid.uuid4()}"
    doc: dict[str, Any] = {
        "request_id": rid,
        "tool_name": _get(request, "tool_name"),
        "server_id": _get(request, "server_id"),
        "agent_id": _get(request, "agent_id"),
        "arguments": args,
        "session_id": _get(request, "session_id"),
        "metadata": {f: _get(request, f) for f in _META_FIELDS if _get(request, f) is not None},
    }
    est = _get(request, "cost_estimate")
    if est is not None:
        doc["cost_estimate"] = est
    max_cost = _get(request, "max_cost_per_invocation")
    if max_cost is not None:
        doc["grant"] = {"max_cost_per_invocation": max_cost}
    return GuardContext.model_validate(doc)


class WasmGuardAdapter:
    """``evaluate(guard-request) -> Allow | Deny`` over any ``Guard``.

    ``make_allow`` / ``make_deny`` build the host's own verdict types if it
    wants them (e.g. ``lambda r: chio_guard.VerdictDeny(r)``); by default the
    adapter returns ``Allow()`` / ``Deny(reason)``.
    """

    def __init__(self, guard: Any, *, settle: Literal["commit", "hold"] = "commit",
                 make_allow: Callable[[], Any] = Allow, make_deny: Callable[[str], Any] = Deny):
        if settle not in ("commit", "hold"):
            raise ValueError("settle must be 'commit' or 'hold'")
        self.guard = guard
        self.settle = settle
        self._allow = make_allow
        self._deny = make_deny
        self.name = getattr(guard, "name", type(guard).__name__)

    def evaluate(self, request: Any) -> Any:
        try:
            ctx = request_to_context(request)
        except Exception as exc:
            return self._deny(f"{self.name}: bad guard-request (fail-closed): {exc}")
        try:
            d = self.guard.evaluate(ctx)
            if not isinstance(d, GuardDecision):
                raise TypeError(f"returned {type(d).__name__}, not GuardDecision")
        except Exception as exc:
            return self._deny(f"{self.name} error (fail-closed): {type(exc).__name__}: {exc}")
        if d.verdict == "allow":
            if self.settle == "commit":
                settle = getattr(self.guard, "on_invocation_complete", None)
                if settle is not None:
                    try:
                        r = settle(ctx.request_id, None)
                        failed = [v for v in (r.values() if isinstance(r, dict) else [r])
                                  if isinstance(v, str) or getattr(v, "outcome", None) == "error"]
                        if failed:
                            raise RuntimeError(getattr(failed[0], "error", None) or failed[0])
                    except Exception as exc:
                        # The call has not run yet: denying is safe; give back what is still held.
                        try:
                            settle(ctx.request_id, None, status="cancelled")
                        except Exception:
                            pass
                        return self._deny(f"{self.name} settlement error (fail-closed): {exc}")
            return self._allow()
        if d.verdict == "pending_approval":
            return self._deny(d.reason or f"{self.name}: approval required (pending_approval is a deny here)")
        return self._deny(d.reason or f"denied by {self.name}")
