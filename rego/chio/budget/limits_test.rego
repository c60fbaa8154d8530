# METADATA
# title: Tests of windows, soft limits and the per-call cap
# description: >-
#   One behaviour per test, on hand-written inputs shaped as the guard builds
#   them (input.windows from chio_budget.windows for 2026-03-08T10:00:00Z in
#   Europe/Berlin). Run with `opa test rego/ -v`.
package chio.budget_limits_test

import data.chio.budget

_u64_max := 18446744073709551615

# A monthly team budget with a daily agent cap, a rolling session limit, a
# weekly tool limit, an all-time tool limit, a per-call cap and warnings.
_team := {
	"currency": "EUR",
	"max_total": 500000,
	"max_per_session": 5000,
	"max_per_agent": 3000,
	"max_per_tool": {"s1:x": 500, "s1:y": 100},
	"max_per_invocation": 2000,
	"timezone": "Europe/Berlin",
	"windows": {
		"total": {"kind": "monthly"},
		"session": {"kind": "rolling", "seconds": 3600, "bucket_seconds": 60},
		"agent": {"kind": "daily"},
		"tool": {"s1:x": {"kind": "weekly"}},
	},
	"warn_at": {
		"total": [{"bps": 8000, "units": 400000}, {"bps": 9500, "units": 475000}],
		"agent": [{"bps": 8000, "units": 2400}, {"bps": 9500, "units": 2850}],
		"tool": {"s1:x": [{"bps": 5000, "units": 250}]},
	},
	"revision": "sha256:team",
}

_policies := {"team": _team}

# The windows of 2026-03-08T10:00:00Z, as the guard sends them.
_input(tool, cost, totals) := {
	"policy_id": "team",
	"request": {
		"receipt_id": "r1", "timestamp": 1772964000, "agent_id": "a1", "session_id": "sess-1",
		"tool_server": "s1", "tool_name": tool, "tool_key": concat(":", ["s1", tool]),
	},
	"cost": {"units": cost, "currency": "EUR"},
	"totals": totals,
	"windows": {
		"total": {"window": "monthly", "key": "m:2026-03@Europe/Berlin", "start": 1772319600, "resets_at": 1774994400},
		"session": {"window": "rolling", "key": "r:60:1772964000", "start": 1772960400, "resets_at": 1772967659},
		"agent": {"window": "daily", "key": "d:2026-03-08@Europe/Berlin", "start": 1772924400, "resets_at": 1773010800},
		"tool": {"window": "weekly", "key": "w:2026-03-02@Europe/Berlin", "start": 1772406000, "resets_at": 1773010800},
	},
}

_windows := _input("t1", 0, {}).windows

_day := _windows.agent

_hour := _windows.session

_with_totals(totals) := object.union({"total": 0, "session": 0, "agent": 0, "tool": 0}, totals)

_zero := _with_totals({})

# Replace one top-level field (object.union would merge nested objects).
_set(obj, key, value) := object.union(object.remove(obj, [key]), {key: value})

# -- windowed violations ------------------------------------------------------

test_daily_agent_violation_carries_window_and_resets_at if {
	d := budget.decision with input as _input("t1", 200, _with_totals({"agent": 2900}))
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "agent", "agent_id": "a1", "limit_units": 3000, "current_units": 2900,
		"requested_units": 200, "currency": "EUR", "window": "daily", "resets_at": 1773010800,
	}]
}

test_monthly_total_violation_resets_on_the_first if {
	d := budget.decision with input as _input("t1", 200, _with_totals({"total": 499900}))
		with data.chio.budget.policies as _policies
	[v] := d.violations
	v.scope == "total"
	v.window == "monthly"
	v.resets_at == 1774994400
}

test_rolling_session_violation_says_rolling if {
	d := budget.decision with input as _input("t1", 200, _with_totals({"session": 4900}))
		with data.chio.budget.policies as _policies
	d.violations == [{
		"scope": "session", "session_id": "sess-1", "limit_units": 5000, "current_units": 4900,
		"requested_units": 200, "currency": "EUR", "window": "rolling", "resets_at": 1772967659,
	}]
}

test_tool_window_is_per_tool_key if {
	d := budget.decision with input as _input("x", 100, _with_totals({"tool": 450}))
		with data.chio.budget.policies as _policies
	[v] := d.violations
	v.tool_key == "s1:x"
	v.window == "weekly"
	v.resets_at == 1773010800
}

