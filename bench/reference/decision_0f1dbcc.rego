# METADATA
# title: Chio budget guard
# description: >-
#   Decides whether a proposed tool-call cost fits the budget limits in
#   data.chio.budget.policies. Reproduces chio-metering's BudgetEnforcer::check:
#   a limit is violated when current + requested > limit (current saturating at
#   2^64-1), checked in the order total, session, agent, tool. Every violation
#   is reported, not only the first. Extend the policy by adding a file to this
#   package that contributes to the `violation` (deny) or `warning` sets.
# authors:
#   - chio-budget-guard maintainers
package chio.budget

# METADATA
# title: Budget decision
# description: >-
#   The guard's entrypoint. `allow` is true only when there is no violation
#   (default deny). `violations` are ordered total, session, agent, tool, then
#   any contributed by other files, each in the serde form of the Rust
#   BudgetViolation. Undefined when input.policy_id names no loaded policy,
#   which the guard treats as a deny.
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

# Rust's `current.saturating_add(requested) > limit`, exactly (OPA numbers are
# arbitrary precision, so no sum near 2^64 is rounded).
# (Only on a well-formed input: arithmetic on a string would be an error.)
_exceeds(current, limit) if {
	_input_ok
	min([current + _requested, _u64_max]) > limit
}

# METADATA
# title: Violations
# description: >-
#   Partial set of reasons to deny. Objects with a `scope`; the four built-in
#   scopes carry the numbers that explain them. Other files may add more, e.g.
#   {"scope": "custom", "code": "...", "message": "..."}.
violation contains {
	"scope": "total",
	"limit_units": _policy.max_total,
	"current_units": input.totals.total,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	_exceeds(input.totals.total, _policy.max_total)
}

violation contains {
	"scope": "session",
	"session_id": input.request.session_id,
	"limit_units": _policy.max_per_session,
	"current_units": input.totals.session,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	input.request.session_id != null
	_exceeds(input.totals.session, _policy.max_per_session)
}

violation contains {
	"scope": "agent",
	"agent_id": input.request.agent_id,
	"limit_units": _policy.max_per_agent,
	"current_units": input.totals.agent,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	_exceeds(input.totals.agent, _policy.max_per_agent)
}

violation contains {
	"scope": "tool",
	"tool_key": input.request.tool_key,
	"limit_units": limit,
	"current_units": input.totals.tool,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	limit := _policy.max_per_tool[input.request.tool_key]
	_exceeds(input.totals.tool, limit)
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

# The fast path: one rule that holds for every input the guard builds, so
# the per-field problems below are only worked out for a bad input.
_input_ok if {
	_is_units(input.cost.units)
	is_string(input.cost.currency)
	_is_units(input.totals.total)
	_is_units(input.totals.agent)
	_is_units(input.totals.tool)
	_session_total_ok
	is_string(input.request.agent_id)
	is_string(input.request.tool_key)
}

_session_total_ok if input.request.session_id == null

_session_total_ok if _is_units(input.totals.session)

# object.get, not a plain reference: a missing field must reach the check
# as null, not make the whole rule undefined.
_input_problems contains "cost.units must be an integer >= 0" if not _is_units(object.get(input, ["cost", "units"], null))

_input_problems contains "cost.currency must be a string" if not is_string(object.get(input, ["cost", "currency"], null))

_input_problems contains sprintf("totals.%s must be an integer >= 0", [name]) if {
	some name in ["total", "agent", "tool"]
	not _is_units(object.get(input, ["totals", name], null))
}

_input_problems contains "totals.session must be an integer >= 0 when request.session_id is set" if {
	input.request.session_id != null
	not _is_units(object.get(input, ["totals", "session"], null))
}

_input_problems contains sprintf("request.%s must be a string", [name]) if {
	some name in ["agent_id", "tool_key"]
	not is_string(object.get(input, ["request", name], null))
}

_is_units(x) if {
	is_number(x)
	x >= 0
	floor(x) == x
}

_builtin_scopes := ["total", "session", "agent", "tool"]

_ordered_violations := array.concat(
	[v | some scope in _builtin_scopes; some v in violation; v.scope == scope],
	[v | some v in violation; not v.scope in _builtin_scopes],
)

# Other files may contribute a `warning` set (observations that do not deny,
# e.g. soft limits); none is defined here, so the reference is to data.
_ordered_warnings := [w | some w in data.chio.budget.warning]
