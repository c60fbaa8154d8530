# METADATA
# title: Tests of batch evaluation
# description: >-
#   A batch gives, slot by slot, what each input decides alone: allowed,
#   denied and undefined inputs side by side, in order.
package chio.budget.batch_test

import data.chio.budget
import data.chio.budget.batch

_policies := {"default": {
	"currency": "USD",
	"max_total": 1000,
	"revision": "sha256:test",
}}

_input(policy_id, cost) := {
	"policy_id": policy_id,
	"request": {
		"receipt_id": "r1", "timestamp": 1767225600, "agent_id": "a1", "session_id": null,
		"tool_server": "s1", "tool_name": "t1", "tool_key": "s1:t1",
	},
	"cost": {"units": cost, "currency": "USD"},
	"totals": {"total": 900, "session": null, "agent": null, "tool": null},
}

test_each_slot_is_that_input_decided_alone if {
	inputs := [_input("default", 50), _input("nope", 50), _input("default", 500)]
	got := batch.decisions with input as {"inputs": inputs} with data.chio.budget.policies as _policies
	first := budget.decision with input as inputs[0] with data.chio.budget.policies as _policies
	third := budget.decision with input as inputs[2] with data.chio.budget.policies as _policies
	got == [{"decision": first}, {}, {"decision": third}]
	first.allow
	not third.allow
}

test_no_inputs_no_slots if {
	batch.decisions == [] with input as {"inputs": []} with data.chio.budget.policies as _policies
}
