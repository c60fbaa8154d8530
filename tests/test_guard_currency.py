"""The guard converts a foreign cost before deciding; a bad rate is a policy deny, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.errors import PolicyError, RatesError
from chio_budget.money import U64_MAX, MonetaryAmount
from chio_budget.rates import FeedRates, Rate

T0 = 1_767_225_600
RATES = """\
max_age_seconds: 600
margin_bps: 200
currencies:
  credits: 1
rates:
  EUR/USD: {rate: "1.0842", updated_at: 1767225600}
  USD/JPY: {rate: "151.37", updated_at: 1767225600}
  ETH/USD: {rate: "3000.00", updated_at: 1767225600, source: chainlink}
"""


def meta(receipt: str = "r1", at: int = T0 + 12, agent: str = "a1") -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=at, session_id=None, agent_id=agent,
                        tool_server="s1", tool_name="t1")


def eur(units: int) -> MonetaryAmount:
    return MonetaryAmount(units=units, currency="EUR")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text("currency: USD\nmax_total: 10000\nmax_per_agent: 3000\n")
    rates = tmp_path / "rates.yaml"
    rates.write_text(RATES)
    return policies, rates


@pytest.fixture
def guard(files):
    policies, rates = files
    with BudgetGuard.from_files(policies, rates=rates) as g:
        yield g


def test_a_foreign_cost_is_converted_before_the_decision_and_recorded_in_the_input(guard):
    e = guard.evaluate(meta(), eur(100))
    assert e.decision.allow and e.decision.error is None
    assert e.input["cost"] == {"units": 112, "currency": "USD"}  # 108.42 -> 109 -> 111.18 -> 112
    assert e.input["conversion"] == {
        "status": "ok", "original": {"units": 100, "currency": "EUR"}, "pair": "EUR/USD",
        "rate": {"numerator": 10842, "denominator": 10000, "source": f"{guard.rates.path}:6",
                 "updated_at": T0, "age_seconds": 12},
        "max_age_seconds": 600, "margin_bps": 200, "base_scale": 100, "quote_scale": 100,
        "converted_units": 112, "reason": None,
    }
    assert guard.check(meta(), eur(100)).allow


def test_the_chio_link_case_through_the_guard(guard):
    e = guard.evaluate(meta(), MonetaryAmount(units=10**15, currency="ETH"))
    assert e.input["cost"]["units"] == 306  # 300 USD cents, + 200 bps
    assert e.input["conversion"]["rate"]["source"] == "chainlink"


def test_the_reservation_holds_the_converted_units_and_commit_converts_the_actual(guard):
    auth = guard.authorize(meta(), eur(100))
    assert auth.allow and auth.estimate_units == 112
    assert guard.total_held() == 112
    s = auth.commit(actual_units=eur(50))   # 54.21 -> 55 -> 56.1 -> 57
    assert (s.outcome, s.amount) == ("committed", 57)
    assert guard.total_spent() == 57 and guard.total_held() == 0
    assert auth.commit_conversion.units == 57 and auth.commit_conversion.rate.numerator == 10842


def test_commit_with_a_rate_gone_stale_since_still_commits_and_says_so(files, caplog):
    policies, rates = files
    clock = {"now": T0}
    with BudgetGuard.from_files(policies, rates=rates, clock=lambda: clock["now"]) as g:
        auth = g.authorize(meta(at=T0), eur(100))
        assert auth.allow
        clock["now"] = T0 + 601
        with caplog.at_level("WARNING", logger="chio_budget.conversion"):
            s = auth.commit(actual_units=eur(100))
        assert (s.outcome, s.amount) == ("committed", 112)
        assert auth.commit_conversion.stale is False        # judged at the request's timestamp
        assert "stale by commit time" in caplog.text        # but the rate was 601 s old when committing
        assert "r1" in caplog.text


def test_stale_at_exactly_max_age_allows_and_one_second_more_denies(guard):
    assert guard.check(meta(at=T0 + 600), eur(100)).allow
    d = guard.check(meta(at=T0 + 601), eur(100))
    assert not d.allow and d.error is None
    [v] = d.violations
    assert v.model_dump() == {"scope": "custom", "code": "rate_stale", "pair": "EUR/USD",
                              "source": f"{guard.rates.path}:6", "age_seconds": 601, "max_age_seconds": 600,
                              "message": f"EUR/USD rate from {guard.rates.path}:6 is 601 s old, "
                                         "more than the 600 s allowed"}


def test_a_missing_rate_denies_as_a_policy_decision_and_holds_nothing(guard):
    auth = guard.authorize(meta(), MonetaryAmount(units=100, currency="GBP"))
    d = auth.decision
    assert not d.allow and d.error is None
    assert [(v.scope, v.code) for v in d.violations] == [("custom", "rate_unavailable")]
    assert d.violations[0].message == "no usable GBP/USD rate: no GBP/USD rate (cross rates are not derived)"
    assert guard.total_held() == 0 and guard.ledger.open_reservations() == 0
    assert auth.input["cost"] == {"units": 0, "currency": "USD"}


def test_an_overflowing_conversion_denies_as_rate_overflow(guard):
    big = guard.check(meta(), MonetaryAmount(units=U64_MAX, currency="EUR"))   # 1.0842 * (2^64-1) cents
    assert not big.allow and big.error is None
    assert [v.code for v in big.violations] == ["rate_overflow"]
    assert big.violations[0].message == ("18446744073709551615 EUR cannot be converted to USD: "
                                         "converted units exceeded u64 for EUR/USD")


def test_an_unknown_currency_denies_with_a_clear_reason(guard):
    d = guard.check(meta(), MonetaryAmount(units=1, currency="XYZ"))
    assert not d.allow and d.error is None
    assert "unknown currency 'XYZ'" in d.violations[0].message


def test_without_rates_a_foreign_cost_is_rate_unavailable(files):
    policies, _ = files
    with BudgetGuard.from_files(policies) as g:
        d = g.check(meta(), eur(100))
    assert [v.code for v in d.violations] == ["rate_unavailable"]
    assert "no rate oracle is configured" in d.violations[0].message


def test_a_zero_rate_from_a_feed_denies(files):
    policies, _ = files
    feed = FeedRates(lambda *a: Rate(0, 1, T0, "feed"))
    with BudgetGuard.from_files(policies, rates=feed) as g:
        d = g.check(meta(), eur(100))
    assert [v.code for v in d.violations] == ["rate_unavailable"] and d.error is None


def test_same_currency_amount_needs_no_rate_and_adds_no_conversion(guard):
    e = guard.evaluate(meta(), MonetaryAmount(units=100, currency="USD"))
    assert e.decision.allow and "conversion" not in e.input


def test_policy_in_a_declared_unit(tmp_path: Path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "default.yaml").write_text("currency: credits\nmax_total: 1000\n")
    rates = tmp_path / "rates.yaml"
    rates.write_text('currencies: {credits: 1}\nrates:\n  USD/credits: {rate: "100", updated_at: 1767225600}\n')
    with pytest.raises(PolicyError, match=r"default.yaml:1: currency: unknown currency 'credits'"):
        BudgetGuard.from_files(tmp_path / "p")
    with BudgetGuard.from_files(tmp_path / "p", rates=rates) as g:
        e = g.evaluate(meta(), MonetaryAmount(units=250, currency="USD"))   # $2.50 = 250 credits
    assert e.input["cost"] == {"units": 250, "currency": "credits"}


def test_a_bad_rates_file_is_a_located_error_at_load(files):
    policies, rates = files
    rates.write_text("rates:\n  EUR/USD: {rate: 1.08, updated_at: 1}\n")
    with pytest.raises(RatesError, match=r"rates.yaml:2: rates.\"EUR/USD\".rate: must be an exact decimal"):
        BudgetGuard.from_files(policies, rates=rates)
