"""Helpers shared by the window tests (issue 11)."""

from __future__ import annotations

from chio_budget import BudgetGuard, CostMetadata
from chio_budget.guard import Authorization


def spend(guard: BudgetGuard, meta: CostMetadata, units: int) -> Authorization:
    """Authorize, and commit when allowed: a call that ran and cost its estimate."""
    auth = guard.authorize(meta, units)
    if auth.allow:
        auth.commit()
    return auth
