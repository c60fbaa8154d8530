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
#   `warning` sets. For speed, the guard's own input under a policy without
#   windows or warn_at takes a short path; it decides exactly as the general
#   one (tests/test_decision_equivalence.py).
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
	"allow": true,
	"violations": [],
	"warnings": [],
	"policy_id": input.policy_id,
	"policy_revision": _policy.revision,
} if {
	# The common case, nothing to report: no ordering to work out. (`allow`
	# holds here, so `true` above spares looking it up again; `x == set()` is
	# one expression where `count(x) == 0` is two.)
	allow
	warning == set()
} else := {
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

allow if violation == set()

# The budget policy this request is judged against (compiled from YAML).
_policy := data.chio.budget.policies[input.policy_id]

_requested := input.cost.units

# u64::MAX: the Rust enforcer's counters saturate here instead of wrapping.
# Rust's `current.saturating_add(requested) > limit` is, exactly,
# `current + requested > limit` and `limit < u64::MAX`: OPA numbers are
# arbitrary precision (no sum near 2^64 is rounded), and a saturated sum is
# never above u64::MAX.
_u64_max := 18446744073709551615

# METADATA
# title: Violations
# description: >-
#   Partial set of reasons to deny. Objects with a `scope`; the built-in
#   scopes carry the numbers that explain them (a windowed limit's also
#   "window" and "resets_at"). Other files may add more, e.g.
#   {"scope": "custom", "code": "...", "message": "..."}.
# scope: document
violation contains v if {
	not _quiet
	some v in _budget_violation
}

# How this file decides, cheaply for the common case (OPA evaluates every
# rule of a set, so the number of rules on the allow path is its cost):
#
# - `_budget_violation` holds this file's reasons to deny; `violation` takes
#   them through the one rule above, which `_quiet` stops at once for a
#   request that meets every limit.
# - The plain path (`_plain`): a policy without windows or warning
#   thresholds, and an input of the shape the guard builds, checked at
#   once. One short rule per limit, as in the Rust enforcer.
# - The general path: everything else - windowed and soft limits, and any
#   input the guard did not build (each of its problems named).
#
# Both paths give the same objects for the same input:
# tests/test_decision_equivalence.py compares this file with the single-path
# version it replaced (tests/reference/decision_pre15.rego).

# -- The common case: one check -----------------------------------------------

# A plain request in the policy currency that meets the per-call cap and
# every limit that applies: no rule of `_budget_violation` can hold. One
# body, no arithmetic it can skip (OPA takes microseconds an expression, and
# a reference into input or a rule costs more than a local): `_plain` makes
# totals exactly these four counters, so one unification binds them all.
# `current <= limit - requested` is `current + requested <= limit` for
# numbers, and holds for a null counter (null sorts before numbers; null +
# requested would be an error), which `_plain` allows only where no limit
# applies or the session is null. The total is never null. A limit that
# does not exist defaults to 10^20, above any plain counter (< 10^19) plus
# any plain cost (< 10^19).
_quiet if {
	_plain
	p := _policy
	[r, {"agent": agent, "session": session, "tool": tool, "total": total}] := [input.cost.units, input.totals]
	r <= object.get(p, "max_per_invocation", r)
	total + r <= p.max_total
	session <= object.get(p, "max_per_session", 100000000000000000000) - r
	agent <= object.get(p, "max_per_agent", 100000000000000000000) - r
	tool <= object.get(p, ["max_per_tool", input.request.tool_key], 100000000000000000000) - r
}

# -- The plain path -----------------------------------------------------------

# The guard's input, checked at once: the cost and every counter a whole
# number of at most 19 digits (below 2^64, where the general path's floor()
# is exact) or null, as JSON; the ids strings; no limit that applies
# without its counter; and a policy without windows or warn_at. It implies
# `_input_ok`. An input that fails it is judged by the general path, so it
# decides nothing the general path would decide otherwise.
_plain if {
	not _policy.windows
	not _policy.warn_at
	input.cost.currency == _policy.currency
	is_string(input.request.agent_id)
	is_string(input.request.tool_key)
	regex.match(
		# `[units, {"agent": n, "session": n, "tool": n, "total": n}]`, each
		# n digits or null (json.marshal sorts the keys).
		`^\[\d{1,19},\{"agent":(\d{1,19}|null),"session":(\d{1,19}|null),"tool":(\d{1,19}|null),"total":\d{1,19}\}\]$`,
		json.marshal([input.cost.units, input.totals]),
	)
	not _counter_missing
}

# (Each body opens with `input... == null`: OPA's rule index skips a body
# whose counter is not null without evaluating it.)
_counter_missing if {
	input.totals.session == null
	input.request.session_id != null
	_policy.max_per_session
}

_counter_missing if {
	input.totals.agent == null
	_policy.max_per_agent
}

_counter_missing if {
	input.totals.tool == null
	_policy.max_per_tool[input.request.tool_key]
}

# The plain path's limits: one rule each, as in the Rust enforcer.
_budget_violation contains v if {
	_plain
	some v in _plain_violation
}

_plain_violation contains {
	"scope": "total",
	"limit_units": limit,
	"current_units": input.totals.total,
	"requested_units": input.cost.units,
	"currency": _policy.currency,
} if {
	limit := _policy.max_total
	input.totals.total + input.cost.units > limit
	limit < _u64_max
}

_plain_violation contains {
	"scope": "session",
	"session_id": input.request.session_id,
	"limit_units": limit,
	"current_units": input.totals.session,
	"requested_units": input.cost.units,
	"currency": _policy.currency,
} if {
	input.request.session_id != null
	limit := _policy.max_per_session
	input.totals.session + input.cost.units > limit
	limit < _u64_max
}

_plain_violation contains {
	"scope": "agent",
	"agent_id": input.request.agent_id,
	"limit_units": limit,
	"current_units": input.totals.agent,
	"requested_units": input.cost.units,
	"currency": _policy.currency,
} if {
	limit := _policy.max_per_agent
	input.totals.agent + input.cost.units > limit
	limit < _u64_max
}

_plain_violation contains {
	"scope": "tool",
	"tool_key": input.request.tool_key,
	"limit_units": limit,
	"current_units": input.totals.tool,
	"requested_units": input.cost.units,
	"currency": _policy.currency,
} if {
	limit := _policy.max_per_tool[input.request.tool_key]
	input.totals.tool + input.cost.units > limit
	limit < _u64_max
}

# -- Both paths -----------------------------------------------------------------

# The per-call cap (the grant's max_cost_per_invocation as policy data): one
# call may not cost more, whatever has been spent.
_budget_violation contains {
	"scope": "invocation",
	"limit_units": cap,
	"requested_units": _requested,
	"currency": _policy.currency,
} if {
	cap := _policy.max_per_invocation
	_input_ok
	_requested > cap
}

# -- The general path -----------------------------------------------------------

_budget_violation contains v if {
	not _plain
	some v in _general_violation
}

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

# current + requested, per scope, worked out once (compared below with the
# saturation spelled out) and only on a well-formed input (arithmetic on a
# string would be an error).
_after[scope] := input.totals[scope] + _requested if {
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

_general_violation contains _report[scope] if {
	some scope, limit in _limit
	_after[scope] > limit.units
	limit.units < _u64_max
}

# A cost the guard did not convert into the policy currency cannot be
# compared with its limits: deny rather than compare yen with cents. (The
# plain path requires the policy currency.)
_general_violation contains {
	"scope": "custom",
	"code": "currency_mismatch",
	"message": sprintf("cost is in %s but policy %s is in %s", [input.cost.currency, input.policy_id, _policy.currency]),
} if {
	input.cost.currency != _policy.currency
}

# An input the guard did not build in full (a direct caller of OPA's API, a
# missing counter) cannot be judged: a missing number must deny, never read
# as "no limit applies".
_general_violation contains {"scope": "custom", "code": "invalid_input", "message": problem} if {
	not _input_ok
	some problem in _input_problems
}

# METADATA
# title: Warnings
# description: >-
#   Soft limits: one entry per threshold of a limit's warn_at that
#   current + requested reaches ((current + requested) * 10000 >= bps * limit),
#   with the limit's violation fields plus "threshold" (0.8). Warnings never
#   deny. Only a policy with warn_at has any (so never on the plain path).
#   Other files may add more.
warning contains w if {
	_policy.warn_at
	some scope, after in _after
	some threshold in _warn_at[scope]
	after >= threshold.units
	threshold.units <= _u64_max
	w := object.union(_report[scope], {"threshold": threshold.bps / 10000})
}

# One rule that holds for every input the guard builds, so the per-field
# problems below are only worked out for a bad input. `_plain` implies it
# and is cheaper, so it is tried first.
_input_ok if _plain

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

# Ordered as the decision reports them (none and one need no sorting).
_ordered_violations := [v] if {
	count(violation) == 1
	some v in violation
} else := [] if {
	count(violation) == 0
} else := array.concat(
	[v | some scope in _builtin_scopes; some v in violation; v.scope == scope],
	[v | some v in violation; not v.scope in _builtin_scopes],
)

# Warnings in the same order; within a scope by threshold (a set iterates
# in sorted order, and two warnings of one scope differ only there).
_ordered_warnings := [] if {
	count(warning) == 0
} else := array.concat(
	[w | some scope in _builtin_scopes; some w in warning; w.scope == scope],
	[w | some w in warning; not _builtin(w, _builtin_scopes)],
)

# A warning of a built-in scope; one without a scope is not (so it is kept above:
# `not w.scope in ...` would drop it, its undefined scope making the whole term undefined).
_builtin(x, scopes) if x.scope in scopes
