"""Money is u64 minor units; conversions never under-count spend."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
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


def test_convert_rounds_up_against_the_spender():
    # 1 cent at 151.37 JPY/USD is 1.5137 yen: charged as 2 yen, never 1.
    assert MonetaryAmount(units=1, currency="USD").convert("JPY", "151.37").units == 2
    # 100 yen at 0.0066 USD/JPY = 0.66 USD = 66 cents exactly.
    assert MonetaryAmount(units=100, currency="JPY").convert("USD", "0.0066").units == 66
    # KWD has three decimals: 1 fils at 3.25 USD/KWD = 0.325 cents -> 1 cent.
    assert MonetaryAmount(units=1, currency="KWD").convert("USD", "3.25").units == 1


def test_convert_refuses_float_rates():
    with pytest.raises(TypeError):
        MonetaryAmount(units=1, currency="USD").convert("EUR", 0.9)


@given(units=st.integers(0, 10**12), num=st.integers(1, 10**6), den=st.integers(1, 10**6))
def test_conversion_never_undercounts(units, num, den):
    rate = Fraction(num, den)
    out = MonetaryAmount(units=units, currency="USD").convert("EUR", rate)
    assert out.units >= units * rate
    assert out.units - units * rate < 1
