"""The kernel's guard chain, and the budget guard as a member of it.

The Chio kernel runs its guards in registration order for each tool call:
the first deny stops the chain, a guard that raises denies (fail closed), a
``pending_approval`` is a deny for the call at hand, and different requests
reach the same guard concurrently. ``GuardChain`` runs guards exactly that
way; ``BudgetChainGuard`` makes a ``BudgetGuard`` a well-behaved member:

- ``evaluate(ctx)`` estimates the cost (context -> policy price -> grant's
  ``max_cost_per_invocation`` -> deny), reserves it in the ledger keyed by
  ``ctx.request_id`` and asks OPA; on allow the reservation is held until
  the call ends.
- ``on_invocation_complete(request_id, result)`` settles: commits the actual
  cost (from the Rust ``CostMetadata`` JSON, a ``MonetaryAmount``, plain
  units, or - with ``None`` - the estimate), or releases the reservation when
  the call failed or was cancelled. Settling twice changes nothing.
- Every decision and settlement goes to the decision log and the metrics;
  shadow policies are judged beside the enforced one and only logged.

Fail closed throughout: no estimate, an engine or ledger error, an
unwritable decision log - each is a deny, and a held reservation is given
back before denying.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .cost import CostMetadata
from .decision import Decision
from .errors import AmountError
from .decisionlog import DecisionLog, DecisionLogError, new_decision_id
from .guard import Authorization, BudgetGuard
from .metrics import BudgetMetrics
from .money import U64_MAX, MonetaryAmount, Units, check_currency, check_units
from .shadow import ShadowPolicy

Verdict = Literal["allow", "deny", "pending_approval"]
InvocationStatus = Literal["completed", "failed", "cancelled"]


# --------------------------------------------------------------------------
# The kernel's shapes


class GuardEvidence(BaseModel):
    """One guard's say in a decision: ``{guard_name, verdict, details}``."""

    model_config = ConfigDict(frozen=True)
    guard_name: str
    verdict: Verdict
    details: Any = None


class GuardDecision(BaseModel):
    """A guard's (or the chain's) answer. ``reason`` is a one-line summary for denies."""

    model_config = ConfigDict(frozen=True)
    verdict: Verdict
    evidence: list[GuardEvidence] = []
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @classmethod
    def allow(cls, guard_name: str, details: Any = None) -> "GuardDecision":
        return cls(verdict="allow", evidence=[GuardEvidence(guard_name=guard_name, verdict="allow", details=details)])

    @classmethod
    def deny(cls, guard_name: str, reason: str, details: Any = None) -> "GuardDecision":
        return cls(verdict="deny", reason=reason,
                   evidence=[GuardEvidence(guard_name=guard_name, verdict="deny",
                                           details=details if details is not None else reason)])


