"""The guard with calendar windows, the per-call cap and warnings, on every engine and ledger (issue 11).

Policy: the shipped ``policies/team-monthly.yaml`` (EUR, Europe/Berlin, a
monthly 5,000 EUR team budget, 30 EUR a day per agent, 80/95% warnings,
5 EUR per call). Berlin's 2026-03-09 starts at 2026-03-08T23:00:00Z.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.errors import WindowError
from chio_budget.ledger import counter_key
from support.backends import make_store
from support.windows import spend
from support.guards import POLICIES_DIR
from support.opa import repo_bundle, start_opa

MIDNIGHT = 1773010800  # 2026-03-09 00:00 Europe/Berlin
DAY = "d:2026-03-08@Europe/Berlin"
NEXT_DAY = "d:2026-03-09@Europe/Berlin"
MONTH = "m:2026-03@Europe/Berlin"


def meta(receipt: str, t: int, agent: str = "a1", tool: str = "complete") -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=t, agent_id=agent, tool_server="llm", tool_name=tool)


@pytest.fixture(scope="module")
def opa_url(tmp_path_factory):
    server = start_opa(repo_bundle(tmp_path_factory))
    yield server.url
    server.close()


@pytest.fixture(params=["embedded", "server"])
def engine_kind(request):
    return request.param


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def team(request, engine_kind, tmp_path, opa_url):
    store = make_store(request.param, tmp_path)
    options = {"opa_url": opa_url} if engine_kind == "server" else {}
    guard = BudgetGuard.from_files(POLICIES_DIR, "team-monthly", engine=engine_kind, ledger=store.open(), **options)
    yield guard
    guard.engine.close()
    store.cleanup()


def test_daily_agent_cap_resets_at_local_midnight(team):
    t = MIDNIGHT - 3600
    decisions = [spend(team, meta(f"r{i}", t), 500).decision for i in range(6)]  # 3000: exactly the cap
    assert all(d.allow for d in decisions)
    assert [[w["threshold"] for w in d.warnings] for d in decisions] == [[], [], [], [], [0.8], [0.8, 0.95]]
    last = spend(team, meta("r-before", MIDNIGHT - 1), 1)
    assert not last.allow
    assert last.decision.violations[0].model_dump() == {
        "scope": "agent", "agent_id": "a1", "limit_units": 3000, "current_units": 3000, "requested_units": 1,
        "currency": "EUR", "window": "daily", "resets_at": MIDNIGHT}
    first = spend(team, meta("r-at", MIDNIGHT), 1)
    assert first.allow
    assert first.input["totals"]["agent"] == 0 and first.input["windows"]["agent"]["key"] == NEXT_DAY
    assert first.input["totals"]["total"] == 3000  # the month goes on
    assert team.remaining(MIDNIGHT) == 500000 - 3001
    assert team.total_spent(MIDNIGHT) == 3001


def test_a_commit_after_the_boundary_lands_in_the_requests_window(team):
    held = team.authorize(meta("late", MIDNIGHT - 1), 400)
    assert held.allow
    after = team.authorize(meta("next", MIDNIGHT), 500)
    assert after.allow and after.input["totals"]["agent"] == 0  # the hold is yesterday's
    assert held.commit().outcome == "committed" and after.commit().outcome == "committed"
    day, next_day = (counter_key("team-monthly", "agent", "a1", window=w) for w in (DAY, NEXT_DAY))
    assert [b.spent for b in team.ledger.balances([day, next_day])] == [400, 500]


def test_per_call_cap_denies_one_call_and_holds_nothing(team):
    auth = team.authorize(meta("big", MIDNIGHT), 501)
    assert [v.scope for v in auth.decision.violations] == ["invocation"]
    assert team.total_held(MIDNIGHT) == 0 and team.total_spent(MIDNIGHT) == 0


def test_monthly_total_reports_answer_for_the_window_of_at(team):
    spend(team, meta("march", MIDNIGHT), 300)
    april = 1775001600  # 2026-04-01T00:00:00Z, in April in Berlin
    spend(team, meta("april", april), 200)
    assert (team.total_spent(MIDNIGHT), team.total_spent(april)) == (300, 200)
    assert team.remaining(april) == 500000 - 200
    assert team.window(MIDNIGHT).key == MONTH
    assert team.window(april).describe() == (
        "monthly window m:2026-04@Europe/Berlin (2026-03-31T22:00:00Z .. 2026-04-30T22:00:00Z)")


def test_check_reports_warnings_but_holds_nothing(team):
    for i in range(5):
        spend(team, meta(f"w{i}", MIDNIGHT), 480)  # 2400 = 80%
    d = team.check(meta("peek", MIDNIGHT), 0)
    assert d.allow and [w["threshold"] for w in d.warnings] == [0.8]
    assert team.total_held(MIDNIGHT) == 0


def test_a_timestamp_in_milliseconds_is_refused_before_anything_is_held(team):
    with pytest.raises(WindowError, match="milliseconds"):
        team.authorize(meta("ms", MIDNIGHT * 1000), 1)
    assert team.ledger.get("ms") is None


# -- all-time policies are untouched ------------------------------------------------------------


def test_all_time_policy_keeps_its_keys_and_input(tmp_path):
    guard = BudgetGuard.from_files(POLICIES_DIR, "default")
    m = CostMetadata(receipt_id="r1", timestamp=1000, agent_id="a1", tool_server="s1", tool_name="expensive")
    assert guard.counter_keys(m) == {"total": "default//total/", "agent": "default//agent/a1",
                                     "tool": "default//tool/s1:expensive"}
    auth = guard.authorize(m, 100)
    assert "windows" not in auth.input
    assert guard.window().describe() == "all-time"
    guard.close()


# -- the CLI's reports ----------------------------------------------------------------------------


def test_replay_reports_say_which_window(tmp_path):
    events = tmp_path / "events.jsonl"
    m = {"receipt_id": "r1", "timestamp": MIDNIGHT, "agent_id": "a1", "tool_server": "llm",
         "tool_name": "complete"}
    events.write_text("\n".join(json.dumps(e) for e in [
        {"op": "authorize", "meta": m, "cost_units": 250},
        {"op": "remaining", "at": MIDNIGHT},
        {"op": "total_spent", "at": MIDNIGHT + 40 * 86400},
    ]) + "\n")
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "replay", str(events), "--policies",
                        str(POLICIES_DIR), "--policy-id", "team-monthly"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert out[1] == {"remaining": 500000 - 250, "window": {"window": "monthly", "key": MONTH,
                                                           "start": 1772319600, "resets_at": 1774994400}}
    assert out[2]["total_spent"] == 0 and out[2]["window"]["key"] == "m:2026-04@Europe/Berlin"


def test_replay_at_is_validated(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"op": "remaining", "at": -1}\n')
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "replay", str(events), "--policies",
                        str(POLICIES_DIR), "--policy-id", "team-monthly"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"{events}:1: at: must be >= 0, got -1")


def test_check_command_locates_a_timestamp_no_window_can_hold(tmp_path):
    m = {"receipt_id": "r1", "timestamp": MIDNIGHT * 1000, "agent_id": "a1", "tool_server": "llm",
         "tool_name": "complete"}
    r = subprocess.run([sys.executable, "-m", "chio_budget.cli", "check", "--meta", json.dumps(m), "--cost", "1",
                        "--policies", str(POLICIES_DIR), "--policy-id", "team-monthly"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("--meta: timestamp: timestamp 1773010800000 cannot be placed")
