"""rates.yaml and the rate oracles: exact fractions, located errors, no cross rates, feeds."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chio_budget.errors import RatesError
from chio_budget.rates import FeedRates, Rate, RateError, RateOracle, StaticRates, http_fetch, rate_from_json
from chio_budget.rates_file import load_rates, open_rates, parse_rates

T0 = 1_767_225_600

ISSUE_YAML = """\
max_age_seconds: 600        # default 600, like the kernel
margin_bps: 0               # default 0
rates:
  EUR/USD: {rate: "1.0842", updated_at: 1767225600}   # 1 EUR = 1.0842 USD
"""


def test_the_issue_yaml_loads_with_its_inverse_derived_exactly(tmp_path: Path):
    p = tmp_path / "rates.yaml"
    p.write_text(ISSUE_YAML)
    r = load_rates(p)
    assert isinstance(r, RateOracle)
    assert (r.max_age_seconds, r.margin_bps) == (600, 0)
    assert r.rate("EUR", "USD", T0) == Rate(10842, 10000, T0, f"{p}:4")
    inv = r.rate("USD", "EUR", T0)
    assert (inv.numerator, inv.denominator, inv.updated_at) == (10000, 10842, T0)
    assert inv.source == f"{p}:4 (inverse of EUR/USD)"
    assert [(b, q, d) for b, q, _, d in r.pairs()] == [("EUR", "USD", False), ("USD", "EUR", True)]


def test_defaults_and_declared_units():
    r = parse_rates("currencies:\n  credits: 1\nrates:\n  credits/USD: {rate: \"0.01\", updated_at: 5, source: treasury}\n",
                    "rates.yaml")
    assert (r.max_age_seconds, r.margin_bps) == (600, 0)
    assert r.currencies.scale("credits") == 1 and r.currencies.origin("credits") == "rates.yaml:2"
    assert r.rate("credits", "USD", 0) == Rate(1, 100, 5, "treasury")
    assert r.rate("USD", "credits", 0) == Rate(100, 1, 5, "treasury (inverse of credits/USD)")


def test_both_directions_given_are_kept_as_given():
    r = parse_rates('rates:\n  EUR/USD: {rate: "1.08", updated_at: 1}\n  USD/EUR: {rate: "0.92", updated_at: 2}\n')
    assert r.rate("USD", "EUR", 0) == Rate(92, 100, 2, "<string>:3")


def test_no_cross_rate_is_derived():
    r = parse_rates('rates:\n  EUR/USD: {rate: "1.08", updated_at: 1}\n  USD/JPY: {rate: "151", updated_at: 1}\n')
    assert r.rate("EUR", "JPY", 0) is None and r.rate("JPY", "EUR", 0) is None


BAD = """\
max_age_seconds: -1
margin_bps: 1.5
currencies:
  USD: 1000
  XCC: 1
  credits: 0
rates:
  EUR/USD: {rate: 1.0842, updated_at: 1}
  EUR/JPY: {rate: "0"}
  usd/EUR: {rate: "1", updated_at: 1, extra: 2}
  FOO/USD: {rate: "1.5", updated_at: 1}
  EUR: {rate: "1", updated_at: 1}
  GBP/USD: {rate: "1e3", updated_at: 1}
  GBP/JPY: {rate: "0.0000000000000000000001", updated_at: 1}
  GBP/GBP: {rate: "1", updated_at: 1}
  BTC/USD: {rate: "97000", updated_at: 0x10}
