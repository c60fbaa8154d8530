"""What a decision hands back: the ``Evaluation`` of a check, the ``Authorization`` of a reservation.

Both carry the exact OPA input and the engine's time, so the chain member
and the decision log record what OPA saw without watching the engine, and
the conversion of a foreign cost. ``Authorization`` settles its reservation
(``commit``/``release``) through the guard that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .conversion import Conversion
from .decision import Decision
from .ledger import Ledger, Settlement
from .money import MonetaryAmount
from .rates import RateOracle

Cost = int | MonetaryAmount
"""A cost: policy-currency minor units, or an amount in any currency."""


class _Issuer(Protocol):
    """What an ``Authorization`` needs of the ``BudgetGuard`` that made it (named here, not
    imported: the guard imports this module)."""

    ledger: Ledger

    def _settle_units(self, auth: "Authorization", actual: MonetaryAmount) -> int | None: ...

    def _give_back(self, receipt_id: str, attempt: str) -> None: ...


@dataclass(frozen=True)
class Beside:
    """Shadows judged in the enforced decision's own engine query (``loaded.Loaded.decide_beside``).

    ``input`` is the exact enforced input they were judged beside (``shadow.run_shadows``
    takes these decisions only for that very object); ``judged`` holds each shadow with
    its input and decision; ``share_ns`` is each one's share of the query's wall time.
    """

    input: dict[str, Any]
    judged: tuple[tuple[Any, dict[str, Any], Decision], ...]
    share_ns: int


@dataclass(frozen=True)
class Evaluation:
    """A decision with what produced it: the exact OPA ``input``, the wall time of
    ``engine.decide`` in ns (``input``/``eval_ns`` are None when OPA was not asked),
    the conversion of a foreign cost, the Rego revision it ran on, and OPA's own
    evaluation time where the engine reports one (``opa_eval_ns``: an OPA server's
    ``timer_rego_query_eval_ns``; None for the embedded engine, which has none).
    ``beside``: the shadows judged in the same query, if any (``eval_ns`` is then the
    enforced decision's share, and ``opa_eval_ns`` None: a batch reports none per input)."""

    decision: Decision
    input: dict[str, Any] | None = None
    eval_ns: int | None = None
    conversion: Conversion | None = None
    rego_revision: str | None = None
    opa_eval_ns: int | None = None
    beside: Beside | None = None

    def then(self, again: "Evaluation") -> "Evaluation":
        """``again`` (a second evaluation of the same call), timed as both together."""
        return Evaluation(again.decision, again.input, (self.eval_ns or 0) + (again.eval_ns or 0), self.conversion,
                          again.rego_revision,
                          None if again.opa_eval_ns is None else (self.opa_eval_ns or 0) + again.opa_eval_ns,
                          again.beside)


@dataclass
class Authorization:
    """A decision plus the reservation that backs it while the call runs.

    Allowed: the cost is held; ``commit`` turns it into spend (``actual_units``
    replaces the estimate; past the TTL the ledger posts it once, as
    ``committed_late``), ``release`` gives it back. Denied: nothing is held
    and both are no-ops (``unknown``). Both are idempotent, and equally
    valid from any process sharing the ledger (they act on the receipt id).
    """

    decision: Decision
    receipt_id: str
    estimate_units: int
    _guard: _Issuer = field(repr=False)
    input: dict[str, Any] | None = None
    """The exact OPA input sent (None when OPA was not asked)."""
    eval_ns: int | None = None
    """Wall time of ``engine.decide``, in ns."""
    attempt: str = ""
    """This authorize call's token, stored with the reservation it created."""
    _held: bool = field(default=False, repr=False)
    conversion: Conversion | None = None
    """How a foreign estimate was converted (None for a cost in the policy currency)."""
    rego_revision: str | None = None
    timestamp: int = 0
    """The request's timestamp: a foreign actual cost is converted at it."""
    commit_conversion: Conversion | None = None
    """How the last ``commit(actual_units=MonetaryAmount(...))`` was converted."""
    rates: RateOracle | None = field(default=None, repr=False)
    """The rate oracle in force when it was authorized (a foreign actual cost is converted with it)."""
    currency: str = ""
    """The policy currency it was authorized in."""
    warnings_emitted: tuple[Any, ...] = ()
    """Soft-limit thresholds this reservation crossed first (``soft_limits.WarningEvent``; each
    also told to the guard's ``warning`` hooks)."""
    opa_eval_ns: int | None = None
    """OPA's own evaluation time, where the engine reports one (see ``Evaluation``)."""
    beside: Beside | None = None
    """Shadows judged in the same engine query as this decision (see ``Evaluation``)."""

    @property
    def allow(self) -> bool:
        return self.decision.allow

    def commit(self, actual_units: Cost | None = None) -> Settlement:
        """Count the call: ``actual_units`` (policy-currency units, or a ``MonetaryAmount``
        in any currency, converted at the request's timestamp), else the estimate."""
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        if isinstance(actual_units, MonetaryAmount):
            actual_units = self._guard._settle_units(self, actual_units)
        return self._guard.ledger.commit(self.receipt_id, actual_units)

    def release(self) -> Settlement:
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        return self._guard.ledger.release(self.receipt_id)

    def give_back(self) -> None:
        """Release the hold only if this ``authorize`` call created it, never raising.

        For a caller abandoning an allowed call (a later failure of its own): a
        retried authorize leaves the hold an earlier attempt made alone, and a
        ledger failure is counted as an orphan cleanup failure (the TTL ends the hold).
        """
        if self._held:
            self._guard._give_back(self.receipt_id, self.attempt)
