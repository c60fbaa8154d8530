# METADATA
# title: Tests of the Chio budget decision
# description: >-
#   One behaviour per test. Run with `opa test rego/ -v` (or, without an opa
#   binary, `chio-budget test-rego rego/ -v`).
package chio.budget_test

import data.chio.budget

_policies := {"default": {
	"currency": "USD",
	"max_total": 10000,
	"max_per_session": 5000,
	"max_per_agent": 3000,
	"max_per_tool": {"s1:expensive": 500},
	"revision": "sha256:test",
}}

_session_only := {"default": {
	"currency": "USD",
	"max_total": 100000,
	"max_per_session": 1000,
	"revision": "sha256:session-only",
}}

_u64_max := 18446744073709551615

_request(tool, session) := {
	"receipt_id": "r1",
	"timestamp": 1000,
	"agent_id": "a1",
	"session_id": session,
	"tool_server": "s1",
	"tool_name": tool,
	"tool_key": concat(":", ["s1", tool]),
}

_input(cost, totals) := _input_for("t1", "sess-1", cost, totals)

_input_for(tool, session, cost, totals) := {
	"policy_id": "default",
	"request": _request(tool, session),
	"cost": {"units": cost, "currency": "USD"},
	"totals": totals,
}

_zero := {"total": 0, "session": 0, "agent": 0, "tool": 0}

test_within_budget_allows if {
	d := budget.decision with input as _input(100, _zero)
		with data.chio.budget.policies as _policies
	d.allow == true
	d.violations == []
	d.warnings == []
	d.policy_id == "default"
	d.policy_revision == "sha256:test"
}

test_total_exceeded_denies_with_seed_shaped_violation if {
	d := budget.decision with input as _input(200, {"total": 9900, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "total", "limit_units": 10000, "current_units": 9900,
		"requested_units": 200, "currency": "USD",
	}]
}

test_exactly_at_limit_allows if {
	d := budget.decision with input as _input(100, {"total": 9900, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_agent_exceeded_denies if {
	d := budget.decision with input as _input(200, {"total": 2900, "session": 2900, "agent": 2900, "tool": 2900})
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "agent", "agent_id": "a1", "limit_units": 3000,
		"current_units": 2900, "requested_units": 200, "currency": "USD",
	}]
}

test_session_exceeded_denies if {
	d := budget.decision with input as _input(200, {"total": 900, "session": 900, "agent": 900, "tool": 900})
		with data.chio.budget.policies as _session_only
	d.allow == false
	d.violations == [{
		"scope": "session", "session_id": "sess-1", "limit_units": 1000,
		"current_units": 900, "requested_units": 200, "currency": "USD",
	}]
}

test_session_limit_ignored_without_session if {
	no_session := {"total": 900, "session": null, "agent": 900, "tool": 900}
	d := budget.decision with input as _input_for("t1", null, 200, no_session)
		with data.chio.budget.policies as _session_only
	d.allow == true
}

test_session_limit_ignored_when_policy_has_none if {
	no_session := {"default": object.remove(_policies.default, ["max_per_session"])}
	d := budget.decision with input as _input(200, {"total": 0, "session": 4900, "agent": 0, "tool": 0})
		with data.chio.budget.policies as no_session
	d.allow == true
}

test_agent_limit_ignored_when_policy_has_none if {
	no_agent := {"default": object.remove(_policies.default, ["max_per_agent"])}
	d := budget.decision with input as _input(200, {"total": 0, "session": 0, "agent": 2900, "tool": 0})
		with data.chio.budget.policies as no_agent
	d.allow == true
}

test_tool_exceeded_denies if {
	totals := {"total": 400, "session": 400, "agent": 400, "tool": 400}
	d := budget.decision with input as _input_for("expensive", "sess-1", 200, totals)
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "tool", "tool_key": "s1:expensive", "limit_units": 500,
		"current_units": 400, "requested_units": 200, "currency": "USD",
	}]
}

