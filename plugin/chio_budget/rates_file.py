"""``rates.yaml``: static exchange rates and declared currency units, with located errors.

```yaml
max_age_seconds: 600        # default 600, like the kernel
margin_bps: 0               # default 0
currencies:                 # optional: units beyond the kernel's and ISO 4217's
  credits: 1                #   minor units per major unit
rates:
  EUR/USD: {rate: "1.0842", updated_at: 1767225600}   # 1 EUR = 1.0842 USD
```

A rate is an exact decimal string (quoted: unquoted, YAML reads a binary
float), positive, with a numerator and denominator that fit the kernel's u64
conversion evidence. ``updated_at`` is Unix seconds. Both codes of a pair
must have a scale (kernel, ISO 4217, or ``currencies:`` in this file). The
inverse of a one-way pair is derived exactly; cross rates are not. Every
problem is reported at once as ``rates.yaml:5: rates."EUR/USD".rate: ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from . import yamlsafe
from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry, check_code, declaration_problem
from .errors import RatesError
from .policy import format_path
from .rates import DEFAULT_MAX_AGE_SECONDS, U32_MAX, U64_MAX, Rate, RateError, StaticRates, pair_key
from .text import TextError, decode_utf8, read_limited

MAX_RATES_BYTES = 1 << 20
"""Largest rates file read (1 MiB)."""

_TOP_KEYS = ("max_age_seconds", "margin_bps", "currencies", "rates")
_RATE_KEYS = ("rate", "updated_at", "source")
_PLAIN_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class _Reader:
    """Walks the composed document, collecting ``source:line: path: problem`` errors."""

    def __init__(self, source: str, loader: yaml.BaseResolver):
        self.source = source
        self.loader = loader
        self._errors: list[tuple[int, str]] = []

    def fail(self, node: yaml.Node, path: tuple, problem: str) -> None:
        n = yamlsafe.line(node)
        self._errors.append((n, f"{self.source}:{n}: {format_path(path) or '<document>'}: {problem}"))

    @property
    def errors(self) -> list[str]:
        """In file order (the walk visits a key's line after its children's)."""
        return [msg for _, msg in sorted(self._errors, key=lambda e: e[0])]

    def mapping(self, node: yaml.Node, path: tuple, allowed: tuple[str, ...] | None = None) -> dict[str, tuple]:
        """``{key: (key_node, value_node)}``; duplicate, non-string and unknown keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "must be a mapping")
            return {}
        out: dict[str, tuple] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                self.fail(k, path, "a key must be a plain string, not a collection")
            elif k.value in out:
                self.fail(k, path + (k.value,), "duplicate key")
            elif allowed is not None and k.value not in allowed:
                self.fail(k, path + (k.value,), f"unknown key (expected one of: {', '.join(allowed)})")
            else:
                out[k.value] = (k, v)
        return out

    def whole(self, node: yaml.Node, path: tuple, top: int, low: int = 0) -> int | None:
        """A plain decimal integer scalar in ``[low, top]``, else an error and None."""
        if (isinstance(node, yaml.ScalarNode) and node.tag == yamlsafe.INT_TAG and node.style is None
                and _PLAIN_DECIMAL.fullmatch(node.value) and len(node.value) <= 20 and low <= int(node.value) <= top):
            return int(node.value)
        shown = yamlsafe.written(node, self.loader) if isinstance(node, yaml.ScalarNode) else "a collection"
        self.fail(node, path, f"must be a plain decimal integer from {low} to {top}, got {shown}")
        return None


