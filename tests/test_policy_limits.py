"""The YAML of windows, warnings and the per-call cap, and what it compiles to (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chio_budget.compiler import compile_dir, compile_policy
from chio_budget.errors import PolicyError
from hypothesis import given, strategies as st

from chio_budget.limits import plan, reached_at
from chio_budget.policy import parse_policy
from chio_budget.windows import ALL_TIME_WINDOW, Window

ROOT = Path(__file__).resolve().parent.parent

TEAM = """\
id: team
currency: EUR
timezone: Europe/Berlin
window: monthly
warn_at: [0.8, 0.95]
max_total: 500000
max_per_agent: {units: 3000, window: daily}
max_per_session:
  units: 5000
  window: {rolling: 3600}
  warn_at: [0.5]
max_per_tool:
  "s1:x": {units: 500, window: weekly, warn_at: []}
  "s1:y": 7
  "s1:z": {units: 9, window: all_time}
max_per_invocation: 2000
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="p.yaml", default_id="p")
    return exc.value.errors


def test_policy_defaults_and_per_limit_overrides_resolve():
    p = plan(parse_policy(TEAM, "team.yaml"))
    assert p.timezone == "Europe/Berlin" and p.invocation == 2000
    assert p.rule("total").window == Window("monthly") and p.rule("total").warn_at == (8000, 9500)
    assert p.rule("agent").window == Window("daily") and p.rule("agent").warn_at == (8000, 9500)
    assert p.rule("session").window == Window("rolling", 3600) and p.rule("session").warn_at == (5000,)
    assert p.rule("tool", "s1:x").window == Window("weekly") and p.rule("tool", "s1:x").warn_at == ()
    assert p.rule("tool", "s1:y").window == Window("monthly")
    assert p.rule("tool", "s1:z").window == ALL_TIME_WINDOW
    assert p.rule("tool", "s1:nope") is None


def test_windows_warnings_and_cap_compile_into_the_policy_entry():
    doc = compile_policy(parse_policy(TEAM, "team.yaml"))
    assert {k: v for k, v in doc.items() if k != "revision"} == {
        "currency": "EUR", "max_total": 500000, "max_per_session": 5000, "max_per_agent": 3000,
        "max_per_tool": {"s1:x": 500, "s1:y": 7, "s1:z": 9}, "max_per_invocation": 2000,
        "timezone": "Europe/Berlin",
        "windows": {
            "total": {"kind": "monthly"},
            "session": {"kind": "rolling", "seconds": 3600, "bucket_seconds": 60},
            "agent": {"kind": "daily"},
            "tool": {"s1:x": {"kind": "weekly"}, "s1:y": {"kind": "monthly"}},
        },
        "warn_at": {"total": [{"bps": 8000, "units": 400000}, {"bps": 9500, "units": 475000}],
                    "session": [{"bps": 5000, "units": 2500}],
                    "agent": [{"bps": 8000, "units": 2400}, {"bps": 9500, "units": 2850}],
                    "tool": {"s1:y": [{"bps": 8000, "units": 6}, {"bps": 9500, "units": 7}],  # 5.6, 6.65 up
                             "s1:z": [{"bps": 8000, "units": 8}, {"bps": 9500, "units": 9}]}},
    }


def test_a_policy_using_none_of_it_compiles_to_the_same_bytes(tmp_path):
    # The shipped default policy, compiled before issue 11 (revision included).
    (tmp_path / "default.yaml").write_bytes((ROOT / "policies" / "default.yaml").read_bytes())
    assert compile_dir(tmp_path) == (
        b'{"chio":{"budget":{"policies":{"default":{"currency":"USD","max_per_agent":3000,"max_per_session":5000,'
        b'"max_per_tool":{"s1:expensive":500},"max_total":10000,"prices":{"s1:expensive":200,"s1:search":5},'
        b'"revision":"sha256:4eb4cb57bc3f18a32609047f72a0a19f23cbaf786c3a9dbe61b64086cefd106a"}}}}}\n')


def test_defaults_written_out_compile_like_nothing_written():
    explicit = "currency: USD\nmax_total: 5\nwindow: all_time\nwarn_at: []\nmax_per_agent: {units: 3}\n"
    plain = "currency: USD\nmax_total: 5\nmax_per_agent: 3\n"
    assert compile_policy(parse_policy(explicit, default_id="x")) == compile_policy(parse_policy(plain, default_id="x"))


def test_timezone_only_compiled_when_a_calendar_window_needs_it():
    rolling_only = parse_policy("currency: USD\ntimezone: Asia/Tokyo\nwindow: {rolling: 60}\nmax_total: 5\n",
                                default_id="x")
    assert "timezone" not in compile_policy(rolling_only)


def test_thresholds_are_exact_basis_points():
    p = parse_policy("currency: USD\nwarn_at: [1, .8, 0.9999, 0.0001]\nmax_total: 5\n", default_id="x")
    assert p.warn_at == (1, 8000, 9999, 10000)


def test_long_form_without_currency_is_the_policy_currency():
    p = parse_policy("currency: JPY\nmax_total: {units: 5, window: daily}\n", default_id="x")
    assert (p.max_total.units, p.max_total.currency) == (5, "JPY")


