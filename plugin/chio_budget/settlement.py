"""What the chain guard answers about one call's hold: how it was settled, whether it is live.

Plain values, shared by the chain guard and whatever serves it (the sidecar
returns them as JSON); they carry no behaviour of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SettlementResult:
    """How one call's reservation ended: ``outcome`` is ``committed`` | ``released`` |
    ``committed_late`` (past the TTL; posted anyway, once) | ``expired`` (failed or cancelled
    after the hold expired) | ``already_settled`` (no-op; a denied call's hold was released at
    once) | ``unknown`` (never held here, forgotten, or another policy's) | ``error`` (the
    ledger failed; the hold stays, so settlement can be retried)."""

    request_id: str
    outcome: str
    currency: str
    estimate_units: int | None = None
    actual_units: int | None = None
    committed_units: int | None = None
    over_estimate: bool = False
    source: str = ""
    error: str | None = None
    decision_id: str | None = None

    @property
    def changed(self) -> bool:
        return self.outcome in ("committed", "committed_late", "released")


@dataclass(frozen=True)
class HoldStatus:
    """What ``revalidate`` found: ``live`` only for a ``held`` reservation of this policy.
    ``state``: the ledger's (``held`` | ``committed`` | ``released`` | ``expired``), ``unknown``
    (no such call of this policy) or ``error`` (see ``error``); ``expires_at`` is on the
    ledger's clock."""

    request_id: str
    live: bool
    state: str
    estimate_units: int | None = None
    expires_at: float | None = None
    decision_id: str | None = None
    error: str | None = None
