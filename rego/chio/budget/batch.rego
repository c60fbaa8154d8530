# METADATA
# title: Chio budget guard - batch evaluation
# description: >-
#   Many independent decisions in one query: the guard's engines send
#   {"inputs": [i1, i2, ...]} and read one slot per input, in order:
#   {"decision": d} where data.chio.budget.decision is d for that input alone
#   (evaluated with input replaced by it), or {} where it is undefined (an
#   unknown policy_id), so the slots never shift. The decision rules are not
#   repeated here: whatever decides one input decides each of the batch.
package chio.budget.batch

# METADATA
# title: Batched decisions
# description: >-
#   One slot per element of input.inputs, in order: {"decision": d}, or {}
#   when the decision is undefined for that element.
# entrypoint: true
decisions := [s | some x in input.inputs; s := _slot with input as x] # regal ignore:with-outside-test-context

# The slot of the input in force: the batch evaluates it with input replaced by each element.
_slot := {"decision": d} if {
	d := data.chio.budget.decision
} else := {}
