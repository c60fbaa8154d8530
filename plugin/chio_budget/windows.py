"""Budget windows: which window a request falls in, and the counter it uses.

A limit counts spend over a window: ``all_time`` (the Rust enforcer's only
kind), a calendar ``daily``/``weekly``/``monthly`` window in the policy's
time zone, or a ``rolling`` window of N seconds. Everything here is a pure
function of the window, the request's ``timestamp`` (Unix seconds) and the
time zone, never of the wall clock, so a replay or a simulation places every
request exactly where live traffic placed it.

A window is a counter: its key segment (``counter_key(..., window=span.key)``)
names it, e.g. ``d:2026-03-08@America/New_York``, ``w:2026-03-02@Europe/Berlin``
(the Monday the week starts), ``m:2026-03@UTC``. A reset is simply the next
key: nothing is deleted and no job runs. ``all_time`` keeps the empty
segment, so all-time counters keep their keys.

Calendar windows start at local midnight (weekly: Monday; monthly: the 1st)
and end where the next one starts, so a day is 23 or 25 hours long when the
clocks change. Where midnight does not exist (a zone whose clocks jump over
it), the window starts at the first second that exists after it.

Rolling windows are bucketed (see ``bucket_seconds``): spend lands in the
bucket of its request's timestamp, and a bucket counts in full until its
last second has left the window. They never under-count; they over-count by
at most the spend of the ``bucket_seconds - 1`` seconds before the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .errors import WindowError

ALL_TIME = "all_time"
DAILY = "daily"
WEEKLY = "weekly"
MONTHLY = "monthly"
ROLLING = "rolling"
CALENDAR = (DAILY, WEEKLY, MONTHLY)
KINDS = (ALL_TIME, *CALENDAR, ROLLING)

MAX_ROLLING_SECONDS = 10 * 366 * 86400
"""Longest rolling window accepted (ten years); longer is an ``all_time`` in disguise."""

BUCKETS_PER_WINDOW = 60
"""A rolling window is cut into at most this many buckets (plus the partial one)."""

_BUCKET_LADDER = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
_PREFIX = {DAILY: "d", WEEKLY: "w", MONTHLY: "m"}


@dataclass(frozen=True)
class Window:
    """How long a limit counts spend: a kind, and the length of a rolling one."""

    kind: str = ALL_TIME
    seconds: int | None = None  # rolling only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown window {self.kind!r} (one of {', '.join(KINDS)}, or {{rolling: SECONDS}})")
        if (self.kind == ROLLING) != (self.seconds is not None):
            raise ValueError("only a rolling window has seconds")
        if self.kind == ROLLING:
            check_rolling_seconds(self.seconds)

    @property
    def bucket_seconds(self) -> int | None:
        """The rolling window's bucket length (None for other kinds)."""
        return bucket_seconds(self.seconds) if self.seconds is not None else None

    def to_data(self) -> dict:
        """The compiled form (``data.chio.budget.policies[id].windows``)."""
        if self.kind == ROLLING:
            return {"kind": ROLLING, "seconds": self.seconds, "bucket_seconds": self.bucket_seconds}
        return {"kind": self.kind}

    def to_yaml(self) -> str | dict:
        """As a policy writes it (``parse_window`` reads it back): ``daily``, ``{rolling: 3600}``."""
        return {ROLLING: self.seconds} if self.kind == ROLLING else self.kind

    def __str__(self) -> str:
        return f"rolling {self.seconds} s" if self.kind == ROLLING else self.kind


ALL_TIME_WINDOW = Window()


def parse_window(value: object) -> Window:
    """``daily`` / ``weekly`` / ``monthly`` / ``all_time`` / ``{rolling: SECONDS}`` -> ``Window``.

    Raises ``ValueError`` with a message fit for a located policy error.
    """
    if isinstance(value, Window):
        return value
    if isinstance(value, str):
        if value == ROLLING:
            raise ValueError("a rolling window needs its length: write {rolling: SECONDS}")
        if value not in KINDS:
            raise ValueError(f"unknown window {value!r} (one of {', '.join(KINDS[:-1])}, or {{rolling: SECONDS}})")
        return Window(value)
    if isinstance(value, dict):
        if set(value) != {ROLLING}:
            raise ValueError(f"a window mapping must be {{rolling: SECONDS}}, got keys {sorted(map(str, value))}")
        return Window(ROLLING, check_rolling_seconds(value[ROLLING]))
    raise ValueError(f"must be a window name or {{rolling: SECONDS}}, got {type(value).__name__} {value!r}")


