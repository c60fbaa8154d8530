"""The budget guard: counters from a ledger, judgement from OPA.

``check``/``record`` reproduce the Rust ``BudgetEnforcer`` (check decides on
the current counters without holding anything; record adds spend without
deciding). ``authorize`` is the safe path under concurrency: it reserves the
cost first, asks OPA with the counters as they were before the reservation,
and gives the reservation back at once when denied - so a denied request
leaves no trace and two requests can never both spend the last unit.

Fail closed: an engine error or a ``LedgerError`` during a decision is a
deny with ``Decision.error`` set, and so is every failure on the way out of
a deny (a release that fails leaves a hold its TTL gives back; it is counted
in ``orphan_cleanup_failures``). ``record`` raises instead, because silently
dropping spend would under-count it.

Only counters some limit reads are kept (``counter_keys``): a per-agent
counter under a policy without an agent limit would grow with every new
agent id and never be read.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .compiler import compile_all
from .cost import CostMetadata
from .decision import Decision
from .engines import Engine, make_engine
from .errors import AmountError, LedgerError, PolicyError
from .ledger import Ledger, Reservation, Settlement, counter_key, open_ledger
from .ledger.base import check_ttl, key_order
from .money import MonetaryAmount, U64_MAX, check_units
from .policy import BudgetPolicy, load_policies

CleanupHook = Callable[[str, Exception], None]


def _as_meta(meta: CostMetadata | Mapping[str, Any]) -> CostMetadata:
    return meta if isinstance(meta, CostMetadata) else CostMetadata.model_validate(meta)


@dataclass(frozen=True)
class Evaluation:
    """A decision with what produced it: the exact OPA ``input`` and the wall time of
    ``engine.decide`` in ns (``input``/``eval_ns`` are None when OPA was not asked)."""

    decision: Decision
    input: dict[str, Any] | None = None
    eval_ns: int | None = None


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
    _guard: "BudgetGuard" = field(repr=False)
    input: dict[str, Any] | None = None
    """The exact OPA input sent (None when OPA was not asked)."""
    eval_ns: int | None = None
    """Wall time of ``engine.decide``, in ns."""
    attempt: str = ""
    """This authorize call's token, stored with the reservation it created."""
    _held: bool = field(default=False, repr=False)

    @property
    def allow(self) -> bool:
        return self.decision.allow

    def commit(self, actual_units: int | None = None) -> Settlement:
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        return self._guard.ledger.commit(self.receipt_id, actual_units)

    def release(self) -> Settlement:
        if not self._held:
            return Settlement(self.receipt_id, "unknown")
        return self._guard.ledger.release(self.receipt_id)


