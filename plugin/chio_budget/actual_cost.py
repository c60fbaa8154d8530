"""Money out of a finished call: the actual cost, in policy-currency minor units.

``cost.py`` says who is spending on which tool before the call; this module
reads what the call cost after it: plain units, a ``MonetaryAmount``, or the
Rust ``chio_metering::cost::CostMetadata`` (JSON text, dict or pydantic
object). Foreign amounts are converted with exact rates, rounding up, so a
conversion never under-counts. Every failure is a ``CostError`` (an
``AmountError``, so still a ``ValueError``).
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any, Mapping

from pydantic import ValidationError

from .errors import AmountError
from .money import U64_MAX, MonetaryAmount, check_currency, check_units


class CostError(AmountError):
    """A cost (estimate or actual) that cannot be turned into policy-currency units."""


def check_rates(rates: Mapping[str, Any]) -> dict[str, Fraction]:
    """Rates as exact Fractions, refused up front (not at the first call) when unusable.

    A rate is policy-currency major units per one major unit of the foreign
    currency (``MonetaryAmount.convert``): a Fraction, an int or a decimal
    string. Floats are refused (``TypeError``): money is never a float.
    """
    out: dict[str, Fraction] = {}
    for code, rate in rates.items():
        code = check_currency(code, "rates key")
        if isinstance(rate, (float, bool)):
            raise TypeError(f"rates[{code!r}]: must be exact (Fraction, int or decimal string), not {type(rate).__name__}")
        try:
            r = Fraction(rate)
        except (ValueError, TypeError, ZeroDivisionError):
            raise ValueError(f"rates[{code!r}]: not a number: {rate!r}") from None
        if r <= 0:
            raise ValueError(f"rates[{code!r}]: must be > 0")
        out[code] = r
    return out


def to_units(amount: MonetaryAmount, currency: str, rates: Mapping[str, Any]) -> int:
    """``amount`` in ``currency`` minor units (rounded up); ``CostError`` without a rate."""
    if amount.currency == currency:
        return amount.units
    if amount.currency not in rates:
        raise CostError(f"cost in {amount.currency} but policy is in {currency} and no rate for {amount.currency}")
    return amount.convert(currency, rates[amount.currency]).units


def actual_units(result: Any, currency: str, rates: Mapping[str, Any]) -> tuple[int | None, str]:
    """The actual cost in ``currency`` minor units, and where it came from.

    Accepts ``None`` (-> ``None``: use the estimate), plain units, a
    ``MonetaryAmount``, or the Rust ``chio_metering::cost::CostMetadata``
    (JSON text, dict, or an object with ``model_dump``): its
    ``total_monetary_cost`` and the sum of its ``api_cost`` dimensions, each
    converted (rounding up). When both are there the larger is taken - the
    Rust total skips dimensions in a second currency, which would
    under-count. A ``CostMetadata`` with no monetary cost at all gives
    ``None`` (the estimate is committed). Raises ``CostError`` when the
    result is unreadable or a currency has no rate.
    """
    if result is None:
        return None, "estimate"
    if isinstance(result, bool):
        raise CostError("actual cost: a bool is not an amount")
    if isinstance(result, int):
        try:
            return check_units(result, "actual units"), "units"
        except ValueError as exc:
            raise CostError(str(exc)) from None
    if isinstance(result, MonetaryAmount):
        return to_units(result, currency, rates), "monetary_amount"
    if isinstance(result, (str, bytes)):
        try:
            result = json.loads(result)
        except json.JSONDecodeError as exc:
            raise CostError(f"cost metadata is not JSON: {exc.msg}") from None
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    if not isinstance(result, Mapping):
        raise CostError(f"actual cost: cannot read a {type(result).__name__}")
    return _from_cost_metadata(result, currency, rates)


def _from_cost_metadata(doc: Mapping[str, Any], currency: str, rates: Mapping[str, Any]) -> tuple[int | None, str]:
    try:
        total = doc.get("total_monetary_cost")
        tmc = None if total is None else to_units(MonetaryAmount.model_validate(total), currency, rates)
        dim_sum = _api_cost_sum(doc.get("dimensions") or [], currency, rates)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise CostError(f"cost metadata: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if tmc is None and dim_sum is None:
        return None, "estimate (cost metadata has no monetary cost)"
    if dim_sum is None or (tmc is not None and tmc >= dim_sum):
        return tmc, "total_monetary_cost"
    return dim_sum, "api_cost dimensions"


def _api_cost_sum(dims: Any, currency: str, rates: Mapping[str, Any]) -> int | None:
    """Sum of the ``api_cost`` dimensions (saturating at 2^64-1), or None when there are none."""
    if not isinstance(dims, list):
        raise CostError("cost metadata: dimensions is not a list")
    api = [d for d in dims if isinstance(d, Mapping) and d.get("dimension") == "api_cost"]
    if not api:
        return None
    total = 0
    for d in api:
        total = min(total + to_units(MonetaryAmount.model_validate(d.get("amount")), currency, rates), U64_MAX)
    return total
