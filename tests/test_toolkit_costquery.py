"""``report``'s engine against every rule of ``query.rs``'s ``execute_cost_query``.

The first block ports the Rust tests one to one; then one test per rule the
issue names; then a differential test against ``rust_query_model`` (an
independent, non-streaming transcription of the Rust function).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from chio_budget.toolkit.costquery import CostQuery, execute_cost_query, to_json
from support.rust_query import execute_cost_query as rust_query
from support.toolkit import rec, receipts

U64_MAX = 2**64 - 1


def q(records, cap=True, **query):
    return execute_cost_query(receipts(records), CostQuery(**query), cap=cap)


def by_key(result):
    return {g["key"]: g for g in result.get("groups", [])}


# --- the Rust tests, one to one ------------------------------------------------------------------

def test_query_no_filter():
    r = q([rec("r1", 1000, "a1", "s1", "t1", 50), rec("r2", 2000, "a2", "s1", "t2", 100)])
    assert r["summary"]["receipt_count"] == 2
    assert r["summary"]["total_compute_time_ms"] == 200
    assert r["summary"]["total_data_bytes"] == 1400
    assert r["summary"]["total_monetary_cost"]["units"] == 150
    assert r["truncated"] is False


def test_query_filter_by_agent():
    r = q([rec("r1", 1000, "a1", "s1", "t1", 50), rec("r2", 2000, "a2", "s1", "t2", 100)], agent_id="a1")
    assert r["summary"]["receipt_count"] == 1


def test_query_filter_by_time_range():
    records = [rec("r1", 1000, cost=50), rec("r2", 2000, cost=100), rec("r3", 3000, cost=200)]
    assert q(records, since=1500, until=2500)["summary"]["receipt_count"] == 1


def test_query_group_by_agent():
    r = q([rec("r1", 1000, "a1", "s1", "t1", 50), rec("r2", 2000, "a2", "s1", "t2", 100),
           rec("r3", 3000, "a1", "s1", "t1", 75)], group_by="agent")
    assert len(r["groups"]) == 2
    assert by_key(r)["a1"]["receipt_count"] == 2
    assert by_key(r)["a1"]["total_monetary_cost"]["units"] == 125


def test_query_group_by_agent_mixed_currency_has_no_total():
    usd = rec("r1", 1000, "a1", "s1", "t1", 50)
    eur = rec("r2", 2000, "a1", "s1", "t2", 100, total={"units": 100, "currency": "EUR"})
    assert "total_monetary_cost" not in by_key(q([usd, eur], group_by="agent"))["a1"]


def test_query_group_by_tool():
    r = q([rec("r1", 1000, tool="t1"), rec("r2", 2000, tool="t2")], group_by="tool")
    assert [g["key"] for g in r["groups"]] == ["s1:t1", "s1:t2"]


def test_query_truncation():
    r = q([rec(f"r{i}", i, cost=1) for i in range(600)])
    assert r["truncated"] is True
    assert r["summary"]["receipt_count"] == 500


def test_query_empty_records():
    r = q([])
    assert r == {"summary": {"receipt_count": 0, "total_compute_time_ms": 0, "total_data_bytes": 0,
                             "distinct_agents": 0, "distinct_tools": 0}, "truncated": False}


def test_query_group_by_session():
    r = q([rec("r1", 1000), rec("r2", 2000, cost=100)], group_by="session")
    assert [(g["key"], g["receipt_count"]) for g in r["groups"]] == [("sess-1", 2)]


def test_query_filter_by_tool_server():
    r = q([rec("r1", server="s1"), rec("r2", server="s2")], tool_server="s1")
    assert r["summary"]["receipt_count"] == 1


def test_query_filter_by_tool_name():
    r = q([rec("r1", tool="t1", cost=50), rec("r2", tool="t2", cost=100)], tool_name="t2")
    assert r["summary"]["receipt_count"] == 1
    assert r["summary"]["total_monetary_cost"]["units"] == 100


def test_query_currency_filter():
    r1 = rec("r1", cost=50)
    r2 = rec("r2", cost=100, total={"units": 100, "currency": "EUR"})
    r = q([r1, r2], currency="EUR")
    assert r["summary"]["receipt_count"] == 1
    assert r["summary"]["total_monetary_cost"]["currency"] == "EUR"


# --- every rule of the issue ---------------------------------------------------------------------

def test_filters_are_anded():
    records = [rec("r1", agent="a1", tool="t1"), rec("r2", agent="a1", tool="t2"),
               rec("r3", agent="a2", tool="t1"), rec("r4", agent="a1", tool="t1", session="other")]
    r = q(records, agent_id="a1", tool_name="t1", session_id="sess-1")
    assert r["summary"]["receipt_count"] == 1


def test_session_filter_never_matches_a_record_without_session():
    r = q([rec("r1", session=None), rec("r2", session="sess-1")], session_id="sess-1")
    assert r["summary"]["receipt_count"] == 1


@pytest.mark.parametrize("since, until, expected", [
    (1000, None, ["r1000", "r2000"]),       # since is inclusive
    (1001, None, ["r2000"]),
    (None, 2000, ["r999", "r1000"]),        # until is exclusive
    (None, 2001, ["r999", "r1000", "r2000"]),
    (1000, 1000, []),                       # empty window
    (2000, 1000, []),                       # inverted window: nothing, not an error
])
def test_since_inclusive_until_exclusive(since, until, expected):
    records = [rec("r999", 999), rec("r1000", 1000), rec("r2000", 2000)]
    r = q(records, since=since, until=until, group_by="agent")
    assert r["summary"]["receipt_count"] == len(expected)


def test_currency_filter_drops_records_without_a_total():
    r = q([rec("r1", cost=None), rec("r2", cost=5)], currency="USD")
    assert r["summary"]["receipt_count"] == 1


@pytest.mark.parametrize("n, limit, count, truncated", [
    (500, None, 500, False),    # exactly the cap: not truncated
    (501, None, 500, True),
    (20, 10, 10, True),
    (10, 10, 10, False),
    (600, 1000, 500, True),     # a limit above 500 is clamped
    (3, 0, 0, True),            # limit 0 aggregates nothing; more matched
    (0, 0, 0, False),
])
def test_limit_is_min_of_limit_and_500_and_truncated_says_more_matched(n, limit, count, truncated):
    r = q([rec(f"r{i}", i) for i in range(n)], limit=limit)
    assert (r["summary"]["receipt_count"], r["truncated"]) == (count, truncated)


def test_truncation_counts_only_matching_records():
    records = [rec(f"r{i}", i, agent="a1" if i % 2 else "a2") for i in range(1001)]
    r = q(records, agent_id="a1")  # 500 of a1 match: exactly the cap
    assert (r["summary"]["receipt_count"], r["truncated"]) == (500, False)


def test_the_first_records_in_log_order_are_kept():
    records = [rec(f"r{i}", 10_000 - i, agent=f"a{i}") for i in range(3)]
    r = q(records, limit=2, group_by="agent")
    assert [g["key"] for g in r["groups"]] == ["a0", "a1"]  # log order, not timestamp order


def test_all_lifts_the_cap_and_is_never_truncated():
    records = [rec(f"r{i}", i, cost=1) for i in range(1200)]
    r = q(records, cap=False)
    assert (r["summary"]["receipt_count"], r["summary"]["total_monetary_cost"]["units"], r["truncated"]) \
        == (1200, 1200, False)
    r = q(records, cap=False, limit=700)  # --all --limit 700: the limit without the 500 clamp
    assert (r["summary"]["receipt_count"], r["truncated"]) == (700, True)


def test_summary_fields():
    records = [rec("r1", agent="a1", server="s1", tool="t1", compute=7, read=1, written=2),
               rec("r2", agent="a2", server="s1", tool="t1", compute=3, read=10, written=20),
               rec("r3", agent="a1", server="s2", tool="t1", cost=None)]
    s = q(records)["summary"]
    assert s == {"receipt_count": 3, "total_compute_time_ms": 110, "total_data_bytes": 733,
                 "total_monetary_cost": {"units": 100, "currency": "USD"},
                 "distinct_agents": 2, "distinct_tools": 2}


def test_distinct_tools_are_server_colon_tool_strings():
    # Rust formats "server:tool": ("s1:x", "y") and ("s1", "x:y") are one string, so one tool.
    s = q([rec("r1", server="s1:x", tool="y"), rec("r2", server="s1", tool="x:y")])["summary"]
    assert s["distinct_tools"] == 1


def test_summary_total_only_when_one_currency():
    assert "total_monetary_cost" not in q([rec("r1", cost=5), rec("r2", cost=5, currency="EUR")])["summary"]
    assert "total_monetary_cost" not in q([rec("r1", cost=None)])["summary"]
    mixed_then_same = [rec("r1", cost=5), rec("r2", cost=5, currency="EUR"), rec("r3", cost=5)]
    assert "total_monetary_cost" not in q(mixed_then_same)["summary"]  # once mixed, stays mixed
    assert q([rec("r1", cost=None), rec("r2", cost=0, currency="JPY")])["summary"]["total_monetary_cost"] \
        == {"units": 0, "currency": "JPY"}


def test_summary_reads_total_monetary_cost_not_the_dimensions():
    # Rust sums the record's total_monetary_cost as written; an api_cost without a total counts nothing.
    r = q([rec("r1", cost=70, total=None), rec("r2", cost=70, total={"units": 9, "currency": "USD"})])
    assert r["summary"]["total_monetary_cost"] == {"units": 9, "currency": "USD"}


def test_sums_saturate_at_u64_max():
    big = [rec(f"r{i}", compute=U64_MAX, read=U64_MAX, written=1, cost=U64_MAX) for i in range(2)]
    s = q(big, group_by="agent")
    assert s["summary"]["total_compute_time_ms"] == U64_MAX
    assert s["summary"]["total_data_bytes"] == U64_MAX
    assert s["summary"]["total_monetary_cost"]["units"] == U64_MAX
    assert s["groups"][0]["total_monetary_cost"]["units"] == U64_MAX


def test_groups_sorted_by_key_in_byte_order_with_no_session():
    sessions = ["b", "a", None, "B", "é", "1x", "a"]
    r = q([rec(f"r{i}", session=s) for i, s in enumerate(sessions)], group_by="session")
    assert [g["key"] for g in r["groups"]] == ["1x", "<no-session>", "B", "a", "b", "é"]
    assert by_key(r)["a"]["receipt_count"] == 2


def test_a_group_with_mixed_currencies_has_no_total_the_others_keep_theirs():
    records = [rec("r1", agent="a1", cost=5), rec("r2", agent="a1", cost=7, currency="EUR"),
               rec("r3", agent="a2", cost=3), rec("r4", agent="a3", cost=None)]
    g = by_key(q(records, group_by="agent"))
    assert "total_monetary_cost" not in g["a1"]
    assert g["a2"]["total_monetary_cost"] == {"units": 3, "currency": "USD"}
    assert "total_monetary_cost" not in g["a3"]


def test_groups_omitted_when_empty_and_group_by_none():
    assert "groups" not in q([rec()], group_by="none")
    assert "groups" not in q([], group_by="agent")
    assert "groups" not in q([rec()], group_by="agent", agent_id="nobody")


def test_json_is_the_rust_serde_form():
    r = q([rec("r1", agent="a1", session=None, cost=None), rec("r2", agent="ü", cost=5)], group_by="session")
    assert to_json(r) == (
        '{"summary":{"receipt_count":2,"total_compute_time_ms":200,"total_data_bytes":1400,'
        '"total_monetary_cost":{"units":5,"currency":"USD"},"distinct_agents":2,"distinct_tools":1},'
        '"groups":[{"key":"<no-session>","receipt_count":1,"total_compute_time_ms":100,"total_data_bytes":700},'
        '{"key":"sess-1","receipt_count":1,"total_compute_time_ms":100,"total_data_bytes":700,'
        '"total_monetary_cost":{"units":5,"currency":"USD"}}],"truncated":false}')


def test_bad_query_values_are_refused():
    with pytest.raises(ValueError, match="group_by"):
        CostQuery(group_by="day")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        CostQuery(limit=-1)


# --- differential: the streamed query vs a line-for-line transcription of the Rust ------------------

_ids = st.sampled_from(["a", "b", "é", "<x>"])
_record = st.builds(
    lambda i, ts, agent, server, tool, cost, cur, session, compute, rd: rec(
        f"r{i}", ts, agent, server, tool, cost, cur, session, compute=compute, read=rd, written=rd),
    st.integers(0, 10), st.integers(0, 20), _ids, st.sampled_from(["s1", "s1:x"]), st.sampled_from(["t", "x:t"]),
    st.one_of(st.none(), st.integers(0, 5), st.just(U64_MAX)), st.sampled_from(["USD", "EUR"]),
    st.one_of(st.none(), _ids), st.sampled_from([0, 1, U64_MAX]), st.sampled_from([0, 3, U64_MAX]))
_query = st.fixed_dictionaries({}, optional={
    "session_id": _ids, "agent_id": _ids, "tool_server": st.sampled_from(["s1", "s1:x"]),
    "tool_name": st.sampled_from(["t", "x:t"]), "since": st.integers(0, 20), "until": st.integers(0, 20),
    "currency": st.sampled_from(["USD", "EUR"]), "limit": st.integers(0, 30),
    "group_by": st.sampled_from(["none", "session", "agent", "tool"])})


@settings(max_examples=150, deadline=None)
@given(st.lists(_record, max_size=40), _query)
def test_same_answers_as_the_rust_transcription(records, query):
    assert q(records, **query) == rust_query(records, query)
    assert json.loads(to_json(q(records, **query))) == rust_query(records, query)