@pytest.mark.parametrize("text, error", [
    ("currency: USD\nmax_total: 5\nwindow: hourly\n",
     "p.yaml:3: window: unknown window 'hourly' (one of all_time, daily, weekly, monthly, or {rolling: SECONDS})"),
    ("currency: USD\nmax_total:\n  units: 5\n  window: fortnightly\n",
     "p.yaml:4: max_total.window: unknown window 'fortnightly' (one of all_time, daily, weekly, monthly, or "
     "{rolling: SECONDS})"),
    ("currency: USD\nmax_total: 5\nwindow: rolling\n",
     "p.yaml:3: window: a rolling window needs its length: write {rolling: SECONDS}"),
    ("currency: USD\nmax_total: 5\nwindow: {rolling: 0}\n",
     "p.yaml:3: window: rolling window length must be > 0 seconds, got 0"),
    ("currency: USD\nmax_total: 5\nmax_per_agent:\n  units: 3\n  window:\n    rolling: -60\n",
     "p.yaml:6: max_per_agent.window: rolling window length must be > 0 seconds, got -60"),
    ("currency: USD\nmax_total: 5\nwarn_at: [0.8, 1.5]\n",
     "p.yaml:3: warn_at.1: a threshold must be in (0, 1] (a fraction of the limit), got 1.5"),
    ("currency: USD\nmax_total: 5\nwarn_at:\n  - 0\n",
     "p.yaml:4: warn_at.0: a threshold must be in (0, 1] (a fraction of the limit), got 0"),
    ("currency: USD\nmax_total: 5\nwarn_at: [-0.5]\n",
     "p.yaml:3: warn_at.0: a threshold must be in (0, 1] (a fraction of the limit), got -0.5"),
    ("currency: USD\nmax_total: 5\nwarn_at: [0.12345]\n",
     "p.yaml:3: warn_at.0: a threshold has at most four decimals (basis points), got 0.12345"),
    ("currency: USD\nmax_total: 5\nwarn_at: ['80%']\n",
     "p.yaml:3: warn_at.0: a threshold must be a number in (0, 1] such as 0.8, got '80%'"),
    ("currency: USD\nmax_total: 5\nwarn_at: 0.8\n",
     "p.yaml:3: warn_at: must be a list of fractions such as [0.8, 0.95], got 0.8"),
    ("currency: USD\nmax_total: 5\nwarn_at: [0.8, 0.8]\n",
     "p.yaml:3: warn_at: a threshold is listed twice: [0.8, 0.8]"),
    ("currency: USD\nmax_total: 5\nmax_per_agent:\n  warn_at: [0.8]\n",
     "p.yaml:4: max_per_agent: warn_at given for a limit without units: write units (the limit itself) or "
     "remove it"),
    ("currency: USD\nmax_total: 5\nmax_per_tool:\n  \"s1:x\": {window: daily}\n",
     "p.yaml:4: max_per_tool.\"s1:x\": window given for a limit without units: write units (the limit itself) "
     "or remove it"),
    ("currency: USD\nmax_total: 5\nmax_per_invocation: {units: 1, warn_at: [0.5]}\n",
     "p.yaml:3: max_per_invocation.warn_at: max_per_invocation caps each call on its own: it has no window and "
     "no warn_at"),
    ("currency: USD\nmax_total: 5\nprices:\n  \"s1:x\": {units: 1, window: daily}\n",
     "p.yaml:4: prices.\"s1:x\".window: unknown key"),
    ("currency: USD\nmax_total: 5\ntimezone: Mars/Olympus\n",
     "p.yaml:3: timezone: unknown time zone 'Mars/Olympus' (an IANA name such as 'Europe/Berlin' or 'UTC')"),
    ("currency: USD\nmax_total: 5\ntimezone: 2\n",
     "p.yaml:3: timezone: must be an IANA time zone name such as 'Europe/Berlin', got 2"),
    ("currency: USD\nmax_total: 5\nmax_per_invocation: {units: 1, currency: EUR}\n",
     "p.yaml:3: max_per_invocation.currency: limit is in EUR but the policy currency is USD"),
])
def test_bad_input_is_a_located_error(text, error):
    assert errors_of(text) == [error]


def test_every_problem_is_reported_at_once():
    errs = errors_of("currency: USD\ntimezone: Nowhere\nwindow: hourly\nwarn_at: [2]\nmax_total: 5\n")
    assert [e.split(":")[1] for e in errs] == ["2", "3", "4"]


def test_shipped_example_policies_compile():
    doc = json.loads(compile_dir(ROOT / "policies"))
    team = doc["chio"]["budget"]["policies"]["team-monthly"]
    assert team["timezone"] == "Europe/Berlin"
    assert team["windows"]["total"] == {"kind": "monthly"} and team["windows"]["agent"] == {"kind": "daily"}
    assert team["warn_at"]["total"] == [{"bps": 8000, "units": 400000}, {"bps": 9500, "units": 475000}]


@given(st.integers(0, 2**64 + 10), st.integers(1, 10000), st.integers(0, 2**64 - 1))
def test_compiled_threshold_units_are_the_integer_rule(after, bps, limit):
    """after >= units exactly when (current + requested) * 10000 >= bps * limit."""
    assert (after >= reached_at(bps, limit)) == (after * 10000 >= bps * limit)


def test_a_policy_dumped_as_json_validates_back_to_the_same_policy():
    """``model_dump`` writes windows and thresholds as a policy file does, so a policy can
    cross a process boundary (the settle workers send it as JSON) and come back equal."""
    from chio_budget.policy import BudgetPolicy

    doc = {"id": "p", "currency": "USD", "timezone": "Europe/Berlin", "window": "monthly", "warn_at": [0.8],
           "max_total": 5000, "max_per_agent": {"units": 300, "window": {"rolling": 3600}, "warn_at": [0.5, 0.95]}}
    policy = BudgetPolicy.model_validate(doc)
    again = BudgetPolicy.model_validate(policy.model_dump(mode="json", exclude_none=True))
    assert again == policy
