"""Two budget configurations against the same log: which calls would be decided differently.

Each side is an independent simulation (``simrun.simulate_spec``: its own
guard, embedded OPA and fresh ledger), sequential inside because every
decision depends on the commits before it. The two sides do not depend on
each other, so with ``jobs=2`` they run in two processes (``spawn``: each
starts its own OPA runtime) - on two cores, the wall time of one. Each side
writes one line per decision to a temporary file; the files are then walked
together by ``(timestamp, seq)``, so memory stays flat whatever the log size.

Two decisions are the same when both allow, or both deny for the same
scopes (in order; an engine or ledger error counts as scope ``error``). A
call one side skipped (``--skip-bad``) and the other decided is a difference.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_mod
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from ..decision import Decision
from ..errors import ChioBudgetError, InputError
from .ordering import Call
from .progress import LogProgress
from .simrun import SimSpec, simulate_spec


def scopes_of(d: Decision) -> list[str]:
    if d.allow:
        return []
    if d.error is not None:
        return ["error"]
    return list(dict.fromkeys(v.scope for v in d.violations)) or ["unspecified"]


def _line(call: Call, d: Decision) -> str:
    return json.dumps([call.timestamp, call.seq, call.receipt_id, call.where, call.agent_id, call.session_id,
                       call.tool_key, call.cost, d.allow, scopes_of(d), d.to_json_dict()],
                      separators=(",", ":")) + "\n"


def run_side(spec: SimSpec, path: str, on_call: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One side: simulate, writing each decision to ``path``; returns the side's summary."""
    with open(path, "w", encoding="utf-8") as out:
        sim, inputs = simulate_spec(spec, lambda call, d: out.write(_line(call, d)), on_call)
    r = sim.result()
    return {"policies": spec.policies, "rego_dir": spec.rego_dir,
            "policy_id": r["policy_id"], "policy_revision": r["policy_revision"], "currency": r["currency"],
            "calls": r["calls"], "spent": r["spend"]["total"]["spent"], "denied_by_scope": r["denied_by_scope"],
            "input": inputs.to_json()}


