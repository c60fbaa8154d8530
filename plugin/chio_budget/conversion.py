"""Converting a cost into the policy currency, exactly as the kernel does.

``convert_units`` is chio-link's ``convert_units`` step for step: one ceiling
division for the rate and the two scales, then - only when there is a
margin - a second ceiling division for ``(10000 + margin_bps) / 10000``. Both
round up, so a conversion never under-counts spend, and the two steps are
kept (one combined rounding can come out a unit lower: 100 EUR cents at
1.0842 with 200 bps is 112 USD cents, not 111). Every intermediate that the
kernel computes in ``u128`` is checked against 2^128-1, and a result past
2^64-1 is an overflow - never wrapped, never saturated.

``convert`` wraps it for one request: it asks the oracle, and returns a
``Conversion`` that records the facts (the original amount, the rate as a
fraction, its source and age, the scales, the margin, the converted units)
or why there is no usable number (``rate_unavailable``, ``rate_overflow``).
It never raises for a bad or missing rate: that is a policy decision, made in
Rego from these facts (``rego/chio/budget/conversion.rego``), which also
judges staleness from ``age_seconds`` and ``max_age_seconds``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace as _replace
from typing import Any, Literal

from .errors import AmountError
from .money import U64_MAX, MonetaryAmount
from .rates import U32_MAX, U128_MAX, Rate, RateOracle, pair_key

BPS_DENOMINATOR = 10_000

log = logging.getLogger("chio_budget.conversion")

Status = Literal["ok", "rate_unavailable", "rate_overflow"]


class ConversionOverflow(AmountError):
    """An intermediate past 2^128-1 or a result past 2^64-1 (the kernel's ``ArithmeticOverflow``)."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def convert_units(units: int, base_scale: int, quote_scale: int, numerator: int, denominator: int,
                  margin_bps: int = 0, pair: str = "") -> int:
    """``units`` of the base currency in quote minor units: chio-link's ``convert_units``.

    ``converted = ceil(units * numerator * quote_scale / (base_scale * denominator))``,
    then, when ``margin_bps > 0``, ``ceil(converted * (10000 + margin_bps) / 10000)``.
    ``ConversionOverflow`` where the kernel's checked ``u128``/``u64``
    arithmetic fails; ``AmountError`` for a zero scale or denominator or an
    argument outside its Rust type.
    """
    for value, what, top in ((units, "units", U64_MAX), (base_scale, "base scale", U64_MAX),
                             (quote_scale, "quote scale", U64_MAX), (numerator, "rate numerator", U128_MAX),
                             (denominator, "rate denominator", U128_MAX), (margin_bps, "margin_bps", U32_MAX)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise AmountError(f"{what}: must be an integer between 0 and {top}, got {value!r}")
    if base_scale == 0 or quote_scale == 0:
        raise AmountError("currency scales must be non-zero")
    if denominator == 0:
        raise AmountError(f"{pair} returned a zero rate denominator")
    top = units * numerator
    if top > U128_MAX or top * quote_scale > U128_MAX:
        raise ConversionOverflow(f"conversion numerator overflowed for {pair}")
    bottom = base_scale * denominator
    if bottom > U128_MAX:
        raise ConversionOverflow(f"conversion denominator overflowed for {pair}")
    converted = _ceil_div(top * quote_scale, bottom)
    if margin_bps:
        widened = converted * (BPS_DENOMINATOR + margin_bps)
        if widened > U128_MAX:
            raise ConversionOverflow(f"margin application overflowed for {pair}")
        converted = _ceil_div(widened, BPS_DENOMINATOR)
    if converted > U64_MAX:
        raise ConversionOverflow(f"converted units exceeded u64 for {pair}")
    return converted


@dataclass(frozen=True)
class Conversion:
    """One cost converted (or not) into ``currency`` for a request at ``at``.

    ``units`` is the converted amount when ``status == "ok"`` (else None);
    ``stale`` says whether the rate was older than ``max_age_seconds`` at the
    request's timestamp (a judgement the Rego policy makes again from the
    same numbers). ``reason`` explains a failed status.
    """

    status: Status
    original: MonetaryAmount
    currency: str
    at: int
    units: int | None = None
    rate: Rate | None = None
    max_age_seconds: int | None = None
    margin_bps: int | None = None
    base_scale: int | None = None
    quote_scale: int | None = None
    reason: str | None = None

    @property
    def pair(self) -> str:
        return pair_key(self.original.currency, self.currency)

    @property
    def age_seconds(self) -> int | None:
        return None if self.rate is None else self.rate.age_seconds(self.at)

    @property
    def stale(self) -> bool:
        """Older than allowed: the kernel's ``age_seconds > max_age_seconds`` (exactly max_age is fresh)."""
        age = self.age_seconds
        return age is not None and self.max_age_seconds is not None and age > self.max_age_seconds

    @property
    def usable(self) -> bool:
        return self.status == "ok" and not self.stale

    @property
    def code(self) -> str | None:
        """The violation code a deny carries: None when usable, else ``rate_unavailable|rate_overflow|rate_stale``."""
        if self.status != "ok":
            return self.status
        return "rate_stale" if self.stale else None

    @property
    def input_units(self) -> int:
        """What ``input.cost.units`` carries: the converted units, or 0 when there are none."""
        return self.units if self.units is not None else 0

    def to_input(self) -> dict[str, Any]:
        """``input.conversion`` of the Rego contract (also what the decision log records)."""
        r = self.rate
        return {
            "status": self.status,
            "original": {"units": self.original.units, "currency": self.original.currency},
            "pair": self.pair,
            "rate": None if r is None else {
                "numerator": r.numerator, "denominator": r.denominator, "source": r.source,
                "updated_at": r.updated_at, "age_seconds": self.age_seconds,
            },
            "max_age_seconds": self.max_age_seconds,
            "margin_bps": self.margin_bps,
            "base_scale": self.base_scale,
            "quote_scale": self.quote_scale,
            "converted_units": self.units,
            "reason": self.reason,
        }


def convert(amount: MonetaryAmount, to_currency: str, oracle: RateOracle | None, at: int) -> Conversion:
    """``amount`` in ``to_currency`` minor units for a request at ``at`` (Unix seconds).

    Never raises for a missing, zero, failing or overflowing rate: the
    ``Conversion`` says which (and why), so the deny is a policy decision.
    The same currency converts to itself without asking the oracle.
    """
    base = Conversion("rate_unavailable", amount, to_currency, at)
    if amount.currency == to_currency:
        return Conversion("ok", amount, to_currency, at, units=amount.units)
    if oracle is None:
        return _replace(base, reason="no rate oracle is configured (pass rates= to the guard)")
    registry = oracle.currencies
    base = _replace(base, max_age_seconds=oracle.max_age_seconds, margin_bps=oracle.margin_bps,
                    base_scale=registry.get(amount.currency), quote_scale=registry.get(to_currency))
    for code in (amount.currency, to_currency):
        if registry.get(code) is None:
            return _replace(base, reason=registry.unknown(code))
    try:
        rate = oracle.rate(amount.currency, to_currency, at)
    except Exception as exc:  # a plugged-in oracle's own failure: no rate, fail closed
        return _replace(base, reason=f"rate oracle failed: {type(exc).__name__}: {exc}")
    if rate is None:
        return _replace(base, reason=f"no {base.pair} rate (cross rates are not derived)")
    if not isinstance(rate, Rate):
        return _replace(base, reason=f"rate oracle returned {type(rate).__name__}, not a Rate")
    base = _replace(base, rate=rate)
    if rate.numerator == 0 or rate.denominator == 0:
        return _replace(base, reason=f"{base.pair} rate is zero or has a zero denominator")
    return _apply(base, rate)


def _apply(base: Conversion, rate: Rate) -> Conversion:
    assert base.base_scale is not None and base.quote_scale is not None and base.margin_bps is not None
    try:
        units = convert_units(base.original.units, base.base_scale, base.quote_scale, rate.numerator,
                              rate.denominator, base.margin_bps, base.pair)
    except ConversionOverflow as exc:
        return _replace(base, status="rate_overflow", reason=str(exc))
    if rate.numerator > U64_MAX or rate.denominator > U64_MAX:
        # The kernel's conversion evidence carries the fraction as u64s; it refuses a wider one.
        return _replace(base, status="rate_overflow", reason=f"{base.pair} rate fraction does not fit in u64")
    return _replace(base, status="ok", units=units)


def settle_amount(actual: MonetaryAmount, currency: str, oracle: RateOracle | None, at: int, now: int,
                  receipt_id: str, estimate: int) -> tuple[int | None, Conversion]:
    """A call's actual foreign cost in ``currency`` units, converted at the request's timestamp ``at``.

    The call happened, so this never refuses: a rate stale by commit time
    ``now`` (or already at ``at``) still converts, with a warning; with no
    usable rate the estimate is committed (None), and past 2^64-1 the most a
    counter holds, both logged as errors. Returns the units and the facts.
    """
    c = convert(actual, currency, oracle, at)
    if c.status == "ok":
        age_now = None if c.rate is None else c.rate.age_seconds(now)
        if age_now is not None and c.max_age_seconds is not None and (c.stale or age_now > c.max_age_seconds):
            log.warning("commit %s: the %s rate from %s is %s s old, stale by commit time (max %s s); "
                        "committed anyway, the call happened", receipt_id, c.pair, c.rate.source, age_now,
                        c.max_age_seconds)
        return c.units, c
    if c.status == "rate_overflow":
        log.error("commit %s: %s; committing %s (2^64-1)", receipt_id, c.reason, U64_MAX)
        return U64_MAX, c
    log.error("commit %s: %s; committing the estimate (%s)", receipt_id, c.reason, estimate)
    return None, c
