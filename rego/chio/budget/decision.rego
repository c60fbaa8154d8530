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

# The window a limit counts over, compiled from the YAML: {"kind": "daily"},
# {"kind": "rolling", "seconds": 3600, ...}. Undefined: all time.
_window("tool") := _policy.windows.tool[input.request.tool_key]

_window(scope) := _policy.windows[scope] if scope != "tool"

# A limit's warning thresholds, compiled from warn_at: {"bps": 8000, "units": 2400}
# is 80% (8000 basis points) of a 3000 limit. `units` is the least amount that
# reaches it, ceil(bps * limit / 10000) in exact integers, so for a whole
# number `after`: after >= units  exactly when  after * 10000 >= bps * limit.
# (Compiled once rather than multiplied on every decision: OPA arithmetic
# costs microseconds an operation.)
_warn_at("tool") := _policy.warn_at.tool[input.request.tool_key]

_warn_at(scope) := _policy.warn_at[scope] if scope != "tool"

# Rust's `current.saturating_add(requested)`, per scope, worked out once:
# exact (OPA numbers are arbitrary precision, so no sum near 2^64 is rounded)
# and only on a well-formed input (arithmetic on a string would be an error).
_after[scope] := min([input.totals[scope] + _requested, _u64_max]) if {
	_input_ok
	some scope, _ in _limit
}

# What a limit reports: the Rust BudgetViolation fields of its scope, plus,
# for a windowed limit, which window and the Unix second it resets at.
_report(scope) := object.union_n([
	{"scope": scope},
	_limit[scope].who,
	{
		"limit_units": _limit[scope].units,
		"current_units": input.totals[scope],
		"requested_units": _requested,
		"currency": _policy.currency,
	},
	_window_fields(scope),
])

_window_fields(scope) := fields if {
	fields := {"window": _window(scope).kind, "resets_at": input.windows[scope].resets_at}
} else := {}

# METADATA
# title: Violations
# description: >-
#   Partial set of reasons to deny. Objects with a `scope`; the built-in
#   scopes carry the numbers that explain them (a windowed limit's also
#   "window" and "resets_at"). Other files may add more, e.g.
#   {"scope": "custom", "code": "...", "message": "..."}.
violation contains v if {
	some scope, limit in _limit
	_after[scope] > limit.units
	v := _report(scope)
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
	some threshold in _warn_at(scope)
	after >= threshold.units
	w := object.union(_report(scope), {"threshold": threshold.bps / 10000})
}

# The fast path: one rule that holds for every input the guard builds, so
# the per-field problems below are only worked out for a bad input.
_input_ok if {
	_is_units(input.cost.units)
	is_string(input.cost.currency)
	is_string(input.request.agent_id)
	is_string(input.request.tool_key)
	_is_units(input.totals.total)
	_counter_ok("session")
	_counter_ok("agent")
	_counter_ok("tool")
	every scope, _ in _limit {
		_window_ok(scope)
	}
}

# The guard keeps only the counters some limit reads, and sends null for a
# scope without one. A number is always fine; null only where no limit of
# the policy reads that scope (a missing or malformed number under a limit
# still denies).
_counter_ok(scope) if _is_units(input.totals[scope])

# Without a session there is no session counter: whatever is sent is unread.
_counter_ok("session") if object.get(input, ["request", "session_id"], null) == null

_counter_ok(scope) if {
	not _limited(scope)
	input.totals[scope] == null
}

_limited("session") if _policy.max_per_session

_limited("agent") if _policy.max_per_agent

_limited("tool") if _policy.max_per_tool[input.request.tool_key]

# A windowed limit needs the guard's window: the compiled kind and when it resets.
_window_ok(scope) if not _window(scope)

_window_ok(scope) if {
	input.windows[scope].window == _window(scope).kind
	_is_units(input.windows[scope].resets_at)
}

# object.get, not a plain reference: a missing field must reach the check
# as null, not make the whole rule undefined.
_input_problems contains "cost.units must be an integer >= 0" if not _is_units(object.get(input, ["cost", "units"], null))

_input_problems contains "cost.currency must be a string" if not is_string(object.get(input, ["cost", "currency"], null))

_input_problems contains "totals.total must be an integer >= 0" if {
	not _is_units(object.get(input, ["totals", "total"], null))
}

_input_problems contains sprintf("totals.%s must be an integer >= 0", [scope]) if {
	some scope in ["agent", "tool"]
	_limited(scope)
	not _counter_ok(scope)
}

_input_problems contains sprintf("totals.%s must be an integer >= 0 or null (no %s limit applies)", [scope, scope]) if {
	some scope in ["agent", "tool"]
	not _limited(scope)
	not _counter_ok(scope)
}

_input_problems contains "totals.session must be an integer >= 0 when request.session_id is set" if {
	not _counter_ok("session")
	_limited("session")
}

_input_problems contains "totals.session must be an integer >= 0 or null (no session limit applies)" if {
	not _counter_ok("session")
	not _limited("session")
}

_input_problems contains sprintf("request.%s must be a string", [name]) if {
	some name in ["agent_id", "tool_key"]
	not is_string(object.get(input, ["request", name], null))
}

_input_problems contains sprintf("windows.%s must be {\"window\": %q, \"resets_at\": <Unix second>} (its limit is windowed)", [scope, _window(scope).kind]) if {
	some scope, _ in _limit
	not _window_ok(scope)
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
	[w | some w in warning; not _builtin(w)],
)

# A warning (or violation) of a built-in scope; one without a scope is not.
_builtin(x) if x.scope in _builtin_scopes
