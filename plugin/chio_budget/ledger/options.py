"""One option parser for every backend: the same names in the URI query and as keywords.

``ttl`` (seconds a reservation is held, finite and > 0), ``settled_retention``
(seconds a settled receipt is remembered, >= 0) and ``settled_max`` (how many
settled receipts are remembered, >= 1) mean the same on memory, SQLite and
Redis. A backend adds its own (``busy_timeout``, ``prefix``...) through
``own``. Every bad value is a ``LedgerError`` naming the URI and the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl

from ..errors import LedgerError
from .base import DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS, check_ttl


def check_seconds(value: Any, what: str) -> float:
    """Seconds >= 0 and finite (a retention or a timeout)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds >= 0):
        raise LedgerError(f"{what}: expected seconds >= 0, got {value!r}")
    return seconds


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (``settled_max``, pool sizes)."""
    try:
        n = int(value, 10) if isinstance(value, str) else value
    except ValueError:
        n = None
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise LedgerError(f"{what}: expected a whole number >= {minimum}, got {value!r}")
    return n


@dataclass(frozen=True)
class LedgerOptions:
    """The options every backend shares, validated."""

    ttl: float = DEFAULT_TTL_SECONDS
    settled_retention: float = DEFAULT_SETTLED_RETENTION
    settled_max: int = DEFAULT_SETTLED_MAX

    @classmethod
    def make(cls, ttl: Any = DEFAULT_TTL_SECONDS, settled_retention: Any = DEFAULT_SETTLED_RETENTION,
             settled_max: Any = DEFAULT_SETTLED_MAX) -> "LedgerOptions":
        return cls(check_ttl(ttl, "ttl"), check_seconds(settled_retention, "settled_retention"),
                   check_count(settled_max, "settled_max"))


COMMON: dict[str, Callable[[Any, str], Any]] = {
    "ttl": check_ttl, "settled_retention": check_seconds, "settled_max": check_count,
}


def parse_query(uri: str, query: str, own: Mapping[str, Callable[[Any, str], Any]] | None = None, *,
                pass_through: bool = False) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``(options, rest)`` from a URI query string.

    The common options and the backend's ``own`` are parsed (each by its
    checker); any other name is an error unless ``pass_through`` (Redis hands
    the rest to redis-py), in which case it is returned in ``rest``.
    """
    parsers = {**COMMON, **(own or {})}
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in parsers:
            try:
                options[name] = parsers[name](value, name)
            except LedgerError as exc:
                raise LedgerError(f"{uri}: {exc}") from None
        elif pass_through:
            rest.append((name, value))
        else:
            raise LedgerError(f"{uri}: unknown option {name!r} (known: {', '.join(sorted(parsers))})")
    return options, rest
