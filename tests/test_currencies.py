"""Currency codes and scales: the kernel's pins, ISO 4217 from CLDR, declared units, nothing silent."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chio_budget.currencies import (DEFAULT_CURRENCIES, KERNEL_SCALES, CurrencyError, CurrencyRegistry,
                                    check_code, declaration_problem)
from chio_budget.money import MonetaryAmount


def test_kernel_pins_are_exactly_chio_links():
    assert dict(KERNEL_SCALES) == {"USD": 100, "EUR": 100, "GBP": 100, "JPY": 1, "USDC": 10**6, "USDT": 10**6,
                                   "BTC": 10**8, "ETH": 10**18, "LINK": 10**18}
    assert all(DEFAULT_CURRENCIES.origin(c) == "kernel" for c in KERNEL_SCALES)


@pytest.mark.parametrize("code, scale", [("BHD", 1000), ("KWD", 1000), ("CLP", 1), ("CHF", 100), ("CLF", 10**4),
                                         ("ISK", 1)])
def test_other_iso_codes_take_their_exponent_from_cldr(code, scale):
    assert DEFAULT_CURRENCIES.scale(code) == scale
    assert DEFAULT_CURRENCIES.origin(code) == "ISO 4217 (CLDR)"


@pytest.mark.parametrize("code, said", [
    ("XYZ", "unknown currency 'XYZ': not a kernel currency, not ISO 4217, and not declared"),
    ("credits", "unknown currency 'credits'"),
    ("XAU", "currency 'XAU' has no minor unit in ISO 4217; declare its scale"),
    ("XCC", "deliberately unpriced by the kernel"),
    ("CHIO", "deliberately unpriced by the kernel"),
    ("usd", "did you mean 'USD'?"),
])
def test_an_unknown_code_is_an_error_never_a_two_decimal_default(code, said):
    assert DEFAULT_CURRENCIES.get(code) is None
    assert code not in DEFAULT_CURRENCIES
    with pytest.raises(CurrencyError, match=said.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        DEFAULT_CURRENCIES.scale(code)


def test_declared_units_are_added():
    reg = DEFAULT_CURRENCIES.with_units({"credits": 1, "XAU": 1000, "USD": 100}, {"credits": "rates.yaml:4"})
    assert (reg.scale("credits"), reg.origin("credits")) == (1, "rates.yaml:4")
    assert reg.scale("XAU") == 1000
    assert reg.scale("USD") == 100 and reg.origin("USD") == "kernel"  # restating a pin is fine
    assert list(reg) == ["credits", "XAU", "USD"]


@pytest.mark.parametrize("code, scale, problem", [
    ("USD", 1000, "contradicts the kernel scale of USD (100 minor units per unit), got 1000"),
    ("ETH", 10**9, "contradicts the kernel scale of ETH"),
    ("BHD", 100, "contradicts the ISO 4217 (CLDR) scale of BHD (1000 minor units per unit), got 100"),
    ("XCC", 1, "deliberately unpriced by the kernel"),
    ("chio", 1, "deliberately unpriced by the kernel"),
    ("credits", 0, "scale must be between 1 and 2^64-1, got 0"),
    ("credits", 2**64, "scale must be between 1 and 2^64-1"),
    ("credits", 1.0, "scale must be a whole number"),
    ("credits", True, "scale must be a whole number"),
    ("a/b", 1, "must be a currency code"),
    ("eur", 100, "write 'EUR'"),
])
def test_declarations_may_not_contradict_or_invent(code, scale, problem):
    assert problem in declaration_problem(code, scale)
    with pytest.raises(CurrencyError):
        CurrencyRegistry({code: scale})


@pytest.mark.parametrize("good", ["USD", "USDC", "LINK", "credits", "api-credits", "tok_2"])
def test_monetary_amount_accepts_the_new_codes(good):
    assert MonetaryAmount(units=1, currency=good).currency == good
    assert check_code(good) == good


@pytest.mark.parametrize("bad", ["usd", "Eur", "", "1USD", "EUR/USD", "s1:x", "x" * 33, 840, None])
def test_monetary_amount_refuses_malformed_codes(bad):
    with pytest.raises(ValidationError):
        MonetaryAmount(units=1, currency=bad)


def test_policy_currency_must_have_a_scale_located(tmp_path):
    from chio_budget.errors import PolicyError
    from chio_budget.policy import load_policies, parse_policy

    with pytest.raises(PolicyError) as exc:
        parse_policy("id: p\nmax_total: 5\ncurrency: credits\n", "policies/p.yaml")
    assert exc.value.errors == ["policies/p.yaml:3: currency: unknown currency 'credits': not a kernel currency, "
                                "not ISO 4217, and not declared under 'currencies:' in rates.yaml"]
    with pytest.raises(PolicyError, match=r"policies/p.yaml:1: currency: currency 'XAU' has no minor unit"):
        parse_policy("currency: XAU\nmax_total: 5\n", "policies/p.yaml", default_id="p")
    declared = DEFAULT_CURRENCIES.with_units({"credits": 1})
    assert parse_policy("currency: credits\nmax_total: 5\n", default_id="p", currencies=declared).currency == "credits"
    (tmp_path / "eth.yaml").write_text("currency: ETH\nmax_total: 1000000000000000000\n")
    assert load_policies(tmp_path)["eth"].max_total.units == 10**18
    (tmp_path / "c.yaml").write_text("currency: credits\nmax_total: 5\n")
    assert set(load_policies(tmp_path, currencies=declared)) == {"eth", "c"}
