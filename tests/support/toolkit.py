"""Receipt-log builders shared by the toolkit tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable

from chio_budget.toolkit.receipts import parse_line

SCHEMA = "chio.cost-metadata.v1"


def rec(rid: str = "r1", ts: int = 1000, agent: str = "a1", server: str = "s1", tool: str = "t1",
        cost: int | None = 50, currency: str = "USD", session: str | None = "sess-1", *,
        compute: int = 100, read: int = 500, written: int = 200, total: dict | None | str = "auto") -> dict:
    """The Rust tests' ``make_record``: compute 100 ms, 500+200 bytes, one ``api_cost`` of ``cost``.

    ``total`` overrides ``total_monetary_cost`` (None drops it); by default it
    is what ``compute_total_monetary_cost`` gives.
    """
    dims: list[dict] = [{"dimension": "compute_time", "duration_ms": compute},
                        {"dimension": "data_volume", "bytes_read": read, "bytes_written": written}]
    if cost is not None:
        dims.append({"dimension": "api_cost", "amount": {"units": cost, "currency": currency}, "provider": "test"})
    r: dict = {"schema": SCHEMA, "receipt_id": rid, "timestamp": ts}
    if session is not None:
        r["session_id"] = session
    r.update({"agent_id": agent, "tool_server": server, "tool_name": tool, "dimensions": dims})
    if total == "auto":
        total = None if cost is None else {"units": cost, "currency": currency}
    if total is not None:
        r["total_monetary_cost"] = total
    return r


def lines(records: Iterable[dict | str]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def write_log(path: Path, records: Iterable[dict | str]) -> Path:
    text = lines(records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def receipts(records: Iterable[dict]) -> list:
    """Records through the real parser (``Receipt`` tuples), as a log line each."""
    return [parse_line(json.dumps(r).encode(), f"<test>:{i + 1}") for i, r in enumerate(records)]
