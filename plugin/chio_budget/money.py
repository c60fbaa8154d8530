"""Money as integers in a currency's minor unit, and nothing else.

Amounts are the Rust ``u64``: 0 <= units <= 2**64 - 1. Floats, bools,
negatives and larger ints are refused rather than coerced, because a silent
coercion is exactly how a budget gets under-counted. Conversions between
currencies round against the spender (up), so spend is never under-counted.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .currencies import CurrencyError, check_code
from .errors import AmountError

U64_MAX = 2**64 - 1

# ISO 4217 minor-unit exponents for the currencies we expect; everything
# else that is three upper-case letters defaults to 2 (the common case).
_MINOR_UNIT_EXPONENT = {
    "BHD": 3, "CLP": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0,
    "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "TND": 3, "UGX": 0, "VND": 0,
    "XAF": 0, "XOF": 0, "XPF": 0,
}


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


def check_currency(value: Any, what: str = "currency") -> str:
    try:
        return _currency_code(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def saturating_add(a: int, b: int) -> int:
    """u64 ``saturating_add``, as the Rust enforcer does it."""
    return min(a + b, U64_MAX)


def saturating_sub(a: int, b: int) -> int:
    return max(a - b, 0)


def minor_unit_exponent(currency: str) -> int:
    return _MINOR_UNIT_EXPONENT.get(currency, 2)


class MonetaryAmount(BaseModel):
    """``chio_core::capability::MonetaryAmount``: ``{units, currency}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: Units = Field(description="integer amount in the currency's minor unit")
    currency: Currency

    def convert(self, to_currency: str, rate: Fraction | str | int) -> "MonetaryAmount":
        """Convert at ``rate`` (units of ``to_currency`` major per one major unit
        of ours), rounding up: a conversion must never under-count spend.

        The rate is taken as an exact ``Fraction`` (a decimal string such as
        ``"151.37"`` is exact); floats are refused for the same reason as in
        amounts.
        """
        if isinstance(rate, float):
            raise TypeError("rate must be exact (Fraction, int or decimal string), not float")
        to_currency = check_currency(to_currency, "to_currency")
        if to_currency == self.currency:
            return self
        r = Fraction(rate)
        if r < 0:
            raise ValueError("rate must be >= 0")
        scale = Fraction(10) ** (minor_unit_exponent(to_currency) - minor_unit_exponent(self.currency))
        exact = self.units * r * scale
        units = -((-exact.numerator) // exact.denominator)  # ceil
        return MonetaryAmount(units=check_units(units, "converted units"), currency=to_currency)
