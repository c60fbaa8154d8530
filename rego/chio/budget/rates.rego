# METADATA
# title: Chio budget guard - currency conversion
# description: >-
#   A cost priced in another currency reaches OPA already converted into the
#   policy currency (chio-link's convert_units: both roundings up, margin in
#   basis points) with the facts of the conversion in input.conversion. These
#   rules deny when that conversion cannot be trusted: no usable rate (missing,
#   zero, unknown currency, oracle failure), a result past 2^64-1, or a rate
#   older than max_age_seconds at the request's timestamp (exactly
#   max_age_seconds old is still fresh, as in the kernel). Each is a custom
#   violation with a code, so it is a policy decision, not an engine error.
package chio.budget

# METADATA
# title: No usable rate
# description: The guard found no rate for the pair, a zero rate, or a currency with no scale.
violation contains {
	"scope": "custom",
	"code": "rate_unavailable",
	"pair": c.pair,
	"original_units": c.original.units,
	"original_currency": c.original.currency,
	"message": sprintf("no usable %s rate: %s", [c.pair, c.reason]),
} if {
	c := input.conversion
	c.status == "rate_unavailable"
}

# METADATA
# title: Conversion overflow
# description: The converted cost does not fit the kernel's u64 (or an intermediate its u128).
violation contains {
	"scope": "custom",
	"code": "rate_overflow",
	"pair": c.pair,
	"original_units": c.original.units,
	"original_currency": c.original.currency,
	"message": sprintf(
		"%d %s cannot be converted to %s: %s",
		[c.original.units, c.original.currency, _policy.currency, c.reason],
	),
} if {
	c := input.conversion
	c.status == "rate_overflow"
}

# METADATA
# title: Stale rate
# description: >-
#   The rate's age at the request's timestamp exceeds max_age_seconds
#   (the kernel's `age_seconds > max_age_seconds`).
violation contains {
	"scope": "custom",
	"code": "rate_stale",
	"pair": c.pair,
	"source": c.rate.source,
	"age_seconds": c.rate.age_seconds,
	"max_age_seconds": c.max_age_seconds,
	"message": sprintf(
		"%s rate from %s is %d s old, more than the %d s allowed",
		[c.pair, c.rate.source, c.rate.age_seconds, c.max_age_seconds],
	),
} if {
	c := input.conversion
	_conversion_facts_ok(c, input.cost.units)
	c.rate.age_seconds > c.max_age_seconds
}

# Conversion facts the guard did not build in full: deny, never guess.
violation contains {"scope": "custom", "code": "invalid_input", "message": problem} if {
	some problem in _conversion_problems
}

_conversion_statuses := {"ok", "rate_unavailable", "rate_overflow"}

# `cost_units` is input.cost.units: what the conversion must have produced.
_conversion_facts_ok(c, cost_units) if {
	c.status == "ok"
	_is_units(c.rate.age_seconds)
	_is_units(c.max_age_seconds)
	c.converted_units == cost_units
}

_conversion_problems contains "conversion.status must be ok, rate_unavailable or rate_overflow" if {
	c := input.conversion
	not c.status in _conversion_statuses
}

_conversion_problems contains concat(" ", [
	"conversion with status ok needs integer rate.age_seconds and max_age_seconds,",
	"and converted_units equal to cost.units",
]) if {
	c := input.conversion
	c.status == "ok"
	not _conversion_facts_ok(c, input.cost.units)
}
