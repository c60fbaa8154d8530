"""The budget guard: counters from a ledger, judgement from OPA.

``check``/``record`` reproduce the Rust ``BudgetEnforcer`` (check decides on
the current counters without holding anything; record adds without
deciding). ``authorize`` is the safe path under concurrency: it reserves the
cost first, asks OPA with the counters as they were before the reservation,
and gives the reservation back at once when denied - so a denied request
leaves no trace and two requests can never both spend the last unit.

Fail closed: an engine error or a ledger error during a decision is a deny
with ``Decision.error`` set. ``record`` raises instead, because silently
dropping spend would under-count it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .compiler import compile_all
from .cost import CostMetadata
from .decision import Decision
from .engines import Engine, make_engine
from .errors import AmountError, ChioBudgetError, PolicyError
from .ledger import Ledger, Reservation, Settlement, counter_key, open_ledger
from .money import MonetaryAmount, check_units, saturating_sub
from .policy import BudgetPolicy, load_policies

_SCOPES = ("total", "session", "agent", "tool")


def _as_meta(meta: CostMetadata | Mapping[str, Any]) -> CostMetadata:
    return meta if isinstance(meta, CostMetadata) else CostMetadata.model_validate(meta)


@dataclass
class Authorization:
    """A decision plus the reservation that backs it while the call runs.

    Allowed: the cost is held; ``commit`` turns it into spend (``actual_units``
    replaces the estimate), ``release`` gives it back. Denied: nothing is held
    and both are no-ops. Both are idempotent.
    """

    decision: Decision
    receipt_id: str
    estimate_units: int
    _guard: "BudgetGuard" = field(repr=False)
    _held: bool = field(default=False, repr=False)
    _keys: tuple[str, ...] = field(default=(), repr=False)
    _late: bool = field(default=False, repr=False)

    @property
    def allow(self) -> bool:
        return self.decision.allow

    def commit(self, actual_units: int | None = None) -> Settlement:
        """Count the call's cost. Past the TTL the reservation is gone, but the
        call still happened: its cost is then added as plain spend
        (``committed_late``) rather than lost, once per authorization."""
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        s = self._guard.ledger.commit(self.receipt_id, actual_units)
        if s.outcome == "expired" and not self._late:
            amount = self.estimate_units if actual_units is None else check_units(actual_units, "actual_units")
            self._guard.ledger.add(self._keys, amount)
            self._late = True
            return Settlement(self.receipt_id, "committed_late", amount)
        return s

    def release(self) -> Settlement:
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        return self._guard.ledger.release(self.receipt_id)


class BudgetGuard:
    """One policy's guard. Thread-safe: engines and ledgers are."""

    def __init__(self, policy: BudgetPolicy, engine: Engine, ledger: Ledger | str | None = "memory", *,
                 reservation_ttl: float | None = None, window: str = ""):
        self.policy = policy
        self.engine = engine
        self.ledger = open_ledger(ledger)
        self.reservation_ttl = reservation_ttl
        self.window = window
        self._total_key = counter_key(policy.id, "total", window=window)

    @classmethod
    def from_files(cls, policies_dir: str | Path, policy_id: str = "default", rego_dir: str | Path | None = None,
                   engine: str | Engine = "embedded", ledger: Ledger | str | None = "memory",
                   **options: Any) -> "BudgetGuard":
        """Load YAML policies, compile them, start the engine, open the ledger.

        Engine options (``opa_url``, ``token``, ``timeout``...) are passed to
        the server engine; ``reservation_ttl`` to the guard.
        """
        policies = load_policies(policies_dir)
        if policy_id not in policies:
            raise PolicyError(f"{policies_dir}:1: policy_id: no policy {policy_id!r} (have: {', '.join(sorted(policies))})")
        ttl = options.pop("reservation_ttl", None)
        eng = engine if not isinstance(engine, str) else make_engine(engine, compile_all(policies), rego_dir, **options)
        return cls(policies[policy_id], eng, ledger, reservation_ttl=ttl)

    # -- plumbing ------------------------------------------------------------

    def counter_keys(self, meta: CostMetadata) -> dict[str, str]:
        """The ledger key of every counter this request touches, by scope."""
        keys = {"total": self._total_key}
        if meta.session_id is not None:
            keys["session"] = counter_key(self.policy.id, "session", meta.session_id, self.window)
        keys["agent"] = counter_key(self.policy.id, "agent", meta.agent_id, self.window)
        keys["tool"] = counter_key(self.policy.id, "tool", meta.tool_key, self.window)
        return keys

    def _cost(self, cost: int | MonetaryAmount) -> int:
        if isinstance(cost, MonetaryAmount):
            if cost.currency != self.policy.currency:
                raise AmountError(
                    f"cost is in {cost.currency}; policy {self.policy.id!r} is in {self.policy.currency} "
                    "(convert first with MonetaryAmount.convert)")
            return cost.units
        return check_units(cost, "cost_units")

    def build_input(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int]) -> dict[str, Any]:
        return {
            "policy_id": self.policy.id,
            "request": meta.request_input(),
            "cost": {"units": cost_units, "currency": self.policy.currency},
            "totals": {
                "total": totals["total"],
                "session": totals.get("session"),
                "agent": totals["agent"],
                "tool": totals["tool"],
            },
        }

    def decide(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int]) -> Decision:
        return self.engine.decide(self.build_input(meta, cost_units, totals))

    # -- the API -------------------------------------------------------------

    def check(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Decision:
        """Would this cost fit now? Holds nothing (the Rust ``check``)."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        keys = self.counter_keys(meta)
        try:
            values = self.ledger.totals(list(keys.values()))
        except ChioBudgetError as exc:
            return Decision.deny_error(f"ledger error: {exc}", self.policy.id)
        except Exception as exc:  # a backend's own exception type: still fail closed
            return Decision.deny_error(f"ledger error: {type(exc).__name__}: {exc}", self.policy.id)
        return self.decide(meta, cost, dict(zip(keys, values)))

    def record(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> None:
        """Count spend that happened, without deciding (the Rust ``record``)."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        self.ledger.add(list(self.counter_keys(meta).values()), cost)

    def authorize(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Authorization:
        """Reserve, decide, and release at once if denied (atomic under concurrency).

        Idempotent by ``meta.receipt_id``: authorizing a receipt that already
        holds a reservation returns the decision for that reservation again.
        """
        meta, cost = _as_meta(meta), self._cost(cost_units)
        keys = self.counter_keys(meta)
        try:
            r: Reservation = self.ledger.reserve(meta.receipt_id, list(keys.values()), cost, self.reservation_ttl)
        except Exception as exc:
            return Authorization(Decision.deny_error(f"ledger error: {exc}", self.policy.id), meta.receipt_id, cost, self)
        if r.state != "held":
            d = Decision.deny_error(f"receipt {meta.receipt_id!r} was already {r.state}", self.policy.id)
            return Authorization(d, meta.receipt_id, cost, self)
        before = dict(zip(r.keys, r.before))
        decision = self.decide(meta, r.amount, {scope: before[k] for scope, k in keys.items()})
        if not decision.allow:
            if r.created:
                self.ledger.release(meta.receipt_id)
            return Authorization(decision, meta.receipt_id, cost, self)
        return Authorization(decision, meta.receipt_id, r.amount, self, _held=True, _keys=r.keys)

    def total_spent(self) -> int:
        """Counted spend across the policy (held reservations included)."""
        return self.ledger.totals([self._total_key])[0]

    def remaining(self) -> int:
        """``max_total - total_spent``, never below 0 (the Rust ``remaining``)."""
        return saturating_sub(self.policy.max_total.units, self.total_spent())

    def close(self) -> None:
        self.engine.close()
        self.ledger.close()