test_all_time_limit_in_a_windowed_policy_keeps_the_rust_form if {
	# s1:y has no window: its violation is the Rust serde form, nothing added.
	inp := _set(_input("y", 50, _with_totals({"tool": 60})), "windows", object.remove(_windows, ["tool"]))
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.violations == [{
		"scope": "tool", "tool_key": "s1:y", "limit_units": 100, "current_units": 60,
		"requested_units": 50, "currency": "EUR",
	}]
}

test_window_boundary_is_the_guards_counter if {
	# Just after a reset the guard sends the new window's counter (0): allowed.
	d := budget.decision with input as _input("t1", 200, _zero)
		with data.chio.budget.policies as _policies
	d.allow == true
	d.violations == []
}

# -- the per-call cap -----------------------------------------------------------

test_invocation_cap_denies_a_call_above_it if {
	d := budget.decision with input as _input("t1", 2001, _zero)
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{"scope": "invocation", "limit_units": 2000, "requested_units": 2001, "currency": "EUR"}]
}

test_invocation_cap_allows_exactly_the_cap if {
	d := budget.decision with input as _input("t1", 2000, _zero)
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_invocation_comes_first_then_total_session_agent_tool if {
	d := budget.decision with input as _input("x", 2100, {"total": 499000, "session": 4900, "agent": 2900, "tool": 450})
		with data.chio.budget.policies as _policies
	[v.scope | some v in d.violations] == ["invocation", "total", "session", "agent", "tool"]
}

test_no_cap_without_max_per_invocation if {
	uncapped := object.remove(_team, ["max_per_invocation"])
	d := budget.decision with input as _input("t1", 2999, _zero) with data.chio.budget.policies as {"team": uncapped}
	d.allow == true
}

# -- warnings -------------------------------------------------------------------

test_warning_when_current_plus_requested_reaches_the_threshold if {
	# 2300 + 100 = 2400 = 80% of 3000.
	d := budget.decision with input as _input("t1", 100, _with_totals({"agent": 2300}))
		with data.chio.budget.policies as _policies
	d.allow == true
	d.warnings == [{
		"scope": "agent", "agent_id": "a1", "limit_units": 3000, "current_units": 2300,
		"requested_units": 100, "currency": "EUR", "window": "daily", "resets_at": 1773010800,
		"threshold": 0.8,
	}]
}

test_no_warning_one_unit_below_the_threshold if {
	d := budget.decision with input as _input("t1", 99, _with_totals({"agent": 2300}))
		with data.chio.budget.policies as _policies
	d.warnings == []
}

test_thresholds_compare_in_integers if {
	# 7 of 10 is exactly 70% (in floats 0.7 * 10 = 7.000000000000001 > 7): 7 warns, 6 does not.
	p := {"currency": "EUR", "max_total": 10, "warn_at": {"total": [{"bps": 7000, "units": 7}]}, "revision": "r"}
	totals := {"total": 0, "session": null, "agent": null, "tool": null}
	d := budget.decision with input as object.remove(_input("t1", 7, totals), ["windows"])
		with data.chio.budget.policies as {"team": p}
	[w] := d.warnings
	w.threshold == 0.7
	below := budget.decision with input as object.remove(_input("t1", 6, totals), ["windows"])
		with data.chio.budget.policies as {"team": p}
	below.warnings == []
}

test_every_threshold_reached_is_reported_in_order if {
	d := budget.decision with input as _input("x", 10, {"total": 490000, "session": 0, "agent": 2900, "tool": 300})
		with data.chio.budget.policies as _policies
	d.allow == true
	[[w.scope, w.threshold] | some w in d.warnings] == [
		["total", 0.8], ["total", 0.95], ["agent", 0.8], ["agent", 0.95], ["tool", 0.5],
	]
}

test_warnings_are_reported_at_zero_cost_past_a_threshold if {
	d := budget.decision with input as _input("t1", 0, _with_totals({"agent": 2500}))
		with data.chio.budget.policies as _policies
	d.allow == true
	[w.threshold | some w in d.warnings] == [0.8]
}

test_warnings_never_deny_and_go_with_a_deny if {
	d := budget.decision with input as _input("t1", 200, _with_totals({"agent": 2900}))
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.scope | some v in d.violations] == ["agent"]
	[w.threshold | some w in d.warnings] == [0.8, 0.95]
}

