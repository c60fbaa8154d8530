"""Settling a chain member's calls, from any process sharing its ledger: commit, release, revalidate.

``BudgetChainGuard.on_invocation_complete`` and ``revalidate`` are these
functions. Everything they need of a call is the reservation's *book* in
the ledger (``ledger.get(request_id)``: policy, currency, decision id,
request, estimate), so the process that settles never has to be the one
that authorized: another kernel process, another sidecar worker or replica.

Promises: settling is idempotent (twice counts once, from this process or
any other: ``already_settled`` with what the ledger counted); a ledger
failure is the outcome ``error`` with the hold kept (retry the settlement);
an unreadable actual cost commits the estimate (the call ran); nothing
here raises. The member is named as a ``Protocol`` (it imports this module).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from .actual_cost import CostError, actual_units
from .decisionlog import DecisionLogError
from .errors import LedgerError
from .kernel import InvocationStatus
from .ledger import Ledger, Reservation
from .settlement import HoldStatus, SettlementResult


class _Member(Protocol):
    """What settlement needs of the ``BudgetChainGuard`` whose calls it settles."""

    name: str
    guard: Any  # its BudgetGuard: ``ledger``, ``policy``, ``rates``
    decision_log: Any
    metrics: Any


def find_call(ledger: Ledger, policy_id: str, request_id: str) -> tuple[Reservation | None, dict[str, Any] | None]:
    """The call's reservation, and its book if a chain guard of ``policy_id`` made it
    (else None: another policy's, or not a chain guard's). ``LedgerError`` passes."""
    r = ledger.get(request_id)
    book = r.book if r is not None else None
    if not book or book.get("policy_id") != policy_id or not isinstance(book.get("estimate"), dict):
        return r, None
    return r, dict(book)


def revalidate(member: _Member, request_id: str) -> HoldStatus:
    """Is the call's hold still live? Reads the ledger only; never reserves, never raises."""
    try:
        r, book = find_call(member.guard.ledger, member.guard.policy.id, request_id)
    except LedgerError as exc:
        return HoldStatus(request_id, False, "error", error=f"ledger error: {exc}")
    if r is None or book is None:
        return HoldStatus(request_id, False, "unknown")
    return HoldStatus(request_id, r.state == "held", r.state, r.amount, r.expires_at, book.get("decision_id"))


def settle(member: _Member, request_id: str, result: Any = None,
           status: InvocationStatus = "completed") -> SettlementResult:
    """Commit the actual cost (``None``: the estimate) or, for a failed or cancelled call,
    release the hold; idempotent, and past the TTL a completed call posts once
    (``committed_late``). See ``BudgetChainGuard.on_invocation_complete``."""
    guard = member.guard
    policy = guard.policy
    try:
        r, book = find_call(guard.ledger, policy.id, request_id)
    except LedgerError as exc:
        return SettlementResult(request_id, "error", policy.currency, source="ledger", error=f"ledger error: {exc}")
    if r is None or book is None:
        return SettlementResult(request_id, "unknown", policy.currency, source="no hold for this request")
    if r.state in ("committed", "released"):
        return _already(r, book)
    cur, conversions = book["currency"], []
    actual, source, error = _read_actual(guard, result, status, book, conversions)
    try:  # past the TTL a commit posts once: committed_late
        s = guard.ledger.release(request_id) if status in ("failed", "cancelled") else guard.ledger.commit(
            request_id, actual)
    except LedgerError as exc:
        res = SettlementResult(request_id, "error", cur, r.amount, actual, None, False, "ledger",
                               f"ledger error: {exc}", book.get("decision_id"))
        _emit(member, res, book, conversions)
        return res
    if s.outcome.startswith("already_"):  # another process settled it between our read and now
        return _already(guard.ledger.get(request_id) or r, book)
    committed = s.amount if s.outcome in ("committed", "committed_late") else 0
    over = actual is not None and actual > r.amount
    res = SettlementResult(request_id, s.outcome, cur, r.amount, actual, committed, over, source, error,
                           book.get("decision_id"))
    if member.metrics:
        member.metrics.observe_settlement(policy.id, s.outcome, cur, committed, book.get("request"), over)
    _emit(member, res, book, conversions)
    return res


def _already(r: Reservation, book: Mapping[str, Any]) -> SettlementResult:
    """The no-op answer for a settled call, with the numbers the ledger kept."""
    committed = r.settled_amount if r.state == "committed" else 0
    return SettlementResult(r.receipt_id, "already_settled", book["currency"], r.amount, None, committed,
                            committed is not None and committed > r.amount, f"no-op (was {r.state})", None,
                            book.get("decision_id"))


def _read_actual(guard: Any, result: Any, status: InvocationStatus, book: Mapping[str, Any],
                 facts: list[dict[str, Any]]) -> tuple[int | None, str, str | None]:
    """``(actual units or None for the estimate, source, error)``; never raises.

    Foreign amounts are converted into the currency the call was authorized
    in, at the request's timestamp, with the settling guard's rate oracle."""
    if status in ("failed", "cancelled"):
        return None, f"call {status}", None
    try:
        actual, source = actual_units(result, book["currency"], guard.rates, book["request"]["timestamp"], facts)
    except CostError as exc:
        return None, "estimate (actual unreadable)", f"{exc}; estimate committed"
    return actual, source, None


def _emit(member: _Member, r: SettlementResult, book: Mapping[str, Any],
          conversions: Sequence[dict[str, Any]] = ()) -> None:
    log = member.decision_log
    if log is None:
        return
    try:
        log.write(log.settlement_event(
            parent_decision_id=r.decision_id, request_id=r.request_id, policy_id=member.guard.policy.id,
            outcome=r.outcome, currency=r.currency, estimate_units=r.estimate_units, actual_units=r.actual_units,
            committed_units=r.committed_units, over_estimate=r.over_estimate, source=r.source, error=r.error,
            request=book.get("request"),
            extra={"guard": member.name, **({"conversions": list(conversions)} if conversions else {})}))
    except DecisionLogError:
        # The money already moved; failing the settlement now would only lose
        # the result. Counted so an operator sees the gap.
        if member.metrics:
            member.metrics.log_errors.inc()
