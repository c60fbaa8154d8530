"""Receipt logs: serde's acceptance rules, located errors, --skip-bad, gzip, bounded memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest

from chio_budget.toolkit.receipts import (MAX_LINE_BYTES, BadRecords, ReceiptError, iter_receipts, parse_line)
from support.toolkit import rec, write_log

U64_MAX = 2**64 - 1


def parse(obj) -> object:
    raw = obj if isinstance(obj, bytes) else (obj if isinstance(obj, str) else json.dumps(obj)).encode()
    return parse_line(raw, "log.jsonl:7")


def without(key: str) -> dict:
    r = rec()
    del r[key]
    return r


def with_(**fields) -> dict:
    return {**rec(), **fields}


def with_dim(dim: dict) -> dict:
    r = rec()
    r["dimensions"] = [r["dimensions"][0], dim]
    return r


@pytest.mark.parametrize("record, message", [
    (without("schema"), "log.jsonl:7: schema: required"),
    (without("receipt_id"), "log.jsonl:7: receipt_id: required"),
    (without("timestamp"), "log.jsonl:7: timestamp: required"),
    (without("agent_id"), "log.jsonl:7: agent_id: required"),
    (without("tool_server"), "log.jsonl:7: tool_server: required"),
    (without("tool_name"), "log.jsonl:7: tool_name: required"),
    (without("dimensions"), "log.jsonl:7: dimensions: required"),
    (with_(timestamp=-1), "log.jsonl:7: timestamp: must be an integer 0..2^64-1, got -1"),
    (with_(timestamp=U64_MAX + 1), f"timestamp: must be an integer 0..2^64-1, got {U64_MAX + 1}"),
    (with_(timestamp=1.0), "timestamp: must be an integer 0..2^64-1, got float 1.0"),
    (with_(timestamp="1000"), 'timestamp: must be an integer 0..2^64-1, got string "1000"'),
    (with_(timestamp=True), "timestamp: must be an integer 0..2^64-1, got bool true"),
    (with_(agent_id=7), "agent_id: must be a string, got integer 7"),
    (with_(session_id=["s"]), "session_id: must be a string, got array"),
    (with_(dimensions={}), "dimensions: must be an array, got object"),
    (with_dim({"duration_ms": 1}), "dimensions.1.dimension: required"),
    (with_dim({"dimension": "gpu"}), 'dimensions.1.dimension: unknown dimension "gpu" (expected one of compute_time'),
    (with_dim({"dimension": "compute_time"}), "dimensions.1.duration_ms: required"),
    (with_dim({"dimension": "data_volume", "bytes_read": 1}), "dimensions.1.bytes_written: required"),
    (with_dim({"dimension": "api_cost", "amount": {"units": 1.5, "currency": "USD"}, "provider": "p"}),
     "dimensions.1.amount.units: must be an integer 0..2^64-1, got float 1.5"),
    (with_dim({"dimension": "api_cost", "amount": {"units": 1}, "provider": "p"}), "dimensions.1.amount.currency: required"),
    (with_dim({"dimension": "api_cost", "amount": {"units": 1, "currency": "USD"}}), "dimensions.1.provider: required"),
    (with_dim({"dimension": "warehouse_query", "bytes_scanned": 1, "estimated_cost_usd": 0.25}),
     "dimensions.1.estimated_cost_usd: must be a string, got float 0.25"),
    (with_dim({"dimension": "custom", "name": "tokens", "value": 1, "unit": 3}), "dimensions.1.unit: must be a string"),
    (with_dim("compute_time"), "dimensions.1: must be an object tagged by \"dimension\""),
    (with_(total_monetary_cost={"units": -5, "currency": "USD"}), "total_monetary_cost.units: must be an integer"),
    (with_(total_monetary_cost=5), "total_monetary_cost: must be an object {units, currency}, got integer"),
    ([rec()], "log.jsonl:7: <record>: a record must be a JSON object (CostMetadata), got array"),
    ('{"schema": "x", ', "log.jsonl:7: <json>: Expecting property name enclosed in double quotes (column 17)"),
    (json.dumps(rec())[:-1] + ', "agent_id": "a2"}', 'log.jsonl:7: <json>: duplicate key "agent_id"'),
    (json.dumps(with_(timestamp=1)).replace("1,", "NaN,", 1), "log.jsonl:7: <json>: NaN is not JSON"),
    (json.dumps(rec()).replace('"a1"', '"\\ud800"'), "log.jsonl:7: agent_id: lone surrogate \\ud800 is not valid Unicode"),
    (json.dumps(rec()).encode().replace(b'"a1"', b'"a\xff"'), "log.jsonl:7: <line>: invalid UTF-8 at byte"),
])
def test_a_malformed_record_is_located_by_file_line_and_field(record, message):
    with pytest.raises(ReceiptError) as exc:
        parse(record)
    assert message in str(exc.value)
    assert str(exc.value).startswith("log.jsonl:7: ")


def test_what_serde_accepts_is_accepted():
    r = rec(session=None)
    r["session_id"] = None                     # Option: null is None
    r["total_monetary_cost"] = None
    r["extra_field"] = {"anything": [1.5]}      # unknown fields are ignored, as serde does
    r["dimensions"] += [{"dimension": "custom", "name": "tokens", "value": U64_MAX},           # unit optional
                        {"dimension": "warehouse_query", "bytes_scanned": 0, "estimated_cost_usd": "0.25",
                         "note": "ignored"}]
    r["schema"] = "chio.cost-metadata.v9"       # serde does not check the schema string
    r["receipt_id"] = ""
    got = parse(r)
    assert (got.session_id, got.money, got.compute_ms, got.data_bytes) == (None, None, 100, 700)


def test_log_streams_skip_blank_lines_gzip_and_file_order(tmp_path):
    a = write_log(tmp_path / "a.jsonl", [rec("r1", agent="x"), "", "   ", rec("r2")])
    b = write_log(tmp_path / "b.jsonl.gz", [rec("r3")])
    got = list(iter_receipts([a, b]))
    assert [r.receipt_id for r in got] == ["r1", "r2", "r3"]
    assert [r.where for r in got] == [f"{a}:1", f"{a}:4", f"{b}:1"]


def test_first_bad_record_stops_or_is_counted_with_skip_bad(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [rec("r1"), without("agent_id"), rec("r3"), "{", rec("r5")])
    with pytest.raises(ReceiptError, match=rf"^{log}:2: agent_id: required$"):
        list(iter_receipts([log]))
    bad = BadRecords()
    assert [r.receipt_id for r in iter_receipts([log], bad=bad)] == ["r1", "r3", "r5"]
    assert bad.count == 2
    assert bad.summary() == ["skipped 2 bad records:", f"  {log}:2: agent_id: required",
                             f"  {log}:4: <json>: Expecting property name enclosed in double quotes (column 2)"]


def test_a_line_longer_than_the_bound_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(json.dumps(rec()).encode() + b"\n" + b" " * (MAX_LINE_BYTES + 10) + b"\n")
    with pytest.raises(ReceiptError, match=rf"{log}:2: <line>: longer than {MAX_LINE_BYTES} bytes"):
        list(iter_receipts([log]))


def test_unreadable_and_corrupt_files_are_located(tmp_path):
    with pytest.raises(ReceiptError, match=r"nope.jsonl:1: <file>: cannot read"):
        list(iter_receipts([tmp_path / "nope.jsonl"]))
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ReceiptError, match=r"bad.jsonl.gz:1: <file>: cannot read"):
        list(iter_receipts([bad_gz]))


def _write_records(path, n: int) -> None:
    """``n`` records with a fixed set of 10 agents and 5 tools (group state stays constant), gzipped."""
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(n):
            f.write(json.dumps(rec(f"r{i}", i, f"a{i % 10}", "s1", f"t{i % 5}", i % 97, session=f"s{i % 10}")) + "\n")


def _peak_bytes(path) -> int:
    from chio_budget.toolkit.costquery import CostAggregator, CostQuery

    agg = CostAggregator(CostQuery(group_by="agent"), cap=False)
    tracemalloc.start()
    try:
        for r in iter_receipts([path]):
            agg.add(r)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_log_size(tmp_path):
    small, large = tmp_path / "4k.jsonl.gz", tmp_path / "40k.jsonl.gz"
    _write_records(small, 4_000)
    _write_records(large, 40_000)
    p_small, p_large = _peak_bytes(small), _peak_bytes(large)
    # 10x the records: the peak is the same working set (one line, one record, the groups), not 10x.
    assert p_large < p_small * 1.5 + 64 * 1024, (p_small, p_large)
    assert p_large < 2 * 1024 * 1024