test_threshold_of_one_warns_at_exactly_the_limit if {
	p := object.union(object.remove(_team, ["warn_at"]), {"warn_at": {"agent": [{"bps": 10000, "units": 3000}]}})
	d := budget.decision with input as _input("t1", 100, _with_totals({"agent": 2900}))
		with data.chio.budget.policies as {"team": p}
	d.allow == true
	[w.threshold | some w in d.warnings] == [1]
}

test_limits_without_warn_at_never_warn if {
	p := object.remove(_team, ["warn_at"])
	d := budget.decision with input as _input("x", 499, {"total": 499000, "session": 4500, "agent": 2500, "tool": 0})
		with data.chio.budget.policies as {"team": p}
	d.allow == true
	d.warnings == []
}

test_saturated_sums_still_reach_thresholds if {
	p := {
		"currency": "EUR", "max_total": _u64_max,
		"warn_at": {"total": [{"bps": 9500, "units": 17524406870024074035}]}, "revision": "r",
	}
	totals := {"total": _u64_max - 10, "session": null, "agent": null, "tool": null}
	inp := object.remove(_input("t1", 20, totals), ["windows"])
	d := budget.decision with input as inp with data.chio.budget.policies as {"team": p}
	d.allow == true
	[w.threshold | some w in d.warnings] == [0.95]
}

test_contributed_warnings_come_after_the_builtin_scopes if {
	mixed := {
		{"scope": "agent", "threshold": 0.8},
		{"scope": "a_custom", "message": "night-time spend"},
		{"scope": "total", "threshold": 0.8},
	}
	d := budget.decision with input as _input("t1", 1, _zero)
		with data.chio.budget.policies as _policies
		with budget.warning as mixed
	d.allow == true
	[w.scope | some w in d.warnings] == ["total", "agent", "a_custom"]
}

test_contributed_warnings_without_a_scope_are_kept if {
	d := budget.decision with input as _input("t1", 1, _zero)
		with data.chio.budget.policies as _policies
		with budget.warning as {{"message": "no scope"}, {"scope": "total", "threshold": 0.8}}
	d.warnings == [{"scope": "total", "threshold": 0.8}, {"message": "no scope"}]
}

# -- what the input must carry ----------------------------------------------------

test_windowed_limit_without_its_window_denies_as_invalid_input if {
	inp := _set(_input("t1", 1, _zero), "windows", object.remove(_windows, ["agent"]))
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "custom", "code": "invalid_input",
		"message": "windows.agent must be {\"window\": \"daily\", \"resets_at\": <Unix second>} (its limit is windowed)",
	}]
}

test_window_of_another_kind_denies if {
	inp := _set(_input("t1", 1, _zero), "windows", _set(_windows, "total", _day))
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.message | some v in d.violations] == [
		"windows.total must be {\"window\": \"monthly\", \"resets_at\": <Unix second>} (its limit is windowed)",
	]
}

test_window_without_resets_at_denies if {
	inp := _set(_input("t1", 1, _zero), "windows", _set(_windows, "session", object.remove(_hour, ["resets_at"])))
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.code | some v in d.violations] == ["invalid_input"]
}

test_windowed_limit_that_does_not_apply_needs_no_window if {
	# No session: the rolling session limit does not apply, nor its window.
	base := _input("t1", 1, _with_totals({"session": null}))
	no_session := _set(base, "request", object.union(base.request, {"session_id": null}))
	inp := _set(no_session, "windows", object.remove(_windows, ["session"]))
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_null_total_is_fine_where_no_limit_applies if {
	# s1:t1 is not in max_per_tool: the guard keeps no counter and sends null.
	d := budget.decision with input as _input("t1", 1, _with_totals({"tool": null}))
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_null_total_under_a_limit_denies if {
	d := budget.decision with input as _input("t1", 1, _with_totals({"agent": null}))
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.message | some v in d.violations] == ["totals.agent must be an integer >= 0"]
}

test_missing_total_where_no_limit_applies_denies if {
	# null must be sent, not left out: a dropped field is a broken input.
	d := budget.decision with input as _input("t1", 1, object.remove(_zero, ["tool"]))
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.message | some v in d.violations] == ["totals.tool must be an integer >= 0 or null (no tool limit applies)"]
}