class Grant(BaseModel):
    """The part of the matched capability grant the budget guard reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    max_cost_per_invocation: MonetaryAmount | None = None


class GuardContext(BaseModel):
    """One tool call as the kernel presents it to its guards.

    ``cost_estimate`` is plain minor units of the policy currency or a
    ``MonetaryAmount``; ``timestamp`` (Unix seconds) defaults to now.
    ``metadata`` keeps anything else the host passes (scopes, paths...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str = Field(min_length=1)
    tool_name: str
    server_id: str
    agent_id: str
    arguments: Any = Field(default_factory=dict)
    session_id: str | None = None
    cost_estimate: MonetaryAmount | Units | None = None
    grant: Grant | None = None
    timestamp: Units | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def tool_key(self) -> str:
        return f"{self.server_id}:{self.tool_name}"


@runtime_checkable
class Guard(Protocol):
    """The kernel's guard: a name and a verdict per call. Must be thread-safe."""

    name: str

    def evaluate(self, ctx: GuardContext) -> GuardDecision: ...


@runtime_checkable
class SettlingGuard(Guard, Protocol):
    """A guard that holds something per call and must hear how the call ended."""

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> Any: ...


# --------------------------------------------------------------------------
# The chain


class GuardChain:
    """Runs guards the kernel's way: in order, first deny stops, errors deny.

    A deny (from any cause) after a settling guard already allowed cancels
    that guard's hold (``on_invocation_complete(..., status="cancelled")``),
    because the call will not run. The real kernel may not do this; there,
    register the budget guard last or rely on the reservation TTL.
    """

    def __init__(self, guards: Sequence[Guard] = ()):
        self.guards: list[Guard] = list(guards)

    def register(self, guard: Guard) -> "GuardChain":
        self.guards.append(guard)
        return self

    def evaluate(self, ctx: GuardContext) -> GuardDecision:
        evidence: list[GuardEvidence] = []
        allowed: list[Guard] = []
        for guard in self.guards:
            name = getattr(guard, "name", type(guard).__name__)
            try:
                d = guard.evaluate(ctx)
                if not isinstance(d, GuardDecision):
                    raise TypeError(f"returned {type(d).__name__}, not GuardDecision")
            except Exception as exc:
                msg = f"{name} error (fail-closed): {type(exc).__name__}: {exc}"
                evidence.append(GuardEvidence(guard_name=name, verdict="deny", details=msg))
                return self._deny(ctx, evidence, allowed, msg)
            evidence.extend(d.evidence or [GuardEvidence(guard_name=name, verdict=d.verdict)])
            if d.verdict == "allow":
                allowed.append(guard)
                continue
            if d.verdict == "pending_approval":
                return self._deny(ctx, evidence, allowed, f"{name} requires approval (pending_approval is a deny)")
            return self._deny(ctx, evidence, allowed, d.reason or f"denied by {name}")
        return GuardDecision(verdict="allow", evidence=evidence)

    @staticmethod
    def _deny(ctx: GuardContext, evidence: list[GuardEvidence], allowed: list[Guard], reason: str) -> GuardDecision:
        for g in allowed:
            settle = getattr(g, "on_invocation_complete", None)
            if settle is not None:
                try:
                    settle(ctx.request_id, None, status="cancelled")
                except Exception:
                    pass  # the hold then ends by TTL expiry; the deny stands either way
        return GuardDecision(verdict="deny", evidence=evidence, reason=reason)

    def on_invocation_complete(self, request_id: str, result: Any = None, *,
                               status: InvocationStatus = "completed") -> dict[str, Any]:
        """Settle every settling guard; returns ``{guard name: its result or the error}``."""
        out: dict[str, Any] = {}
        for g in self.guards:
            settle = getattr(g, "on_invocation_complete", None)
            if settle is None:
                continue
            name = getattr(g, "name", type(g).__name__)
            try:
                out[name] = settle(request_id, result, status=status)
            except Exception as exc:
                out[name] = f"{name} settlement error: {type(exc).__name__}: {exc}"
        return out


# --------------------------------------------------------------------------
# Observing OPA


class ObservedEngine:
    """An ``Engine`` that delegates and remembers, per thread, the last call.

    The decision log needs the exact input OPA saw and how long it took; the
    guard builds that input internally, so we watch it at the engine. The
    record is thread-local: concurrent requests never see each other's.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = getattr(inner, "name", "engine")
        self._local = threading.local()

    def decide(self, input: dict[str, Any]) -> Decision:
        t0 = time.perf_counter_ns()
        d = self.inner.decide(input)
        self._local.last = (input, d, time.perf_counter_ns() - t0)
        return d

    def take_last(self) -> tuple[dict[str, Any], Decision, int] | None:
        last = getattr(self._local, "last", None)
        self._local.last = None
        return last

    def close(self) -> None:
        self.inner.close()


# --------------------------------------------------------------------------
# Settlement


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


class CostError(AmountError):
    """A cost (estimate or actual) that cannot be turned into policy-currency units."""


def _check_rates(rates: Mapping[str, Any]) -> dict[str, Fraction]:
    """Rates as exact Fractions, refused up front (not at the first call) when unusable."""
    out: dict[str, Fraction] = {}
    for code, rate in rates.items():
        code = check_currency(code, "rates key")
        if isinstance(rate, (float, bool)):
            raise TypeError(f"rates[{code!r}]: must be exact (Fraction, int or decimal string), not {type(rate).__name__}")
        try:
            r = Fraction(rate)
        except (ValueError, TypeError, ZeroDivisionError):
            raise ValueError(f"rates[{code!r}]: not a number: {rate!r}") from None
        if r <= 0:
            raise ValueError(f"rates[{code!r}]: must be > 0")
        out[code] = r
    return out


def _to_units(amount: MonetaryAmount, currency: str, rates: Mapping[str, Any]) -> int:
    if amount.currency == currency:
        return amount.units
    if amount.currency not in rates:
        raise CostError(f"cost in {amount.currency} but policy is in {currency} and no rate for {amount.currency}")
    return amount.convert(currency, rates[amount.currency]).units


def actual_units(result: Any, currency: str, rates: Mapping[str, Any]) -> tuple[int | None, str]:
    """The actual cost in ``currency`` minor units, and where it came from.

    Accepts ``None`` (-> ``None``: use the estimate), plain units, a
    ``MonetaryAmount``, or the Rust ``chio_metering::cost::CostMetadata``
    (JSON text, dict, or an object with ``model_dump``): its
    ``total_monetary_cost`` and the sum of its ``api_cost`` dimensions, each
    converted (rounding up). When both are there the larger is taken - the
    Rust total skips dimensions in a second currency, which would
    under-count. A ``CostMetadata`` with no monetary cost at all gives
    ``None`` (the estimate is committed). Raises ``CostError`` when the
    result is unreadable or a currency has no rate.
    """
    if result is None:
        return None, "estimate"
    if isinstance(result, bool):
        raise CostError("actual cost: a bool is not an amount")
    if isinstance(result, int):
        try:
            return check_units(result, "actual units"), "units"
        except ValueError as exc:
            raise CostError(str(exc)) from None
    if isinstance(result, MonetaryAmount):
        return _to_units(result, currency, rates), "monetary_amount"
    if isinstance(result, (str, bytes)):
        try:
            result = json.loads(result)
        except json.JSONDecodeError as exc:
            raise CostError(f"cost metadata is not JSON: {exc.msg}") from None
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    if not isinstance(result, Mapping):
        raise CostError(f"actual cost: cannot read a {type(result).__name__}")
    try:
        total = result.get("total_monetary_cost")
        tmc = None if total is None else _to_units(MonetaryAmount.model_validate(total), currency, rates)
        dims = result.get("dimensions") or []
        if not isinstance(dims, list):
            raise CostError("cost metadata: dimensions is not a list")
        api = [d for d in dims if isinstance(d, Mapping) and d.get("dimension") == "api_cost"]
        dim_sum = None
        if api:
            dim_sum = 0
            for d in api:
                dim_sum = min(dim_sum + _to_units(MonetaryAmount.model_validate(d.get("amount")), currency, rates),
                              U64_MAX)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise CostError(f"cost metadata: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if tmc is None and dim_sum is None:
        return None, "estimate (cost metadata has no monetary cost)"
    if dim_sum is None or (tmc is not None and tmc >= dim_sum):
        return tmc, "total_monetary_cost"
    return dim_sum, "api_cost dimensions"


# --------------------------------------------------------------------------
# The budget guard as a chain member


class BudgetChainGuard:
    """A ``BudgetGuard`` behind the kernel's ``Guard`` protocol, with settlement.

    ``rates`` maps a foreign currency to its rate into the policy currency
    (``MonetaryAmount.convert`` semantics: policy-currency major units per
    one major unit of the foreign one, exact: ``"151.37"`` or a Fraction).
    ``allow_unpriced=True`` lets a call with no estimate through at 0
    instead of denying it. The guard's engine is wrapped in an
    ``ObservedEngine`` (in place) so decisions can be logged with their OPA
    input and evaluation time.

    Holds whose call never reports back are forgotten after
    ``forget_holds_after`` seconds (checked every ``forget_check_every``
    evaluations), so a long-running kernel does not accumulate them; the
    ledger's TTL has released their reservations long before.
    """

    forget_check_every = 1024

    def __init__(self, guard: BudgetGuard, *, name: str = "budget", decision_log: DecisionLog | None = None,
                 metrics: BudgetMetrics | None = None, shadows: Sequence[Any] = (),
                 rates: Mapping[str, Fraction | str | int] | None = None, allow_unpriced: bool = False,
                 remember_settled: int = 100_000, forget_holds_after: float = 86_400.0):
        self.name = name
        self.guard = guard
        if not isinstance(guard.engine, ObservedEngine):
            guard.engine = ObservedEngine(guard.engine)
        self._observed: ObservedEngine = guard.engine
        self.decision_log = decision_log
        self.metrics = metrics
        self.shadows = [s if isinstance(s, ShadowPolicy) else ShadowPolicy(s) for s in shadows]
        self.rates = _check_rates(rates or {})
        self.allow_unpriced = allow_unpriced
        self.forget_holds_after = forget_holds_after
        self._evaluations = 0
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._settled: OrderedDict[str, SettlementResult] = OrderedDict()
        self._remember = remember_settled

    @property
    def policy(self):
        return self.guard.policy

    def open_holds(self) -> int:
        with self._lock:
            return len(self._held)

    # -- estimate -----------------------------------------------------------

    def estimate(self, ctx: GuardContext) -> tuple[int, str]:
        """``(units, source)`` in the policy currency; ``CostError`` when there is none."""
        cur = self.policy.currency
        if ctx.cost_estimate is not None:
            e = ctx.cost_estimate
            return (e if isinstance(e, int) else _to_units(e, cur, self.rates)), "context"
        price = self.policy.prices.get(ctx.tool_key)
        if price is not None:
            return _to_units(price, cur, self.rates), "policy price"
        if ctx.grant is not None and ctx.grant.max_cost_per_invocation is not None:
            return _to_units(ctx.grant.max_cost_per_invocation, cur, self.rates), "grant max_cost_per_invocation"
        if self.allow_unpriced:
            return 0, "unpriced (allowed at 0)"
        raise CostError(f"no cost estimate for {ctx.tool_key}: none in the context, no policy price, "
                        "no grant max_cost_per_invocation")

    # -- Guard --------------------------------------------------------------

    def evaluate(self, ctx: GuardContext | Mapping[str, Any]) -> GuardDecision:
        """Estimate, reserve, decide, log. Never leaves a hold behind when it denies or raises."""
        if not isinstance(ctx, GuardContext):
            ctx = GuardContext.model_validate(ctx)
        placed: list[_Held] = []
        try:
            return self._evaluate(ctx, placed)
        except BaseException:
            for h in placed:  # something after the hold failed: the chain will deny, so give it back
                with self._lock:
                    if self._held.get(ctx.request_id) is h:
                        del self._held[ctx.request_id]
                try:
                    h.auth.release()
                except Exception:
                    pass  # the ledger TTL releases it
            raise
        finally:
            self._maybe_forget()

    def _maybe_forget(self) -> None:
        with self._lock:
            self._evaluations += 1
            if self._evaluations % self.forget_check_every:
                return
            cutoff = time.monotonic() - self.forget_holds_after
            stale = [rid for rid, h in self._held.items() if h.held_at < cutoff]
            for rid in stale:
                del self._held[rid]

    def _evaluate(self, ctx: GuardContext, placed: list) -> GuardDecision:
        policy = self.policy
        decision_id = new_decision_id()
        meta = CostMetadata(receipt_id=ctx.request_id,
                            timestamp=ctx.timestamp if ctx.timestamp is not None else int(time.time()),
                            session_id=ctx.session_id, agent_id=ctx.agent_id,
                            tool_server=ctx.server_id, tool_name=ctx.tool_name)
        request = meta.request_input()
        opa_input: dict[str, Any] | None = None
        eval_ns: int | None = None
        held = False
        try:
            est, source = self.estimate(ctx)
        except CostError as exc:
            est, source = None, "none"
            decision = Decision.deny_error(str(exc), policy.id)
        else:
            self._observed.take_last()
            try:
                auth = self.guard.authorize(meta, est)
                decision = auth.decision
            except Exception as exc:  # still a logged deny, not just an exception for the chain
                auth, decision = None, Decision.deny_error(f"guard error: {type(exc).__name__}: {exc}", policy.id)
            seen = self._observed.take_last()
            if seen is not None:
                opa_input, _, eval_ns = seen
            if decision.allow and auth is not None:
                if auth.estimate_units != est:
                    # The request already held a reservation (a retry): that one stands, at its amount.
                    est, source = auth.estimate_units, f"{source}; request already held, its reservation kept"
                h = _Held(auth, meta, auth.estimate_units, decision_id, request)
                with self._lock:
                    prior = self._held.setdefault(ctx.request_id, h)
                    n_open = len(self._held)
                if prior is h:
                    placed.append(h)
                    held = True  # ours to give back if this evaluation ends in a deny
                if self.metrics:
                    self.metrics.set_open(policy.id, n_open)
        if opa_input is None:  # OPA was not asked (no estimate, ledger failure): log what we know
            opa_input = {"policy_id": policy.id, "request": request,
                         "cost": {"units": est, "currency": policy.currency}, "totals": None}
        verdict: Verdict = "allow" if decision.allow else "deny"
        result = decision.to_json_dict()
        details = {"decision_id": decision_id, "request_id": ctx.request_id, "decision": result,
                   "estimate": {"units": est, "currency": policy.currency, "source": source}}

        if self.decision_log is not None:
            event = self.decision_log.decision_event(
                decision_id=decision_id, input=opa_input, result=result, revision=decision.policy_revision,
                eval_ns=eval_ns,
                chio={"guard": self.name, "verdict": verdict, "request_id": ctx.request_id,
                      "engine": self._observed.name, "estimate_units": est, "currency": policy.currency,
                      "estimate_source": source})
            try:
                self.decision_log.write(event)
            except DecisionLogError as exc:
                if self.metrics:
                    self.metrics.log_errors.inc()
                if held:
                    self._drop_hold(ctx.request_id)
                msg = f"{self.name}: decision log error (fail-closed): {exc}"
                details["error"] = msg
                return GuardDecision.deny(self.name, msg, details)
        if self.metrics:
            self.metrics.observe_decision(policy.id, decision, None if eval_ns is None else eval_ns / 1e9,
                                          self._observed.name)
        if self.shadows and opa_input.get("totals") is not None:
            self._run_shadows(decision_id, ctx.request_id, opa_input, decision)
        if decision.allow:
            return GuardDecision(verdict="allow",
                                 evidence=[GuardEvidence(guard_name=self.name, verdict="allow", details=details)])
        return GuardDecision(verdict="deny", reason=f"{self.name}: {decision.reason()}",
                             evidence=[GuardEvidence(guard_name=self.name, verdict="deny", details=details)])

    def _drop_hold(self, request_id: str) -> None:
        with self._lock:
            h = self._held.pop(request_id, None)
            n_open = len(self._held)
        if h is not None:
            h.auth.release()
        if self.metrics:
            self.metrics.set_open(self.policy.id, n_open)

    def _run_shadows(self, decision_id: str, request_id: str, opa_input: dict[str, Any], decision: Decision) -> None:
        for shadow in self.shadows:
            try:
                r = shadow.evaluate(opa_input, decision)
                if self.metrics and not r.diff["agree"]:
                    self.metrics.shadow_disagreements.labels(self.policy.id, r.policy_id).inc()
                if self.decision_log is not None:
                    self.decision_log.write(self.decision_log.decision_event(
                        type_="shadow", decision_id=decision_id, input=r.input, result=r.decision.to_json_dict(),
                        revision=r.decision.policy_revision, eval_ns=r.eval_ns,
                        chio={"guard": self.name, "request_id": request_id, "policy_id": r.policy_id,
                              "enforced": False, "diff": r.diff}))
            except Exception:
                if self.metrics:
                    self.metrics.log_errors.inc()  # a shadow never affects the call

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
        error: str | None = None
        actual: int | None = None
        over = False
        try:
            if status in ("failed", "cancelled"):
                source = f"call {status}"
                s = h.auth.release()
                outcome, committed = ("released" if s.changed else s.outcome), 0
            else:
                try:
                    actual, source = actual_units(result, cur, self.rates)
                except CostError as exc:
                    actual, source, error = None, "estimate (actual unreadable)", f"{exc}; estimate committed"
                over = actual is not None and actual > h.estimate
                s = h.auth.commit(actual)  # past the TTL the guard adds it as plain spend: committed_late
                outcome, committed = s.outcome, (s.amount if s.outcome in ("committed", "committed_late") else None)
        except Exception as exc:
            with self._lock:
                self._held.setdefault(request_id, h)  # keep it: settlement can be retried
            r = SettlementResult(request_id, "error", cur, h.estimate, actual, None, False, "ledger",
                                 f"ledger error: {type(exc).__name__}: {exc}", h.decision_id)
            self._emit_settlement(r, h)
            return r
        r = SettlementResult(request_id, outcome, cur, h.estimate, actual, committed, over, source, error,
                             h.decision_id)
        with self._lock:
            self._settled[request_id] = r
            while len(self._settled) > self._remember:
                self._settled.popitem(last=False)
            n_open = len(self._held)
        if self.metrics:
            self.metrics.set_open(self.policy.id, n_open)
            self.metrics.observe_settlement(self.policy.id, outcome, cur, committed or 0, h.request, over)
        self._emit_settlement(r, h)
        return r

    def _emit_settlement(self, r: SettlementResult, h: _Held) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.write(self.decision_log.settlement_event(
                decision_id=r.decision_id, request_id=r.request_id, policy_id=self.policy.id, outcome=r.outcome,
                currency=r.currency, estimate_units=r.estimate_units, actual_units=r.actual_units,
                committed_units=r.committed_units, over_estimate=r.over_estimate, source=r.source, error=r.error,
                extra={"guard": self.name, "request": h.request}))
        except DecisionLogError:
            # The money already moved; failing the settlement now would only lose
            # the result. Counted so an operator sees the gap.
            if self.metrics:
                self.metrics.log_errors.inc()

    def close(self) -> None:
        for s in self.shadows:
            s.close()
        self.guard.close()
