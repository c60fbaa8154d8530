# METADATA
# title: Tests of the currency-conversion rules
# description: >-
#   One behaviour per test: a converted cost is judged like any other, and a
#   missing, overflowing, stale or malformed conversion denies with its code.
package chio.budget.rates_test

import data.chio.budget

_policies := {"default": {
	"currency": "USD",
	"max_total": 10000,
	"revision": "sha256:test",
}}

_rate(age) := {
	"numerator": 10842, "denominator": 10000, "source": "rates.yaml:6",
	"updated_at": 1767225600, "age_seconds": age,
}

_conversion(status, rate, units) := {
	"status": status,
	"original": {"units": 100, "currency": "EUR"},
	"pair": "EUR/USD",
	"rate": rate,
	"max_age_seconds": 600,
	"margin_bps": 200,
	"base_scale": 100,
	"quote_scale": 100,
	"converted_units": units,
	"reason": null,
}

_input(cost, conversion) := {
	"policy_id": "default",
	"request": {
		"receipt_id": "r1", "timestamp": 1767225600, "agent_id": "a1", "session_id": null,
		"tool_server": "s1", "tool_name": "t1", "tool_key": "s1:t1",
	},
	"cost": {"units": cost, "currency": "USD"},
	"totals": {"total": 0, "session": null, "agent": 0, "tool": 0},
	"conversion": conversion,
}

_codes(d) := [v.code | some v in d.violations]

test_converted_cost_within_budget_allows if {
	d := budget.decision with input as _input(112, _conversion("ok", _rate(0), 112))
		with data.chio.budget.policies as _policies
	d.allow == true
	d.violations == []
}

test_converted_cost_is_judged_against_the_limits if {
	d := budget.decision with input as _input(10001, _conversion("ok", _rate(0), 10001))
		with data.chio.budget.policies as _policies
	d.allow == false
	[v] := d.violations
	v.scope == "total"
	v.requested_units == 10001
}

test_rate_exactly_max_age_old_is_fresh if {
	d := budget.decision with input as _input(112, _conversion("ok", _rate(600), 112))
		with data.chio.budget.policies as _policies
	d.allow == true
}

test_rate_one_second_past_max_age_is_stale if {
	d := budget.decision with input as _input(112, _conversion("ok", _rate(601), 112))
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "custom", "code": "rate_stale", "pair": "EUR/USD", "source": "rates.yaml:6",
		"age_seconds": 601, "max_age_seconds": 600,
		"message": "EUR/USD rate from rates.yaml:6 is 601 s old, more than the 600 s allowed",
	}]
}

test_missing_rate_denies_as_rate_unavailable if {
	reason := {"reason": "no EUR/USD rate (cross rates are not derived)"}
	c := object.union(_conversion("rate_unavailable", null, null), reason)
	d := budget.decision with input as _input(0, c)
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "custom", "code": "rate_unavailable", "pair": "EUR/USD",
		"original_units": 100, "original_currency": "EUR",
		"message": "no usable EUR/USD rate: no EUR/USD rate (cross rates are not derived)",
	}]
}

test_overflow_denies_as_rate_overflow if {
	c := object.union(_conversion("rate_overflow", _rate(0), null), {"reason": "converted units exceeded u64 for EUR/USD"})
	d := budget.decision with input as _input(0, c)
		with data.chio.budget.policies as _policies
	d.allow == false
	d.violations == [{
		"scope": "custom", "code": "rate_overflow", "pair": "EUR/USD",
		"original_units": 100, "original_currency": "EUR",
		"message": "100 EUR cannot be converted to USD: converted units exceeded u64 for EUR/USD",
	}]
}

test_unknown_conversion_status_is_invalid_input if {
	d := budget.decision with input as _input(112, _conversion("fine", _rate(0), 112))
		with data.chio.budget.policies as _policies
	d.allow == false
	_codes(d) == ["invalid_input"]
}

test_ok_conversion_without_age_is_invalid_input if {
	d := budget.decision with input as _input(112, _conversion("ok", null, 112))
		with data.chio.budget.policies as _policies
	d.allow == false
	_codes(d) == ["invalid_input"]
}

test_ok_conversion_must_carry_the_converted_cost if {
	d := budget.decision with input as _input(1, _conversion("ok", _rate(0), 112))
		with data.chio.budget.policies as _policies
	d.allow == false
	_codes(d) == ["invalid_input"]
}

test_no_conversion_adds_no_violation if {
	inp := object.remove(_input(112, null), ["conversion"])
	d := budget.decision with input as inp
		with data.chio.budget.policies as _policies
	d.allow == true
}
