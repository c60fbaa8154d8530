"""The version of a guard's policy in force: one value a decision reads once.

Everything a decision needs from the policy files - the ``BudgetPolicy``,
the engine loaded with its compiled data and Rego, the rate oracle and the
revisions - lives in one ``Loaded``. The guard reads its current ``Loaded``
once per decision (``Loaded.in_force``), so a decision never mixes two
versions; ``reload`` builds new ones and swaps them in. A decision in flight
finishes on the version it started with, which is closed when the last of
them leaves (``retire``). Guards over one shared engine close it with the
last of them (``SharedClose``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .authorization import Beside
from .compiler import compile_all
from .decision import Decision
from .engines import Engine, decide_all
from .policy import BudgetPolicy
from .rates import RateOracle


@dataclass(eq=False)
class Loaded:
    """One consistent version of a guard's policy, with a count of decisions using it.

    ``enter``/``leave`` bracket each decision; ``retire`` (after a swap)
    closes the engine as soon as no decision is using it.
    """

    policy: BudgetPolicy
    engine: Engine
    rates: RateOracle | None = None
    policy_revision: str | None = None
    rego_revision: str | None = None
    loaded_at: float = field(default_factory=time.time)
    data_revision: str | None = None
    """Revision of all the policies compiled together: the bundle ``.manifest`` revision."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    close_engine: Callable[[], None] | None = field(default=None, repr=False)
    """Closes the engine (default: ``engine.close``); guards sharing one engine pass a
    ``SharedClose``, which closes it when the last of them calls."""
    _inflight: int = field(default=0, repr=False)
    _retired: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.data_revision is None:  # a guard built from one policy: the bundle of that policy alone
            self.data_revision = compile_all({self.policy.id: self.policy}).revision

    def decide(self, inp: dict[str, Any]) -> tuple[Decision, int | None]:
        """The engine's decision, with OPA's own evaluation time where the engine reports one (else None)."""
        measured = getattr(self.engine, "decide_measured", None)
        return measured(inp) if measured is not None else (self.engine.decide(inp), None)

    def decide_beside(self, inp: dict[str, Any],
                      shadows: Sequence[Any] = ()) -> tuple[Decision, int | None, Beside | None]:
        """``decide``, with the shadows over this very engine judged in the same query.

        Riders: the shadows (``shadow.ShadowPolicy``: ``engine``, ``input_for``,
        ``refusal``) whose engine is this one and that can judge the input; they
        go into one ``decide_many`` after it, whose first answer is the enforced
        decision (identical to ``decide``'s: ``decide_many`` answers each input as
        ``decide`` would). Returns ``(decision, opa_ns, Beside)``; with no rider,
        an engine that does not batch, or a ``decide_many`` that raises, exactly
        ``decide(inp)`` and None (the shadows are then judged apart, as before).
        """
        if not shadows:  # every decision without shadows passes here: nothing to look up
            return (*self.decide(inp), None)
        many = getattr(self.engine, "decide_many", None)
        riders: list[tuple[Any, dict[str, Any]]] = []
        try:
            for s in shadows if many is not None else ():
                if s.engine is self.engine and s.refusal(i := s.input_for(inp)) is None:
                    riders.append((s, i))
        except Exception:  # noqa: BLE001 - a shadow must never break the enforced decision
            riders = []
        if not riders:
            return (*self.decide(inp), None)
        t0 = time.perf_counter_ns()
        try:
            decided = list(many([inp, *(i for _, i in riders)]))  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - an engine must not raise; decide alone instead
            decided = []
        if len(decided) != len(riders) + 1:
            return (*self.decide(inp), None)
        share = (time.perf_counter_ns() - t0) // len(decided)
        return decided[0], None, Beside(inp, tuple((s, i, d) for (s, i), d in zip(riders, decided[1:])), share)

    def decide_many(self, inputs: list[dict[str, Any]]) -> list[Decision]:
        """The engine's decisions on independent inputs, in one query where it batches (``decide_all``)."""
        return decide_all(self.engine, inputs)

    def enter(self) -> bool:
        """Count a decision in; False once the engine is closed (read the guard's current one again)."""
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if not self._retired:  # the common case: one lock, nothing to close
                return
        self._close_when_idle()

    def retire(self) -> None:
        """No new decision will start here; close the engine once the running ones are done."""
        with self._lock:
            self._retired = True
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        with self._lock:
            close = self._retired and self._inflight == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            (self.close_engine or self.engine.close)()

    @staticmethod
    def in_force(current: Callable[[], "Loaded"]) -> "InForce":
        """The version ``current()`` names, held for one decision (a reload waits to close it
        until we leave); when it was closed for good (the guard closed), it is given as is
        and its engine denies. A ``with`` block: ``with Loaded.in_force(get) as s: ...``."""
        return InForce(current)

    def close(self) -> None:
        """Close now (the guard is closing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        (self.close_engine or self.engine.close)()


class InForce:
    """``Loaded.in_force``: a class, not a generator context manager - it brackets every
    decision, and this is about a microsecond cheaper."""

    __slots__ = ("_current", "_held")

    def __init__(self, current: Callable[[], Loaded]):
        self._current = current
        self._held: Loaded | None = None

    def __enter__(self) -> Loaded:
        while True:
            s = self._current()
            if s.enter():
                self._held = s
                return s
            if s is self._current():
                return s

    def __exit__(self, *exc: Any) -> None:
        if self._held is not None:
            self._held.leave()


class SharedClose:
    """Closes a shared engine on the ``users``-th call: each ``Loaded`` sharing it calls once."""

    def __init__(self, engine: Engine, users: int):
        self._engine, self._left, self._lock = engine, users, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._engine.close()
