"""The budget guard as a member of the kernel's guard chain, with settlement.

``BudgetChainGuard`` makes a ``BudgetGuard`` a well-behaved chain member:

- ``evaluate(ctx)`` estimates the cost (context -> policy price -> grant's
  ``max_cost_per_invocation`` -> deny), reserves it in the ledger keyed by
  ``ctx.request_id`` and asks OPA; on allow the reservation is held until
  the call ends.
- ``on_invocation_complete(request_id, result)`` settles: commits the actual
  cost (``actual_cost.actual_units``: the Rust ``CostMetadata`` JSON, a
  ``MonetaryAmount``, plain units, or - with ``None`` - the estimate), or
  releases the reservation when the call failed or was cancelled. Settling
  twice changes nothing.
- Every decision and settlement goes to the decision log and the metrics;
  shadow policies are judged beside the enforced one and only logged.

Fail closed throughout: no estimate, an engine or ledger error, an
unwritable decision log - each is a deny, and a held reservation is given
back before denying.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .actual_cost import CostError, actual_units
from .cost import CostMetadata
from .decision import Decision
from .decisionlog import DecisionLog, DecisionLogError, new_decision_id
from .guard import Authorization, BudgetGuard, Cost
from .kernel import GuardContext, GuardDecision, GuardEvidence, InvocationStatus, Verdict
from .metrics import BudgetMetrics
from .money import MonetaryAmount
from .shadow import ShadowPolicy, run_shadows


@dataclass(frozen=True)
class SettlementResult:
    """How one call's reservation ended.

    ``outcome``: ``committed`` | ``released`` | ``committed_late``
    (the hold had expired; the guard recorded the spend anyway) |
    ``already_settled`` (no-op) | ``unknown`` (no hold for this id: denied,
    never seen, or forgotten) | ``error`` (the ledger failed; the hold is
    kept so settlement can be retried).
    """

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


@dataclass
class _Held:
    auth: Authorization
    meta: CostMetadata
    estimate: int
    decision_id: str
    request: dict[str, Any] = field(default_factory=dict)
    held_at: float = field(default_factory=time.monotonic)


@dataclass
class _Call:
    """What one evaluation has found so far, handed from step to step."""

    ctx: GuardContext
    meta: CostMetadata
    decision_id: str = field(default_factory=new_decision_id)
    cost: Cost | None = None  # the estimate as found (in any currency)
    est: int | None = None  # the estimate in policy-currency units (converted when foreign)
    source: str = "none"
    decision: Decision | None = None
    auth: Authorization | None = None
    opa_input: dict[str, Any] | None = None
    eval_ns: int | None = None
    placed: _Held | None = None  # the hold this evaluation placed: ours to give back on a deny
    request: dict[str, Any] = field(init=False)  # ``input.request`` of the Rego contract

    def __post_init__(self) -> None:
        self.request = self.meta.request_input()


class BudgetChainGuard:
    """A ``BudgetGuard`` behind the kernel's ``Guard`` protocol, with settlement.

    Costs in another currency (an estimate, a grant's cap, the actual cost)
    are converted by the guard with its rate oracle (``BudgetGuard(rates=...)``),
    the estimate inside the decision, where a missing or stale rate is a
    deny. ``allow_unpriced=True`` lets a call with no estimate through at 0
    instead of denying it. Decisions are logged with the OPA input and the
    evaluation time the guard's ``Authorization`` carries; the guard's policy
    version (and its reloads) shows in the metrics' revision gauge.

    Holds whose call never reports back are forgotten after
    ``forget_holds_after`` seconds (checked every ``forget_check_every``
    evaluations), so a long-running kernel does not accumulate them; the
    ledger's TTL has released their reservations long before.
    """

    forget_check_every = 1024

    def __init__(self, guard: BudgetGuard, *, name: str = "budget", decision_log: DecisionLog | None = None,
                 metrics: BudgetMetrics | None = None, shadows: Sequence[Any] = (), allow_unpriced: bool = False,
                 remember_settled: int = 100_000, forget_holds_after: float = 86_400.0):
        self.name = name
        self.guard = guard
        self.decision_log = decision_log
        self.metrics = metrics
        self.shadows = [s if isinstance(s, ShadowPolicy) else ShadowPolicy(s) for s in shadows]
        self.allow_unpriced = allow_unpriced
        self.forget_holds_after = forget_holds_after
        self._evaluations = 0
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._settled: OrderedDict[str, SettlementResult] = OrderedDict()
        self._remember = remember_settled
        if metrics is not None:
            self._policy_in_force(guard)
            guard.event_hooks["reloaded"].append(self._policy_in_force)
            guard.event_hooks["reload_failed"].append(
                lambda g, exc: metrics.observe_reload(g.policy.id, False))

    def _policy_in_force(self, guard: BudgetGuard) -> None:
        """Point the revision gauge at the guard's version (at start and after each reload)."""
        assert self.metrics is not None
        loaded = guard._loaded
        self.metrics.set_policy(loaded.policy.id, loaded.policy_revision, loaded.rego_revision, loaded.loaded_at)
        if guard.reloads:
            self.metrics.observe_reload(loaded.policy.id, True)

    @property
    def policy(self):
        return self.guard.policy

    def open_holds(self) -> int:
        with self._lock:
            return len(self._held)

    def estimate(self, ctx: GuardContext) -> tuple[Cost, str]:
        """``(cost, source)``: policy-currency units or an amount in any currency (the guard
        converts it while deciding); ``CostError`` when there is none."""
        def own(cost: Cost) -> Cost:
            same = isinstance(cost, MonetaryAmount) and cost.currency == self.policy.currency
            return cost.units if same else cost

        if ctx.cost_estimate is not None:
            return own(ctx.cost_estimate), "context"
        price = self.policy.prices.get(ctx.tool_key)
        if price is not None:
            return own(price), "policy price"
        if ctx.grant is not None and ctx.grant.max_cost_per_invocation is not None:
            return own(ctx.grant.max_cost_per_invocation), "grant max_cost_per_invocation"
        if self.allow_unpriced:
            return 0, "unpriced (allowed at 0)"
        raise CostError(f"no cost estimate for {ctx.tool_key}: none in the context, no policy price, "
                        "no grant max_cost_per_invocation")

    # -- Guard --------------------------------------------------------------

    def evaluate(self, ctx: GuardContext | Mapping[str, Any]) -> GuardDecision:
        """Estimate, reserve, decide, log. Never leaves a hold behind when it denies or raises."""
        if not isinstance(ctx, GuardContext):
            ctx = GuardContext.model_validate(ctx)
        meta = CostMetadata(receipt_id=ctx.request_id,
                            timestamp=ctx.timestamp if ctx.timestamp is not None else int(time.time()),
                            session_id=ctx.session_id, agent_id=ctx.agent_id,
                            tool_server=ctx.server_id, tool_name=ctx.tool_name)
        call = _Call(ctx, meta)
        try:
            return self._evaluate(call)
        except BaseException:
            self._give_back(call)  # something after the hold failed: the chain will deny
            raise
        finally:
            self._maybe_forget()

    def _evaluate(self, call: _Call) -> GuardDecision:
        """The five steps: estimate, authorize, hold, log, verdict."""
        self._estimate(call)
        if call.decision is None:
            self._authorize(call)
            self._hold(call)
        failed = self._log_decision(call)
        if failed is not None:
            return failed
        return self._verdict(call)

    def _estimate(self, call: _Call) -> None:
        try:
            call.cost, call.source = self.estimate(call.ctx)
        except CostError as exc:
            call.decision = Decision.deny_error(str(exc), self.policy.id)
            return
        call.est = call.cost if isinstance(call.cost, int) else None  # a foreign one: known once converted

    def _authorize(self, call: _Call) -> None:
        """Reserve and ask OPA; any failure is a deny decision (still logged), not an exception."""
        assert call.cost is not None
        try:
            call.auth = self.guard.authorize(call.meta, call.cost)
        except Exception as exc:
            call.decision = Decision.deny_error(f"guard error: {type(exc).__name__}: {exc}", self.policy.id)
            return
        call.decision, call.opa_input, call.eval_ns = call.auth.decision, call.auth.input, call.auth.eval_ns
        if call.auth.conversion is not None:  # a foreign estimate: what it was converted to
            call.est = call.auth.conversion.input_units

    def _hold(self, call: _Call) -> None:
        """On allow, keep the reservation until settlement; a retry keeps the first one."""
        auth = call.auth
        if auth is None or call.decision is None or not call.decision.allow:
            return
        if auth.estimate_units != call.est:
            # The request already held a reservation (a retry): that one stands, at its amount.
            call.est, call.source = auth.estimate_units, f"{call.source}; request already held, its reservation kept"
        h = _Held(auth, call.meta, auth.estimate_units, call.decision_id, call.request)
        with self._lock:
            prior = self._held.setdefault(call.ctx.request_id, h)
            n_open = len(self._held)
        if prior is h:
            call.placed = h
        if self.metrics:
            self.metrics.set_open(self.policy.id, n_open)

    def _log_decision(self, call: _Call) -> GuardDecision | None:
        """Write the decision event; a failed write gives the hold back and is the deny returned."""
        policy = self.policy
        if call.opa_input is None:  # OPA was not asked (no estimate, ledger failure): log what we know
            call.opa_input = {"policy_id": policy.id, "request": call.request,
                              "cost": {"units": call.est, "currency": policy.currency}, "totals": None}
        if self.decision_log is None:
            return None
        decision = call.decision
        assert decision is not None
        event = self.decision_log.decision_event(
            decision_id=call.decision_id, input=call.opa_input, result=decision.to_json_dict(),
            revision=decision.policy_revision, eval_ns=call.eval_ns,
            chio={"guard": self.name, "verdict": "allow" if decision.allow else "deny",
                  "request_id": call.ctx.request_id, "engine": self.guard.engine.name, "estimate_units": call.est,
                  "currency": policy.currency, "estimate_source": call.source,
                  "rego_revision": call.auth.rego_revision if call.auth else self.guard.rego_revision})
        try:
            self.decision_log.write(event)
        except DecisionLogError as exc:
            if self.metrics:
                self.metrics.log_errors.inc()
            if call.placed is not None:
                self._drop_hold(call.ctx.request_id)
            msg = f"{self.name}: decision log error (fail-closed): {exc}"
            return GuardDecision.deny(self.name, msg, dict(self._details(call), error=msg))
        return None

    def _details(self, call: _Call) -> dict[str, Any]:
        assert call.decision is not None
        return {"decision_id": call.decision_id, "request_id": call.ctx.request_id,
                "decision": call.decision.to_json_dict(),
                "estimate": {"units": call.est, "currency": self.policy.currency, "source": call.source}}

    def _verdict(self, call: _Call) -> GuardDecision:
        decision = call.decision
        assert decision is not None and call.opa_input is not None
        if self.metrics:
            self.metrics.observe_decision(self.policy.id, decision,
                                          None if call.eval_ns is None else call.eval_ns / 1e9, self.guard.engine.name)
        if self.shadows and call.opa_input.get("totals") is not None:
            run_shadows(self.shadows, call.opa_input, decision, decision_id=call.decision_id,
                        enforced_policy_id=self.policy.id, chio={"guard": self.name, "request_id": call.ctx.request_id},
                        decision_log=self.decision_log, metrics=self.metrics)
        verdict: Verdict = "allow" if decision.allow else "deny"
        evidence = [GuardEvidence(guard_name=self.name, verdict=verdict, details=self._details(call))]
        if decision.allow:
            return GuardDecision(verdict="allow", evidence=evidence)
        return GuardDecision(verdict="deny", reason=f"{self.name}: {decision.reason()}", evidence=evidence)

    def _give_back(self, call: _Call) -> None:
        h = call.placed
        if h is None:
            return
        with self._lock:
            if self._held.get(call.ctx.request_id) is h:
                del self._held[call.ctx.request_id]
        try:
            h.auth.release()
        except Exception:
            pass  # the ledger TTL releases it

    def _maybe_forget(self) -> None:
        with self._lock:
            self._evaluations += 1
            if self._evaluations % self.forget_check_every:
                return
            cutoff = time.monotonic() - self.forget_holds_after
            stale = [rid for rid, h in self._held.items() if h.held_at < cutoff]
            for rid in stale:
                del self._held[rid]

    def _drop_hold(self, request_id: str) -> None:
        with self._lock:
            h = self._held.pop(request_id, None)
            n_open = len(self._held)
        if h is not None:
            h.auth.release()
        if self.metrics:
            self.metrics.set_open(self.policy.id, n_open)

    # -- settlement ---------------------------------------------------------

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> SettlementResult:
        """Settle the call's reservation; idempotent (a second call is a no-op).

        ``status="failed"`` or ``"cancelled"`` releases the hold. Otherwise
        ``result`` gives the actual cost (see ``actual_units``); ``None``
        commits the estimate. An unreadable result or a currency without a
        rate also commits the estimate (the call ran; counting nothing would
        under-count) and says so in ``error``. Actual above the estimate is
        committed and flagged ``over_estimate`` (the kernel marks such
        settlements failed). If the hold had already expired, a completed
        call's spend is recorded anyway (``committed_late``).
        """
        cur = self.policy.currency
        with self._lock:
            h = self._held.pop(request_id, None)
            prev = self._settled.get(request_id) if h is None else None
        if h is None:
            if prev is not None:
                return SettlementResult(request_id, "already_settled", cur, prev.estimate_units, prev.actual_units,
                                        prev.committed_units, prev.over_estimate, f"no-op (was {prev.outcome})",
                                        None, prev.decision_id)
            return SettlementResult(request_id, "unknown", cur, source="no hold for this request")
        conversions: list[dict[str, Any]] = []
        actual, source, error = self._read_actual(result, status, h.auth, conversions)
        over = actual is not None and actual > h.estimate
        try:
            outcome, committed = self._apply(h, status, actual)
        except Exception as exc:
            with self._lock:
                self._held.setdefault(request_id, h)  # keep it: settlement can be retried
            r = SettlementResult(request_id, "error", cur, h.estimate, actual, None, False, "ledger",
                                 f"ledger error: {type(exc).__name__}: {exc}", h.decision_id)
            self._emit_settlement(r, h)
            return r
        r = SettlementResult(request_id, outcome, cur, h.estimate, actual, committed, over, source, error,
                             h.decision_id)
        self._remember_settled(r)
        if self.metrics:
            self.metrics.observe_settlement(self.policy.id, outcome, cur, committed or 0, h.request, over)
        self._emit_settlement(r, h, conversions)
        return r

    def _read_actual(self, result: Any, status: InvocationStatus, auth: Authorization,
                     facts: list[dict[str, Any]]) -> tuple[int | None, str, str | None]:
        """``(actual units or None for the estimate, source, error)``; never raises.

        Foreign amounts are converted with the oracle and policy currency the
        call was authorized under, at the request's timestamp."""
        if status in ("failed", "cancelled"):
            return None, f"call {status}", None
        try:
            actual, source = actual_units(result, auth.currency, auth.rates, auth.timestamp, facts)
        except CostError as exc:
            return None, "estimate (actual unreadable)", f"{exc}; estimate committed"
        return actual, source, None

    @staticmethod
    def _apply(h: _Held, status: InvocationStatus, actual: int | None) -> tuple[str, int | None]:
        """Release or commit in the ledger: ``(outcome, committed units)``."""
        if status in ("failed", "cancelled"):
            s = h.auth.release()
            return ("released" if s.changed else s.outcome), 0
        s = h.auth.commit(actual)  # past the TTL the guard adds it as plain spend: committed_late
        return s.outcome, (s.amount if s.outcome in ("committed", "committed_late") else None)

    def _remember_settled(self, r: SettlementResult) -> None:
        with self._lock:
            self._settled[r.request_id] = r
            while len(self._settled) > self._remember:
                self._settled.popitem(last=False)
            n_open = len(self._held)
        if self.metrics:
            self.metrics.set_open(self.policy.id, n_open)

    def _emit_settlement(self, r: SettlementResult, h: _Held, conversions: list[dict[str, Any]] = ()) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.write(self.decision_log.settlement_event(
                decision_id=r.decision_id, request_id=r.request_id, policy_id=self.policy.id, outcome=r.outcome,
                currency=r.currency, estimate_units=r.estimate_units, actual_units=r.actual_units,
                committed_units=r.committed_units, over_estimate=r.over_estimate, source=r.source, error=r.error,
                extra={"guard": self.name, "request": h.request,
                       **({"conversions": list(conversions)} if conversions else {})}))
        except DecisionLogError:
            # The money already moved; failing the settlement now would only lose
            # the result. Counted so an operator sees the gap.
            if self.metrics:
                self.metrics.log_errors.inc()

    def close(self) -> None:
        for s in self.shadows:
            s.close()
        self.guard.close()
