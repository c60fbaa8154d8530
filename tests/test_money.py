"""Money is u64 minor units; conversions never under-count spend."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chio_budget.money import U64_MAX, MonetaryAmount, check_units, saturating_add


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, True, "5", None])
def test_units_reject_everything_but_u64_ints(bad):
    with pytest.raises(ValidationError):
        MonetaryAmount(units=bad, currency="USD")
    with pytest.raises(ValueError):
        check_units(bad)


@pytest.mark.parametrize("bad", ["usd", "U$D", "EUR/USD", 840])
def test_currency_is_a_well_formed_code(bad):
    with pytest.raises(ValidationError):
        MonetaryAmount(units=1, currency=bad)


def test_bounds_are_accepted():
    assert MonetaryAmount(units=0, currency="USD").units == 0
    assert MonetaryAmount(units=U64_MAX, currency="JPY").units == U64_MAX


def test_saturating_add():
    assert saturating_add(U64_MAX - 10, 20) == U64_MAX
    assert saturating_add(1, 2) == 3


def test_conversion_lives_in_one_place():
    # MonetaryAmount no longer converts itself (it had one rounding step and a typed exponent
    # table that read any unknown code as 2 decimals): conversion.convert does, as chio-link.
    assert not hasattr(MonetaryAmount, "convert")
