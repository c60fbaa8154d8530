"""A guard's policy as one swappable value, and reading it again from files.

Everything a decision needs from the policy files - the ``BudgetPolicy``,
the engine loaded with its compiled data and Rego, the rate oracle and the
revisions - lives in one ``Loaded``. The guard reads its current ``Loaded``
once per decision, so a decision never mixes two versions: a reload builds
a complete new ``Loaded`` (parse, compile, load into a new engine, verify)
and swaps it in with one assignment. Decisions in flight finish on the old
one; it is closed when the last of them leaves. Counters and held
reservations live in the ledger and are not touched.

``Source`` remembers where the files are, so ``BudgetGuard.reload()`` can
read them again; any failure there is an error naming the file and line
(the guard raises it as a ``ReloadError``), and the old ``Loaded`` stays in
force.

A set of guards, one per policy of a directory, can share one engine loaded
with all of them (``Source.load_all``; the sidecar serves every policy this
way): each guard gets its own ``Loaded`` over the shared engine, which is
closed when the last of them is done, and ``reload_set`` swaps a whole new
set in, guard by guard.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .authorization import Beside
from .compiler import compile_all, revision_of
from .currencies import DEFAULT_CURRENCIES
from .decision import Decision
from .engines import Engine, decide_all, make_engine
from .errors import ChioBudgetError, PolicyError
from .policy import BudgetPolicy, load_policies
from .rates import RateOracle
from .rates_file import open_rates
from .rego_files import default_rego_dir, rego_modules


class ReloadError(ChioBudgetError):
    """A reload failed; the policy in force before it still is. The message is located."""


def rego_revision(modules: Mapping[str, str]) -> str:
    """``sha256:`` over the Rego modules (name and content): changes with any Rego edit."""
    return revision_of({name: hashlib.sha256(src.encode("utf-8")).hexdigest() for name, src in modules.items()})


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
    @contextmanager
    def in_force(current: Callable[[], "Loaded"]) -> Iterator["Loaded"]:
        """The version ``current()`` names, held for one decision (a reload waits to close it
        until we leave); when it was closed for good (the guard closed), it is yielded as is
        and its engine denies."""
        while True:
            s = current()
            if s.enter():
                break
            if s is current():
                yield s
                return
        try:
            yield s
        finally:
            s.leave()

    def close(self) -> None:
        """Close now (the guard is closing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        (self.close_engine or self.engine.close)()


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


@dataclass(frozen=True)
class Source:
    """Where a guard's policy comes from, so it can be read again (``load``).

    ``rates`` is a path to ``rates.yaml`` (read again on every load), a
    ``RateOracle`` (kept as is) or None. ``verify_tests``: run the Rego
    tests (``*_test.rego``) of ``rego_dir`` on every load and refuse a
    version whose tests fail.
    """

    policies_dir: Path
    policy_id: str = "default"
    rego_dir: Path | None = None
    engine: str = "embedded"
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    rates: Any = None
    verify_tests: bool = False

    def watched(self) -> list[Path]:
        """What a watcher should watch: the policies, the Rego (unless it is the shipped one), rates.yaml."""
        out = [Path(self.policies_dir)]
        if self.rego_dir is not None:
            out.append(Path(self.rego_dir))
        if isinstance(self.rates, (str, Path)):
            out.append(Path(self.rates))
        return out

    def load(self, engine: Engine | None = None, previous: Loaded | None = None) -> Loaded:
        """Read, compile, test (if asked), and load into a new engine (or ``engine``, given as is).

        On an OPA server the new engine pushes (``push=True``) or waits for
        the server to serve the new revision (a bundle it pulls) before it
        exists; meanwhile ``previous``'s engine accepts decisions made on
        either revision.

        Raises what went wrong (``PolicyError``, ``RatesError``,
        ``EngineError``, ``ReloadError`` for failed Rego tests), located.
        """
        oracle, policies = self._read()
        policy, compiled = policies[self.policy_id], compile_all(policies)
        revision = compiled.revisions[self.policy_id]
        if engine is not None:
            return Loaded(policy, engine, oracle, revision, data_revision=compiled.revision)
        engine, rego_rev = self._engine(compiled, previous.engine if previous else None)
        return Loaded(policy, engine, oracle, revision, rego_rev, data_revision=compiled.revision)

    def load_all(self, previous: Engine | None = None) -> dict[str, Loaded]:
        """Every policy of the directory over **one** new engine loaded with all of them:
        a ``Loaded`` per policy id, sharing the engine (closed when the last is done).
        ``previous`` is the engine in force (an OPA server's accepts both revisions
        while the new one is made). Raises like ``load``."""
        oracle, policies = self._read()
        compiled = compile_all(policies)
        engine, rego_rev = self._engine(compiled, previous)
        close = SharedClose(engine, len(policies))
        return {pid: Loaded(p, engine, oracle, compiled.revisions[pid], rego_rev, data_revision=compiled.revision,
                            close_engine=close) for pid, p in policies.items()}

    def _read(self) -> tuple[RateOracle | None, dict[str, BudgetPolicy]]:
        """The rates and the policies; ``PolicyError`` when ``policy_id`` is not among them."""
        oracle = open_rates(self.rates)
        currencies = oracle.currencies if oracle is not None else DEFAULT_CURRENCIES
        policies = load_policies(self.policies_dir, currencies=currencies)
        if self.policy_id not in policies:
            raise PolicyError(f"{self.policies_dir}:1: policy_id: no policy {self.policy_id!r} "
                              f"(have: {', '.join(sorted(policies))})")
        return oracle, policies

    def _engine(self, compiled: Any, previous: Engine | None) -> tuple[Engine, str]:
        """A new engine of this source's kind with ``compiled`` and the Rego (tests first, if asked)."""
        modules = rego_modules(self.rego_dir)
        if self.verify_tests:
            verify_rego_tests(self.rego_dir)
        switching = getattr(previous, "accept_revisions", None)
        if switching is not None:
            switching(compiled.revisions)
        try:
            engine = make_engine(self.engine, compiled, self.rego_dir, **dict(self.engine_options))
        except BaseException:
            if switching is not None:
                switching({})
            raise
        return engine, rego_revision(modules)


def verify_rego_tests(rego_dir: str | Path | None) -> None:
    """Run the ``*_test.rego`` of ``rego_dir`` through the embedded OPA; ``ReloadError`` listing failures."""
    from .regotest import run

    result = run(rego_dir if rego_dir is not None else default_rego_dir())
    if result.ok and result.tests:
        return
    problems = list(result.errors)
    if not result.tests and not problems:
        problems.append(f"{rego_dir}: no Rego tests (*_test.rego) to verify")
    problems += [f"{t.file}: {t.ref}: {t.outcome} {t.detail}".rstrip()
                 for t in result.tests if t.outcome in ("FAIL", "ERROR")]
    raise ReloadError("Rego tests failed:\n" + "\n".join(problems))


log = logging.getLogger("chio_budget.reload")


def reload_guard(guard: Any) -> None:
    """``BudgetGuard.reload``: load the guard's ``Source`` again and swap the result in (one at a time).

    Atomic: a decision runs wholly on the old version or wholly on the new
    one; those in flight finish on the old, whose engine is closed after
    them. Counters and held reservations are kept. On any failure (YAML,
    rates, Rego parse/compile, Rego tests with ``verify_tests``, an OPA
    server that never serves the new revision) the old version stays and
    ``ReloadError`` (located) is raised and logged.
    """
    source = guard._source
    if source is None:
        raise ReloadError("reload: this guard was not built from files with a named engine "
                          "(BudgetGuard.from_files(..., engine='embedded'|'server'))")
    with guard._reload_lock:
        old = guard._loaded
        try:
            new = source.load(previous=old)
        except ChioBudgetError as exc:
            guard.reload_failures += 1
            log.error("reload failed; policy %s stays at revision %s, Rego %s:\n%s", old.policy.id,
                      old.policy_revision, old.rego_revision, exc)
            _notify(guard, "reload_failed", guard, exc)
            raise ReloadError(f"reload failed, the previous policy stays in force:\n{exc}") from None
        guard._loaded = new
        old.retire()
        guard.reloads += 1
    log.info("reloaded policy %s: revision %s, Rego %s", new.policy.id, new.policy_revision, new.rego_revision)
    _notify(guard, "reloaded", guard)


def reload_set(guards: Mapping[str, Any], source: Source) -> dict[str, Loaded]:
    """Reload guards that share one engine (``Source.load_all``): every policy of the
    directory is read again into one new engine and each guard's new version swapped in,
    exactly as ``reload_guard`` does it for one. Returns the versions of policies that are
    new in the directory (the caller builds their guards).

    All or nothing: on any failure every guard keeps its version (each counts it and hears
    ``reload_failed``) and ``ReloadError`` is raised. A policy in force that is no longer in
    the directory refuses the reload: its calls still held could not be settled. One
    reload at a time (the caller serializes them).
    """
    current = next(iter(guards.values()))._loaded.engine if guards else None
    try:
        new = source.load_all(current)
        gone = sorted(set(guards) - set(new))
        if gone:
            for loaded in new.values():
                loaded.close()
            raise ReloadError(f"{source.policies_dir}: polic{'y' if len(gone) == 1 else 'ies'} "
                              f"{', '.join(repr(g) for g in gone)} in force would be removed; calls they hold "
                              "could not be settled (restart to remove a policy)")
    except ChioBudgetError as exc:
        for guard in guards.values():
            guard.reload_failures += 1
            _notify(guard, "reload_failed", guard, exc)
        log.error("reload failed; every policy stays at its version:\n%s", exc)
        raise ReloadError(f"reload failed, the previous policies stay in force:\n{exc}") from None
    for pid, guard in guards.items():
        with guard._reload_lock:
            old, guard._loaded = guard._loaded, new[pid]
            old.retire()
            guard.reloads += 1
        _notify(guard, "reloaded", guard)
    log.info("reloaded %d policies: Rego %s", len(new), next(iter(new.values())).rego_revision)
    return {pid: loaded for pid, loaded in new.items() if pid not in guards}


def adopt(guard: Any, loaded: Loaded) -> Any:
    """Put a version from ``Source.load_all`` in force in a guard built over its engine
    (``BudgetGuard(loaded.policy, loaded.engine, ledger, rates=loaded.rates)``); the guard."""
    with guard._reload_lock:
        guard._loaded = loaded
    return guard


def close_set(guards: Mapping[str, Any]) -> None:
    """Close every guard's version (the shared engine closes with the last); not the ledger,
    which the caller shares and closes once."""
    for guard in guards.values():
        guard._loaded.close()


def _notify(guard: Any, event: str, *args: Any) -> None:
    for hook in list(guard.event_hooks.get(event, ())):
        try:
            hook(*args)
        except Exception:  # noqa: BLE001 - an observer must not break a reload
            log.exception("%s hook failed", event)


def watch_guard(guard: Any, **options: Any) -> None:
    """``BudgetGuard.watch``: a ``watch.Watcher`` over the guard's files calling ``reload``.

    A failed reload is logged (and counted) by ``reload_guard``; the watcher goes on.
    """
    from .watch import Watcher

    if guard._source is None:
        raise ReloadError("watch: this guard was not built from files with a named engine")
    if guard._watcher is not None:
        return
    guard._watcher = Watcher(guard._source.watched(), lambda _paths: guard.reload(), **options).start()
