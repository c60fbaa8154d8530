# METADATA
# title: Chio budget guard
# description: >-
#   Decides whether a proposed tool-call cost fits the budget limits in
#   data.chio.budget.policies. Reproduces chio-metering's BudgetEnforcer::check:
#   a limit is violated when current + requested > limit (current saturating at
#   2^64-1), checked in the order total, session, agent, tool. Every violation
#   is reported, not only the first. On top of the Rust enforcer: a per-call
#   cap (scope "invocation", checked first), limits that count over a window
#   (the guard sends that window's counter and when it resets), and soft
#   limits (warn_at) that warn without denying. Extend the policy by adding a
#   file to this package that contributes to the `violation` (deny) or
#   `warning` sets.
# authors:
#   - chio-budget-guard maintainers
package chio.budget

# METADATA
# title: Budget decision
# description: >-
#   The guard's entrypoint. `allow` is true only when there is no violation
#   (default deny). `violations` are ordered invocation, total, session,
#   agent, tool, then any contributed by other files, each in the serde form
#   of the Rust BudgetViolation (a windowed limit's adds "window" and
#   "resets_at"). `warnings` are ordered the same way (then by threshold) and
#   never deny. Undefined when input.policy_id names no loaded policy, which
#   the guard treats as a deny.
# entrypoint: true
decision := {
	"allow": allow,
	"violations": _ordered_violations,
	"warnings": _ordered_warnings,
	"policy_id": input.policy_id,
	"policy_revision": _policy.revision,
}

# METADATA
# title: Allow
# description: Default deny; allowed only when no rule contributes a violation.
# scope: document
default allow := false

allow if count(violation) == 0

# The budget policy this request is judged against (compiled from YAML).
_policy := data.chio.budget.policies[input.policy_id]

_requested := input.cost.units

# u64::MAX: the Rust enforcer's counters saturate here instead of wrapping.
_u64_max := 18446744073709551615

# The limits that apply to this request, by scope: the limit's units and the
# field that says whose counter it is (as in the Rust violation; total has
# none). The counter is input.totals[scope]: all-time, or for a windowed
# limit the current window's, as the guard read it.
_limit["total"] := {"units": _policy.max_total, "who": {}}

_limit["session"] := {"units": _policy.max_per_session, "who": {"session_id": input.request.session_id}} if {
	input.request.session_id != null
}

_limit["agent"] := {"units": _policy.max_per_agent, "who": {"agent_id": input.request.agent_id}}

_limit["tool"] := {"units": units, "who": {"tool_key": input.request.tool_key}} if {
	units := _policy.max_per_tool[input.request.tool_key]
}

# The window each limit counts over, by scope, compiled from the YAML:
# {"kind": "daily"}, {"kind": "rolling", "seconds": 3600, ...}; a scope
# without one counts all time. The tool scope's are compiled per tool key.
# (Whole objects built once per decision with builtins: cheaper in OPA than a
# function of the scope, and a function may not read _policy or input.)
_window := object.union(object.remove(object.get(_policy, "windows", {}), ["tool"]), _tool_window)

_tool_window["tool"] := _policy.windows.tool[input.request.tool_key]

# A limit's warning thresholds, compiled from warn_at: {"bps": 8000, "units": 2400}
# is 80% (8000 basis points) of a 3000 limit. `units` is the least amount that
# reaches it, ceil(bps * limit / 10000) in exact integers, so for a whole
# number `after`: after >= units  exactly when  after * 10000 >= bps * limit.
# (Compiled once rather than multiplied on every decision: OPA arithmetic
# costs microseconds an operation.)
_warn_at := object.union(object.remove(object.get(_policy, "warn_at", {}), ["tool"]), _tool_warn_at)

_tool_warn_at["tool"] := _policy.warn_at.tool[input.request.tool_key]

# The scopes whose limit applies to this request.
_applies := object.keys(_limit)

# Rust's `current.saturating_add(requested)`, per scope, worked out once:
# exact (OPA numbers are arbitrary precision, so no sum near 2^64 is rounded)
# and only on a well-formed input (arithmetic on a string would be an error).
_after[scope] := min([input.totals[scope] + _requested, _u64_max]) if {
	_input_ok
	some scope, _ in _limit
}

# What a limit reports: the Rust BudgetViolation fields of its scope, plus,
# for a windowed limit, which window and the Unix second it resets at.
_report[scope] := object.union_n([
	{"scope": scope},
	limit.who,
	{
		"limit_units": limit.units,
		"current_units": input.totals[scope],
		"requested_units": _requested,
		"currency": _policy.currency,
	},
	object.get(_window_fields, scope, {}),
]) if {
	some scope, limit in _limit
}

_window_fields[scope] := {"window": window.kind, "resets_at": input.windows[scope].resets_at} if {
	some scope, window in _window
}

# METADATA
# title: Violations
# description: >-
#   Partial set of reasons to deny. Objects with a `scope`; the built-in
#   scopes carry the numbers that explain them (a windowed limit's also
#   "window" and "resets_at"). Other files may add more, e.g.
#   {"scope": "custom", "code": "...", "message": "..."}.
# scope: document
violation contains v if {
	some scope, limit in _limit
	_after[scope] > limit.units
	v := _report[scope]
}

# The per-call cap (the grant's max_cost_per_invocation as policy data): one
# call may not cost more, whatever has been spent.
violation contains {
	"scope": "invocation",
	"limit_units": _policy.max_per_invocation,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	_input_ok
	_requested > _policy.max_per_invocation
}

