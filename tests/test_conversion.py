"""Conversion gives chio-link's numbers to the unit, and never favours the spender."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chio_budget.conversion import ConversionOverflow, convert, convert_units
from chio_budget.currencies import DEFAULT_CURRENCIES
from chio_budget.errors import AmountError
from chio_budget.money import U64_MAX, MonetaryAmount
from chio_budget.rates import FeedRates, Rate, StaticRates

U128_MAX = 2**128 - 1
T0 = 1_767_225_600


def static(pairs: dict[str, str], *, margin_bps: int = 0, max_age_seconds: int = 600, updated_at: int = T0):
    return StaticRates({k: Rate.from_decimal(v, updated_at, "test") for k, v in pairs.items()},
                       margin_bps=margin_bps, max_age_seconds=max_age_seconds)


# -- chio-link's own tests (crates/economy/chio-link/src/convert.rs) ----------

def test_chio_link_converts_with_ceiling_rounding():
    # ETH/USD 300_000 / 100 (3000.00), 10^15 wei = 0.001 ETH = 3.00 USD
    assert convert_units(10**15, 10**18, 100, 300_000, 100, 0) == 300


def test_chio_link_applies_margin_conservatively():
    assert convert_units(10**15, 10**18, 100, 300_000, 100, 200) == 306


def test_chio_link_converts_with_default_supported_scales():
    oracle = static({"ETH/USD": "3000.00"})
    c = convert(MonetaryAmount(units=10**15, currency="ETH"), "USD", oracle, T0)
    assert (c.status, c.units, c.base_scale, c.quote_scale) == ("ok", 300, 10**18, 100)
    assert (c.rate.numerator, c.rate.denominator) == (300_000, 100)  # the decimal string, unreduced
    with_margin = convert(MonetaryAmount(units=10**15, currency="ETH"), "USD", static({"ETH/USD": "3000.00"},
                                                                                      margin_bps=200), T0)
    assert with_margin.units == 306


# -- the two rounding steps ---------------------------------------------------

def test_two_rounding_steps_are_kept():
    # 100 EUR cents at 1.0842 = 108.42 -> 109, then * 1.02 = 111.18 -> 112.
    # One combined rounding, ceil(100 * 1.0842 * 1.02) = ceil(110.5884), would give 111.
    assert convert_units(100, 100, 100, 10842, 10000, 200) == 112
    c = convert(MonetaryAmount(units=100, currency="EUR"), "USD", static({"EUR/USD": "1.0842"}, margin_bps=200), T0)
    assert c.units == 112


def _kernel_overflows(units, bs, qs, num, den, bps) -> bool:
    """The kernel's checked u128/u64 arithmetic, written independently of the code under test."""
    if units * num > U128_MAX or units * num * qs > U128_MAX or bs * den > U128_MAX:
        return True
    converted = -(-units * num * qs // (bs * den))
    if bps and converted * (10_000 + bps) > U128_MAX:
        return True
    if bps:
        converted = -(-converted * (10_000 + bps) // 10_000)
    return converted > U64_MAX


scales = st.one_of(st.sampled_from([1, 100, 1000, 10**6, 10**8, 10**18]), st.integers(1, U64_MAX))
amounts = st.one_of(st.integers(0, 10**6), st.integers(0, U64_MAX))
parts = st.one_of(st.integers(1, 10**6), st.integers(1, 2**64 - 1), st.integers(1, U128_MAX))


@settings(max_examples=300, deadline=None)
@given(units=amounts, bs=scales, qs=scales, num=parts, den=parts, bps=st.one_of(st.just(0), st.integers(0, 20_000)))
def test_conversion_matches_fraction_and_never_favours_the_spender(units, bs, qs, num, den, bps):
    exact = Fraction(units * num * qs, bs * den)
    if _kernel_overflows(units, bs, qs, num, den, bps):
        with pytest.raises(ConversionOverflow):
            convert_units(units, bs, qs, num, den, bps)
        return
    out = convert_units(units, bs, qs, num, den, bps)
    step1 = -(-exact.numerator // exact.denominator)
    widened = Fraction(step1 * (10_000 + bps), 10_000)
    assert out == (step1 if bps == 0 else -(-widened.numerator // widened.denominator))
    assert out >= exact * Fraction(10_000 + bps, 10_000)      # never below the exact cost with margin
    assert out - exact * Fraction(10_000 + bps, 10_000) < 1 + Fraction(10_000 + bps, 10_000)  # at most two units up


def test_overflow_past_u64_is_an_error_not_a_wrap():
    with pytest.raises(ConversionOverflow, match="exceeded u64"):
        convert_units(U64_MAX, 100, 1, 15137, 100, 0)  # 2^64-1 cents at 151.37 yen
    c = convert(MonetaryAmount(units=U64_MAX, currency="USD"), "JPY", static({"USD/JPY": "151.37"}), T0)
    assert (c.status, c.units, c.code) == ("rate_overflow", None, "rate_overflow")
    assert c.input_units == 0


def test_u128_intermediate_overflow_denies_like_the_kernel_even_when_the_result_would_fit():
    # units * numerator * quote_scale is past 2^128 although the quotient is tiny: the kernel errs.
    with pytest.raises(ConversionOverflow, match="numerator overflowed"):
        convert_units(U64_MAX, 10**18, 10**18, 2**64, 2**64, 0)


def test_margin_overflow_is_reported_as_the_kernel_does():
    with pytest.raises(ConversionOverflow):
        convert_units(U64_MAX, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("args", [(1, 0, 100, 1, 1), (1, 100, 0, 1, 1), (1, 100, 100, 1, 0), (-1, 1, 1, 1, 1),
                                  (1.0, 1, 1, 1, 1), (True, 1, 1, 1, 1), (1, 1, 1, 2**128, 1)])
def test_bad_arguments_are_amount_errors(args):
    with pytest.raises(AmountError):
        convert_units(*args)


# -- exponents: USD <-> JPY <-> BHD --------------------------------------------

def test_usd_jpy_bhd_exponents():
    assert [DEFAULT_CURRENCIES.scale(c) for c in ("USD", "JPY", "BHD")] == [100, 1, 1000]
    o = static({"USD/JPY": "151.37", "USD/BHD": "0.376", "JPY/BHD": "0.0025"})
    usd = MonetaryAmount(units=1, currency="USD")
    assert convert(usd, "JPY", o, T0).units == 2           # 1.5137 yen, rounded up
    assert convert(usd, "BHD", o, T0).units == 4           # 3.76 fils, rounded up
    assert convert(MonetaryAmount(units=100, currency="JPY"), "BHD", o, T0).units == 250  # 0.250 BHD
    assert convert(MonetaryAmount(units=1000, currency="BHD"), "USD", o, T0).units == 266  # 1/0.376 = 2.6595... USD
    assert convert(MonetaryAmount(units=250, currency="BHD"), "JPY", o, T0).units == 100   # inverse, exact


# -- staleness against the request's timestamp ---------------------------------

def test_rate_exactly_max_age_old_is_fresh_and_one_second_more_is_stale():
    o = static({"EUR/USD": "1.0842"}, max_age_seconds=600)
    eur = MonetaryAmount(units=100, currency="EUR")
    at_limit = convert(eur, "USD", o, T0 + 600)
    past = convert(eur, "USD", o, T0 + 601)
    assert (at_limit.age_seconds, at_limit.stale, at_limit.usable, at_limit.code) == (600, False, True, None)
    assert (past.age_seconds, past.stale, past.usable, past.code) == (601, True, False, "rate_stale")
    assert past.units == 109  # converted all the same: the deny is Rego's, from these facts


def test_rate_from_the_future_has_age_zero():
    c = convert(MonetaryAmount(units=1, currency="EUR"), "USD", static({"EUR/USD": "1"}), T0 - 5)
    assert (c.age_seconds, c.stale) == (0, False)


# -- missing, zero, unknown -----------------------------------------------------

def test_no_cross_rates_are_derived():
    o = static({"EUR/USD": "1.0842", "USD/JPY": "151.37"})
    c = convert(MonetaryAmount(units=100, currency="EUR"), "JPY", o, T0)
    assert c.status == "rate_unavailable"
    assert c.reason == "no EUR/JPY rate (cross rates are not derived)"


@pytest.mark.parametrize("rate, reason", [
    (Rate(0, 1, T0, "feed"), "EUR/USD rate is zero or has a zero denominator"),
    (Rate(1, 0, T0, "feed"), "EUR/USD rate is zero or has a zero denominator"),
])
def test_zero_rate_is_unavailable(rate, reason):
    c = convert(MonetaryAmount(units=100, currency="EUR"), "USD", FeedRates(lambda *a: rate), T0)
    assert (c.status, c.reason, c.units) == ("rate_unavailable", reason, None)


def test_unknown_currency_and_missing_oracle_are_unavailable_with_a_reason():
    eur = MonetaryAmount(units=100, currency="EUR")
    assert "no rate oracle" in convert(eur, "USD", None, T0).reason
    c = convert(MonetaryAmount(units=1, currency="XYZ"), "USD", static({}), T0)
    assert c.status == "rate_unavailable" and "unknown currency 'XYZ'" in c.reason


def test_a_failing_oracle_is_unavailable_not_an_exception():
    def boom(*_):
        raise ConnectionError("feed down")

    c = convert(MonetaryAmount(units=100, currency="EUR"), "USD", FeedRates(boom), T0)
    assert (c.status, c.reason) == ("rate_unavailable", "rate oracle failed: ConnectionError: feed down")


def test_rate_fraction_wider_than_u64_is_refused_like_the_kernels_evidence():
    c = convert(MonetaryAmount(units=1, currency="EUR"), "USD", FeedRates(lambda *a: Rate(2**64, 2**64, T0)), T0)
    assert (c.status, c.reason) == ("rate_overflow", "EUR/USD rate fraction does not fit in u64")


def test_same_currency_needs_no_rate():
    c = convert(MonetaryAmount(units=7, currency="USD"), "USD", None, T0)
    assert (c.status, c.units, c.rate) == ("ok", 7, None)


def test_conversion_facts_for_the_opa_input():
    c = convert(MonetaryAmount(units=100, currency="EUR"), "USD", static({"EUR/USD": "1.0842"}, margin_bps=200), T0 + 12)
    assert c.to_input() == {
        "status": "ok", "original": {"units": 100, "currency": "EUR"}, "pair": "EUR/USD",
        "rate": {"numerator": 10842, "denominator": 10000, "source": "test", "updated_at": T0, "age_seconds": 12},
        "max_age_seconds": 600, "margin_bps": 200, "base_scale": 100, "quote_scale": 100,
        "converted_units": 112, "reason": None,
    }