def check_rolling_seconds(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"rolling window length must be a whole number of seconds, got {value!r}")
    if value <= 0:
        raise ValueError(f"rolling window length must be > 0 seconds, got {value}")
    if value > MAX_ROLLING_SECONDS:
        raise ValueError(f"rolling window length must be <= {MAX_ROLLING_SECONDS} seconds (ten years), got {value}")
    return value


def bucket_seconds(window_seconds: int) -> int:
    """Bucket length of a rolling window: the smallest round length (1 s, 2 s, 5 s,
    ... 1 h, 2 h, 3 h, 6 h, 12 h, then whole days) that cuts the window into at
    most ``BUCKETS_PER_WINDOW`` buckets.

    So a window of up to 60 s is exact (1 s buckets), 1 h has 1 min buckets,
    24 h has 30 min buckets, 30 days 12 h buckets. The bucket length is also
    the bound on over-counting: at most the spend of the ``bucket - 1`` seconds
    before the window is still counted.
    """
    need = -(-window_seconds // BUCKETS_PER_WINDOW)
    for b in _BUCKET_LADDER:
        if b >= need:
            return b
    return -(-need // 86400) * 86400


# --------------------------------------------------------------------------
# time zones


@lru_cache(maxsize=None)
def _known_zones() -> frozenset[str]:
    try:
        text = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
        return frozenset(line.strip() for line in text.splitlines() if line.strip())
    except (ModuleNotFoundError, OSError):  # pragma: no cover - tzdata is a dependency
        return frozenset(available_timezones())


def check_timezone(name: object) -> str:
    """An IANA zone name this machine can load (``Europe/Berlin``, ``UTC``); ``ValueError`` otherwise."""
    if not isinstance(name, str) or not _ZONE_NAME.match(name) or ".." in name:
        raise ValueError(f"must be an IANA time zone name such as 'Europe/Berlin', got {name!r}")
    if name not in _known_zones():
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')")
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # pragma: no cover - listed but unreadable
        raise ValueError(f"time zone {name!r} cannot be loaded: {exc}") from None
    return name


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# --------------------------------------------------------------------------
# the window of a timestamp


@dataclass(frozen=True)
class Span:
    """The window a request's timestamp falls in.

    ``key`` is the counter-key segment its spend lands in (``""`` for
    all-time). ``start`` is the first second the window counts (rolling: the
    first second of its oldest bucket) and ``resets_at`` the first second of
    the next calendar window or, for rolling, the second by which every unit
    counted now has left. ``reads`` (rolling only) are the older buckets'
    keys, summed into ``key``'s total atomically by the ledger.
    """

    window: Window
    key: str = ""
    start: int | None = None
    resets_at: int | None = None
    reads: tuple[str, ...] = field(default=())
    timezone: str | None = None

    def input(self) -> dict:
        """This window in the OPA input (``input.windows[scope]``)."""
        return {"window": self.window.kind, "key": self.key, "start": self.start, "resets_at": self.resets_at}

    def leaves_enough_at(self, bucket_units: list[int], excess: int) -> int | None:
        """Rolling: the first second by which at least ``excess`` units of the spend counted now
        have left. ``bucket_units`` are the counted buckets' units, oldest first (the order of
        ``(*reads, key)``); a bucket leaves when its last second does. None if they never sum
        to ``excess``."""
        b, w = self.window.bucket_seconds, self.window.seconds
        assert b is not None and w is not None and self.start is not None
        gone = 0
        for i, units in enumerate(bucket_units):
            gone += units
            if gone >= excess:
                return self.start + (i + 1) * b - 1 + w
        return None

    def describe(self) -> str:
        """``daily window d:2026-03-08@America/New_York (2026-03-08T05:00:00Z .. 2026-03-09T05:00:00Z)``."""
        if self.window.kind == ALL_TIME:
            return "all-time"
        span = f"{_iso(self.start)} .. {_iso(self.resets_at)}"
        if self.window.kind == ROLLING:
            return (f"rolling {self.window.seconds} s window ({self.window.bucket_seconds} s buckets; "
                    f"counting from {_iso(self.start)}, all of it gone by {_iso(self.resets_at)})")
        return f"{self.window.kind} window {self.key} ({span})"


_LAST: dict[tuple[Window, str], Span] = {}
"""The last calendar span computed per (window, zone): most requests fall in the window of the one before."""


def span(window: Window, timestamp: int, tz: str = "UTC") -> Span:
    """The window ``timestamp`` falls in. ``WindowError`` for a calendar window past year 9999."""
    if window.kind == ALL_TIME:
        return Span(window)
    if window.kind == ROLLING:
        b = window.bucket_seconds
        assert b is not None and window.seconds is not None
        return _rolling(window, timestamp // b, max((timestamp - window.seconds + 1) // b, 0))
    last = _LAST.get((window, tz))
    if last is not None and last.start <= timestamp < last.resets_at:  # type: ignore[operator]
        return last
    try:
        s = _LAST[(window, tz)] = _calendar(window, timestamp, tz)
        return s
    except (OverflowError, ValueError, OSError):
        raise WindowError(
            f"timestamp {timestamp} cannot be placed in a {window.kind} window: calendar windows end in "
            "the year 9999 (is it in milliseconds? timestamps are Unix seconds)") from None


@lru_cache(maxsize=1024)
def _rolling(window: Window, hi: int, lo: int) -> Span:
    """Buckets ``lo..hi`` (indexes of ``bucket_seconds``): the same span for every second that reads them."""
    b = window.bucket_seconds
    assert b is not None and window.seconds is not None
    keys = [f"r:{b}:{i * b}" for i in range(lo, hi + 1)]
    return Span(window, keys[-1], lo * b, (hi + 1) * b - 1 + window.seconds, tuple(keys[:-1]))


def _calendar(window: Window, t: int, tz: str) -> Span:
    z = zone(tz)
    first = _period_start(window.kind, datetime.fromtimestamp(t, z).date())
    start, nxt = _first_second(first, z), _next_period(window.kind, first)
    end = _first_second(nxt, z)
    if t >= end:  # only where the clocks went back across midnight
        first, start = nxt, end
        nxt = _next_period(window.kind, first)
        end = _first_second(nxt, z)
    return Span(window, f"{_PREFIX[window.kind]}:{_label(window.kind, first)}@{tz}", start, end, timezone=tz)


def _period_start(kind: str, d: date) -> date:
    if kind == WEEKLY:
        return d - timedelta(days=d.weekday())
    if kind == MONTHLY:
        return d.replace(day=1)
    return d


def _next_period(kind: str, d: date) -> date:
    if kind == DAILY:
        return d + timedelta(days=1)
    if kind == WEEKLY:
        return d + timedelta(days=7)
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def _label(kind: str, d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}" if kind == MONTHLY else d.isoformat()


def _first_second(d: date, z: ZoneInfo) -> int:
    """The first Unix second whose local wall time is at or after ``d`` 00:00 in ``z``.

    Normally local midnight. Where the clocks jump over midnight, the instant
    of the jump; where midnight happens twice, the first.
    """
    midnight = datetime(d.year, d.month, d.day)
    # fold=0: the first of a repeated midnight; inside a gap, the offset from
    # before the jump, which lands on the jump when the gap starts at midnight.
    c = int(midnight.replace(tzinfo=z).timestamp())
    if _local(c - 1, z) < midnight:
        return c
    # A gap that starts before midnight: fold=0 lands past the jump. Search the
    # two days before for the first second at or after midnight.
    lo, hi = c - 2 * 86400, c
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _local(mid, z) >= midnight else (mid, hi)
    return hi


def _local(t: int, z: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, z).replace(tzinfo=None)


def _iso(t: int | None) -> str:
    if t is None:
        return "-"
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return str(t)