# A cost the guard did not convert into the policy currency cannot be
# compared with its limits: deny rather than compare yen with cents.
violation contains {
	"scope": "custom",
	"code": "currency_mismatch",
	"message": sprintf("cost is in %s but policy %s is in %s", [input.cost.currency, input.policy_id, _policy.currency]),
} if {
	input.cost.currency != _policy.currency
}

# An input the guard did not build in full (a direct caller of OPA's API, a
# missing counter) cannot be judged: a missing number must deny, never read
# as "no limit applies".
violation contains {"scope": "custom", "code": "invalid_input", "message": problem} if {
	not _input_ok
	some problem in _input_problems
}

# METADATA
# title: Warnings
# description: >-
#   Soft limits: one entry per threshold of a limit's warn_at that
#   current + requested reaches ((current + requested) * 10000 >= bps * limit),
#   with the limit's violation fields plus "threshold" (0.8). Warnings never
#   deny. Other files may add more.
warning contains w if {
	some scope, after in _after
	some threshold in _warn_at[scope]
	after >= threshold.units
	w := object.union(_report[scope], {"threshold": threshold.bps / 10000})
}

# The fast path: one rule that holds for every input the guard builds, so
# the per-field problems below are only worked out for a bad input.
_input_ok if {
	_is_units(input.cost.units)
	is_string(input.cost.currency)
	is_string(input.request.agent_id)
	is_string(input.request.tool_key)
	_is_units(input.totals.total)
	_session_counter_ok
	_counter_ok(input.totals.agent, "agent" in _limited)
	_counter_ok(input.totals.tool, "tool" in _limited)
	every scope, window in _window {
		_window_ok(scope in _applies, object.get(input, ["windows", scope], null), window)
	}
}

# The guard keeps only the counters some limit reads, and sends null for a
# scope without one. A number is always fine; null only where no limit of
# the policy reads that scope (a missing or malformed number under a limit
# still denies). `limited`: whether a limit reads it (`scope in _limited`).
_counter_ok(count, _) if _is_units(count)

_counter_ok(null, false)

# Without a session there is no session counter: whatever is sent is unread.
_session_counter_ok if object.get(input, ["request", "session_id"], null) == null

_session_counter_ok if _counter_ok(input.totals.session, "session" in _limited)

# The scopes a limit of this policy reads for this request (a counter the
# guard must send).
_limited contains "session" if _policy.max_per_session

_limited contains "agent" if _policy.max_per_agent

_limited contains "tool" if _policy.max_per_tool[input.request.tool_key]

# A windowed limit that applies needs the guard's window (`sent`, null when
# missing): the compiled kind and when it resets.
_window_ok(false, _, _)

_window_ok(_, sent, window) if {
	sent.window == window.kind
	_is_units(sent.resets_at)
}

# object.get, not a plain reference: a missing field must reach the check
# as null, not make the whole rule undefined.
_input_problems contains "cost.units must be an integer >= 0" if {
	not _is_units(object.get(input, ["cost", "units"], null))
}

_input_problems contains "cost.currency must be a string" if {
	not is_string(object.get(input, ["cost", "currency"], null))
}

_input_problems contains "totals.total must be an integer >= 0" if {
	not _is_units(object.get(input, ["totals", "total"], null))
}

_input_problems contains sprintf("totals.%s must be an integer >= 0", [scope]) if {
	some scope in ["agent", "tool"]
	scope in _limited
	not _counter_ok(object.get(input, ["totals", scope], "missing"), true)
}

_input_problems contains sprintf("totals.%s must be an integer >= 0 or null (no %s limit applies)", [scope, scope]) if {
	some scope in ["agent", "tool"]
	not scope in _limited
	not _counter_ok(object.get(input, ["totals", scope], "missing"), false)
}

_input_problems contains "totals.session must be an integer >= 0 when request.session_id is set" if {
	not _session_counter_ok
	"session" in _limited
}

_input_problems contains "totals.session must be an integer >= 0 or null (no session limit applies)" if {
	not _session_counter_ok
	not "session" in _limited
}

_input_problems contains sprintf("request.%s must be a string", [name]) if {
	some name in ["agent_id", "tool_key"]
	not is_string(object.get(input, ["request", name], null))
}

_input_problems contains sprintf(
	"windows.%s must be {\"window\": %q, \"resets_at\": <Unix second>} (its limit is windowed)",
	[scope, _window[scope].kind],
) if {
	some scope, window in _window
	not _window_ok(scope in _applies, object.get(input, ["windows", scope], null), window)
}

_is_units(x) if {
	is_number(x)
	x >= 0
	floor(x) == x
}

_builtin_scopes := ["invocation", "total", "session", "agent", "tool"]

_ordered_violations := array.concat(
	[v | some scope in _builtin_scopes; some v in violation; v.scope == scope],
	[v | some v in violation; not v.scope in _builtin_scopes],
)

# Warnings in the same order; within a scope by threshold (a set iterates
# in sorted order, and two warnings of one scope differ only there).
_ordered_warnings := array.concat(
	[w | some scope in _builtin_scopes; some w in warning; w.scope == scope],
	[w | some w in warning; not _builtin(w, _builtin_scopes)],
)

# A warning of a built-in scope; one without a scope is not (so it is kept above:
# `not w.scope in ...` would drop it, its undefined scope making the whole term undefined).
_builtin(x, scopes) if x.scope in scopes
