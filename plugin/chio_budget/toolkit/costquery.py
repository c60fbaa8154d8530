"""``chio receipts cost``: ``chio_metering::query::execute_cost_query``, streamed.

The same answers as the Rust function on the same receipts, rule by rule:

- every filter given must match (ANDed): ``session_id`` (a record without a
  session never matches one), ``agent_id``, ``tool_server``, ``tool_name``,
  ``since`` (inclusive) and ``until`` (exclusive), in Unix seconds, and
  ``currency`` (only records whose ``total_monetary_cost`` is in it; a record
  without one never matches);
- of the matching records, in log order, the first ``min(limit, 500)``
  (``limit`` defaulting to 500) are aggregated and ``truncated`` says whether
  more matched. ``cap=False`` (``--all``) lifts the 500 clamp: ``limit`` then
  applies as given, or not at all;
- the summary counts those records: ``receipt_count``,
  ``total_compute_time_ms`` and ``total_data_bytes`` (saturating u64 sums of
  the dimensions), ``total_monetary_cost`` (the records'
  ``total_monetary_cost`` summed, only while every one that has one shares the
  first one's currency; absent when none has one or they are mixed),
  ``distinct_agents`` and ``distinct_tools`` (distinct ``server:tool``
  strings);
- ``groups`` (``group_by`` session/agent/tool) are sorted by key (byte order,
  as Rust's ``BTreeMap<String, _>``), a record without a session falls in
  ``<no-session>``, and each group's total follows the summary's currency
  rule;
- the result is the ``CostQueryResult`` serde form: ``groups`` left out when
  empty, ``total_monetary_cost`` left out when absent.

Memory is bounded by the distinct agents, tools and group keys, never by the
number of records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from ..money import U64_MAX
from .receipts import Receipt

MAX_COST_QUERY_LIMIT = 500
NO_SESSION = "<no-session>"
GroupBy = Literal["none", "session", "agent", "tool"]
GROUP_BY = ("none", "session", "agent", "tool")


@dataclass(frozen=True)
class CostQuery:
    """``chio_metering::query::CostQuery``; ``None`` means "no filter"."""

    session_id: str | None = None
    agent_id: str | None = None
    tool_server: str | None = None
    tool_name: str | None = None
    since: int | None = None
    until: int | None = None
    currency: str | None = None
    limit: int | None = None
    group_by: GroupBy = "none"

    def __post_init__(self) -> None:
        if self.group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {self.group_by!r}")
        for name in ("since", "until", "limit"):
            v = getattr(self, name)
            if v is not None and (type(v) is not int or not 0 <= v <= U64_MAX):
                raise ValueError(f"{name} must be an integer 0..2^64-1, got {v!r}")

    def matches(self, r: Receipt) -> bool:
        """``record_matches_query``."""
        if self.session_id is not None and r.session_id != self.session_id:
            return False
        if self.agent_id is not None and r.agent_id != self.agent_id:
            return False
        if self.tool_server is not None and r.tool_server != self.tool_server:
            return False
        if self.tool_name is not None and r.tool_name != self.tool_name:
            return False
        if self.since is not None and r.timestamp < self.since:
            return False
        if self.until is not None and r.timestamp >= self.until:
            return False
        if self.currency is not None and (r.money is None or r.money[1] != self.currency):
            return False
        return True

    def effective_limit(self, cap: bool = True) -> int | None:
        """How many matching records are aggregated (None: all of them)."""
        if not cap:
            return self.limit
        return min(MAX_COST_QUERY_LIMIT if self.limit is None else self.limit, MAX_COST_QUERY_LIMIT)


class _Totals:
    """Counts, saturating sums and the single-currency money rule of one summary or group."""

    __slots__ = ("receipt_count", "compute_ms", "data_bytes", "currency", "money_units", "mixed")

    def __init__(self) -> None:
        self.receipt_count = 0
        self.compute_ms = 0
        self.data_bytes = 0
        self.currency: str | None = None
        self.money_units = 0
        self.mixed = False

    def add(self, r: Receipt) -> None:
        self.receipt_count += 1
        if r.compute_ms:
            self.compute_ms = min(self.compute_ms + r.compute_ms, U64_MAX)
        if r.data_bytes:
            self.data_bytes = min(self.data_bytes + r.data_bytes, U64_MAX)
        if r.money is not None:
            units, currency = r.money
            if self.currency is None:
                self.currency, self.money_units = currency, units
            elif currency == self.currency:
                self.money_units = min(self.money_units + units, U64_MAX)
            else:
                self.mixed = True

    def monetary(self) -> dict[str, Any] | None:
        if self.mixed or self.currency is None:
            return None
        return {"units": self.money_units, "currency": self.currency}


class CostAggregator:
    """``execute_cost_query`` one record at a time: ``add`` each, then ``result()``."""

    def __init__(self, query: CostQuery, *, cap: bool = True):
        self.query = query
        self.limit = query.effective_limit(cap)
        self.matched = 0
        self.truncated = False
        self.summary = _Totals()
        self.agents: set[str] = set()
        self.tools: set[str] = set()
        self.groups: dict[str, _Totals] = {}

    def add(self, r: Receipt) -> None:
        if not self.query.matches(r):
            return
        self.matched += 1
        if self.limit is not None and self.matched > self.limit:
            self.truncated = True
            return
        self.summary.add(r)
        self.agents.add(r.agent_id)
        self.tools.add(f"{r.tool_server}:{r.tool_name}")
        key = self._group_key(r)
        if key is not None:
            acc = self.groups.get(key)
            if acc is None:
                acc = self.groups[key] = _Totals()
            acc.add(r)

    def _group_key(self, r: Receipt) -> str | None:
        by = self.query.group_by
        if by == "session":
            return NO_SESSION if r.session_id is None else r.session_id
        if by == "agent":
            return r.agent_id
        if by == "tool":
            return f"{r.tool_server}:{r.tool_name}"
        return None

    def result(self) -> dict[str, Any]:
        """The ``CostQueryResult`` serde form (fields in Rust declaration order)."""
        s = self.summary
        summary: dict[str, Any] = {"receipt_count": s.receipt_count, "total_compute_time_ms": s.compute_ms,
                                   "total_data_bytes": s.data_bytes}
        money = s.monetary()
        if money is not None:
            summary["total_monetary_cost"] = money
        summary["distinct_agents"] = len(self.agents)
        summary["distinct_tools"] = len(self.tools)
        out: dict[str, Any] = {"summary": summary}
        groups = [_group_json(key, self.groups[key]) for key in sorted(self.groups)]
        if groups:
            out["groups"] = groups
        out["truncated"] = self.truncated
        return out


def _group_json(key: str, acc: _Totals) -> dict[str, Any]:
    g: dict[str, Any] = {"key": key, "receipt_count": acc.receipt_count,
                         "total_compute_time_ms": acc.compute_ms, "total_data_bytes": acc.data_bytes}
    money = acc.monetary()
    if money is not None:
        g["total_monetary_cost"] = money
    return g


def execute_cost_query(records: Iterable[Receipt], query: CostQuery, *, cap: bool = True) -> dict[str, Any]:
    """The whole query over an iterable (streamed: one record in memory at a time)."""
    agg = CostAggregator(query, cap=cap)
    for r in records:
        agg.add(r)
    return agg.result()


def to_json(result: dict[str, Any]) -> str:
    """``serde_json::to_string``: compact, non-ASCII kept, control characters escaped."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))
