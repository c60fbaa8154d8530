"""Money as integers in a currency's minor unit, and nothing else.

Amounts are the Rust ``u64``: 0 <= units <= 2**64 - 1. Floats, bools,
negatives and larger ints are refused rather than coerced, because a silent
coercion is exactly how a budget gets under-counted. Converting between
currencies is ``conversion.convert``'s job (scales from ``currencies``,
rates from a ``rates.RateOracle``); an amount here only knows its code.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .currencies import CurrencyError, check_code
from .errors import AmountError

U64_MAX = 2**64 - 1


def _strict_units(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"must be an integer number of minor units, got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    if value > U64_MAX:
        raise ValueError(f"must be <= 2^64-1 ({U64_MAX}), got {value}")
    return value


def _currency_code(value: Any) -> str:
    try:
        return check_code(value)
    except CurrencyError as exc:
        raise ValueError(str(exc).removeprefix("currency: ")) from None


Units = Annotated[int, BeforeValidator(_strict_units)]
"""A u64 amount in minor units; validated strictly (no coercion)."""

Currency = Annotated[str, BeforeValidator(_currency_code)]
"""A currency code, checked for shape (``currencies.check_code``); whether it has
a scale is asked of a ``CurrencyRegistry`` where one is needed."""


def check_units(value: Any, what: str = "units") -> int:
    """Validate a plain value as u64 minor units, raising ``AmountError`` (a ``ValueError``) naming ``what``."""
    try:
        return _strict_units(value)
    except ValueError as exc:
        raise AmountError(f"{what}: {exc}") from None


def saturating_add(a: int, b: int) -> int:
    """u64 ``saturating_add``, as the Rust enforcer does it."""
    return min(a + b, U64_MAX)


def saturating_sub(a: int, b: int) -> int:
    return max(a - b, 0)


class MonetaryAmount(BaseModel):
    """``chio_core::capability::MonetaryAmount``: ``{units, currency}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: Units = Field(description="integer amount in the currency's minor unit")
    currency: Currency
