"""The budget guard as a member of the kernel's guard chain, with settlement.

``BudgetChainGuard`` makes a ``BudgetGuard`` a well-behaved chain member:

- ``evaluate(ctx)`` estimates the cost (context -> policy price -> grant's
  ``max_cost_per_invocation`` -> deny), reserves it in the ledger keyed by
  ``ctx.request_id`` and asks OPA; on allow the hold lasts until the call ends.
- ``on_invocation_complete(request_id, result)`` commits the actual cost
  (``actual_cost.actual_units``; ``None``: the estimate) or releases the hold
  when the call failed or was cancelled; settling twice changes nothing.
  ``revalidate(request_id)``: is the hold still live (reserves nothing).
- Decisions and settlements go to the decision log and the metrics; shadow
  policies are judged beside the enforced one and only logged.

No per-call state lives in this object: what settlement needs (estimate and
source, counter keys, policy, request, decision id) is the reservation's
*book*, stored with it in the ledger. Any process sharing the ledger can
settle or revalidate a call another one authorized; two settling at once
count it once (the ledger decides).

Fail closed throughout: no estimate, a malformed request, an engine or
ledger error, an unwritable decision log - each is a deny (logged like any
other), and a hold this evaluation placed is given back before denying.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from .actual_cost import CostError, actual_units, check_rates, to_units
from .cost import CostMetadata
from .decision import Decision
from .decisionlog import DecisionLog, DecisionLogError, new_decision_id
from .errors import LedgerError
from .guard import Authorization, BudgetGuard
from .kernel import GuardContext, GuardDecision, GuardEvidence, InvocationStatus, Verdict
from .ledger import Reservation, Settlement
from .metrics import BudgetMetrics
from .shadow import ShadowPolicy, run_shadows

_CONTEXT_FIELD = {"receipt_id": "request_id", "tool_server": "server_id"}  # CostMetadata -> GuardContext names


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


@dataclass
class _Call:
    """What one evaluation has found so far, handed from step to step."""

    ctx: GuardContext
    decision_id: str = field(default_factory=new_decision_id)
    meta: CostMetadata | None = None
    est: int | None = None
    source: str = "none"
    decision: Decision | None = None
    auth: Authorization | None = None
    request: dict[str, Any] = field(init=False)  # ``input.request`` of the Rego contract

    def __post_init__(self) -> None:
        c = self.ctx
        self.request = {"receipt_id": c.request_id,
                        "timestamp": c.timestamp if c.timestamp is not None else int(time.time()),
                        "agent_id": c.agent_id, "session_id": c.session_id, "tool_server": c.server_id,
                        "tool_name": c.tool_name, "tool_key": c.tool_key}


def _one_line(exc: ValidationError) -> str:
    """A ``CostMetadata`` error in the context's field names, on one line."""
    parts = []
    for e in exc.errors():
        name = ".".join(_CONTEXT_FIELD.get(str(x), str(x)) for x in e["loc"]) or "request"
        parts.append(f"{name}: {e['msg'].removeprefix('Value error, ')}")
    return "bad request: " + "; ".join(parts).replace("\n", " ")