foo: 1
"""


def test_every_problem_is_located_file_line_field():
    with pytest.raises(RatesError) as exc:
        parse_rates(BAD, "rates.yaml")
    assert exc.value.errors == [
        "rates.yaml:1: max_age_seconds: must be a plain decimal integer from 0 to 18446744073709551615, got -1",
        "rates.yaml:2: margin_bps: must be a plain decimal integer from 0 to 4294967295, got 1.5",
        "rates.yaml:4: currencies.USD: contradicts the kernel scale of USD (100 minor units per unit), got 1000",
        "rates.yaml:5: currencies.XCC: 'XCC' is deliberately unpriced by the kernel; it cannot be given a scale",
        "rates.yaml:6: currencies.credits: must be a plain decimal integer from 1 to 18446744073709551615, got 0",
        'rates.yaml:8: rates."EUR/USD".rate: must be an exact decimal in quotes, e.g. "1.0842", got 1.0842 '
        "(unquoted, YAML reads a binary float)",
        'rates.yaml:9: rates."EUR/JPY".updated_at: required',
        'rates.yaml:9: rates."EUR/JPY".rate: must be greater than 0 (a zero rate converts every cost to nothing)',
        "rates.yaml:10: rates.\"usd/EUR\": currency codes are case-sensitive: write 'USD', not 'usd'",
        'rates.yaml:10: rates."usd/EUR".extra: unknown key (expected one of: rate, updated_at, source)',
        "rates.yaml:11: rates.\"FOO/USD\": unknown currency 'FOO': not a kernel currency, not ISO 4217, "
        "and not declared under 'currencies:' in rates.yaml",
        "rates.yaml:12: rates.EUR: a pair must be written BASE/QUOTE, e.g. EUR/USD",
        "rates.yaml:13: rates.\"GBP/USD\".rate: must be a plain decimal such as \"1.0842\", got '1e3'",
        "rates.yaml:14: rates.\"GBP/JPY\".rate: has more digits than the kernel's u64 rate fraction holds",
        'rates.yaml:15: rates."GBP/GBP": GBP/GBP converts a currency to itself',
        'rates.yaml:16: rates."BTC/USD".updated_at: must be a plain decimal integer from 0 to '
        "18446744073709551615, got 0x10",
        "rates.yaml:17: foo: unknown key (expected one of: max_age_seconds, margin_bps, currencies, rates)",
    ]


@pytest.mark.parametrize("text, said", [
    ("base: &a 1\nrates: *a\n", "rates.yaml:1: YAML anchor &a: anchors and aliases are not allowed in a rates file"),
    ("rates:\n  EUR/USD: {rate: \"1\", updated_at: 1}\n  EUR/USD: {rate: \"2\", updated_at: 1}\n",
     'rates.yaml:3: rates."EUR/USD": duplicate key'),
    ("", "rates.yaml:1: empty rates file"),
    ("rates: [1,\n", "rates.yaml:2: invalid YAML"),
    ("- 1\n", "rates.yaml:1: <document>: must be a mapping"),
    ("rates: " + "[" * 20 + "]" * 20 + "\n", "rates.yaml:1: nesting deeper than 16 levels"),
])
def test_hostile_or_broken_documents_are_located_errors(text, said):
    with pytest.raises(RatesError, match=said.replace("[", r"\[").replace("*", r"\*").replace("(", r"\(")):
        parse_rates(text, "rates.yaml")


def test_file_bounds_and_encoding(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(RatesError, match=r"big.yaml:1: file is larger than 1 MiB"):
        load_rates(big)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"rates: {}\n# \xff\n")
    with pytest.raises(RatesError, match=r"bad.yaml:2: invalid UTF-8"):
        load_rates(bad)
    with pytest.raises(RatesError, match=r"missing.yaml:1: cannot read"):
        load_rates(tmp_path / "missing.yaml")


def test_open_rates_takes_a_path_an_oracle_or_none(tmp_path: Path):
    p = tmp_path / "rates.yaml"
    p.write_text(ISSUE_YAML)
    assert open_rates(None) is None
    assert open_rates(str(p)).rate("EUR", "USD", 0).numerator == 10842
    oracle = StaticRates({})
    assert open_rates(oracle) is oracle
    with pytest.raises(RatesError):
        open_rates(42)


# -- Rate -----------------------------------------------------------------------

@pytest.mark.parametrize("text, frac", [("1.0842", (10842, 10000)), ("3000.00", (300000, 100)), ("151", (151, 1)),
                                        ("0.5", (5, 10))])
def test_rate_from_decimal_is_exact_and_unreduced(text, frac):
    r = Rate.from_decimal(text, 1)
    assert (r.numerator, r.denominator) == frac
    assert r.decimal() == text


@pytest.mark.parametrize("bad", ["1e3", "+1", "-1", ".5", "1.", "1_000", "0x10", "01", " 1", 1.5, 2, None, "9" * 81])
def test_rate_from_decimal_refuses_everything_but_plain_decimals(bad):
    with pytest.raises(RateError):
        Rate.from_decimal(bad, 1)


@pytest.mark.parametrize("args", [(1.0, 1, 1), (1, True, 1), (-1, 1, 1), (1, 2**128, 1), (1, 1, 2**64), (1, 1, None)])
def test_rate_parts_are_exact_integers(args):
    with pytest.raises(RateError):
        Rate(*args)


def test_static_rates_check_their_codes_and_settings():
    with pytest.raises(ValueError, match="unknown currency 'FOO'"):
        StaticRates({("FOO", "USD"): Rate(1, 1, 1)})
    with pytest.raises(RateError, match="margin_bps"):
        StaticRates({}, margin_bps=2**32)
    with pytest.raises(RateError, match="max_age_seconds"):
        StaticRates({}, max_age_seconds=-1)


# -- FeedRates ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_feed_is_cached_per_pair_for_refresh_seconds():
    calls = []

    def fetch(base, quote, at):
        calls.append((base, quote, at))
        return Rate(len(calls), 1, at)

    clock = Clock()
    feed = FeedRates(fetch, refresh_seconds=30, clock=clock)
    assert feed.rate("EUR", "USD", 100).numerator == 1
    assert feed.rate("EUR", "USD", 101).numerator == 1    # cached
    assert feed.rate("GBP", "USD", 101).numerator == 2    # another pair
    clock.now = 30
    assert feed.rate("EUR", "USD", 130).numerator == 3    # refreshed
    assert calls == [("EUR", "USD", 100), ("GBP", "USD", 101), ("EUR", "USD", 130)]


def test_a_failing_feed_keeps_serving_the_last_rate_so_it_ages_into_stale():
    answers = [Rate(2, 1, 100), ConnectionError("down"), None]

    def fetch(*_):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    feed = FeedRates(fetch)
    assert feed.rate("EUR", "USD", 100) == Rate(2, 1, 100)
    assert feed.rate("EUR", "USD", 900) == Rate(2, 1, 100)   # exception: last rate
    assert feed.rate("EUR", "USD", 900) == Rate(2, 1, 100)   # None: last rate
    with pytest.raises(ConnectionError):
        FeedRates(lambda *a: (_ for _ in ()).throw(ConnectionError("down"))).rate("EUR", "USD", 1)
    assert FeedRates(lambda *a: None).rate("EUR", "USD", 1) is None
    with pytest.raises(RateError, match="not a Rate"):
        FeedRates(lambda *a: "1.08").rate("EUR", "USD", 1)


# -- http_fetch on loopback -----------------------------------------------------

class _Feed(BaseHTTPRequestHandler):
    bodies: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):  # noqa: N802
        status, body = self.bodies.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def feed_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Feed)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_feed_reads_exact_rates(feed_url):
    _Feed.bodies = {
        "/rate/EUR/USD": (200, json.dumps({"rate": "1.0842", "updated_at": T0, "source": "ecb"}).encode()),
        "/rate/USD/JPY": (200, json.dumps({"numerator": 15137, "denominator": 100, "updated_at": T0}).encode()),
        "/rate/GBP/USD": (200, b'{"rate": 1.27, "updated_at": 1}'),
        "/rate/BTC/USD": (500, b"oops"),
        "/rate/ETH/USD": (200, b"x" * 70000),
    }
    fetch = http_fetch(feed_url + "/rate/{base}/{quote}")
    assert fetch("EUR", "USD", T0) == Rate(10842, 10000, T0, "ecb")
    assert fetch("USD", "JPY", T0) == Rate(15137, 100, T0, f"feed {feed_url.removeprefix('http://')}")
    assert fetch("CHF", "USD", T0) is None  # 404: no rate
    with pytest.raises(RateError, match="JSON float"):
        fetch("GBP", "USD", T0)
    with pytest.raises(RateError, match="HTTP 500"):
        fetch("BTC", "USD", T0)
    with pytest.raises(RateError, match="larger than 65536 bytes"):
        fetch("ETH", "USD", T0)


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"rate": "1e3", "updated_at": 1}', b'{"rate": "1"}'])
def test_feed_bodies_that_are_not_rates_are_refused(body):
    with pytest.raises(RateError):
        rate_from_json(body, "feed")
