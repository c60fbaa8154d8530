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

A windowed limit's counter is the one of the window its request's
``timestamp`` falls in (``counters.request_counters``); its reservation and
commit stay there even when settled after the window ends. The windows go
into the OPA input (``input.windows``); the Rego decides. A soft-limit
warning is emitted (``on_warning``, ``event_hooks["warning"]``) when an
allowed reservation first takes a counter across a threshold, once across
every process sharing the ledger (``soft_limits``).
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
from .counters import RequestCounters, request_counters, total_window
from .decision import Decision
from .engines import Engine, make_engine
from .errors import AmountError, LedgerError, PolicyError
from .ledger import Balance, Ledger, Reservation, Settlement, open_ledger
from .ledger.base import check_ttl, key_order
from .money import MonetaryAmount, U64_MAX, check_units
from .policy import BudgetPolicy, load_policies
from .soft_limits import WarningEvent, crossings, mark_ttl
from .windows import Span

CleanupHook = Callable[[str, Exception], None]
WarningHook = Callable[[WarningEvent], None]


def _as_meta(meta: CostMetadata | Mapping[str, Any]) -> CostMetadata:
    return meta if isinstance(meta, CostMetadata) else CostMetadata.model_validate(meta)


def _reads(c: RequestCounters) -> dict[str, Any]:
    """``reads=`` for the ledger, only when a rolling window needs it (any Ledger works otherwise)."""
    return {"reads": c.reads} if c.reads else {}


