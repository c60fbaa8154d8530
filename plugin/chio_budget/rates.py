"""Exchange rates as exact fractions, and where the guard gets them.

A ``Rate`` is what chio-link's ``ExchangeRate`` carries for a conversion:
quote major units per one base major unit as ``numerator / denominator``
(integers, never floats), when it was last updated and where it came from.
A ``RateOracle`` answers ``rate(from, to, at_timestamp)`` and says how old a
rate may be (``max_age_seconds``, default 600 like the kernel) and what
safety margin to add (``margin_bps``). Two oracles ship:

- ``StaticRates``: fixed rates, normally from ``rates.yaml`` (``load_rates``);
  the inverse of a given pair is derived exactly, cross rates never;
- ``FeedRates``: rates from a callable the deployment plugs in (a price
  feed, a treasury service; ``http_fetch`` makes one that GETs JSON), cached
  per pair for ``refresh_seconds``; a failed fetch keeps serving the last
  rate, which then ages into ``rate_stale`` instead of flapping.

Whether a rate is usable (present, non-zero, fresh) is decided per request
by ``conversion.convert`` and the Rego policy, not here.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry, check_code
from .errors import AmountError

U64_MAX = 2**64 - 1
U128_MAX = 2**128 - 1
U32_MAX = 2**32 - 1
DEFAULT_MAX_AGE_SECONDS = 600
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")


class RateError(AmountError):
    """A rate that is not an exact, non-negative fraction (or an oracle set up wrongly)."""


def _whole(value: Any, what: str, top: int = U128_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RateError(f"{what}: must be an integer, got {type(value).__name__} {value!r}")
    if not 0 <= value <= top:
        raise RateError(f"{what}: must be between 0 and {top}, got {value}")
    return value


@dataclass(frozen=True)
class Rate:
    """``numerator / denominator`` quote major units per base major unit.

    Integers up to 2^128-1 (the kernel's u128), so a feed's raw answer and
    its ``10^decimals`` fit unreduced. A zero numerator or denominator can be
    built - an oracle may well return one - and is judged unusable at
    conversion time (``rate_unavailable``), not here.
    """

    numerator: int
    denominator: int
    updated_at: int
    source: str = ""

    def __post_init__(self) -> None:
        _whole(self.numerator, "rate numerator")
        _whole(self.denominator, "rate denominator")
        _whole(self.updated_at, "rate updated_at", U64_MAX)
        if not isinstance(self.source, str):
            raise RateError(f"rate source: must be a string, got {type(self.source).__name__}")

    @classmethod
    def from_decimal(cls, text: str, updated_at: int, source: str = "") -> "Rate":
        """``"1.0842"`` -> 10842/10000, exactly (no sign, exponent, ``_`` or float)."""
        if not isinstance(text, str):
            raise RateError(f"rate: must be a decimal string such as \"1.0842\", got {type(text).__name__} {text!r}")
        if len(text) > 80:
            raise RateError(f"rate: more than 80 characters: {text[:40]!r}...")
        m = _DECIMAL.fullmatch(text)
        if m is None:
            raise RateError(f"rate: must be a plain decimal such as \"1.0842\", got {text!r}")
        frac = m.group(2) or ""
        return cls(int(m.group(1) + frac), 10 ** len(frac), updated_at, source)

    @property
    def fraction(self) -> Fraction:
        """The exact value (``ZeroDivisionError`` for a zero denominator)."""
        return Fraction(self.numerator, self.denominator)

    def inverse(self, source: str | None = None) -> "Rate":
        """``denominator / numerator``: 1 EUR = 1.0842 USD gives 1 USD = 10000/10842 EUR."""
        return Rate(self.denominator, self.numerator, self.updated_at,
                    self.source if source is None else source)

    def age_seconds(self, at: int) -> int:
        """Seconds between the update and ``at``; 0 for an update in the future (u64 ``saturating_sub``)."""
        return max(at - self.updated_at, 0)

    def decimal(self, places: int = 10) -> str:
        """The rate as a decimal string: exact when it is one, else ``~`` and ``places`` digits (display only)."""
        if not self.denominator:
            return "undefined"
        whole, rest = divmod(self.numerator, self.denominator)
        digits = len(str(self.denominator)) - 1
        if 10 ** digits == self.denominator:
            return f"{whole}.{rest:0{digits}d}" if digits else str(whole)
        return f"~{whole}.{rest * 10 ** places // self.denominator:0{places}d}"


@runtime_checkable
class RateOracle(Protocol):
    """Where the guard gets rates. Implementations must be thread-safe.

    ``rate`` returns None (or raises) when it has no rate for the pair; it
    never derives a cross rate the operator did not give. ``currencies``
    knows the scale of every code the oracle may quote.
    """

    currencies: CurrencyRegistry
    max_age_seconds: int
    margin_bps: int

    def rate(self, from_currency: str, to_currency: str, at_timestamp: int) -> Rate | None: ...


def check_oracle_settings(max_age_seconds: Any, margin_bps: Any) -> tuple[int, int]:
    """``max_age_seconds`` a u64, ``margin_bps`` a u32 (the kernel's types); ``RateError`` otherwise."""
    return _whole(max_age_seconds, "max_age_seconds", U64_MAX), _whole(margin_bps, "margin_bps", U32_MAX)


def pair_key(base: str, quote: str) -> str:
    """``"EUR/USD"``, the kernel's ``pair_key`` form."""
    return f"{base}/{quote}"


class StaticRates:
    """Fixed rates keyed ``(base, quote)``; the inverse of a one-way pair is derived exactly.

    ``rates`` maps ``(base, quote)`` (or ``"BASE/QUOTE"``) to a ``Rate``.
    A pair given in both directions keeps both as given (a bid/ask spread is
    the operator's to set). ``at_timestamp`` is ignored: a static rate has one
    value, and its ``updated_at`` says how old it is.
    """

    def __init__(self, rates: Mapping[Any, Rate], *, currencies: CurrencyRegistry = DEFAULT_CURRENCIES,
                 max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS, margin_bps: int = 0, path: str | None = None):
        self.max_age_seconds, self.margin_bps = check_oracle_settings(max_age_seconds, margin_bps)
        self.currencies = currencies
        self.path = path
        given: dict[tuple[str, str], Rate] = {}
        for key, rate in rates.items():
            base, quote = key.split("/", 1) if isinstance(key, str) else key
            for code in (base, quote):
                currencies.scale(check_code(code, f"rates[{pair_key(base, quote)}]"))
            if not isinstance(rate, Rate):
                raise RateError(f"rates[{pair_key(base, quote)}]: must be a Rate, got {type(rate).__name__}")
            given[(base, quote)] = rate
        derived = {(q, b): r.inverse(f"{r.source} (inverse of {pair_key(b, q)})")
                   for (b, q), r in given.items() if (q, b) not in given and r.numerator}
        self._rates = {**derived, **given}
        self._derived = frozenset(derived)

    def rate(self, from_currency: str, to_currency: str, at_timestamp: int) -> Rate | None:
        return self._rates.get((from_currency, to_currency))

    def pairs(self) -> Iterator[tuple[str, str, Rate, bool]]:
        """``(base, quote, rate, derived)`` for every pair, sorted."""
        for (b, q), r in sorted(self._rates.items()):
            yield b, q, r, (b, q) in self._derived


Fetch = Callable[[str, str, int], "Rate | None"]


class FeedRates:
    """Rates from ``fetch(from, to, at_timestamp)``, cached per pair for ``refresh_seconds``.

    A fetch that raises or returns None keeps the last rate fetched for that
    pair (its age then grows until it is judged stale); with none, the
    exception propagates and the conversion is ``rate_unavailable``. Fetches
    happen outside the lock, so a slow feed never blocks other pairs.
    ``clock`` (monotonic seconds) is for tests.
    """

    def __init__(self, fetch: Fetch, *, currencies: CurrencyRegistry = DEFAULT_CURRENCIES,
                 max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS, margin_bps: int = 0,
                 refresh_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic):
        if not callable(fetch):
            raise RateError("fetch must be callable(from_currency, to_currency, at_timestamp) -> Rate | None")
        self.max_age_seconds, self.margin_bps = check_oracle_settings(max_age_seconds, margin_bps)
        self.currencies = currencies
        self.refresh_seconds = refresh_seconds
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Rate]] = {}

    def rate(self, from_currency: str, to_currency: str, at_timestamp: int) -> Rate | None:
        key = (from_currency, to_currency)
        with self._lock:
            cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and now - cached[0] < self.refresh_seconds:
            return cached[1]
        try:
            fresh = self._fetch(from_currency, to_currency, at_timestamp)
        except Exception:
            if cached is None:
                raise
            return cached[1]
        if fresh is None:
            return None if cached is None else cached[1]
        if not isinstance(fresh, Rate):
            raise RateError(f"fetch returned {type(fresh).__name__}, not a Rate")
        with self._lock:
            self._cache[key] = (now, fresh)
        return fresh


