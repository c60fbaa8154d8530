"""The budget guard: counters from a ledger, judgement from OPA.

``check``/``record`` reproduce the Rust ``BudgetEnforcer`` (check decides on the current counters
without holding anything; record adds spend without deciding). ``authorize`` is the safe path under
concurrency: it reserves the cost first, asks OPA with the counters as they were before the
reservation, and gives the reservation back at once when denied - so a denied request leaves no
trace and two requests can never both spend the last unit.

Fail closed: an engine error or a ``LedgerError`` during a decision is a deny with
``Decision.error`` set, and so is every failure on the way out of a deny (a release that fails
leaves a hold its TTL gives back; it is counted in ``orphan_cleanup_failures``). ``record``
raises instead, because silently dropping spend would under-count it.

Only counters some limit reads are kept (``counter_keys``), and every reservation carries the
request's ``identity``, so a reused receipt id is recognised even when both touch the same counters.

A cost may be a ``MonetaryAmount`` in any currency: it is converted into the policy currency
first (``conversion.convert``, chio-link's rules), and the facts of the conversion go into the
OPA input, where a missing, stale or overflowing rate is a policy deny. The policy, engine and
rates form one ``loaded.Loaded`` that each decision reads once, so ``reload()`` can swap a new
version in while decisions run. ``check_many`` decides many checks in one query (``batch``).

A windowed limit counts in the window of its request's ``timestamp`` (``counters``), reservation
and commit alike; the Rego decides on it. A soft-limit warning is emitted once across processes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

from .authorization import Authorization, Cost, Evaluation
from .batch import check_many
from .compiler import compile_policy
from .conversion import Conversion, settle_amount
from .cost import CostMetadata
from .counters import RequestCounters, narrowed_windows, request_counters, total_balance, total_window
from .decision import Decision
from .engines import Engine
from .errors import AmountError, LedgerError
from .ledger import Ledger, Reservation, open_ledger
from .ledger.base import attempt_token, check_ttl, key_order
from .loaded import Loaded
from .money import MonetaryAmount, U64_MAX, check_units
from .opa_input import build_input, price
from .policy import BudgetPolicy
from .rates import RateOracle
from .rates_file import open_rates
from .reload import ReloadError, Source
from .soft_limits import WarningEvent, emit_crossings
from .windows import Span

CleanupHook = Callable[[str, Exception], None]
WarningHook = Callable[[WarningEvent], None]
__all__ = ["Authorization", "BudgetGuard", "Evaluation", "ReloadError"]


def _as_meta(meta: CostMetadata | Mapping[str, Any]) -> CostMetadata:
    return meta if isinstance(meta, CostMetadata) else CostMetadata.model_validate(meta)


def _at(at: int | None) -> int:
    return int(time.time()) if at is None else check_units(at, "at")


class BudgetGuard:
    """One policy's guard. Thread-safe: engines and ledgers are, and the policy is swapped whole.

    ``rates``: a ``RateOracle`` or a path to ``rates.yaml`` (``rates_file``); None converts nothing (a foreign
    cost is then denied ``rate_unavailable``). ``clock`` (Unix seconds) is when a commit happens, for its
    staleness note. ``track``: other policies whose limits this guard's counters must also serve.

    ``event_hooks``: ``"cleanup_failed"`` callables ``(receipt_id, exc)``, told when a hold this guard tried to
    give back could not be (``orphan_cleanup_failures`` counts them); ``"reloaded"`` callables ``(guard)`` after
    a reload swapped a new policy in; ``"reload_failed"`` callables ``(guard, exc)``; ``"warning"`` callables
    ``(WarningEvent)`` (``on_warning`` first) for each ``warn_at`` threshold an allowed reservation first
    crossed (``soft_limits``; ``warning_mark_failures``).
    """

    def __init__(self, policy: BudgetPolicy, engine: Engine, ledger: Ledger | str | None = "memory", *,
                 reservation_ttl: float | None = None, rates: RateOracle | str | Path | None = None,
                 clock: Callable[[], float] = time.time, track: Iterable[BudgetPolicy] = (),
                 on_warning: WarningHook | None = None):
        self._loaded = Loaded(policy, engine, open_rates(rates), compile_policy(policy)["revision"])
        self._source: Source | None = None
        self._reload_lock = threading.Lock()
        self._watcher: Any = None
        self.ledger = open_ledger(ledger)
        self.reservation_ttl = None if reservation_ttl is None else check_ttl(reservation_ttl, "reservation_ttl")
        self.clock = clock
        self.event_hooks: dict[str, list[Callable[..., None]]] = {
            "cleanup_failed": [], "reloaded": [], "reload_failed": [],
            "warning": [on_warning] if on_warning is not None else []}
        self.orphan_cleanup_failures = 0
        self.warning_mark_failures = 0
        self.reloads = 0
        self.reload_failures = 0
        self._failures_lock = threading.Lock()
        self.tracked: tuple[BudgetPolicy, ...] = ()
        self.track(*track)

    @classmethod
    def from_files(cls, policies_dir: str | Path, policy_id: str = "default", rego_dir: str | Path | None = None,
                   engine: str | Engine = "embedded", ledger: Ledger | str | None = "memory", *,
                   rates: RateOracle | str | Path | None = None, watch: bool = False, verify_tests: bool = False,
                   **options: Any) -> "BudgetGuard":
        """Load YAML policies (and ``rates``), compile them, start the engine, open the ledger.

        Engine options (``opa_url``, ``token``, ``timeout``, ``push``...) go
        to the server engine; ``reservation_ttl``, ``clock`` and ``on_warning`` to the guard.
        The files are remembered for ``reload()``; ``watch=True`` reloads on
        every change (``watch()``); ``verify_tests=True`` refuses a version
        whose Rego tests fail, at start-up and on reload.
        """
        ttl, clock = options.pop("reservation_ttl", None), options.pop("clock", time.time)
        on_warning = options.pop("on_warning", None)
        source = Source(Path(policies_dir), policy_id, None if rego_dir is None else Path(rego_dir),
                        engine if isinstance(engine, str) else "given", options, rates, verify_tests)
        # An engine object is used as is, and a reload cannot rebuild it.
        loaded = source.load(None if isinstance(engine, str) else engine)
        g = cls(loaded.policy, loaded.engine, ledger, reservation_ttl=ttl, rates=loaded.rates, clock=clock,
                on_warning=on_warning)
        g._loaded = loaded
        g._source = source if isinstance(engine, str) else None
        if watch:
            g.watch()
        return g

    def __enter__(self) -> "BudgetGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the version in force ------------------------------------------------

    @property
    def policy(self) -> BudgetPolicy:
        return self._loaded.policy

    @property
    def engine(self) -> Engine:
        return self._loaded.engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._loaded.engine = engine

    @property
    def rates(self) -> RateOracle | None:
        return self._loaded.rates

    @property
    def policy_revision(self) -> str | None:
        """Revision of the policy's compiled limits (what the decision's ``policy_revision`` says)."""
        return self._loaded.policy_revision

    data_revision = property(lambda self: self._loaded.data_revision, doc="The bundle ``.manifest`` revision.")

    @property
    def rego_revision(self) -> str | None:
        """Revision of the loaded Rego (None for an engine given as an object)."""
        return self._loaded.rego_revision

    @property
    def loaded_at(self) -> float:
        """When the version in force was loaded (Unix seconds)."""
        return self._loaded.loaded_at

    def _using(self) -> ContextManager[Loaded]:
        """The version in force, held for one decision (``Loaded.in_force``)."""
        return Loaded.in_force(lambda: self._loaded)

    def reload(self) -> None:
        """Re-read policies, Rego and rates and swap the new version in atomically; on any
        failure keep the old one and raise ``ReloadError`` (located). See ``reload.reload_guard``."""
        from .reload import reload_guard

        reload_guard(self)

    def watch(self, **options: Any) -> None:
        """Reload whenever the policy files change (``watch.Watcher``; needs the ``[watch]`` extra)."""
        from .reload import watch_guard

        watch_guard(self, **options)

    # -- plumbing ------------------------------------------------------------

    def track(self, *policies: BudgetPolicy) -> None:
        """Also keep the counters these policies' limits read, under this guard's policy.

        A shadow policy is judged on the enforced decision's ``totals``; a scope
        only the shadow limits (say an agent limit) would otherwise be ``null``
        there and the shadow could only answer ``invalid_input``. Tracking adds
        counters (and reservations on them) but never a limit: the enforced
        decision is unchanged. Call it while setting up, before traffic.
        """
        self.tracked = self.tracked + tuple(p for p in policies if p not in self.tracked)

    def counter_keys(self, meta: CostMetadata, policy: BudgetPolicy | None = None) -> dict[str, str]:
        """The ledger key of every counter some limit reads, by scope.

        ``total`` always; ``session`` when the policy (or a tracked one) has a
        session limit and the request a session; ``agent`` when one has an
        agent limit; ``tool`` when the tool is listed in one's
        ``max_per_tool``. A windowed limit's key is its window's (of
        ``meta.timestamp``); a scope only a tracked policy limits keeps an
        all-time counter.
        """
        return request_counters(policy or self.policy, meta, self.tracked).keys

    @staticmethod
    def identity(meta: CostMetadata, policy: BudgetPolicy) -> dict[str, Any]:
        """Who spends on what: stored in every reservation's book as ``identity``, so a
        receipt id reused by another request is refused even when the counters match."""
        return {"policy_id": policy.id, "agent_id": meta.agent_id, "session_id": meta.session_id,
                "tool_key": meta.tool_key}

    def _decide(self, s: Loaded, meta: CostMetadata, cost_units: int, totals: Mapping[str, int | None],
                conversion: Conversion | None = None, windows: Mapping[str, Any] | None = None,
                shadows: Sequence[Any] = ()) -> Evaluation:
        inp = build_input(meta, cost_units, totals, policy=s.policy, conversion=conversion, windows=windows)
        t0 = time.perf_counter_ns()
        decision, opa_ns, beside = s.decide_beside(inp, shadows)
        ns = time.perf_counter_ns() - t0 - (beside.share_ns * len(beside.judged) if beside else 0)
        return Evaluation(decision, inp, ns, conversion, s.rego_revision, opa_ns, beside)

    def decide(self, meta: CostMetadata, cost_units: int, totals: Mapping[str, int | None],
               windows: Mapping[str, Any] | None = None) -> Evaluation:
        """Ask the engine in force, timing it; returns the decision with the input it was given."""
        with self._using() as s:
            return self._decide(s, meta, cost_units, totals, windows=windows)

    def _narrow(self, s: Loaded, meta: CostMetadata, c: RequestCounters, cost: int, e: Evaluation,
                shadows: Sequence[Any] = ()) -> Evaluation:
        """A rolling limit's deny: decide again (``shadows`` riding along) with ``resets_at`` narrowed to when
        enough of the window's spend leaves (``counters.narrowed_windows``; a hint, the Rego decides)."""
        windows = narrowed_windows(self.ledger, c, e, cost, meta.timestamp)
        if windows is None:
            return e
        again = self._decide(s, meta, cost, e.input["totals"], e.conversion, windows, shadows)  # type: ignore[index]
        return e.then(again)

    def _deny(self, error: str, policy: BudgetPolicy | None = None) -> Decision:
        return Decision.deny_error(error, (policy or self.policy).id)

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

    def _emit_warnings(self, s: Loaded, meta: CostMetadata, c: RequestCounters,
                       decision: Decision) -> tuple[WarningEvent, ...]:
        """Each threshold this reservation crossed, to the ``warning`` hooks, once across processes."""
        emitted, failures = emit_crossings(self.ledger, s.policy.id, meta, c, decision)
        if failures:
            with self._failures_lock:
                self.warning_mark_failures += failures
        for ev in emitted:
            self._notify("warning", ev)
        return emitted

    def _settle_units(self, auth: Authorization, actual: MonetaryAmount) -> int | None:
        units, auth.commit_conversion = settle_amount(actual, auth.currency, auth.rates, auth.timestamp,
                                                      int(self.clock()), auth.receipt_id, auth.estimate_units)
        return units

    # -- the API -------------------------------------------------------------

    def evaluate(self, meta: CostMetadata | Mapping[str, Any], cost_units: Cost) -> Evaluation:
        """Would this cost fit now? Holds nothing; returns the decision, the input and the eval time."""
        meta = _as_meta(meta)
        with self._using() as s:
            cost, conversion = price(cost_units, s.policy, s.rates, meta.timestamp)
            c = request_counters(s.policy, meta, self.tracked)
            try:
                values = self.ledger.totals(list(c.keys.values()), **c.reads_option)
            except LedgerError as exc:
                return Evaluation(self._deny(f"ledger error: {exc}", s.policy), conversion=conversion)
            e = self._decide(s, meta, cost, dict(zip(c.keys, values)), conversion, c.input_windows())
            return e if e.decision.allow else self._narrow(s, meta, c, cost, e)

    def check(self, meta: CostMetadata | Mapping[str, Any], cost_units: Cost) -> Decision:
        """The Rust ``check``: ``evaluate(...).decision``."""
        return self.evaluate(meta, cost_units).decision

    def check_many(self, requests: Iterable[tuple[CostMetadata | Mapping[str, Any], Cost]]) -> list[Decision]:
        """``[self.check(meta, cost) for meta, cost in requests]``, decided in one engine query (``batch``)."""
        return check_many(self, requests)

    def record(self, meta: CostMetadata | Mapping[str, Any], cost_units: Cost) -> None:
        """Count spend that happened, without deciding (the Rust ``record``).

        A foreign amount is converted first; with no usable rate (or past
        2^64-1) it raises ``AmountError`` rather than count a wrong number.
        """
        meta = _as_meta(meta)
        with self._using() as s:
            cost, conversion = price(cost_units, s.policy, s.rates, meta.timestamp)
            if conversion is not None and conversion.status != "ok":
                raise AmountError(f"cannot record {conversion.original.units} {conversion.original.currency}: "
                                  f"{conversion.reason}")
            self.ledger.add(list(request_counters(s.policy, meta, self.tracked).keys.values()), cost)

    def authorize(self, meta: CostMetadata | Mapping[str, Any], cost_units: Cost, *,
                  book: Mapping[str, Any] | None = None, shadows: Sequence[Any] = ()) -> Authorization:
        """Reserve, decide, and release at once if denied (atomic under concurrency).

        Idempotent by ``meta.receipt_id``: authorizing a receipt that already
        holds a reservation for the same request (policy, agent, session,
        tool) decides on that reservation again (at its amount). The receipt
        held for another request, or already settled, is a deny. ``book`` (a
        JSON object) is stored with the reservation, for whoever settles it
        (``ledger.get``); the guard adds the request's ``identity`` to it. A
        foreign cost holds its converted units. ``shadows`` (``ShadowPolicy``) over
        the engine in force are judged in the same query: ``Authorization.beside``.
        """
        meta = _as_meta(meta)
        with self._using() as s:
            return self._authorize(s, meta, cost_units, book, shadows)

    def _authorize(self, s: Loaded, meta: CostMetadata, cost_units: Cost, book: Mapping[str, Any] | None,
                   shadows: Sequence[Any] = ()) -> Authorization:
        cost, conversion = price(cost_units, s.policy, s.rates, meta.timestamp)
        c = request_counters(s.policy, meta, self.tracked)
        keys = c.keys
        ident = self.identity(meta, s.policy)
        attempt = attempt_token()
        rid = meta.receipt_id

        def auth(decision: Decision, amount: int, e: Evaluation | None = None, held: bool = False,
                 emitted: tuple[WarningEvent, ...] = ()) -> Authorization:
            return Authorization(decision, rid, amount, self, e and e.input, e and e.eval_ns, attempt, held,
                                 conversion, s.rego_revision, meta.timestamp, None, s.rates, s.policy.currency,
                                 emitted, e and e.opa_eval_ns, e and e.beside)

        try:
            r: Reservation = self.ledger.reserve(rid, list(keys.values()), cost, self.reservation_ttl,
                                                 book={**(book or {}), "identity": ident}, attempt=attempt,
                                                 **c.reads_option)
        except LedgerError as exc:  # it may have run (a lost reply): give back only what this attempt made
            self._give_back(rid, attempt)
            return auth(self._deny(f"ledger error: {exc}", s.policy), cost)
        if r.state != "held":
            return auth(self._deny(f"receipt {rid!r} was already {r.state}", s.policy), cost)
        if r.keys != key_order(keys.values()) or (r.book or {}).get("identity", ident) != ident:
            return auth(self._deny(f"receipt {rid!r} is already held for a different request", s.policy), cost)
        before = dict(zip(r.keys, r.before))
        if conversion is not None and conversion.units is not None and r.amount != conversion.units:
            conversion = None  # a retry decides on the reservation already held, at its amount
        e = self._decide(s, meta, r.amount, {scope: before[k] for scope, k in keys.items()}, conversion,
                         c.input_windows(), shadows)
        if not e.decision.allow:
            if r.created:
                self._give_back(rid, attempt)
            e = self._narrow(s, meta, c, r.amount, e, shadows)
            return auth(e.decision, cost, e)
        emitted = self._emit_warnings(s, meta, c, e.decision) if r.created and e.decision.warnings else ()
        return auth(e.decision, r.amount, e, True, emitted)

    # Reports answer for the total limit's window containing ``at`` (Unix seconds, default now).

    def window(self, at: int | None = None) -> Span:
        """That window (``.describe()`` says which); all-time for an all-time ``max_total``."""
        return total_window(self.policy, _at(at))[0]

    def total_spent(self, at: int | None = None) -> int:
        """Posted spend across the policy (the Rust ``total_spent``); held reservations are not in it."""
        return total_balance(self.ledger, self.policy, _at(at)).spent

    def total_held(self, at: int | None = None) -> int:
        """Units held by live reservations across the policy (may exceed 2^64-1 in sum)."""
        return total_balance(self.ledger, self.policy, _at(at)).held

    def remaining(self, at: int | None = None) -> int:
        """What can still be authorized: ``max_total - (spent + held)``, never below 0."""
        b = total_balance(self.ledger, self.policy, _at(at))
        return max(self.policy.max_total.units - min(b.spent + b.held, U64_MAX), 0)

    def close(self) -> None:
        """Stop watching, close the engine in force and the ledger."""
        try:
            if self._watcher is not None:
                self._watcher.stop()
            self._loaded.close()
        finally:
            self.ledger.close()
