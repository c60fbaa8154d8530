"""Reading a guard's policy again from files, and swapping the new version in.

A reload builds a complete new ``loaded.Loaded`` (parse, compile, load into
a new engine, verify) and swaps it in with one assignment; decisions in
flight finish on the old one, which is closed when the last of them leaves.
Counters and held reservations live in the ledger and are not touched.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .compiler import compile_all, revision_of
from .currencies import DEFAULT_CURRENCIES
from .engines import Engine, make_engine
from .errors import ChioBudgetError, PolicyError
from .loaded import Loaded, SharedClose
from .policy import BudgetPolicy, load_policies
from .rates import RateOracle
from .rates_file import open_rates
from .rego_files import default_rego_dir, rego_modules


class ReloadError(ChioBudgetError):
    """A reload failed; the policy in force before it still is. The message is located."""


def rego_revision(modules: Mapping[str, str]) -> str:
    """``sha256:`` over the Rego modules (name and content): changes with any Rego edit."""
    return revision_of({name: hashlib.sha256(src.encode("utf-8")).hexdigest() for name, src in modules.items()})


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
