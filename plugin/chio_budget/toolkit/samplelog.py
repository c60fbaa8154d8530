"""A realistic, deterministic receipt log to try every command on a fresh machine.

``sample_records(agents=20, days=30, seed=1)`` yields Rust ``CostMetadata``
JSON objects (serde field order) in timestamp order: agents with roles
(researcher, analyst, translator, coder) and therefore different tool mixes,
a few heavy agents doing several times the work, quieter weekends, calls
grouped in sessions plus some session-less scheduled calls, tools on several
servers, costs with a long tail, some tools without any monetary cost, and
one provider that bills in EUR. The same arguments give the same bytes on
every machine: everything is drawn from one ``random.Random(seed)``, money is
integers, and the clock starts at ``start`` (2026-01-01T00:00:00Z by default).
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

SCHEMA = "chio.cost-metadata.v1"
DEFAULT_START = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400

# server, tool -> (currency or None, provider, cost median in minor units, compute ms median)
TOOLS: dict[tuple[str, str], tuple[str | None, str, int, int]] = {
    ("llm", "complete"): ("USD", "openai", 40, 2500),
    ("llm", "embed"): ("USD", "openai", 2, 150),
    ("search", "web"): ("USD", "serpapi", 2, 700),
    ("search", "news"): ("USD", "serpapi", 1, 500),
    ("browser", "fetch"): (None, "", 0, 1200),
    ("warehouse", "query"): ("USD", "bigquery", 60, 4000),
    ("translate", "text"): ("EUR", "deepl", 8, 600),
    ("files", "read"): (None, "", 0, 40),
}

ROLES: dict[str, dict[tuple[str, str], int]] = {
    "researcher": {("search", "web"): 30, ("search", "news"): 10, ("browser", "fetch"): 25,
                   ("llm", "complete"): 25, ("llm", "embed"): 10},
    "analyst": {("warehouse", "query"): 30, ("llm", "complete"): 30, ("files", "read"): 25,
                ("llm", "embed"): 15},
    "translator": {("translate", "text"): 55, ("llm", "complete"): 20, ("files", "read"): 25},
    "coder": {("llm", "complete"): 45, ("files", "read"): 40, ("search", "web"): 15},
}


def _agents(rng: random.Random, n: int) -> list[tuple[str, str, float]]:
    """``(agent_id, role, activity)``; about one agent in seven is heavy (5-8x the calls)."""
    roles = list(ROLES)
    heavy = set(rng.sample(range(n), max(1, n // 7))) if n else set()
    out = []
    for i in range(n):
        activity = rng.uniform(5, 8) if i in heavy else rng.uniform(0.5, 1.5)
        out.append((f"agent-{i + 1:02d}", roles[i % len(roles)], activity))
    return out


def _cost(rng: random.Random, median: int) -> int:
    """A long-tailed integer cost around ``median`` minor units (at least 1)."""
    return max(1, int(median * rng.lognormvariate(0, 0.9)))


def _record(rng: random.Random, ts: int, agent: str, session: str | None, key: tuple[str, str]) -> dict[str, Any]:
    currency, provider, median, compute = TOOLS[key]
    dims: list[dict[str, Any]] = [{"dimension": "compute_time",
                                   "duration_ms": max(1, int(compute * rng.lognormvariate(0, 0.5)))}]
    if key in (("browser", "fetch"), ("files", "read"), ("warehouse", "query")):
        dims.append({"dimension": "data_volume", "bytes_read": rng.randint(2_000, 2_000_000),
                     "bytes_written": rng.randint(0, 4_000)})
    if key == ("warehouse", "query"):
        scanned = rng.randint(1, 400) * 1_000_000_000
        dims.append({"dimension": "warehouse_query", "bytes_scanned": scanned,
                     "estimated_cost_usd": f"{scanned * 625 // 10**12 // 100}.{scanned * 625 // 10**12 % 100:02d}"})
    total = None
    if currency is not None:
        units = _cost(rng, median)
        dims.append({"dimension": "api_cost", "amount": {"units": units, "currency": currency}, "provider": provider})
        total = {"units": units, "currency": currency}
    if key[0] == "llm":
        dims.append({"dimension": "custom", "name": "tokens", "value": rng.randint(200, 12_000), "unit": "tokens"})
    rec: dict[str, Any] = {"schema": SCHEMA, "receipt_id": "", "timestamp": ts}
    if session is not None:
        rec["session_id"] = session
    rec.update({"agent_id": agent, "tool_server": key[0], "tool_name": key[1], "dimensions": dims})
    if total is not None:
        rec["total_monetary_cost"] = total
    return rec


def _day(rng: random.Random, day: int, start: int, agents: list[tuple[str, str, float]],
         calls_per_day: float) -> list[dict[str, Any]]:
    weekend = (start // DAY + day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    base = start + day * DAY
    out: list[dict[str, Any]] = []
    for agent, role, activity in agents:
        mix = ROLES[role]
        keys, weights = list(mix), list(mix.values())
        calls = int(rng.gauss(calls_per_day * activity * (0.3 if weekend else 1.0), 3))
        sessions = max(1, calls // 12)
        for s in range(sessions):
            t = base + rng.randint(7 * 3600, 20 * 3600)
            sid = f"{agent}-d{day + 1:02d}-s{s + 1}"
            for _ in range(max(0, calls // sessions)):
                t += rng.randint(2, 240)
                session = None if rng.random() < 0.08 else sid  # scheduled calls carry no session
                out.append(_record(rng, min(t, base + DAY - 1), agent, session, rng.choices(keys, weights)[0]))
    out.sort(key=lambda r: (r["timestamp"], r["agent_id"]))
    return out


def sample_records(agents: int = 20, days: int = 30, seed: int = 1, *, start: int = DEFAULT_START,
                   calls_per_day: float = 30.0) -> Iterator[dict[str, Any]]:
    """The records in timestamp order, receipt ids ``r-<seed>-<n>`` increasing with time.

    ``calls_per_day`` is an ordinary agent's weekday mean; one day is built at
    a time, so memory stays at one day's records.
    """
    rng = random.Random(seed)
    roster = _agents(rng, agents)
    n = 0
    for day in range(days):
        for rec in _day(rng, day, start, roster, calls_per_day):
            n += 1
            rec["receipt_id"] = f"r-{seed}-{n:08d}"
            yield rec


def write_sample(out, **kwargs: Any) -> int:
    """Write the log as JSON lines to the text stream ``out``; returns the record count."""
    n = 0
    for rec in sample_records(**kwargs):
        out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        n += 1
    return n
