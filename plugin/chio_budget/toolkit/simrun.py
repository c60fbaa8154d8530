"""One simulation from its arguments to its result: read, order, run, clean up.

``SimSpec`` is everything a run needs, as plain picklable values, so ``diff``
can start two of them in two processes. ``simulate_spec`` reads the logs
(validating every record and pricing it in the policy currency), orders the
calls (sorted - externally past ``run_size`` calls - or ``assume_sorted``),
runs them through a fresh guard and returns the ``Simulation`` with the input
statistics. A simulation that stops on bad input removes the SQLite ledger
file it created, so the same command can simply be run again.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..decision import Decision
from .calls import CostReader, to_calls
from .ordering import DEFAULT_RUN_SIZE, Call, assume_sorted, spill_dir, time_ordered
from .progress import THRESHOLD, LogProgress
from .receipts import BadRecords, iter_receipts, log_bytes
from .simulate import Simulation, run, simulation_ledger


@dataclass(frozen=True)
class SimSpec:
    receipts: tuple[str, ...]
    policies: str
    policy_id: str = "default"
    rego_dir: str | None = None
    ledger: str = "memory"
    assume_sorted: bool = False
    cost_field: str | None = None
    rates: str | None = None
    skip_bad: bool = False
    run_size: int = DEFAULT_RUN_SIZE
    progress: bool = True
    label: str = "simulate"


@dataclass
class RunInput:
    """What was read: calls, bad records skipped (with the first messages), costs converted or absent."""

    bad: BadRecords = field(default_factory=BadRecords)
    reader: CostReader | None = None
    calls: int = 0

    def counted(self, calls: Iterator[Call]) -> Iterator[Call]:
        for call in calls:
            self.calls += 1
            yield call

    def to_json(self) -> dict[str, Any]:
        r = self.reader
        return {"records": self.calls, "skipped_bad": self.bad.count, "skipped_examples": self.bad.first,
                "foreign_currency": dict(sorted(r.foreign.items())) if r else {},
                "without_cost": r.no_cost if r else 0}


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite://"):
        return None
    return Path(uri.split("://", 1)[1].split("?", 1)[0][1:])


def open_guard(spec: SimSpec) -> Any:
    """The guard on the embedded OPA and a fresh simulation ledger (``ChioBudgetError`` when impossible)."""
    from ..guard import BudgetGuard

    ledger = simulation_ledger(spec.ledger)
    try:
        return BudgetGuard.from_files(spec.policies, policy_id=spec.policy_id, rego_dir=spec.rego_dir,
                                      engine="embedded", ledger=ledger, rates=spec.rates)
    except BaseException:
        ledger.close()
        raise


def ordered_calls(spec: SimSpec, currency: str, stats: RunInput,
                  progress: Callable[[int, int], None] | None) -> Iterator[Call]:
    """The priced calls in timestamp order (sorted, or checked with ``assume_sorted``)."""
    reader = stats.reader = CostReader(currency, spec.cost_field)
    bad = stats.bad if spec.skip_bad else None
    calls = stats.counted(to_calls(iter_receipts(spec.receipts, bad=bad, progress=progress), reader, bad))
    if spec.assume_sorted:
        return assume_sorted(calls)
    return time_ordered(calls, run_size=spec.run_size, tmpdir=spill_dir())


def _read(spec: SimSpec, currency: str, stats: RunInput) -> Iterator[Call]:
    """Sorted: the whole log is read and validated here, before the first decision."""
    if spec.assume_sorted:  # streamed: the deciding bar shows the progress
        return ordered_calls(spec, currency, stats, None)
    with LogProgress(log_bytes(spec.receipts), label=f"{spec.label}: reading", enabled=spec.progress) as bar:
        calls = ordered_calls(spec, currency, stats, bar)
        first = next(calls, None)
    if first is None:
        return iter(())
    return itertools.chain((first,), calls)


def _decide(spec: SimSpec, guard: Any, calls: Iterator[Call], sim: Simulation, total: int | None,
            on_decision: Callable[[Call, Decision], None] | None,
            on_call: Callable[[int], None] | None) -> int:
    count = 0
    show_now = total is not None and total >= THRESHOLD
    with LogProgress(total, label=f"{spec.label}: deciding", enabled=spec.progress,
                     threshold=0 if show_now else THRESHOLD) as bar:

        def each(call: Call, d: Decision) -> None:
            nonlocal count
            count += 1
            if count % 1024 == 0:
                bar(count, count)
                if on_call is not None:
                    on_call(count)
            if on_decision is not None:
                on_decision(call, d)

        run(guard, calls, sim, each)
    if on_call is not None:
        on_call(count)
    return count


def simulate_spec(spec: SimSpec, on_decision: Callable[[Call, Decision], None] | None = None,
                  on_call: Callable[[int], None] | None = None) -> tuple[Simulation, RunInput]:
    """Run one simulation; raises ``ChioBudgetError`` (bad input, policy, Rego, ledger) before reporting.

    ``on_decision(call, decision)`` sees every decision in order;
    ``on_call(n)`` is told the number of calls decided so far, now and then.
    """
    db = _sqlite_path(spec.ledger)
    created = db is not None and not (db.exists() and db.stat().st_size > 0)
    guard = open_guard(spec)
    stats = RunInput()
    sim = Simulation(guard.policy)
    try:
        calls = _read(spec, guard.policy.currency, stats)
        _decide(spec, guard, calls, sim, None if spec.assume_sorted else stats.calls, on_decision, on_call)
    except BaseException:
        guard.close()
        if created and db is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        raise
    guard.close()
    return sim, stats


def env_progress() -> bool:
    """Progress bars unless ``CHIO_NO_PROGRESS`` is set (they show only on a terminal anyway)."""
    return not os.environ.get("CHIO_NO_PROGRESS")
