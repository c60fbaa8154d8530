"""The OPA input: the one place that builds what ``decision.rego`` reads.

The contract a security engineer reviews (README, "The Rego"):
``policy_id``; ``request`` (``CostMetadata.request_input``); ``cost`` in the
policy currency's minor units; ``totals`` per scope, the counters as they
were before this request (other in-flight holds included), ``null`` where no
limit reads the scope (no counter is kept); ``conversion`` only for a cost in
another currency (the facts the rate rules judge); ``windows`` only when a
limit of the request is windowed. An all-time request in the policy currency
gets exactly the input it always had.
"""

from __future__ import annotations

from typing import Any, Mapping

from .authorization import Cost
from .conversion import Conversion, convert
from .cost import CostMetadata
from .money import MonetaryAmount, check_units
from .policy import BudgetPolicy
from .rates import RateOracle

SCOPES = ("total", "session", "agent", "tool")


def price(cost: Cost, policy: BudgetPolicy, rates: RateOracle | None,
          timestamp: int) -> tuple[int, Conversion | None]:
    """Units to hold and decide on, and the conversion when the cost is foreign.

    A failed conversion holds 0 and is denied by the Rego rules; bad units
    raise ``AmountError`` before anything is recorded.
    """
    if isinstance(cost, MonetaryAmount):
        if cost.currency == policy.currency:
            return cost.units, None
        c = convert(cost, policy.currency, rates, timestamp)
        return c.input_units, c
    return check_units(cost, "cost_units"), None


def build_input(meta: CostMetadata, cost_units: int, totals: Mapping[str, int | None], *,
                policy: BudgetPolicy, conversion: Conversion | None = None,
                windows: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The input for one decision (see the module docstring for each field)."""
    inp = {
        "policy_id": policy.id,
        "request": meta.request_input(),
        "cost": {"units": cost_units, "currency": policy.currency},
        "totals": {scope: totals.get(scope) for scope in SCOPES},
    }
    if conversion is not None:
        inp["conversion"] = conversion.to_input()
    if windows:
        inp["windows"] = dict(windows)
    return inp
