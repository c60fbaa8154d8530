"""Limits with windows and warnings: the YAML types, and the resolved plan.

A limit is written short (``max_per_agent: 3000``), in the Rust form
(``{units, currency}``) or in the long form with its own window and
warning thresholds (``{units: 3000, window: daily, warn_at: [0.8]}``).
The policy's ``window`` and ``warn_at`` apply to every limit that does not
set its own; ``max_per_invocation`` caps one call and has neither.

Thresholds are fractions of the limit in (0, 1] with at most four decimals,
kept as integer basis points (0.8 -> 8000) so no float ever meets money:
a threshold is reached when ``(current + requested) * 10000 >= bps * limit``.

``plan(policy)`` resolves all of it once per policy into plain values for
the hot path; ``compile_extras(policy)`` is what the compiler adds to the
data document for a policy that uses any of it (nothing otherwise, so such
a policy compiles to the same bytes as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Mapping, Protocol

from pydantic import AfterValidator, BeforeValidator, ConfigDict, PlainSerializer, field_validator, model_validator

from .money import MonetaryAmount
from .windows import ALL_TIME, ALL_TIME_WINDOW, CALENDAR, Window, check_timezone, parse_window

BPS = 10000
"""Basis points in a whole: a threshold of 0.8 is 8000 bps."""

SCOPES = ("total", "session", "agent", "tool")
"""The scopes that accumulate spend (and so may have a window and warnings)."""


def _threshold_bps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a threshold must be a number in (0, 1] such as 0.8, got {value!r}")
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:  # pragma: no cover - repr of a finite float is a decimal
        raise ValueError(f"a threshold must be a number in (0, 1], got {value!r}") from None
    if not exact.is_finite() or not 0 < exact <= 1:
        raise ValueError(f"a threshold must be in (0, 1] (a fraction of the limit), got {value!r}")
    bps = exact * BPS
    if bps != bps.to_integral_value():
        raise ValueError(f"a threshold has at most four decimals (basis points), got {value!r}")
    return int(bps)


def _a_list(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of fractions such as [0.8, 0.95], got {value!r}")
    return value


def _sorted_unique(bps: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(bps)) != len(bps):
        raise ValueError(f"a threshold is listed twice: {[b / BPS for b in bps]}")
    return tuple(sorted(bps))


Threshold = Annotated[int, BeforeValidator(_threshold_bps)]

Thresholds = Annotated[
    tuple[Threshold, ...],
    BeforeValidator(_a_list),
    AfterValidator(_sorted_unique),
    PlainSerializer(lambda bps: [b / BPS for b in bps], return_type=list),
]
"""``warn_at``: fractions in the YAML, sorted integer basis points in the model."""

WindowSpec = Annotated[Window, BeforeValidator(parse_window), PlainSerializer(lambda w: w.to_yaml())]
"""``window``: ``all_time``, ``daily``, ``weekly``, ``monthly`` or ``{rolling: SECONDS}``."""

TimeZone = Annotated[str, BeforeValidator(check_timezone)]
"""``timezone``: an IANA name, checked against the zone database at load."""


class Limit(MonetaryAmount):
    """A limit in its long form: the amount, and optionally its own window and thresholds.

    ``window``/``warn_at`` left out (None) means the policy's. A long form
    without ``units`` is refused: it would warn about, or window, a limit
    that does not exist.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    window: WindowSpec | None = None
    warn_at: Thresholds | None = None

    @model_validator(mode="before")
    @classmethod
    def _needs_units(cls, data: Any) -> Any:
        if isinstance(data, dict) and "units" not in data:
            given = [k for k in ("warn_at", "window") if k in data]
            if given:
                raise ValueError(f"{' and '.join(given)} given for a limit without units: "
                                 "write units (the limit itself) or remove it")
        return data


