"""``chio-budget simulate``: the real guard over a log, against the Rust enforcer's answers."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import sys
import tracemalloc

import pytest
from typer.testing import CliRunner

from chio_budget.cli import app
from chio_budget.policy import load_policies
from chio_budget.rust_model import RustEnforcer
from chio_budget.toolkit.ordering import Call, assume_sorted, time_ordered
from chio_budget.toolkit.receipts import ReceiptError
from support.guards import REGO_DIR
from support.toolkit import rec, write_log

runner = CliRunner()
POLICY = ("currency: USD\nmax_total: 900\nmax_per_session: 300\nmax_per_agent: 350\n"
          "max_per_tool:\n  \"s1:expensive\": 150\n")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "CHIO_NO_PROGRESS": "1"})


def simulate_json(*args):
    r = run("simulate", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture
def pol(tmp_path):
    d = tmp_path / "pol"
    d.mkdir()
    (d / "default.yaml").write_text(POLICY)
    return d


def traffic(n=60):
    """A small log that crosses every limit: 3 agents, 2 sessions + none, a metered tool, out of order."""
    out = []
    for i in range(n):
        tool = "expensive" if i % 4 == 0 else "t1"
        out.append(rec(f"r{i:03d}", 10_000 + (i * 7919) % 500, f"a{i % 3}", "s1", tool, 10 + (i * 37) % 60,
                       session=[None, "sess-1", "sess-2"][i % 3]))
    return out


def rust_answers(records, policy):
    """The Rust enforcer, call by call in timestamp order (stable): check, then record when allowed."""
    from chio_budget import CostMetadata

    rust = RustEnforcer(policy)
    ordered = sorted(enumerate(records), key=lambda p: (p[1]["timestamp"], p[0]))
    first: dict[str, str] = {}
    denied_by: dict[str, int] = {}
    allowed = 0
    for _, r in ordered:
        meta = CostMetadata.model_validate(r)
        cost = r["total_monetary_cost"]["units"]
        violations = rust.check_all(meta, cost)
        if violations:
            for scope in dict.fromkeys(v["scope"] for v in violations):
                denied_by[scope] = denied_by.get(scope, 0) + 1
                first.setdefault(scope, r["receipt_id"])
        else:
            allowed += 1
            rust.record(meta, cost)
    return rust, allowed, denied_by, first


def test_simulation_gives_the_rust_enforcers_answers(tmp_path, pol):
    records = traffic()
    log = write_log(tmp_path / "log.jsonl", records)
    out = simulate_json(log, "--policies", pol)
    rust, allowed, denied_by, first = rust_answers(records, load_policies(pol)["default"])
    assert out["calls"] == {"total": 60, "allowed": allowed, "denied": 60 - allowed, "errors": 0}
    assert out["denied_by_scope"] == denied_by and set(denied_by) == {"total", "session", "agent", "tool"}
    assert {s: d["receipt_id"] for s, d in out["first_denial"].items()} == first
    assert out["spend"]["total"]["spent"] == rust.total_spent
    assert {r["key"]: r["spent"] for r in out["spend"]["agent"]} == rust.agent_spent
    assert {r["key"]: r["spent"] for r in out["spend"]["session"]} == rust.session_spent
    assert {r["key"]: r["spent"] for r in out["spend"]["tool"]} == rust.tool_spent
    limits = {r["key"]: r["limit"] for r in out["spend"]["tool"]}
    assert limits == {"s1:expensive": 150, "s1:t1": None}
    assert out["spend"]["total"]["limit"] == 900


def test_first_denial_names_the_record_and_the_decision(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 1, cost=300, session=None), rec("r2", 2, cost=100, session=None)])
    d = simulate_json(log, "--policies", pol)["first_denial"]["agent"]
    assert (d["receipt_id"], d["where"], d["agent_id"], d["tool_key"], d["cost_units"]) == \
        ("r2", f"{log}:2", "a1", "s1:t1", 100)
    assert d["decision"]["violations"] == [{"scope": "agent", "agent_id": "a1", "limit_units": 350,
                                            "current_units": 300, "requested_units": 100, "currency": "USD"}]


def test_out_of_order_records_are_sorted_stably(tmp_path, pol):
    records = traffic()
    shuffled = write_log(tmp_path / "shuffled.jsonl", records)
    in_order = write_log(tmp_path / "sorted.jsonl", [r for _, r in sorted(enumerate(records),
                                                                          key=lambda p: (p[1]["timestamp"], p[0]))])
    a = simulate_json(shuffled, "--policies", pol)
    b = simulate_json(in_order, "--policies", pol, "--assume-sorted")
    c = simulate_json(shuffled, "--policies", pol, "--sort-run", "7")  # external sort: 9 runs merged
    for out in (a, b, c):
        for d in out["first_denial"].values():
            d.pop("where")
    assert a == b == c


def test_external_sort_equals_in_memory_sort_and_keeps_memory_at_one_run():
    def calls():
        return (Call((i * 7919) % 1000, i, f"r{i}", None, "a", "s", "t", 1, "USD", f"f:{i}") for i in range(20_000))

    assert list(time_ordered(calls(), run_size=1500)) == sorted(calls())

    def peak(run_size):
        tracemalloc.start()
        try:
            for _ in time_ordered(calls(), run_size=run_size):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # sorted in runs of 1000 and merged from disk vs all 20,000 in memory (the merge keeps no history)
    assert peak(1000) * 4 < peak(40_000)


def test_assume_sorted_stops_at_the_first_record_out_of_order(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 5), rec("r2", 9), rec("r3", 7), rec("r4", 1)])
    r = run("simulate", log, "--policies", pol, "--assume-sorted", "--json")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip() == (f"{log}:3: timestamp: 7 is earlier than 9 of the record before it ({log}:2); "
                                "the log is not in timestamp order (drop --assume-sorted to sort it)")
    with pytest.raises(ReceiptError):
        list(assume_sorted([Call(2, 0, "a", None, "a", "s", "t", 0, "USD", "x:1"),
                            Call(1, 1, "b", None, "a", "s", "t", 0, "USD", "x:2")]))


def test_a_bad_record_is_located_and_nothing_is_reported(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1"), rec("r2", server="s1:x"), {"schema": "x"}])
    r = run("simulate", log, "--policies", pol)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip() == f"{log}:2: tool_server: must not contain ':' (the tool key is 'server:tool'), got 's1:x'"
    r = run("simulate", log, "--policies", pol, "--skip-bad", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["input"]["skipped_bad"] == 2
    assert r.stderr.startswith("skipped 2 bad records:")


def test_foreign_costs_are_converted_by_the_guard_with_the_rates_file(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 1000, cost=5, currency="EUR"), rec("r2", 2000, cost=3)])
    out = simulate_json(log, "--policies", pol)  # no rates: the kernel's answer, a rate_unavailable deny
    assert out["calls"]["denied"] == 1 and out["denied_by_scope"] == {"custom": 1}
    first = out["first_denial"]["custom"]
    assert first["decision"]["violations"][0]["code"] == "rate_unavailable"
    assert first["original_cost"] == {"units": 5, "currency": "EUR"}
    rates = tmp_path / "rates.yaml"
    rates.write_text('max_age_seconds: 1500\nrates:\n  EUR/USD: {rate: "1.08", updated_at: 900}\n')
    out = simulate_json(log, "--policies", pol, "--rates", rates)
    assert out["spend"]["total"]["spent"] == 6 + 3  # 5 EUR cents * 1.08 = 5.4 -> 6 USD cents, rounded up
    assert out["input"]["foreign_currency"] == {"EUR": 1}
    late = write_log(tmp_path / "late.jsonl", [rec("r1", 900 + 1501, cost=5, currency="EUR")])
    stale = simulate_json(late, "--policies", pol, "--rates", rates)  # judged at the call's own timestamp
    assert stale["first_denial"]["custom"]["decision"]["violations"][0]["code"] == "rate_stale"
    bad = write_log(tmp_path / "bad.jsonl", [rec("r1", cost=5, currency="usd")])
    r = run("simulate", bad, "--policies", pol)
    assert r.exit_code == 2 and r.stderr.startswith(f"{bad}:1: total_monetary_cost.currency: ")


def test_cost_field_reads_another_field(tmp_path, pol):
    records = [{**rec("r1", 1, cost=None), "estimate": 120}, {**rec("r2", 2, cost=None), "estimate": {
        "units": 30, "currency": "USD"}}]
    log = write_log(tmp_path / "log.jsonl", records)
    assert simulate_json(log, "--policies", pol, "--cost-field", "estimate")["spend"]["total"]["spent"] == 150
    bad = write_log(tmp_path / "bad.jsonl", [rec("r1")])
    r = run("simulate", bad, "--policies", pol, "--cost-field", "estimate")
    assert r.exit_code == 2 and f"{bad}:1: estimate: required (--cost-field)" in r.stderr


def test_records_without_monetary_cost_cost_nothing(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", cost=None), rec("r2", cost=7)])
    out = simulate_json(log, "--policies", pol)
    assert out["spend"]["total"]["spent"] == 7 and out["input"]["without_cost"] == 1


def test_sqlite_ledger_must_be_new_and_ends_holding_the_spend(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 1, cost=40), rec("r2", 2, agent="a2", cost=2)])
    db = tmp_path / "sim.db"
    out = simulate_json(log, "--policies", pol, "--ledger", f"sqlite:///{db}")
    assert out["spend"]["total"]["spent"] == 42
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from sqlite_master").fetchone()[0] > 0
    r = run("simulate", log, "--policies", pol, "--ledger", f"sqlite:///{db}")
    assert r.exit_code == 2 and f"--ledger: {db} already holds counters" in r.stderr
    r = run("simulate", log, "--policies", pol, "--ledger", "redis://127.0.0.1:6379/0")
    assert r.exit_code == 2 and "never to a live redis ledger" in r.stderr


def test_a_failed_run_removes_the_sqlite_file_it_created(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 1), rec("r2", 0)])
    db = tmp_path / "sim.db"
    r = run("simulate", log, "--policies", pol, "--ledger", f"sqlite:///{db}", "--assume-sorted")
    assert r.exit_code == 2 and not db.exists()


def test_warnings_from_the_rego_are_counted(tmp_path, pol):
    rego = tmp_path / "rego"
    shutil.copytree(REGO_DIR, rego)
    (rego / "chio" / "budget" / "warn.rego").write_text(
        'package chio.budget\n\nwarning contains {"code": "big_call"} if input.cost.units > 50\n')
    log = write_log(tmp_path / "log.jsonl", [rec("r1", 1, cost=60), rec("r2", 2, cost=70), rec("r3", 3, cost=5)])
    out = simulate_json(log, "--policies", pol, "--rego-dir", rego)
    assert out["warnings"] == [{"warning": {"code": "big_call"}, "count": 2,
                                "first": {"receipt_id": "r1", "where": f"{log}:1"}}]


def test_table_view(tmp_path, pol):
    log = write_log(tmp_path / "log.jsonl", traffic())
    r = run("simulate", log, "--policies", pol)
    assert r.exit_code == 0
    for text in ("simulation", "denied by scope (first denial)", "spend by agent", "spend by tool",
                 "s1:expensive", "1.50 USD", "OVER" if "OVER" in r.stdout else "%"):
        assert text in r.stdout


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_chart_is_a_png_of_non_trivial_size_and_html_embeds_it(tmp_path, pol):
    records = traffic() + [rec("r-x", 10_600, agent="<script>alert(1)</script>", cost=1)]
    log = write_log(tmp_path / "log.jsonl", records)
    png, page = tmp_path / "c.png", tmp_path / "r.html"
    r = run("simulate", log, "--policies", pol, "--chart", png, "--html", page)
    assert r.exit_code == 0, r.output
    data = png.read_bytes()
    width, height = _png_size(data)
    assert width >= 800 and height >= 600 and len(data) > 30_000
    text = page.read_text()
    assert text.startswith("<!doctype html>") and 'src="data:image/png;base64,' in text
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_without_matplotlib_the_error_names_the_extra(tmp_path, pol, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    log = write_log(tmp_path / "log.jsonl", [rec()])
    r = run("simulate", log, "--policies", pol, "--chart", tmp_path / "c.png")
    assert r.exit_code == 2
    assert "charts need matplotlib: pip install 'chio-budget-guard[charts]'" in r.stderr


def test_help_documents_exit_codes():
    assert "Exit codes: 0 simulated" in run("simulate", "--help").output


def test_chart_data_is_bounded_whatever_the_run_length():
    from chio_budget.toolkit import timeline as tl

    s = tl.Series()
    for i in range(100_000):
        s.add(i, i)
    assert len(s.points) <= 2 * tl.MAX_POINTS + 1 and s.points[0] == (0, 0) and s.points[-1] == (99_999, 99_999)
    gaps = {b[0] - a[0] for a, b in zip(s.points, s.points[1:-1])}
    assert len(gaps) == 1  # evenly thinned: old and new parts equally dense
    t = tl.Timeline()
    t.spend(0, {"total": 10**6, "agent": 10**6}, {"agent": "whale"}, 10**6)
    for i in range(3 * tl.MAX_KEYS):
        t.spend(i, {"total": 1, "agent": 1}, {"agent": f"a{i}"}, 1)
    t.spend(10**6, {"total": 1, "agent": 5}, {"agent": f"a{3 * tl.MAX_KEYS - 1}"}, 4)
    agents = t.keys["agent"]
    assert len(agents) <= tl.MAX_KEYS and "whale" in agents  # the biggest spender keeps its line
    assert agents[f"a{3 * tl.MAX_KEYS - 1}"].points[0] == (3 * tl.MAX_KEYS - 1, 0)  # a recent key kept whole


def test_windowed_limits_reset_on_the_calls_own_clock_and_are_shown_per_window(tmp_path):
    pol = tmp_path / "win"
    pol.mkdir()
    (pol / "default.yaml").write_text("currency: USD\nmax_total: 100000\nmax_per_agent: {units: 100, window: daily}\n")
    day = 86400
    log = write_log(tmp_path / "log.jsonl", [rec("r1", day + 10, cost=40), rec("r2", day + 20, cost=40),
                                            rec("r3", day + 30, cost=40), rec("r4", 2 * day + 5, cost=40)])
    out = simulate_json(log, "--policies", pol)
    assert out["calls"]["denied"] == 1 and out["first_denial"]["agent"]["receipt_id"] == "r3"  # r4: a new day
    [agent] = out["spend"]["agent"]
    assert (agent["spent"], agent["limit"], agent["window"]) == (120, 100, "daily")
    assert out["spend"]["total"]["window"] is None
    table = run("simulate", log, "--policies", pol).stdout
    assert "1.00 USD per daily" in table and "OVER" not in table  # 120 spent over two days is not over
