"""Money out of a finished call: the actual cost, in policy-currency minor units.

``cost.py`` says who is spending on which tool before the call; this module
reads what the call cost after it: plain units, a ``MonetaryAmount``, or the
Rust ``chio_metering::cost::CostMetadata`` (JSON text, dict or pydantic
object). Foreign amounts are converted on the one conversion path
(``conversion.convert``: chio-link's rules, rounding up, at the request's
timestamp) with the guard's rate oracle. A rate that has gone stale since
the request still converts - the call happened. Every failure is a
``CostError`` (an ``AmountError``, so still a ``ValueError``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from .conversion import convert
from .errors import AmountError
from .money import U64_MAX, MonetaryAmount, check_units
from .rates import RateOracle


class CostError(AmountError):
    """A cost (estimate or actual) that cannot be turned into policy-currency units."""


def to_units(amount: MonetaryAmount, currency: str, oracle: RateOracle | None = None, at: int = 0,
             facts: list[dict[str, Any]] | None = None) -> int:
    """``amount`` in ``currency`` minor units; ``CostError`` when there is no usable conversion.

    Each conversion's facts (``Conversion.to_input()``) are appended to ``facts`` when given."""
    if amount.currency == currency:
        return amount.units
    c = convert(amount, currency, oracle, at)
    if facts is not None:
        facts.append(c.to_input())
    if c.units is None:
        raise CostError(f"cannot convert {amount.units} {amount.currency} to {currency}: {c.reason}")
    return c.units


def actual_units(result: Any, currency: str, oracle: RateOracle | None = None, at: int = 0,
                 facts: list[dict[str, Any]] | None = None) -> tuple[int | None, str]:
    """The actual cost in ``currency`` minor units, and where it came from.

    Accepts ``None`` (-> ``None``: use the estimate), plain units, a
    ``MonetaryAmount``, or the Rust ``chio_metering::cost::CostMetadata``
    (JSON text, dict, or an object with ``model_dump``): its
    ``total_monetary_cost`` and the sum of its ``api_cost`` dimensions, each
    converted (rounding up, with ``oracle`` at the request's timestamp
    ``at``). When both are there the larger is taken - the Rust total skips
    dimensions in a second currency, which would under-count. A
    ``CostMetadata`` with no monetary cost at all gives ``None`` (the
    estimate is committed). Raises ``CostError`` when the result is
    unreadable or a currency has no usable rate. ``facts`` collects each
    conversion made (for the decision log).
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
        return to_units(result, currency, oracle, at, facts), "monetary_amount"
    if isinstance(result, (str, bytes)):
        try:
            result = json.loads(result)
        except json.JSONDecodeError as exc:
            raise CostError(f"cost metadata is not JSON: {exc.msg}") from None
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    if not isinstance(result, Mapping):
        raise CostError(f"actual cost: cannot read a {type(result).__name__}")
    return _from_cost_metadata(result, lambda a: to_units(a, currency, oracle, at, facts))


def _from_cost_metadata(doc: Mapping[str, Any], units: Callable[[MonetaryAmount], int]) -> tuple[int | None, str]:
    try:
        total = doc.get("total_monetary_cost")
        tmc = None if total is None else units(MonetaryAmount.model_validate(total))
        dim_sum = _api_cost_sum(doc.get("dimensions") or [], units)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise CostError(f"cost metadata: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if tmc is None and dim_sum is None:
        return None, "estimate (cost metadata has no monetary cost)"
    if dim_sum is None or (tmc is not None and tmc >= dim_sum):
        return tmc, "total_monetary_cost"
    return dim_sum, "api_cost dimensions"


def _api_cost_sum(dims: Any, units: Callable[[MonetaryAmount], int]) -> int | None:
    """Sum of the ``api_cost`` dimensions (saturating at 2^64-1), or None when there are none."""
    if not isinstance(dims, list):
        raise CostError("cost metadata: dimensions is not a list")
    api = [d for d in dims if isinstance(d, Mapping) and d.get("dimension") == "api_cost"]
    if not api:
        return None
    total = 0
    for d in api:
        total = min(total + units(MonetaryAmount.model_validate(d.get("amount"))), U64_MAX)
    return total