class InvocationCap(MonetaryAmount):
    """``max_per_invocation``: the most one call may cost (the grant's
    ``max_cost_per_invocation`` as policy data). It counts nothing, so it has
    no window and nothing to warn about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Any = None
    warn_at: Any = None

    @field_validator("window", "warn_at")
    @classmethod
    def _not_for_a_cap(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("max_per_invocation caps each call on its own: it has no window and no warn_at")
        return value


# --------------------------------------------------------------------------
# resolved, plain values for the guard and the compiler


@dataclass(frozen=True)
class Rule:
    """One limit as it applies: units, window and thresholds (bps) resolved."""

    units: int
    window: Window
    warn_at: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """Every limit of a policy, resolved: ``rule(scope, tool_key)`` is None where no limit applies."""

    rules: dict[str, Rule]  # total, session, agent
    tools: dict[str, Rule]
    invocation: int | None
    timezone: str

    def rule(self, scope: str, tool_key: str | None = None) -> Rule | None:
        return self.tools.get(tool_key or "") if scope == "tool" else self.rules.get(scope)

    @property
    def windowed(self) -> bool:
        return any(r.window.kind != ALL_TIME for r in (*self.rules.values(), *self.tools.values()))

    @property
    def calendar(self) -> bool:
        return any(r.window.kind in CALENDAR for r in (*self.rules.values(), *self.tools.values()))


class PolicyLimits(Protocol):
    """What ``plan`` reads of a ``policy.BudgetPolicy`` (a Protocol, because this module
    sits below ``policy``: the policy model is built from the types above)."""

    window: Window
    warn_at: tuple[int, ...]
    timezone: str
    max_total: MonetaryAmount
    max_per_session: MonetaryAmount | None
    max_per_agent: MonetaryAmount | None
    max_per_tool: Mapping[str, MonetaryAmount]
    max_per_invocation: MonetaryAmount | None


def _rule(policy: PolicyLimits, limit: MonetaryAmount) -> Rule:
    window = getattr(limit, "window", None) or policy.window
    warn_at = getattr(limit, "warn_at", None)
    return Rule(limit.units, window, policy.warn_at if warn_at is None else warn_at)


def plan(policy: PolicyLimits) -> Plan:
    rules = {"total": _rule(policy, policy.max_total)}
    for scope, name in (("session", "max_per_session"), ("agent", "max_per_agent")):
        limit = getattr(policy, name)
        if limit is not None:
            rules[scope] = _rule(policy, limit)
    tools = {k: _rule(policy, v) for k, v in policy.max_per_tool.items()}
    cap = policy.max_per_invocation
    return Plan(rules, tools, cap.units if cap is not None else None, policy.timezone)


def reached_at(bps: int, limit: int) -> int:
    """The least whole amount that reaches ``bps`` of ``limit``: ``ceil(bps * limit / 10000)``.

    For a whole number ``a``: ``a >= reached_at(bps, limit)`` exactly when
    ``a * 10000 >= bps * limit``, the rule the issue states; the Rego compares
    with this instead of multiplying on every decision.
    """
    return -(-bps * limit // BPS)


def compile_extras(policy: PolicyLimits) -> dict[str, Any]:
    """The data-document keys for windows, thresholds and the per-call cap.

    Only what the policy uses: ``max_per_invocation``, ``timezone`` (when a
    calendar window needs it), ``windows`` and ``warn_at`` by scope (tools by
    key), listing only limits that are not all-time / that have thresholds.
    A threshold compiles to ``{"bps": 8000, "units": reached_at(8000, limit)}``.
    """
    p = plan(policy)
    out: dict[str, Any] = {}
    if p.invocation is not None:
        out["max_per_invocation"] = p.invocation
    if p.calendar:
        out["timezone"] = p.timezone
    windows = _by_scope(p, lambda r: r.window.to_data() if r.window != ALL_TIME_WINDOW else None)
    if windows:
        out["windows"] = windows
    warn_at = _by_scope(p, lambda r: [{"bps": b, "units": reached_at(b, r.units)} for b in r.warn_at] or None)
    if warn_at:
        out["warn_at"] = warn_at
    return out


def _by_scope(p: Plan, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scope, rule in p.rules.items():
        v = value(rule)
        if v is not None:
            out[scope] = v
    tools = {k: v for k, v in ((k, value(r)) for k, r in sorted(p.tools.items())) if v is not None}
    if tools:
        out["tool"] = tools
    return out
