"""A plain-Python transcription of ``chio_metering::query::execute_cost_query`` (the oracle).

Line for line the Rust function over an in-memory list of CostMetadata JSON
objects: filter into a list, ``take(limit)``, aggregate, ``BTreeMap`` groups,
serde's ``skip_serializing_if``. Deliberately not streaming and sharing no
code with ``chio_budget.toolkit.costquery``, so a differential test compares
two independent readings of the Rust source.
"""

from __future__ import annotations

U64_MAX = 2**64 - 1
MAX_COST_QUERY_LIMIT = 500


def sat_add(a: int, b: int) -> int:
    return min(a + b, U64_MAX)


def total_compute_time_ms(r: dict) -> int:
    out = 0
    for d in r["dimensions"]:
        if d["dimension"] == "compute_time":
            out = sat_add(out, d["duration_ms"])
    return out


def total_data_bytes(r: dict) -> int:
    out = 0
    for d in r["dimensions"]:
        if d["dimension"] == "data_volume":
            out = sat_add(out, sat_add(d["bytes_read"], d["bytes_written"]))
    return out


def record_matches_query(r: dict, q: dict) -> bool:
    if q.get("session_id") is not None and r.get("session_id") != q["session_id"]:
        return False
    if q.get("agent_id") is not None and r["agent_id"] != q["agent_id"]:
        return False
    if q.get("tool_server") is not None and r["tool_server"] != q["tool_server"]:
        return False
    if q.get("tool_name") is not None and r["tool_name"] != q["tool_name"]:
        return False
    if q.get("since") is not None and r["timestamp"] < q["since"]:
        return False
    if q.get("until") is not None and r["timestamp"] >= q["until"]:
        return False
    if q.get("currency") is not None:
        cost = r.get("total_monetary_cost")
        if cost is None or cost["currency"] != q["currency"]:
            return False
    return True


def _money(records: list[dict]) -> dict | None:
    units, currency, mixed = 0, None, False
    for r in records:
        cost = r.get("total_monetary_cost")
        if cost is not None:
            if currency is None:
                currency, units = cost["currency"], cost["units"]
            elif currency == cost["currency"]:
                units = sat_add(units, cost["units"])
            else:
                mixed = True
    return None if mixed or currency is None else {"units": units, "currency": currency}


def execute_cost_query(records: list[dict], q: dict) -> dict:
    limit = min(q.get("limit") if q.get("limit") is not None else MAX_COST_QUERY_LIMIT, MAX_COST_QUERY_LIMIT)
    filtered = [r for r in records if record_matches_query(r, q)]
    truncated = len(filtered) > limit
    capped = filtered[:limit]
    compute = data = 0
    for r in capped:
        compute = sat_add(compute, total_compute_time_ms(r))
        data = sat_add(data, total_data_bytes(r))
    summary = {"receipt_count": len(capped), "total_compute_time_ms": compute, "total_data_bytes": data}
    money = _money(capped)
    if money is not None:
        summary["total_monetary_cost"] = money
    summary["distinct_agents"] = len({r["agent_id"] for r in capped})
    summary["distinct_tools"] = len({f"{r['tool_server']}:{r['tool_name']}" for r in capped})
    out = {"summary": summary}
    by = q.get("group_by", "none")
    if by != "none":
        groups: dict[bytes, list[dict]] = {}
        for r in capped:
            session = r.get("session_id")
            key = {"session": "<no-session>" if session is None else session, "agent": r["agent_id"],
                   "tool": f"{r['tool_server']}:{r['tool_name']}"}[by]
            groups.setdefault(key.encode("utf-8"), []).append(r)  # BTreeMap<String>: byte order
        rows = []
        for k in sorted(groups):
            rs = groups[k]
            g = {"key": k.decode("utf-8"), "receipt_count": len(rs),
                 "total_compute_time_ms": 0, "total_data_bytes": 0}
            for r in rs:
                g["total_compute_time_ms"] = sat_add(g["total_compute_time_ms"], total_compute_time_ms(r))
                g["total_data_bytes"] = sat_add(g["total_data_bytes"], total_data_bytes(r))
            m = _money(rs)
            if m is not None:
                g["total_monetary_cost"] = m
            rows.append(g)
        if rows:
            out["groups"] = rows
    out["truncated"] = truncated
    return out
