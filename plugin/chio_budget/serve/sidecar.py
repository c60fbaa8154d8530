"""One worker's guards: every policy of the directory over one engine and one ledger.

A ``Sidecar`` is what a worker process serves. It loads every policy in
``--policies`` into **one** engine (``reload.Source.load_all``), builds a
``BudgetGuard`` and a ``BudgetChainGuard`` per policy sharing that engine
and the ledger, and answers the sidecar's calls by handing each to the
chain guard of the policy it names: the HTTP layer decides nothing.

Promises, all fail-closed:

- ``evaluate`` and ``external`` never raise: an unknown policy, or any
  error, is a deny verdict naming the cause; nothing stays held by a call
  that was denied (the chain guard gives back what it held).
- ``settle`` and ``revalidate`` find the policy that authorized the call in
  the ledger (the reservation's book) when the request names none, so any
  worker or replica settles any call. They never raise either: a failure is
  the outcome ``error`` (the hold is kept, settle again).
- ``reload`` (SIGHUP) swaps a whole new version of every policy in at once,
  or keeps the old one and says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from ..chain_guard import BudgetChainGuard
from ..cost import CostMetadata
from ..counters import request_counters, scope_balances
from ..decisionlog import DecisionLog
from ..errors import ChioBudgetError, LedgerError
from ..guard import BudgetGuard
from ..kernel import GuardContext, GuardDecision
from ..ledger import Ledger, counter_key, open_ledger
from ..metrics import BudgetMetrics
from ..loaded import Loaded
from ..reload import ReloadError, Source, adopt, close_set, reload_set
from ..settlement import HoldStatus, SettlementResult
from ..wasm import WasmGuardAdapter
from .options import ServeOptions

log = logging.getLogger("chio_budget.serve")
GUARD_NAME = "budget"


class UnknownPolicy(LookupError):
    """A request named a policy this sidecar does not serve."""


class Sidecar:
    """The guards of one worker. Thread-safe: requests run on a thread pool."""

    def __init__(self, options: ServeOptions, ledger: Ledger | None = None):
        self.options = options
        self.source = Source(options.policies, options.policy_id, options.rego_dir, options.engine,
                             options.engine_options, options.rates)
        self.metrics = BudgetMetrics()
        self.decision_log = DecisionLog(options.decision_log) if options.decision_log else None
        self.ledger = ledger if ledger is not None else open_ledger(options.ledger)
        self.guards: dict[str, BudgetGuard] = {}
        self.members: dict[str, BudgetChainGuard] = {}
        self._adapters: dict[str, WasmGuardAdapter] = {}
        self._reload_lock = threading.Lock()
        self._closed = False
        try:
            self._add(self.source.load_all())
        except BaseException:
            self.ledger.close()
            raise

    def _add(self, versions: dict[str, Loaded]) -> None:
        for pid, loaded in versions.items():
            guard = adopt(BudgetGuard(loaded.policy, loaded.engine, self.ledger, rates=loaded.rates,
                                      reservation_ttl=self.options.reservation_ttl), loaded)
            member = BudgetChainGuard(guard, name=GUARD_NAME, decision_log=self.decision_log, metrics=self.metrics)
            self.guards[pid], self.members[pid] = guard, member
            self._adapters[pid] = WasmGuardAdapter(member, settle="commit", make_allow=lambda: None,
                                                   make_deny=lambda reason: reason)

    @property
    def policy_ids(self) -> list[str]:
        return sorted(self.members)

    def member(self, policy_id: str | None) -> BudgetChainGuard:
        pid = policy_id or self.options.policy_id
        member = self.members.get(pid)
        if member is None:
            raise UnknownPolicy(f"unknown policy {pid!r} (this sidecar serves {', '.join(self.policy_ids)})")
        return member

    # -- the full contract ----------------------------------------------------------------

    def evaluate(self, ctx: GuardContext | dict[str, Any], policy_id: str | None = None) -> GuardDecision:
        """The chain guard's verdict on one call (idempotent by ``request_id``); never raises."""
        try:
            return self.member(policy_id).evaluate(ctx)
        except UnknownPolicy as exc:
            return GuardDecision.deny(GUARD_NAME, f"{GUARD_NAME}: denied: {exc}")
        except Exception as exc:  # noqa: BLE001 - fail closed: a verdict, never an error an adapter might misread
            log.exception("evaluate failed")
            return GuardDecision.deny(GUARD_NAME, f"{GUARD_NAME} error (fail-closed): {type(exc).__name__}: {exc}")

    def settle(self, request_id: str, result: Any = None, status: str = "completed",
               policy_id: str | None = None) -> SettlementResult:
        """Commit or release the call's hold (idempotent); never raises."""
        try:
            return self.member(policy_id or self._authorized_by(request_id)).on_invocation_complete(
                request_id, result, status=status)  # type: ignore[arg-type]
        except UnknownPolicy as exc:
            return SettlementResult(request_id, "unknown", "", source=str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("settle %r failed", request_id)
            return SettlementResult(request_id, "error", "", source="sidecar", error=f"{type(exc).__name__}: {exc}")

    def revalidate(self, request_id: str, policy_id: str | None = None) -> HoldStatus:
        """Is the call's hold still live? Reserves nothing; never raises."""
        try:
            return self.member(policy_id or self._authorized_by(request_id)).revalidate(request_id)
        except UnknownPolicy:
            return HoldStatus(request_id, False, "unknown")
        except Exception as exc:  # noqa: BLE001
            log.exception("revalidate %r failed", request_id)
            return HoldStatus(request_id, False, "error", error=f"{type(exc).__name__}: {exc}")

    def _authorized_by(self, request_id: str) -> str | None:
        """The policy whose chain guard reserved ``request_id`` (its book says), or None."""
        r = self.ledger.get(request_id)
        pid = (r.book or {}).get("policy_id") if r is not None else None
        return pid if isinstance(pid, str) else None

    def budget(self, policy_id: str | None, at: int | None = None, *, agent_id: str | None = None,
               session_id: str | None = None, tool_key: str | None = None) -> dict[str, Any]:
        """Spent, held and remaining of every limit that applies, in its window containing ``at``.
        Raises ``UnknownPolicy``, ``WindowError`` (a bad ``at``) and ``LedgerError``."""
        guard = self.member(policy_id).guard
        at = int(time.time()) if at is None else at
        rows = scope_balances(self.ledger, guard.policy, at, agent_id=agent_id, session_id=session_id,
                              tool_key=tool_key)
        ident = {"session": "session_id", "agent": "agent_id", "tool": "tool_key"}
        scopes = [{"scope": b.scope, **({ident[b.scope]: b.ident} if b.scope in ident else {}),
                   "limit_units": b.limit_units, "spent_units": b.spent, "held_units": b.held,
                   "remaining_units": b.remaining, "window": b.window.input()} for b in rows]
        return {"policy_id": guard.policy.id, "currency": guard.policy.currency, "at": at, "scopes": scopes}

    # -- today's adapter --------------------------------------------------------------------

    def external(self, call: dict[str, Any], policy_id: str | None = None) -> tuple[str | None, str]:
        """``(deny reason or None, request id)`` for a ``GuardCallContext``: the policy's price for the
        tool is reserved and committed at once (``wasm.WasmGuardAdapter``'s default); no price denies."""
        request_id = f"ext-{uuid.uuid4()}"
        try:
            adapter = self._adapters[self.member(policy_id).guard.policy.id]
        except UnknownPolicy as exc:
            return f"{GUARD_NAME}: denied: {exc}", request_id
        request = {"tool_name": call["tool_name"], "agent_id": call["agent_id"], "server_id": call["server_id"],
                   "arguments": call.get("arguments_json") or "{}", "request_id": request_id}
        try:
            return adapter.evaluate(request), request_id
        except Exception as exc:  # noqa: BLE001 - the adapter never raises; this is the last net
            return f"{GUARD_NAME} error (fail-closed): {type(exc).__name__}: {exc}", request_id

    # -- operations -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Does the engine answer and the ledger read? Each check with its cause; never raises."""
        engine, ledger = {"ok": True, "cause": None}, {"ok": True, "cause": None}
        try:
            self.ledger.totals([counter_key("chio-serve-health", "total")])  # reading never creates a counter
        except Exception as exc:  # noqa: BLE001
            ledger = {"ok": False, "cause": f"ledger error: {exc}"}
        try:
            guard = self.member(None).guard
            meta = CostMetadata(receipt_id="health", timestamp=int(time.time()), agent_id="health",
                                tool_server="health", tool_name="probe")
            c = request_counters(guard.policy, meta)
            error = guard.decide(meta, 0, dict.fromkeys(c.keys, 0), c.input_windows()).decision.error
            if error:
                engine = {"ok": False, "cause": f"engine error: {error}"}
        except Exception as exc:  # noqa: BLE001
            engine = {"ok": False, "cause": f"engine error: {type(exc).__name__}: {exc}"}
        ok = engine["ok"] and ledger["ok"]
        return {"status": "ok" if ok else "unavailable", "engine": engine, "ledger": ledger,
                "policies": self.policy_ids, "policy_id": self.options.policy_id, "worker": os.getpid()}

    def reload(self) -> list[str]:
        """Read every policy again and swap them in together (new policies join); the policy ids now
        served. ``ReloadError`` (the old versions stay) when anything fails."""
        with self._reload_lock:
            self._add(reload_set(self.guards, self.source))
            return self.policy_ids

    def reload_logged(self) -> None:
        """``reload`` for a signal handler: the outcome goes to the log, never an exception."""
        try:
            served = self.reload()
            log.info("reloaded policies in worker %d: %s", os.getpid(), ", ".join(served))
        except ReloadError as exc:
            log.error("reload refused in worker %d: %s", os.getpid(), exc)
        except ChioBudgetError as exc:
            log.error("reload failed in worker %d: %s", os.getpid(), exc)

    def close(self) -> None:
        """Close the engine (once every policy's version is done) and the ledger; idempotent."""
        with self._reload_lock:
            if self._closed:
                return
            self._closed = True
        try:
            close_set(self.guards)
        finally:
            try:
                self.ledger.close()
            except LedgerError:
                pass
            if self.decision_log is not None:
                self.decision_log.close()