class BudgetChainGuard:
    """A ``BudgetGuard`` behind the kernel's ``Guard`` protocol, with settlement.

    ``rates`` maps a foreign currency to its rate into the policy currency
    (``MonetaryAmount.convert`` semantics: policy-currency major units per
    one major unit of the foreign one, exact: ``"151.37"`` or a Fraction).
    ``allow_unpriced=True`` lets a call with no estimate through at 0
    instead of denying it. Shadows' limits are tracked by the guard
    (``BudgetGuard.track``), so each shadow sees the counters it reads.
    The guard's ``event_hooks["cleanup_failed"]`` feed the metric of holds
    that could not be given back.
    """

    def __init__(self, guard: BudgetGuard, *, name: str = "budget", decision_log: DecisionLog | None = None,
                 metrics: BudgetMetrics | None = None, shadows: Sequence[Any] = (),
                 rates: Mapping[str, Fraction | str | int] | None = None, allow_unpriced: bool = False):
        self.name = name
        self.guard = guard
        self.decision_log = decision_log
        self.metrics = metrics
        self.shadows = [s if isinstance(s, ShadowPolicy) else ShadowPolicy(s) for s in shadows]
        self.rates = check_rates(rates or {})
        self.allow_unpriced = allow_unpriced
        self._engine_name = getattr(guard.engine, "name", "engine")
        guard.track(*(s.policy for s in self.shadows))
        guard.event_hooks.setdefault("cleanup_failed", []).append(self._cleanup_failed)
        if metrics is not None:
            metrics.watch_open(guard.policy.id, guard.ledger.open_reservations)

    @property
    def policy(self):
        return self.guard.policy

    def open_holds(self) -> int:
        """Reservations held in the guard's ledger (every process and policy sharing it)."""
        return self.guard.ledger.open_reservations()

    def estimate(self, ctx: GuardContext) -> tuple[int, str]:
        """``(units, source)`` in the policy currency; ``CostError`` when there is none."""
        cur = self.policy.currency
        if ctx.cost_estimate is not None:
            e = ctx.cost_estimate
            return (e if isinstance(e, int) else to_units(e, cur, self.rates)), "context"
        price = self.policy.prices.get(ctx.tool_key)
        if price is not None:
            return to_units(price, cur, self.rates), "policy price"
        if ctx.grant is not None and ctx.grant.max_cost_per_invocation is not None:
            return to_units(ctx.grant.max_cost_per_invocation, cur, self.rates), "grant max_cost_per_invocation"
        if self.allow_unpriced:
            return 0, "unpriced (allowed at 0)"
        raise CostError(f"no cost estimate for {ctx.tool_key}: none in the context, no policy price, "
                        "no grant max_cost_per_invocation")

    # -- Guard --------------------------------------------------------------

    def evaluate(self, ctx: GuardContext | Mapping[str, Any]) -> GuardDecision:
        """Estimate, reserve, decide, log. Never leaves its hold behind when it denies or raises."""
        if not isinstance(ctx, GuardContext):
            ctx = GuardContext.model_validate(ctx)
        call = _Call(ctx)
        try:
            return self._evaluate(call)
        except BaseException:
            self._give_back(call)  # something after the hold failed: the chain will deny
            raise

    def _evaluate(self, call: _Call) -> GuardDecision:
        """The five steps: estimate, authorize, hold, log, verdict."""
        self._estimate(call)
        self._authorize(call)
        self._hold(call)
        return self._log_decision(call) or self._verdict(call)

    def _estimate(self, call: _Call) -> None:
        """The request as the ledger keys it, and its cost; a bad one is a deny decision."""
        try:
            call.meta = CostMetadata.model_validate(call.request)
            call.est, call.source = self.estimate(call.ctx)
        except ValidationError as exc:
            call.decision = self._deny(_one_line(exc))
        except CostError as exc:
            call.decision = self._deny(str(exc))

    def _authorize(self, call: _Call) -> None:
        """Reserve (with the book) and ask OPA; any failure is a deny decision (still logged)."""
        if call.decision is not None:
            return
        assert call.meta is not None and call.est is not None
        try:
            call.auth = self.guard.authorize(call.meta, call.est, book=self._book(call))
            call.decision = call.auth.decision
        except Exception as exc:  # noqa: BLE001 - fail closed, and log it like any deny
            call.decision = self._deny(f"guard error: {type(exc).__name__}: {exc}")

    def _book(self, call: _Call) -> dict[str, Any]:
        """What settlement needs, stored with the reservation (``ledger.get(request_id).book``)."""
        assert call.meta is not None
        return {"policy_id": self.policy.id, "decision_id": call.decision_id, "request": call.request,
                "estimate": {"units": call.est, "source": call.source},
                "keys": self.guard.counter_keys(call.meta)}

    def _hold(self, call: _Call) -> None:
        """On allow the reservation stays in the ledger until settlement; a retry keeps the first."""
        auth = call.auth
        if auth is not None and auth.allow and auth.estimate_units != call.est:
            # The request already held a reservation (a retry): that one stands, at its amount.
            call.est, call.source = auth.estimate_units, f"{call.source}; request already held, its reservation kept"

    def _log_decision(self, call: _Call) -> GuardDecision | None:
        """Write the decision event; a failed write gives the hold back and is the deny returned."""
        if self.decision_log is None:
            return None
        decision = call.decision
        assert decision is not None
        event = self.decision_log.decision_event(
            decision_id=call.decision_id, input=self._input(call), result=decision.to_json_dict(),
            revision=decision.policy_revision, eval_ns=call.auth.eval_ns if call.auth else None,
            chio={"guard": self.name, "verdict": "allow" if decision.allow else "deny",
                  "request_id": call.ctx.request_id, "engine": self._engine_name, "estimate_units": call.est,
                  "currency": self.policy.currency, "estimate_source": call.source})
        try:
            self.decision_log.write(event)
        except DecisionLogError as exc:
            if self.metrics:
                self.metrics.log_errors.inc()
            self._give_back(call)
            msg = f"{self.name}: decision log error (fail-closed): {exc}"
            return GuardDecision.deny(self.name, msg, dict(self._details(call), error=msg))
        return None

    def _input(self, call: _Call) -> dict[str, Any]:
        """The OPA input the decision was made on; when OPA was not asked, what we know (no totals)."""
        if call.auth is not None and call.auth.input is not None:
            return call.auth.input
        return {"policy_id": self.policy.id, "request": call.request,
                "cost": {"units": call.est, "currency": self.policy.currency}, "totals": None}

    def _verdict(self, call: _Call) -> GuardDecision:
        decision = call.decision
        assert decision is not None
        eval_ns = call.auth.eval_ns if call.auth else None
        if self.metrics:
            self.metrics.observe_decision(self.policy.id, decision, None if eval_ns is None else eval_ns / 1e9,
                                          self._engine_name)
        opa_input = self._input(call)
        if self.shadows and opa_input.get("totals") is not None:
            run_shadows(self.shadows, opa_input, decision, decision_id=call.decision_id,
                        enforced_policy_id=self.policy.id, chio={"guard": self.name, "request_id": call.ctx.request_id},
                        decision_log=self.decision_log, metrics=self.metrics)
        verdict: Verdict = "allow" if decision.allow else "deny"
        evidence = [GuardEvidence(guard_name=self.name, verdict=verdict, details=self._details(call))]
        if decision.allow:
            return GuardDecision(verdict="allow", evidence=evidence)
        return GuardDecision(verdict="deny", reason=f"{self.name}: {decision.reason()}", evidence=evidence)

    def _details(self, call: _Call) -> dict[str, Any]:
        assert call.decision is not None
        return {"decision_id": call.decision_id, "request_id": call.ctx.request_id,
                "decision": call.decision.to_json_dict(),
                "estimate": {"units": call.est, "currency": self.policy.currency, "source": call.source}}

    def _deny(self, error: str) -> Decision:
        return Decision.deny_error(error, self.policy.id)

    @staticmethod
    def _give_back(call: _Call) -> None:
        """Release the hold if this evaluation created it (a retry's earlier hold stays); never raises."""
        if call.auth is not None and call.auth.allow:
            call.auth.give_back()

    def _cleanup_failed(self, receipt_id: str, exc: Exception) -> None:
        if self.metrics:
            self.metrics.cleanup_failures.labels(self.policy.id).inc()

    # -- settlement ---------------------------------------------------------

    def _find(self, request_id: str) -> tuple[Reservation | None, dict[str, Any] | None]:
        """The call's reservation and book, if this policy's chain guard made it (``LedgerError`` passes)."""
        r = self.guard.ledger.get(request_id)
        book = r.book if r is not None else None
        if not book or book.get("policy_id") != self.policy.id or not isinstance(book.get("estimate"), dict):
            return r, None
        return r, dict(book)

    def revalidate(self, request_id: str) -> HoldStatus:
        """Is the call's hold still live? Reads the ledger only; never reserves, never raises."""
        try:
            r, book = self._find(request_id)
        except LedgerError as exc:
            return HoldStatus(request_id, False, "error", error=f"ledger error: {exc}")
        if r is None or book is None:
            return HoldStatus(request_id, False, "unknown")
        return HoldStatus(request_id, r.state == "held", r.state, r.amount, r.expires_at, book.get("decision_id"))

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> SettlementResult:
        """Settle the call's reservation, from any process sharing the ledger; idempotent.

        ``status="failed"``/``"cancelled"`` releases the hold. Otherwise ``result``
        gives the actual cost (``actual_units``; ``None``: the estimate). An
        unreadable result or a currency without a rate commits the estimate (the
        call ran) and says so in ``error``. Actual above the estimate is committed
        and flagged ``over_estimate``. Past the TTL, a completed call's spend is
        posted anyway, once (``committed_late``).
        """
        cur = self.policy.currency
        try:
            r, book = self._find(request_id)
        except LedgerError as exc:
            return SettlementResult(request_id, "error", cur, source="ledger", error=f"ledger error: {exc}")
        if r is None or book is None:
            return SettlementResult(request_id, "unknown", cur, source="no hold for this request")
        if r.state in ("committed", "released"):
            return self._already(r, book)
        actual, source, error = self._read_actual(result, status)
        try:
            s = self._apply(request_id, status, actual)
        except LedgerError as exc:
            res = SettlementResult(request_id, "error", cur, r.amount, actual, None, False, "ledger",
                                   f"ledger error: {exc}", book.get("decision_id"))
            self._emit_settlement(res, book)
            return res
        if s.outcome.startswith("already_"):  # another process settled it between our read and now
            return self._already(self.guard.ledger.get(request_id) or r, book)
        committed = s.amount if s.outcome in ("committed", "committed_late") else 0
        over = actual is not None and actual > r.amount
        res = SettlementResult(request_id, s.outcome, cur, r.amount, actual, committed, over, source, error,
                               book.get("decision_id"))
        if self.metrics:
            self.metrics.observe_settlement(self.policy.id, s.outcome, cur, committed, book.get("request"), over)
        self._emit_settlement(res, book)
        return res

    def _already(self, r: Reservation, book: Mapping[str, Any]) -> SettlementResult:
        """The no-op answer for a settled call, with the numbers the ledger kept."""
        committed = r.settled_amount if r.state == "committed" else 0
        return SettlementResult(r.receipt_id, "already_settled", self.policy.currency, r.amount, None, committed,
                                committed is not None and committed > r.amount, f"no-op (was {r.state})", None,
                                book.get("decision_id"))

    def _read_actual(self, result: Any, status: InvocationStatus) -> tuple[int | None, str, str | None]:
        """``(actual units or None for the estimate, source, error)``; never raises."""
        if status in ("failed", "cancelled"):
            return None, f"call {status}", None
        try:
            actual, source = actual_units(result, self.policy.currency, self.rates)
        except CostError as exc:
            return None, "estimate (actual unreadable)", f"{exc}; estimate committed"
        return actual, source, None

    def _apply(self, request_id: str, status: InvocationStatus, actual: int | None) -> Settlement:
        """Release or commit in the ledger (past the TTL a commit posts once: ``committed_late``)."""
        if status in ("failed", "cancelled"):
            return self.guard.ledger.release(request_id)
        return self.guard.ledger.commit(request_id, actual)

    def _emit_settlement(self, r: SettlementResult, book: Mapping[str, Any]) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.write(self.decision_log.settlement_event(
                decision_id=r.decision_id, request_id=r.request_id, policy_id=self.policy.id, outcome=r.outcome,
                currency=r.currency, estimate_units=r.estimate_units, actual_units=r.actual_units,
                committed_units=r.committed_units, over_estimate=r.over_estimate, source=r.source, error=r.error,
                extra={"guard": self.name, "request": book.get("request")}))
        except DecisionLogError:
            # The money already moved; failing the settlement now would only lose
            # the result. Counted so an operator sees the gap.
            if self.metrics:
                self.metrics.log_errors.inc()

    def close(self) -> None:
        for s in self.shadows:
            s.close()
        self.guard.close()
