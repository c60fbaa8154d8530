"""The decision OPA returns, as models whose JSON is the Rust serde JSON.

``TotalViolation`` & co. serialise byte for byte like
``chio_metering::budget::BudgetViolation`` (``"scope"`` tag first, fields in
declaration order). A limit with a window adds ``window`` and ``resets_at``
at the end; an all-time one has neither, so its JSON is the Rust JSON.
``InvocationViolation`` is the per-call cap. A violation this package does
not know - a security team's own rule - parses as ``CustomViolation`` with
every field kept, and still denies.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter, ValidationError, model_serializer

from .money import Units


class BudgetViolation(BaseModel):
    """Base of every violation; ``scope`` says which limit (or rule) it is."""

    model_config = ConfigDict(frozen=True)
    scope: str

    @staticmethod
    def parse(data: Any) -> "BudgetViolation":
        return _VIOLATION.validate_python(data)

    @staticmethod
    def parse_json(text: str | bytes) -> "BudgetViolation":
        return _VIOLATION.validate_json(text)

    def describe(self) -> str:
        """A sentence for operators; the data stays the source of truth."""
        return f"{self.scope} violation"


_WINDOW_FIELDS = ("window", "resets_at")


_RUST_FIELDS = ("limit_units", "current_units", "requested_units", "currency")


class _LimitViolation(BudgetViolation):
    """A limit's violation: the Rust fields, then ``window``/``resets_at`` for a windowed limit.

    Each scope's class adds only its ``scope`` and the id it names; the
    serializer writes the Rust serde order whatever the declaration order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _label: ClassVar[str] = ""
    limit_units: Units
    current_units: Units
    requested_units: Units
    currency: str
    window: str | None = None
    resets_at: Units | None = None

    @model_serializer(mode="wrap")
    def _rust_order(self, handler: Any) -> dict[str, Any]:
        d = handler(self)
        out = {"scope": d.pop("scope")}
        out.update((k, v) for k, v in d.items() if k not in _RUST_FIELDS and k not in _WINDOW_FIELDS)
        out.update((k, d[k]) for k in _RUST_FIELDS)
        if d.get("window") is not None or d.get("resets_at") is not None:
            out["window"], out["resets_at"] = d.get("window"), d.get("resets_at")
        return out

    def describe(self) -> str:
        d = self.model_dump()
        text = (
            f"{self._label.format(**d)} {_window_word(self.window)}budget exceeded: {d['current_units']} spent + "
            f"{d['requested_units']} requested > limit {d['limit_units']} {d['currency']}"
        )
        return text + (f" (resets at {_iso(self.resets_at)})" if self.resets_at is not None else "")


def _window_word(window: str | None) -> str:
    return f"{window} " if window else ""


def _iso(t: Any) -> str:
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, OverflowError, ValueError, OSError):
        return str(t)


class TotalViolation(_LimitViolation):
    _label: ClassVar[str] = "total"
    scope: Literal["total"] = "total"


class SessionViolation(_LimitViolation):
    _label: ClassVar[str] = "session {session_id!r}"
    scope: Literal["session"] = "session"
    session_id: str


class AgentViolation(_LimitViolation):
    _label: ClassVar[str] = "agent {agent_id!r}"
    scope: Literal["agent"] = "agent"
    agent_id: str


class ToolViolation(_LimitViolation):
    _label: ClassVar[str] = "tool {tool_key!r}"
    scope: Literal["tool"] = "tool"
    tool_key: str


class InvocationViolation(BudgetViolation):
    """The per-call cap (``max_per_invocation``): one call asked for more than it allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scope: Literal["invocation"] = "invocation"
    limit_units: Units
    requested_units: Units
    currency: str

    def describe(self) -> str:
        return (f"per-call cap exceeded: {self.requested_units} requested > limit "
                f"{self.limit_units} {self.currency} for one call")


class CustomViolation(BudgetViolation):
    """Any violation a policy extension contributes; all its fields are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def describe(self) -> str:
        extra = self.model_extra or {}
        text = extra.get("message") or extra.get("code") or ""
        return f"{self.scope} violation" + (f": {text}" if text else "")