def _worker(side: str, spec: SimSpec, path: str, counter: Any, results: Any) -> None:
    """Process entry point: never raises; puts ``(side, "ok"|"error", payload)`` on ``results``."""
    try:
        summary = run_side(spec, path, lambda n: setattr(counter, "value", n))
        results.put((side, "ok", summary))
    except ChioBudgetError as exc:
        results.put((side, "error", str(exc)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which exits non-zero
        results.put((side, "crash", traceback.format_exc()))


@dataclass
class DiffSummary:
    calls: int = 0
    differ: int = 0
    denied_only_in_a: dict[str, int] = field(default_factory=dict)
    denied_only_in_b: dict[str, int] = field(default_factory=dict)
    denied_in_both_differently: int = 0
    only_in_a: int = 0
    only_in_b: int = 0
    sides: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "differ": self.differ,
                "denied_only_in_a": dict(sorted(self.denied_only_in_a.items())),
                "denied_only_in_b": dict(sorted(self.denied_only_in_b.items())),
                "denied_in_both_differently": self.denied_in_both_differently,
                "decided_only_in_a": self.only_in_a, "decided_only_in_b": self.only_in_b,
                "a": self.sides.get("a"), "b": self.sides.get("b")}


def _run_sides(a: SimSpec, b: SimSpec, paths: dict[str, str], jobs: int, show: bool) -> dict[str, Any]:
    if jobs < 2:
        return {"a": run_side(a, paths["a"]), "b": run_side(b, paths["b"])}
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    counters = {side: ctx.Value("q", 0, lock=False) for side in ("a", "b")}
    procs = {side: ctx.Process(target=_worker, args=(side, spec, paths[side], counters[side], results), daemon=True)
             for side, spec in (("a", a), ("b", b))}
    for p in procs.values():
        p.start()
    got: dict[str, tuple[str, Any]] = {}
    with LogProgress(None, label="diff: deciding (a + b)", enabled=show) as bar:
        while len(got) < 2:
            try:
                side, status, payload = results.get(timeout=0.25)
                got[side] = (status, payload)
            except queue_mod.Empty:
                dead = [s for s, p in procs.items() if s not in got and not p.is_alive()]
                if dead and results.empty():
                    got.update({s: ("crash", f"exit code {procs[s].exitcode}") for s in dead})
            n = counters["a"].value + counters["b"].value
            bar(n, n)
    for p in procs.values():
        p.join(timeout=30)
    for side in ("a", "b"):
        status, payload = got[side]
        if status == "error":
            raise InputError(payload)
        if status == "crash":
            raise RuntimeError(f"diff side {side} failed:\n{payload}")
    return {side: got[side][1] for side in ("a", "b")}


def _read(path: str) -> Iterator[list[Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _difference(x: list[Any] | None, y: list[Any] | None) -> dict[str, Any]:
    base = x if x is not None else y
    assert base is not None
    out = {"receipt_id": base[2], "timestamp": base[0], "where": base[3], "agent_id": base[4],
           "session_id": base[5], "tool_key": base[6], "cost_units": base[7],
           "a": None if x is None else x[10], "b": None if y is None else y[10]}
    if x is not None and y is not None and x[7] != y[7]:
        out["cost_units_b"] = y[7]
    return out


def _count(s: DiffSummary, x: list[Any] | None, y: list[Any] | None) -> None:
    s.differ += 1
    if x is None:
        s.only_in_b += 1
    elif y is None:
        s.only_in_a += 1
    elif not x[8] and y[8]:
        for scope in x[9]:
            s.denied_only_in_a[scope] = s.denied_only_in_a.get(scope, 0) + 1
    elif x[8] and not y[8]:
        for scope in y[9]:
            s.denied_only_in_b[scope] = s.denied_only_in_b.get(scope, 0) + 1
    else:
        s.denied_in_both_differently += 1


def compare(path_a: str, path_b: str, summary: DiffSummary) -> Iterator[dict[str, Any]]:
    """Walk both decision files by ``(timestamp, seq)``; yield each differing call, counting in ``summary``."""
    ia, ib = _read(path_a), _read(path_b)
    x, y = next(ia, None), next(ib, None)
    while x is not None or y is not None:
        if y is None or (x is not None and (x[0], x[1]) < (y[0], y[1])):
            pair, x = (x, None), next(ia, None)
        elif x is None or (y[0], y[1]) < (x[0], x[1]):
            pair, y = (None, y), next(ib, None)
        else:
            pair, x, y = (x, y), next(ia, None), next(ib, None)
        summary.calls += 1
        a, b = pair
        if a is not None and b is not None and a[8] == b[8] and a[9] == b[9]:
            continue
        _count(summary, a, b)
        yield _difference(a, b)


def diff(a: SimSpec, b: SimSpec, *, jobs: int = 2, show_progress: bool = True) -> tuple[DiffSummary, Iterator[dict]]:
    """Run both sides; returns the summary (filled as the differences are consumed) and the differences.

    Raises ``ChioBudgetError`` for bad input on either side before returning.
    """
    tmp = tempfile.TemporaryDirectory(prefix="chio-diff-")
    paths = {side: os.path.join(tmp.name, f"{side}.jsonl") for side in ("a", "b")}
    try:
        sides = _run_sides(replace(a, progress=False, label="a"), replace(b, progress=False, label="b"), paths,
                           jobs, show_progress)
    except BaseException:
        tmp.cleanup()
        raise
    summary = DiffSummary(sides=sides)

    def differences() -> Iterator[dict[str, Any]]:
        try:
            yield from compare(paths["a"], paths["b"], summary)
        finally:
            tmp.cleanup()
    return summary, differences()
