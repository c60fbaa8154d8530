"""Cumulative spend over time, per counter, in bounded memory - what the chart draws.

A ``Series`` keeps every ``stride``-th ``(timestamp, cumulative units)``
point and always the latest; past ``2 * MAX_POINTS`` points it drops every
other one and doubles the stride, so old and new parts of the run stay
equally dense, a million-call run keeps at most ``2 * MAX_POINTS + 1``
points per line, and a cumulative curve keeps its shape. ``Timeline`` keeps one series for the
total and one per agent, session and tool key - at most ``MAX_KEYS`` keys per
scope: when a new key finds them full, half of them are dropped - those
that spent least, never one of the ``RECENT`` most recently active (a
session still running) - so the biggest spenders (what the chart draws)
keep their whole lines; a key that comes back continues from its true
cumulative value (its early points are gone) - and the denies as markers
(at most ``MAX_MARKS`` per scope, thinned the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_POINTS = 500
MAX_KEYS = 500
MAX_MARKS = 2000
RECENT = MAX_KEYS // 5


def _evict(table: dict[str, "Series"]) -> None:
    """Drop half the keys: the least spent among all but the ``RECENT`` most recently touched."""
    recent = set(sorted(table, key=lambda k: table[k].touched)[-RECENT:])
    idle = sorted((k for k in table if k not in recent), key=lambda k: table[k].last)
    for k in idle[:len(table) // 2]:
        del table[k]


@dataclass
class Series:
    kept: list[tuple[int, int]] = field(default_factory=list)
    latest: tuple[int, int] | None = None
    stride: int = 1
    seen: int = 0
    touched: int = 0

    def add(self, ts: int, value: int) -> None:
        self.latest = (ts, value)
        if self.seen % self.stride == 0:
            self.kept.append(self.latest)
            if len(self.kept) > 2 * MAX_POINTS:
                self.kept = self.kept[::2]
                self.stride *= 2
        self.seen += 1

    @property
    def points(self) -> list[tuple[int, int]]:
        if self.latest is not None and (not self.kept or self.kept[-1] != self.latest):
            return self.kept + [self.latest]
        return list(self.kept)

    @property
    def last(self) -> int:
        return self.latest[1] if self.latest else 0


@dataclass
class Mark:
    """A deny: when, whose counter, and where that counter stood (before the denied cost)."""

    timestamp: int
    key: str
    value: int
    requested: int


@dataclass
class Timeline:
    total: Series = field(default_factory=Series)
    keys: dict[str, dict[str, Series]] = field(default_factory=lambda: {"agent": {}, "session": {}, "tool": {}})
    marks: dict[str, list[Mark]] = field(default_factory=dict)
    tick: int = 0

    def spend(self, ts: int, totals: dict[str, int], keys: dict[str, str | None], cost: int) -> None:
        """After a committed call of ``cost``: the new cumulative spend of each counter it touched.

        A line starts at the value before its first call (0 for a new key), so it rises from there.
        """
        if not self.total.seen:
            self.total.add(ts, totals["total"] - cost)
        self.total.add(ts, totals["total"])
        for scope in ("agent", "session", "tool"):
            key = keys.get(scope)
            if key is None:
                continue
            table = self.keys[scope]
            series = table.get(key)
            if series is None:
                if len(table) >= MAX_KEYS:
                    _evict(table)
                series = table[key] = Series()
                series.add(ts, max(totals[scope] - cost, 0))
            self.tick += 1
            series.touched = self.tick
            series.add(ts, totals[scope])

    def deny(self, scope: str, mark: Mark) -> None:
        marks = self.marks.setdefault(scope, [])
        marks.append(mark)
        if len(marks) > MAX_MARKS:
            self.marks[scope] = marks[::2]