_BUILTIN = {
    "invocation": InvocationViolation,
    "total": TotalViolation,
    "session": SessionViolation,
    "agent": AgentViolation,
    "tool": ToolViolation,
}


def _violation_tag(value: Any) -> str:
    """Built-in tag only when the object has exactly the built-in's fields.

    An extension may reuse a built-in scope name with other fields; it is then
    kept as a custom violation rather than failing the whole decision.
    """
    if isinstance(value, BudgetViolation):
        return value.scope if type(value) in _BUILTIN.values() else "custom"
    if isinstance(value, dict):
        cls = _BUILTIN.get(value.get("scope"))  # type: ignore[arg-type]
        if cls is not None:
            rust = set(cls.model_fields) - set(_WINDOW_FIELDS)
            if set(value) in (rust, rust | set(_WINDOW_FIELDS) & set(cls.model_fields)):
                return value["scope"]
    return "custom"


AnyViolation = Annotated[
    Union[
        Annotated[InvocationViolation, Tag("invocation")],
        Annotated[TotalViolation, Tag("total")],
        Annotated[SessionViolation, Tag("session")],
        Annotated[AgentViolation, Tag("agent")],
        Annotated[ToolViolation, Tag("tool")],
        Annotated[CustomViolation, Tag("custom")],
    ],
    Discriminator(_violation_tag),
]
_VIOLATION: TypeAdapter[BudgetViolation] = TypeAdapter(AnyViolation)


class Decision(BaseModel):
    """The structured answer for one proposed cost.

    ``allow`` is True only when OPA allowed, listed no violation and nothing
    failed; ``error`` is set (and ``allow`` False) when OPA or the ledger
    could not give a trustworthy answer.
    """

    model_config = ConfigDict(frozen=True)

    allow: bool
    violations: list[AnyViolation] = []
    warnings: list[dict[str, Any]] = []
    policy_id: str | None = None
    policy_revision: str | None = None
    error: str | None = None

    @property
    def violation(self) -> BudgetViolation | None:
        """The primary violation: what the Rust ``check`` would return as ``Err``."""
        return self.violations[0] if self.violations else None

    @classmethod
    def deny_error(cls, error: str, policy_id: str | None = None) -> "Decision":
        return cls(allow=False, error=error, policy_id=policy_id)

    @classmethod
    def from_opa(cls, result: Any, policy_id: str | None) -> "Decision":
        """Validate an OPA result strictly; anything off becomes a deny with the cause."""
        if not isinstance(result, dict):
            return cls.deny_error(f"malformed decision: expected an object, got {type(result).__name__}", policy_id)
        missing = {"allow", "violations"} - set(result)
        if missing:
            return cls.deny_error(f"malformed decision: missing {sorted(missing)}", policy_id)
        if not isinstance(result["allow"], bool):
            return cls.deny_error("malformed decision: allow is not a boolean", policy_id)
        try:
            d = cls.model_validate(
                {
                    "allow": result["allow"],
                    "violations": result["violations"],
                    "warnings": result.get("warnings", []),
                    "policy_id": result.get("policy_id", policy_id),
                    "policy_revision": result.get("policy_revision"),
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return cls.deny_error(f"malformed decision: {where}: {first['msg']}", policy_id)
        if d.allow and d.violations:
            return d.model_copy(update={"allow": False, "error": "malformed decision: allow with violations"})
        return d

    def to_json_dict(self) -> dict[str, Any]:
        """The decision's JSON (violations in Rust serde form), for logs and the CLI."""
        out = self.model_dump(mode="json")
        out["violations"] = [v.model_dump(mode="json") for v in self.violations]
        if out["error"] is None:
            del out["error"]
        return out

    def reason(self) -> str:
        if self.error:
            return f"denied: {self.error}"
        if self.allow:
            return "allowed"
        return "denied: " + "; ".join(v.describe() for v in self.violations)