def http_fetch(url: str, *, timeout: float = 2.0, headers: Mapping[str, str] | None = None,
               max_bytes: int = 65536) -> Fetch:
    """A ``fetch`` for ``FeedRates`` that GETs ``url`` with ``{base}`` and ``{quote}`` filled in.

    The body must be a JSON object ``{"rate": "1.0842", "updated_at": 1767225600}``
    (an exact decimal string) or ``{"numerator": 10842, "denominator": 10000,
    "updated_at": ...}``, optionally with ``"source"``. JSON floats are
    refused, the body is read up to ``max_bytes``, and 404 means "no rate".
    """

    def fetch(base: str, quote: str, at_timestamp: int) -> Rate | None:
        target = url.format(base=urllib.parse.quote(base), quote=urllib.parse.quote(quote))
        req = urllib.request.Request(target, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (operator-configured URL)
                body = resp.read(max_bytes + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RateError(f"{pair_key(base, quote)}: rate feed answered HTTP {exc.code}") from None
        if len(body) > max_bytes:
            raise RateError(f"{pair_key(base, quote)}: rate feed body larger than {max_bytes} bytes")
        return rate_from_json(body, f"feed {urllib.parse.urlsplit(target).netloc}")

    return fetch


def _no_float(text: str) -> Any:
    raise RateError(f"rate feed sent a JSON float ({text}); send the rate as a decimal string")


def rate_from_json(body: bytes | str, default_source: str) -> Rate:
    """A ``Rate`` from a feed's JSON body (see ``http_fetch``); ``RateError`` when it is not one."""
    try:
        doc = json.loads(body, parse_float=_no_float)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, RateError):
            raise
        raise RateError(f"rate feed body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RateError("rate feed body must be a JSON object")
    source = doc.get("source", default_source)
    if "rate" in doc:
        return Rate.from_decimal(doc["rate"], doc.get("updated_at"), source)
    return Rate(doc.get("numerator"), doc.get("denominator"), doc.get("updated_at"), source)