test_unlisted_tool_has_no_tool_limit if {
	totals := {"total": 0, "session": 0, "agent": 0, "tool": 100000}
	d := budget.decision with input as _input_for("cheap", "sess-1", 200, totals)
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_zero_cost_passes if {
	d := budget.decision with input as _input(0, {"total": 10000, "session": 5000, "agent": 3000, "tool": 0})
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_zero_cost_denied_when_already_over if {
	d := budget.decision with input as _input(0, {"total": 10001, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as _policies
	d.allow == false
	[v] := d.violations
	v.scope == "total"
}

test_all_violations_in_order_total_session_agent_tool if {
	totals := {"total": 9900, "session": 4900, "agent": 2900, "tool": 400}
	d := budget.decision with input as _input_for("expensive", "sess-1", 600, totals)
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.scope | some v in d.violations] == ["total", "session", "agent", "tool"]
}

test_u64_sums_are_exact if {
	max_policy := {"default": {"currency": "USD", "max_total": _u64_max, "revision": "r"}}
	near := {"total": _u64_max - 10, "session": 0, "agent": 0, "tool": 0}
	below_max := {"default": {"currency": "USD", "max_total": _u64_max - 1, "revision": "r"}}
	over := budget.decision with input as _input(20, near) with data.chio.budget.policies as below_max
	over.allow == false
	fits := budget.decision with input as _input(10, near) with data.chio.budget.policies as max_policy
	fits.allow == true
}

test_saturating_add_never_exceeds_u64_max_limit if {
	# Rust: (MAX - 10).saturating_add(20) == MAX, and MAX > MAX is false.
	max_policy := {"default": {"currency": "USD", "max_total": _u64_max, "revision": "r"}}
	d := budget.decision with input as _input(20, {"total": _u64_max - 10, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as max_policy
	d.allow == true
}

test_unknown_policy_is_undefined if {
	not budget.decision with input as object.union(_input(1, _zero), {"policy_id": "nope"})
		with data.chio.budget.policies as _policies
}

test_currency_mismatch_denies if {
	inp := object.union(_input(1, _zero), {"cost": {"units": 1, "currency": "EUR"}})
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	[v] := d.violations
	v.scope == "custom"
	v.code == "currency_mismatch"
}

test_default_deny if {
	not budget.allow with input as {} with data.chio.budget.policies as _policies
		with budget.violation as {{"scope": "custom"}}
}

test_custom_violations_sort_after_builtin_scopes if {
	# An extension's violation ("a..." sorts before "total" in a set) still
	# comes after the built-in scopes in the decision's array.
	mixed := {
		{"scope": "agent", "agent_id": "a1"},
		{"scope": "a_custom", "code": "blocked_tool", "message": "no"},
		{"scope": "total", "limit_units": 1},
	}
	d := budget.decision with input as _input(200, _zero)
		with data.chio.budget.policies as _policies
		with budget.violation as mixed
	d.allow == false
	[v.scope | some v in d.violations] == ["total", "agent", "a_custom"]
	d.violations[2].code == "blocked_tool"
}

test_custom_violation_alone_denies if {
	extra := {{"scope": "custom", "code": "after_hours", "message": "closed"}}
	d := budget.decision with input as _input(1, _zero)
		with data.chio.budget.policies as _policies
		with budget.violation as extra
	d.allow == false
	d.violations == [{"scope": "custom", "code": "after_hours", "message": "closed"}]
}

test_warnings_from_extension_do_not_deny if {
	d := budget.decision with input as _input(1, _zero)
		with data.chio.budget.policies as _policies
		with data.chio.budget.warning as {{"scope": "soft_total", "message": "80% spent"}}
	d.allow == true
	d.warnings == [{"scope": "soft_total", "message": "80% spent"}]
}

test_missing_cost_denies_as_invalid_input if {
	inp := object.remove(_input(1, _zero), ["cost"])
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	{v.message | some v in d.violations} == {"cost.units must be an integer >= 0", "cost.currency must be a string"}
}

test_missing_totals_deny_as_invalid_input if {
	d := budget.decision with input as object.remove(_input(1, _zero), ["totals"])
		with data.chio.budget.policies as _policies
	d.allow == false
	{v.message | some v in d.violations} == {
		"totals.total must be an integer >= 0", "totals.agent must be an integer >= 0",
		"totals.tool must be an integer >= 0 or null (no tool limit applies)",
		"totals.session must be an integer >= 0 when request.session_id is set",
	}
}

_total_only := {"default": {"currency": "USD", "max_total": 10000, "revision": "sha256:total-only"}}

_nulls := {"total": 0, "session": null, "agent": null, "tool": null}

test_null_totals_accepted_where_no_limit_reads_them if {
	d := budget.decision with input as _input(100, _nulls) with data.chio.budget.policies as _total_only
	d.allow == true
	d.violations == []
}

test_null_tool_total_accepted_for_an_unlisted_tool if {
	totals := {"total": 0, "session": 0, "agent": 0, "tool": null}
	d := budget.decision with input as _input_for("cheap", "sess-1", 100, totals)
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_null_agent_total_denied_under_an_agent_limit if {
	d := budget.decision with input as _input(1, {"total": 0, "session": 0, "agent": null, "tool": null})
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{"scope": "custom", "code": "invalid_input", "message": "totals.agent must be an integer >= 0"}]
}

test_null_tool_total_denied_for_a_listed_tool if {
	totals := {"total": 0, "session": 0, "agent": 0, "tool": null}
	d := budget.decision with input as _input_for("expensive", "sess-1", 1, totals)
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.message | some v in d.violations] == ["totals.tool must be an integer >= 0"]
}

test_null_session_total_denied_under_a_session_limit if {
	d := budget.decision with input as _input(1, {"total": 0, "session": null, "agent": 0, "tool": null})
		with data.chio.budget.policies as _policies
	d.allow == false
	[v.message | some v in d.violations] == ["totals.session must be an integer >= 0 when request.session_id is set"]
}

test_malformed_total_without_a_limit_still_denies if {
	d := budget.decision with input as _input(1, {"total": 0, "session": "x", "agent": -1, "tool": null})
		with data.chio.budget.policies as _total_only
	d.allow == false
	{v.message | some v in d.violations} == {
		"totals.agent must be an integer >= 0 or null (no agent limit applies)",
		"totals.session must be an integer >= 0 or null (no session limit applies)",
	}
}

test_negative_or_fractional_cost_denies if {
	every cost in [-1, 1.5, "5"] {
		d := budget.decision with input as _input(cost, _zero)
			with data.chio.budget.policies as _policies
		d.allow == false
		some v in d.violations
		v.code == "invalid_input"
	}
}

test_missing_request_ids_deny if {
	inp := object.union(object.remove(_input(1, _zero), ["request"]), {"request": {"session_id": null}})
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == false
	{v.message | some v in d.violations} == {"request.agent_id must be a string", "request.tool_key must be a string"}
}

# The plain path (a policy without windows or warn_at, the guard's input) and
# the general one give the same violations; these pin where they meet.
test_per_call_cap_on_a_plain_policy_reports_first if {
	p := {"default": object.union(_policies.default, {"max_per_invocation": 150})}
	d := budget.decision with input as _input(200, {"total": 9900, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as p
	[v.scope | some v in d.violations] == ["invocation", "total"]
	d.violations[0] == {"scope": "invocation", "limit_units": 150, "requested_units": 200, "currency": "USD"}
}

test_counters_past_19_digits_are_judged_exactly if {
	# 10^19 is beyond the plain path's check: the general path decides, the same way.
	big := 10000000000000000000
	p := {"default": object.union(_policies.default, {"max_total": big + 100})}
	d := budget.decision with input as _input(101, {"total": big, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as p
	d.violations == [{
		"scope": "total", "limit_units": big + 100, "current_units": big,
		"requested_units": 101, "currency": "USD",
	}]
	ok := budget.decision with input as _input(100, {"total": big, "session": 0, "agent": 0, "tool": 0})
		with data.chio.budget.policies as p
	ok.allow == true
}
