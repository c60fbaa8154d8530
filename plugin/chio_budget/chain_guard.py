"""The budget guard as a member of the kernel's guard chain, with settlement.

``BudgetChainGuard`` makes a ``BudgetGuard`` a well-behaved chain member:

- ``evaluate(ctx)`` estimates the cost (context -> policy price -> grant's
  ``max_cost_per_invocation`` -> deny), reserves it in the ledger keyed by
  ``ctx.request_id`` and asks OPA; on allow the hold lasts until the call ends.
- Idempotent by request id: the same request again (a retry) holds nothing
  more and gets the first answer (its decision id, decided again on the
  reservation's own totals); an allow is never given again once its hold is
  settled or expired, and a request id reused for another request is denied.
- ``on_invocation_complete(request_id, result)`` commits the actual cost
  (``actual_cost.actual_units``; ``None``: the estimate) or releases the hold
  when the call failed or was cancelled; settling twice changes nothing.
  ``revalidate(request_id)``: is the hold still live (reserves nothing).
- Decisions and settlements go to the decision log and the metrics; shadows
  are judged beside the enforced policy and only logged.

No per-call state lives here: what settlement needs (estimate and source,
counter keys, policy, request, decision id) is the reservation's *book*, in
the ledger with it, so any process sharing the ledger can settle or
revalidate a call another one authorized (two settling at once count once).

Fail closed: no estimate, a malformed request, an engine or ledger error, an
unwritable decision log - each is a logged deny, and a hold this evaluation
placed is given back first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from .actual_cost import CostError
from .authorization import Authorization, Cost
from .cost import CostMetadata
from .counters import request_counters
from .decision import Decision
from .chain_settle import find_call, revalidate, settle
from .decisionlog import DecisionLog, DecisionLogError, new_decision_id
from .errors import LedgerError
from .guard import BudgetGuard
from .kernel import GuardContext, GuardDecision, GuardEvidence, InvocationStatus, Verdict
from .ledger import Reservation
from .metrics import BudgetMetrics
from .money import MonetaryAmount
from .settlement import HoldStatus, SettlementResult
from .shadow import ShadowPolicy, run_shadows

__all__ = ["BudgetChainGuard", "HoldStatus", "SettlementResult"]

_CONTEXT_FIELD = {"receipt_id": "request_id", "tool_server": "server_id"}  # CostMetadata -> GuardContext names


@dataclass
class _Call:
    """What one evaluation has found so far, handed from step to step."""

    ctx: GuardContext
    decision_id: str = field(default_factory=new_decision_id)
    meta: CostMetadata | None = None
    cost: Cost | None = None  # the estimate as found (in any currency)
    est: int | None = None  # the estimate in policy-currency units (known once converted when foreign)
    source: str = "none"
    decision: Decision | None = None
    auth: Authorization | None = None
    prior: tuple[Reservation, dict[str, Any]] | None = None  # this request id's reservation and book, if any
    repeat: bool = False  # the same request again: answered as the first time, logged once
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

    Costs in another currency (an estimate, a grant's cap, the actual cost)
    are converted by the guard with its rate oracle (``BudgetGuard(rates=...)``),
    the estimate inside the decision, where a missing or stale rate is a deny.
    ``allow_unpriced=True`` lets a call with no estimate through at 0 instead
    of denying it. Shadows' limits are tracked by the guard (``track``), again after a
    shadow's reload; the metrics follow the guard through its event hooks
    (``BudgetMetrics.follow``).
    """

    def __init__(self, guard: BudgetGuard, *, name: str = "budget", decision_log: DecisionLog | None = None,
                 metrics: BudgetMetrics | None = None, shadows: Sequence[Any] = (), allow_unpriced: bool = False):
        self.name = name
        self.guard = guard
        self.decision_log = decision_log
        self.metrics = metrics
        self.shadows = [s if isinstance(s, ShadowPolicy) else ShadowPolicy(s) for s in shadows]
        self.allow_unpriced = allow_unpriced
        guard.track(*(s.policy for s in self.shadows))
        for s in self.shadows:  # a shadow's reload may add limits: their counters are kept from then on
            s.follow(guard.track)
        if metrics is not None:
            metrics.follow(guard)

    @property
    def policy(self):
        return self.guard.policy

    def open_holds(self) -> int:
        """Reservations held in the guard's ledger (every process and policy sharing it)."""
        return self.guard.ledger.open_reservations()

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
        """The five steps: estimate, authorize, hold, log, verdict (a repeat: logged the first time)."""
        self._recall(call)
        self._estimate(call)
        self._repeat(call)
        self._authorize(call)
        self._hold(call)
        if not call.repeat:
            failed = self._log_decision(call)
            if failed is not None:
                return failed
            self._log_warnings(call)
        return self._verdict(call)

    def _recall(self, call: _Call) -> None:
        """A request id this policy's chain guard reserved before: keep its book, and its time
        when the context names none (a retry then lands in the same windows)."""
        try:
            r, book = self._find(call.ctx.request_id)
        except LedgerError:
            return  # authorize meets the ledger error and denies
        if r is not None and book is not None:
            call.prior = (r, book)
            if call.ctx.timestamp is None and isinstance(book.get("request"), dict):
                call.request["timestamp"] = book["request"].get("timestamp", call.request["timestamp"])

    def _repeat(self, call: _Call) -> None:
        """The same request again: its first decision id; a held call is decided again on its hold
        (authorize finds it), a settled one on the totals it was decided on, never allowed twice."""
        if call.prior is None or call.decision is not None:
            return
        r, book = call.prior
        if book.get("request") != call.request:
            call.decision = self._deny(f"request id {call.ctx.request_id!r} was already used for a different request")
            return
        call.repeat, call.decision_id = True, str(book.get("decision_id") or call.decision_id)
        call.est = r.amount
        if r.state == "held":
            return
        assert call.meta is not None
        keys = book.get("keys") if isinstance(book.get("keys"), dict) else {}
        before = dict(zip(r.keys, r.before))
        c = request_counters(self.policy, call.meta, self.guard.tracked)
        first = self.guard.decide(call.meta, r.amount, {scope: before.get(k) for scope, k in keys.items()},
                                  c.input_windows()).decision
        call.decision = self._deny(f"request {call.ctx.request_id!r} was already {r.state}: an allowed call "
                                   "is not allowed again") if first.allow else first

    def _estimate(self, call: _Call) -> None:
        """The request as the ledger keys it, and its cost; a bad one is a deny decision."""
        try:
            call.meta = CostMetadata.model_validate(call.request)
            call.cost, call.source = self.estimate(call.ctx)
        except ValidationError as exc:
            call.decision = self._deny(_one_line(exc))
        except CostError as exc:
            call.decision = self._deny(str(exc))
        call.est = call.cost if isinstance(call.cost, int) else None  # a foreign one: known once converted

    def _authorize(self, call: _Call) -> None:
        """Reserve (with the book) and ask OPA, the shadows over its engine in the same query (a repeat
        judges none); any failure is a deny decision (still logged)."""
        if call.decision is not None:
            return
        assert call.meta is not None and call.cost is not None
        try:
            call.auth = self.guard.authorize(call.meta, call.cost, book=self._book(call),
                                             shadows=() if call.repeat else self.shadows)
        except Exception as exc:  # noqa: BLE001 - fail closed, and log it like any deny
            call.decision = self._deny(f"guard error: {type(exc).__name__}: {exc}")
            return
        call.decision = call.auth.decision
        if call.auth.conversion is not None:  # a foreign estimate: what it was converted to
            call.est = call.auth.conversion.input_units

    def _book(self, call: _Call) -> dict[str, Any]:
        """What settlement needs, stored with the reservation (``ledger.get(request_id).book``)."""
        assert call.meta is not None
        return {"policy_id": self.policy.id, "currency": self.policy.currency, "decision_id": call.decision_id,
                "request": call.request, "estimate": self._estimate_json(call),
                "keys": self.guard.counter_keys(call.meta)}

    def _estimate_json(self, call: _Call) -> dict[str, Any]:
        """The estimate as found, in its own currency, with its source (as the book keeps it)."""
        cost = call.cost
        units, cur = (cost.units, cost.currency) if isinstance(cost, MonetaryAmount) else (cost, self.policy.currency)
        return {"units": units, "currency": cur, "source": call.source}

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
        decision, auth = call.decision, call.auth
        assert decision is not None
        event = self.decision_log.decision_event(
            decision_id=call.decision_id, input=self._input(call), result=decision.to_json_dict(),
            revision=self.guard.data_revision, client_wall_ns=auth and auth.eval_ns,
            eval_ns=auth and (auth.eval_ns if auth.opa_eval_ns is None else auth.opa_eval_ns),
            chio={"guard": self.name, "verdict": "allow" if decision.allow else "deny",
                  "request_id": call.ctx.request_id, "engine": self.guard.engine.name, "estimate_units": call.est,
                  "currency": self.policy.currency, "estimate_source": call.source,
                  "rego_revision": call.auth.rego_revision if call.auth else self.guard.rego_revision})
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

    def _log_warnings(self, call: _Call) -> None:
        """Soft-limit crossings of this call (once per threshold, window, counter): events and metric.

        After the decision, never instead of it: a failed write is counted, the call goes on.
        """
        for w in call.auth.warnings_emitted if call.auth is not None else ():
            if self.metrics:
                self.metrics.observe_warning(self.policy.id, w.scope, w.threshold_bps)
            if self.decision_log is None:
                continue
            try:
                self.decision_log.write(self.decision_log.warning_event(
                    parent_decision_id=call.decision_id, request_id=call.ctx.request_id, policy_id=self.policy.id,
                    counter=w.counter, threshold_bps=w.threshold_bps, warning=w.warning, guard=self.name))
            except DecisionLogError:
                if self.metrics:
                    self.metrics.log_errors.inc()

    def _verdict(self, call: _Call) -> GuardDecision:
        decision = call.decision
        assert decision is not None
        eval_ns = call.auth.eval_ns if call.auth else None
        if self.metrics and not call.repeat:
            self.metrics.observe_decision(self.policy.id, decision, None if eval_ns is None else eval_ns / 1e9,
                                          self.guard.engine.name)
        opa_input = self._input(call)
        if self.shadows and opa_input.get("totals") is not None and not call.repeat:
            run_shadows(self.shadows, opa_input, decision, decision_id=call.decision_id,
                        enforced_policy_id=self.policy.id, chio={"guard": self.name, "request_id": call.ctx.request_id},
                        decision_log=self.decision_log, metrics=self.metrics,
                        beside=call.auth.beside if call.auth else None)
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

    # -- settlement (chain_settle) -----------------------------------------

    def _find(self, request_id: str) -> tuple[Reservation | None, dict[str, Any] | None]:
        """The call's reservation and book, if this policy's chain guard made it (``LedgerError`` passes)."""
        return find_call(self.guard.ledger, self.policy.id, request_id)

    def revalidate(self, request_id: str) -> HoldStatus:
        """Is the call's hold still live? Reads the ledger only; never reserves, never raises."""
        return revalidate(self, request_id)

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> SettlementResult:
        """Settle the call's reservation, from any process sharing the ledger; idempotent.

        ``status="failed"``/``"cancelled"`` releases the hold. Otherwise ``result``
        gives the actual cost (``actual_units``; ``None``: the estimate). An
        unreadable result or a currency without a rate commits the estimate (the
        call ran) and says so in ``error``. Actual above the estimate is committed
        and flagged ``over_estimate``. Past the TTL, a completed call's spend is
        posted anyway, once (``committed_late``). See ``chain_settle.settle``.
        """
        return settle(self, request_id, result, status)

    def close(self) -> None:
        for s in self.shadows:
            s.close()
        self.guard.close()