def parse_rates(text: str, source: str = "<string>", *,
                currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> StaticRates:
    """One rates document -> ``StaticRates``; ``RatesError`` lists every problem located."""
    root, loader = yamlsafe.compose(text, source, what="a rates file", noun="rates file", error=RatesError,
                                    max_bytes=MAX_RATES_BYTES, max_depth=16)
    r = _Reader(source, loader)
    top = r.mapping(root, (), _TOP_KEYS)
    settings = {"max_age_seconds": DEFAULT_MAX_AGE_SECONDS, "margin_bps": 0}
    for name, limit in (("max_age_seconds", U64_MAX), ("margin_bps", U32_MAX)):
        if name in top:
            settings[name] = r.whole(top[name][1], (name,), limit)
    registry = _currencies(r, top.get("currencies"), currencies)
    rates = _rates(r, top.get("rates"), registry)
    if r.errors:
        raise RatesError(r.errors)
    return StaticRates(rates, currencies=registry, path=source, **settings)


def _currencies(r: _Reader, entry: tuple | None, registry: CurrencyRegistry) -> CurrencyRegistry:
    if entry is None:
        return registry
    units: dict[str, int] = {}
    origins: dict[str, str] = {}
    for code, (k, v) in r.mapping(entry[1], ("currencies",)).items():
        scale = r.whole(v, ("currencies", code), U64_MAX, low=1)
        if scale is None:
            continue
        problem = declaration_problem(code, scale)
        if problem:
            r.fail(k, ("currencies", code), problem)
            continue
        units[code] = scale
        origins[code] = f"{r.source}:{yamlsafe.line(k)}"
    return registry.with_units(units, origins)


def _rates(r: _Reader, entry: tuple | None, registry: CurrencyRegistry) -> dict[tuple[str, str], Rate]:
    out: dict[tuple[str, str], Rate] = {}
    if entry is None:
        return out
    for key, (k, v) in r.mapping(entry[1], ("rates",)).items():
        path = ("rates", key)
        pair = _pair(r, k, path, registry)
        fields = r.mapping(v, path, _RATE_KEYS)
        rate = _rate(r, fields, v, path, f"{r.source}:{yamlsafe.line(k)}")
        if pair is not None and rate is not None:
            out[pair] = rate
    return out


def _pair(r: _Reader, k: yaml.Node, path: tuple, registry: CurrencyRegistry) -> tuple[str, str] | None:
    base, sep, quote = k.value.partition("/")
    if not sep or "/" in quote:
        r.fail(k, path, "a pair must be written BASE/QUOTE, e.g. EUR/USD")
        return None
    problems = []
    for code in (base, quote):
        try:
            check_code(code)
            if code not in registry:
                problems.append(registry.unknown(code))
        except ValueError as exc:
            problems.append(str(exc).removeprefix("currency: "))
    if base == quote:
        problems.append(f"{pair_key(base, quote)} converts a currency to itself")
    for p in problems:
        r.fail(k, path, p)
    return None if problems else (base, quote)


def _rate(r: _Reader, fields: dict[str, tuple], node: yaml.Node, path: tuple, origin: str) -> Rate | None:
    for required in ("rate", "updated_at"):
        if required not in fields and isinstance(node, yaml.MappingNode):
            r.fail(node, path + (required,), "required")
    updated_at = r.whole(fields["updated_at"][1], path + ("updated_at",), U64_MAX) if "updated_at" in fields else None
    source = origin
    if "source" in fields:
        s = fields["source"][1]
        if not (isinstance(s, yaml.ScalarNode) and s.tag == yamlsafe.STR_TAG and s.value):
            r.fail(s, path + ("source",), "must be a non-empty string")
        else:
            source = s.value
    if "rate" not in fields:
        return None
    return _rate_value(r, fields["rate"][1], path + ("rate",), updated_at, source)


def _rate_value(r: _Reader, n: yaml.Node, path: tuple, updated_at: int | None, source: str) -> Rate | None:
    if not (isinstance(n, yaml.ScalarNode) and n.style in ("'", '"')):
        shown = yamlsafe.written(n, r.loader) if isinstance(n, yaml.ScalarNode) else "a collection"
        r.fail(n, path, f"must be an exact decimal in quotes, e.g. \"1.0842\", got {shown} "
                        "(unquoted, YAML reads a binary float)")
        return None
    try:
        rate = Rate.from_decimal(n.value, 0, source)
    except RateError as exc:
        r.fail(n, path, str(exc).removeprefix("rate: "))
        return None
    if rate.numerator == 0:
        r.fail(n, path, "must be greater than 0 (a zero rate converts every cost to nothing)")
        return None
    if rate.numerator > U64_MAX or rate.denominator > U64_MAX:
        r.fail(n, path, "has more digits than the kernel's u64 rate fraction holds")
        return None
    return None if updated_at is None else Rate(rate.numerator, rate.denominator, updated_at, source)


def load_rates(path: str | Path, *, currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> StaticRates:
    """``rates.yaml`` (at most 1 MiB of UTF-8) -> ``StaticRates``; ``RatesError`` with every problem."""
    path = Path(path)
    try:
        text = decode_utf8(read_limited(path, MAX_RATES_BYTES, yamlsafe.size_label(MAX_RATES_BYTES)))
    except TextError as exc:
        raise RatesError(f"{path}:{exc.line}: {exc.message}") from None
    except OSError as exc:
        raise RatesError(f"{path}:1: cannot read: {exc.strerror or exc}") from None
    return parse_rates(text, str(path), currencies=currencies)


def open_rates(rates: Any) -> Any:
    """What a guard's ``rates=`` may be: None, a ``RateOracle``, or a path to ``rates.yaml``."""
    if rates is None or hasattr(rates, "rate"):
        return rates
    if isinstance(rates, (str, Path)):
        return load_rates(rates)
    raise RatesError(f"rates: must be a path to rates.yaml or a RateOracle, got {type(rates).__name__}")