def _at(at: int | None) -> int:
    return int(time.time()) if at is None else check_units(at, "at")


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
    warnings_emitted: tuple[WarningEvent, ...] = ()
    """Soft-limit thresholds this reservation crossed first (each told to the ``warning`` hooks)."""

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

    ``event_hooks["warning"]`` (``on_warning`` is the first): callables
    ``(WarningEvent)`` told when an allowed reservation first takes a counter
    across a ``warn_at`` threshold, once per threshold, window and counter
    among every process sharing the ledger. A ledger failure while marking
    skips the warning (``warning_mark_failures`` counts them): at most once.
    """

    def __init__(self, policy: BudgetPolicy, engine: Engine, ledger: Ledger | str | None = "memory", *,
                 reservation_ttl: float | None = None, on_warning: WarningHook | None = None):
        self.policy = policy
        self.engine = engine
        self.ledger = open_ledger(ledger)
        self.reservation_ttl = None if reservation_ttl is None else check_ttl(reservation_ttl, "reservation_ttl")
        self.event_hooks: dict[str, list[Callable[..., None]]] = {
            "cleanup_failed": [], "warning": [on_warning] if on_warning is not None else []}
        self.orphan_cleanup_failures = 0
        self.warning_mark_failures = 0
        self._failures_lock = threading.Lock()

    @classmethod
    def from_files(cls, policies_dir: str | Path, policy_id: str = "default", rego_dir: str | Path | None = None,
                   engine: str | Engine = "embedded", ledger: Ledger | str | None = "memory",
                   **options: Any) -> "BudgetGuard":
        """Load YAML policies, compile them, start the engine, open the ledger.

        Engine options (``opa_url``, ``token``, ``timeout``...) are passed to
        the server engine; ``reservation_ttl`` and ``on_warning`` to the guard.
        """
        policies = load_policies(policies_dir)
        if policy_id not in policies:
            raise PolicyError(f"{policies_dir}:1: policy_id: no policy {policy_id!r} (have: {', '.join(sorted(policies))})")
        ttl, on_warning = options.pop("reservation_ttl", None), options.pop("on_warning", None)
        eng = engine if not isinstance(engine, str) else make_engine(engine, compile_all(policies), rego_dir, **options)
        return cls(policies[policy_id], eng, ledger, reservation_ttl=ttl, on_warning=on_warning)

    def __enter__(self) -> "BudgetGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    def counter_keys(self, meta: CostMetadata) -> dict[str, str]:
        """The ledger key of every counter some limit reads, by scope.

        ``total`` always; ``session`` when the policy has a session limit and
        the request a session; ``agent`` when it has an agent limit; ``tool``
        when the tool is listed in ``max_per_tool``. A windowed limit's key is
        its window's (of ``meta.timestamp``).
        """
        return request_counters(self.policy, meta).keys

    def _cost(self, cost: int | MonetaryAmount) -> int:
        if isinstance(cost, MonetaryAmount):
            if cost.currency != self.policy.currency:
                raise AmountError(
                    f"cost is in {cost.currency}; policy {self.policy.id!r} is in {self.policy.currency} "
                    "(convert first with MonetaryAmount.convert)")
            return cost.units
        return check_units(cost, "cost_units")

    def build_input(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int],
                    windows: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The OPA input; a scope without a counter (no limit reads it) is ``null``.

        ``windows`` (``RequestCounters.input_windows``) is added only when a
        limit of the request is windowed, so an all-time input is unchanged.
        """
        inp = {
            "policy_id": self.policy.id,
            "request": meta.request_input(),
            "cost": {"units": cost_units, "currency": self.policy.currency},
            "totals": {scope: totals.get(scope) for scope in ("total", "session", "agent", "tool")},
        }
        if windows:
            inp["windows"] = dict(windows)
        return inp

    def decide(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int],
               windows: Mapping[str, Any] | None = None) -> Evaluation:
        """Ask the engine, timing it; returns the decision with the input it was given."""
        inp = self.build_input(meta, cost_units, totals, windows)
        t0 = time.perf_counter_ns()
        decision = self.engine.decide(inp)
        return Evaluation(decision, inp, time.perf_counter_ns() - t0)

    def _narrow_rolling(self, meta: CostMetadata, c: RequestCounters, cost: int, e: Evaluation) -> Evaluation:
        """A deny by a rolling limit: decide again with ``resets_at`` narrowed to when enough of
        its spend leaves (read per bucket, after this request's hold was given back).

        Only a hint for a retry; the first ``resets_at`` (everything gone) stays when the
        buckets cannot be read or never free enough (the cost alone is above the limit).
        """
        rolling = [v for v in e.decision.violations if getattr(v, "window", None) == "rolling" and v.scope in c.windows]
        if not rolling or e.input is None:
            return e
        windows = dict(e.input["windows"])
        for v in rolling:
            span, key = c.windows[v.scope], c.keys[v.scope]
            try:
                units = self.ledger.totals([*c.reads.get(key, ()), key])
            except LedgerError:
                return e
            at = span.leaves_enough_at(units, sum(units) + cost - v.limit_units)  # type: ignore[attr-defined]
            if at is not None and cost <= v.limit_units:  # type: ignore[attr-defined]
                windows[v.scope] = {**windows[v.scope], "resets_at": max(at, meta.timestamp + 1)}
        again = self.decide(meta, cost, e.input["totals"], windows)
        return Evaluation(again.decision, again.input, (e.eval_ns or 0) + (again.eval_ns or 0))

    def _deny(self, error: str) -> Decision:
        return Decision.deny_error(error, self.policy.id)

    def _give_back(self, receipt_id: str, attempt: str) -> None:
        """Release what ``attempt`` created; a failure is counted and reported, never raised."""
        try:
            self.ledger.release(receipt_id, attempt=attempt)
        except LedgerError as exc:
            with self._failures_lock:
                self.orphan_cleanup_failures += 1
            self._notify("cleanup_failed", receipt_id, exc)

    def _notify(self, event: str, *args: Any) -> None:
        for hook in list(self.event_hooks.get(event, ())):
            try:
                hook(*args)
            except Exception:  # noqa: BLE001 - an observer must not turn a decision into a crash
                pass

    def _emit_warnings(self, meta: CostMetadata, c: RequestCounters, decision: Decision) -> tuple[WarningEvent, ...]:
        """Each threshold this reservation crossed, to the ``warning`` hooks, once across processes."""
        emitted = []
        for ev in crossings(decision, c, self.policy.id, meta.receipt_id):
            try:
                first = self.ledger.mark_once(ev.mark, mark_ttl(c, ev.scope, meta.timestamp))
            except LedgerError:
                with self._failures_lock:
                    self.warning_mark_failures += 1
                continue
            if first:
                emitted.append(ev)
                self._notify("warning", ev)
        return tuple(emitted)

    # -- the API -------------------------------------------------------------

    def evaluate(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Evaluation:
        """Would this cost fit now? Holds nothing; returns the decision, the input and the eval time."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        c = request_counters(self.policy, meta)
        try:
            values = self.ledger.totals(list(c.keys.values()), **_reads(c))
        except LedgerError as exc:
            return Evaluation(self._deny(f"ledger error: {exc}"))
        return self._narrow_rolling(meta, c, cost, self.decide(meta, cost, dict(zip(c.keys, values)),
                                                               c.input_windows()))

    def check(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> Decision:
        """The Rust ``check``: ``evaluate(...).decision``."""
        return self.evaluate(meta, cost_units).decision

    def record(self, meta: CostMetadata | Mapping[str, Any], cost_units: int | MonetaryAmount) -> None:
        """Count spend that happened, without deciding (the Rust ``record``)."""
        meta, cost = _as_meta(meta), self._cost(cost_units)
        self.ledger.add(list(request_counters(self.policy, meta).keys.values()), cost)

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
        c = request_counters(self.policy, meta)
        keys = c.keys
        attempt = uuid.uuid4().hex
        rid = meta.receipt_id
        try:
            r: Reservation = self.ledger.reserve(rid, list(keys.values()), cost, self.reservation_ttl,
                                                 book=book, attempt=attempt, **_reads(c))
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
        e = self.decide(meta, r.amount, {scope: before[k] for scope, k in keys.items()}, c.input_windows())
        if not e.decision.allow:
            if r.created:
                self._give_back(rid, attempt)
            e = self._narrow_rolling(meta, c, r.amount, e)
            return Authorization(e.decision, rid, cost, self, e.input, e.eval_ns, attempt)
        emitted = self._emit_warnings(meta, c, e.decision) if r.created and e.decision.warnings else ()
        return Authorization(e.decision, rid, r.amount, self, e.input, e.eval_ns, attempt, True, emitted)

    def window(self, at: int | None = None) -> Span:
        """The total limit's window containing ``at`` (Unix seconds, default now): what
        ``total_spent``/``total_held``/``remaining`` answer for (``.describe()`` says it)."""
        return total_window(self.policy, _at(at))[0]

    def _total_balance(self, at: int | None) -> Balance:
        keys = total_window(self.policy, _at(at))[1]
        balances = self.ledger.balances(keys)
        return Balance(min(sum(b.spent for b in balances), U64_MAX), sum(b.held for b in balances))

    def total_spent(self, at: int | None = None) -> int:
        """Posted spend across the policy (the Rust ``total_spent``); held reservations are not in it.

        For a windowed ``max_total``: in its window containing ``at`` (Unix seconds, default now).
        """
        return self._total_balance(at).spent

    def total_held(self, at: int | None = None) -> int:
        """Units held by live reservations across the policy (may exceed 2^64-1 in sum), in the
        total limit's window containing ``at``."""
        return self._total_balance(at).held

    def remaining(self, at: int | None = None) -> int:
        """What can still be authorized: ``max_total - (spent + held)``, never below 0, in the
        total limit's window containing ``at`` (default now)."""
        b = self._total_balance(at)
        return max(self.policy.max_total.units - min(b.spent + b.held, U64_MAX), 0)

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            self.ledger.close()