class BudgetGuard:
    """One policy's guard. Thread-safe: engines and ledgers are.

    ``event_hooks["cleanup_failed"]``: callables ``(receipt_id, exc)`` told
    when a hold this guard tried to give back could not be (the chain member
    turns that into a metric); ``orphan_cleanup_failures`` counts them.
    """

    def __init__(self, policy: BudgetPolicy, engine: Engine, ledger: Ledger | str | None = "memory", *,
                 reservation_ttl: float | None = None):
        self.policy = policy
        self.engine = engine
        self.ledger = open_ledger(ledger)
        self.reservation_ttl = None if reservation_ttl is None else check_ttl(reservation_ttl, "reservation_ttl")
        self.event_hooks: dict[str, list[CleanupHook]] = {"cleanup_failed": []}
        self.orphan_cleanup_failures = 0
        self._failures_lock = threading.Lock()
        self._total_key = counter_key(policy.id, "total")

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

    def __enter__(self) -> "BudgetGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    def counter_keys(self, meta: CostMetadata) -> dict[str, str]:
        """The ledger key of every counter some limit reads, by scope.

        ``total`` always; ``session`` when the policy has a session limit and
        the request a session; ``agent`` when it has an agent limit; ``tool``
        when the tool is listed in ``max_per_tool``.
        """
        p, keys = self.policy, {"total": self._total_key}
        if p.max_per_session is not None and meta.session_id is not None:
            keys["session"] = counter_key(p.id, "session", meta.session_id)
        if p.max_per_agent is not None:
            keys["agent"] = counter_key(p.id, "agent", meta.agent_id)
        if meta.tool_key in p.max_per_tool:
            keys["tool"] = counter_key(p.id, "tool", meta.tool_key)
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
        """The OPA input; a scope without a counter (no limit reads it) is ``null``."""
        return {
            "policy_id": self.policy.id,
            "request": meta.request_input(),
            "cost": {"units": cost_units, "currency": self.policy.currency},
            "totals": {scope: totals.get(scope) for scope in ("total", "session", "agent", "tool")},
        }

    def decide(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int]) -> Evaluation:
        """Ask the engine, timing it; returns the decision with the input it was given."""
        inp = self.build_input(meta, cost_units, totals)
        t0 = time.perf_counter_ns()
        decision = self.engine.decide(inp)
        return Evaluation(decision, inp, time.perf_counter_ns() - t0)

    def _deny(self, error: str) -> Decision:
        return Decision.deny_error(error, self.policy.id)

    def _give_back(self, receipt_id: str, attempt: str) -> None:
        """Release what ``attempt`` created; a failure is counted and reported, never raised."""
        try:
            self.ledger.release(receipt_id, attempt=attempt)
        except LedgerError as exc:
            with self._failures_lock:
                self.orphan_cleanup_failures += 1
            for hook in list(self.event_hooks.get("cleanup_failed", ())):
                try:
                    hook(receipt_id, exc)
                except Exception:  # noqa: BLE001 - an observer must not turn a deny into a crash
                    pass

    # -- the API -------------------------------------------------------------

    def evaluate(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Evaluation:
        """Would this cost fit now? Holds nothing; returns the decision, the input and the eval time."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        keys = self.counter_keys(meta)
        try:
            values = self.ledger.totals(list(keys.values()))
        except LedgerError as exc:
            return Evaluation(self._deny(f"ledger error: {exc}"))
        return self.decide(meta, cost, dict(zip(keys, values)))

    def check(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Decision:
        """The Rust ``check``: ``evaluate(...).decision``."""
        return self.evaluate(meta, cost_units).decision

    def record(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> None:
        """Count spend that happened, without deciding (the Rust ``record``)."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        self.ledger.add(list(self.counter_keys(meta).values()), cost)

    def authorize(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount, *,
                  book: Mapping[str, Any] | None = None) -> Authorization:
        """Reserve, decide, and release at once if denied (atomic under concurrency).

        Idempotent by ``meta.receipt_id``: authorizing a receipt that already
        holds a reservation for the same counters decides on that reservation
        again (at its amount). The receipt held for other counters, or
        already settled, is a deny. ``book`` (a JSON object) is stored with
        the reservation, for whoever settles it (``ledger.get``).
        """
        meta, cost = _as_meta(meta), self._cost(cost_units)
        keys = self.counter_keys(meta)
        attempt = uuid.uuid4().hex
        rid = meta.receipt_id
        try:
            r: Reservation = self.ledger.reserve(rid, list(keys.values()), cost, self.reservation_ttl,
                                                 book=book, attempt=attempt)
        except LedgerError as exc:  # it may have run (a lost reply): give back only what this attempt made
            self._give_back(rid, attempt)
            return Authorization(self._deny(f"ledger error: {exc}"), rid, cost, self, attempt=attempt)
        if r.state != "held":
            return Authorization(self._deny(f"receipt {rid!r} was already {r.state}"), rid, cost, self,
                                 attempt=attempt)
        if r.keys != key_order(keys.values()):
            return Authorization(self._deny(f"receipt {rid!r} is already held for a different request"), rid, cost,
                                 self, attempt=attempt)
        before = dict(zip(r.keys, r.before))
        e = self.decide(meta, r.amount, {scope: before[k] for scope, k in keys.items()})
        if not e.decision.allow:
            if r.created:
                self._give_back(rid, attempt)
            return Authorization(e.decision, rid, cost, self, e.input, e.eval_ns, attempt)
        return Authorization(e.decision, rid, r.amount, self, e.input, e.eval_ns, attempt, _held=True)

    def total_spent(self) -> int:
        """Posted spend across the policy (the Rust ``total_spent``); held reservations are not in it."""
        return self.ledger.balances([self._total_key])[0].spent

    def total_held(self) -> int:
        """Units held by live reservations across the policy (may exceed 2^64-1 in sum)."""
        return self.ledger.balances([self._total_key])[0].held

    def remaining(self) -> int:
        """What can still be authorized: ``max_total - (spent + held)``, never below 0."""
        b = self.ledger.balances([self._total_key])[0]
        return max(self.policy.max_total.units - min(b.spent + b.held, U64_MAX), 0)

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            self.ledger.close()
