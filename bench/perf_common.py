"""What every part of ``bench/perf.py`` shares: the policies, guards, engines, inputs, and timing.

Timing is always side by side: ``interleave`` runs every subject of a group
once per round, in a rotating order, so a burst of load from the rest of the
machine lands on all of them alike; ``pair`` turns two subjects' rounds into
per-round ratios and takes their median. Wall time is ``perf_counter``;
CPU is ``process_time`` (every thread of the process, Go's included).

Features other branches add (an engine pool, ``decide_many``,
``check_many``) are detected here, never assumed.
"""

from __future__ import annotations

import inspect
import itertools
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
REGO_DIR = ROOT / "rego"
REFERENCE_REGO = ROOT / "bench" / "reference" / "decision_0f1dbcc.rego"
sys.path[:0] = [str(ROOT / "plugin"), str(ROOT / "bench" / "reference")]

from opa_bindings import OpaEngine  # noqa: E402

from chio_budget import BudgetGuard, BudgetPolicy, CostMetadata  # noqa: E402
from chio_budget.compiler import DECISION_PATH, compile_all  # noqa: E402
from chio_budget.engines.embedded import EmbeddedEngine  # noqa: E402
from chio_budget.rego_files import rego_modules  # noqa: E402
from data_0f1dbcc import data_0f1dbcc  # noqa: E402

DOCUMENT = DECISION_PATH.replace("/", ".")
NA = "n/a (not on this branch)"
_ids = itertools.count()


def policy_doc(pid: str = "bench", tools: int = 1) -> dict[str, Any]:
    """All four limits, so every scope has a counter and the 0f1dbcc Rego reads every total.

    The tool limits are ``s1:t0`` .. ``s1:t{tools-1}``; requests use ``s1:t0``.
    """
    return {"id": pid, "currency": "USD", "max_total": 10**15, "max_per_session": 10**12,
            "max_per_agent": 10**12, "max_per_tool": {f"s1:t{i}": 10**9 for i in range(tools)}}


def make_policy(pid: str = "bench", tools: int = 1) -> BudgetPolicy:
    return BudgetPolicy.model_validate(policy_doc(pid, tools))


def reference_data(policy: BudgetPolicy) -> dict[str, Any]:
    """The data document exactly as commit 0f1dbcc compiled it (``bench/reference/data_0f1dbcc.py``)."""
    return data_0f1dbcc({policy.id: policy})


def raw_opa(modules: dict[str, str], data: dict[str, Any] | None = None) -> OpaEngine:
    """A bare ``OpaEngine`` (the bindings, no guard code) with these modules and data, compiled."""
    opa = OpaEngine()
    opa.print_handler = lambda _msg, _loc: None
    for name, src in modules.items():
        opa.add_policy(name, src)
    if data is not None:
        opa.add_data(data)
    return opa


def live_modules() -> dict[str, str]:
    return rego_modules(REGO_DIR, full_paths=True)


# -- features other branches add ------------------------------------------------------------------


def features() -> dict[str, bool]:
    params = inspect.signature(EmbeddedEngine.__init__).parameters
    return {"engine_pool": "pool_size" in params, "decide_many": hasattr(EmbeddedEngine, "decide_many"),
            "check_many": hasattr(BudgetGuard, "check_many")}


def engine(policies: list[BudgetPolicy], pooled: bool = False) -> EmbeddedEngine:
    """The embedded engine on the live Rego; ``pooled`` asks for the engine pool where there is one."""
    compiled = compile_all({p.id: p for p in policies})
    if pooled and features()["engine_pool"]:
        return EmbeddedEngine(compiled, REGO_DIR, pool_size=None)
    return EmbeddedEngine(compiled, REGO_DIR)


def guard(policy: BudgetPolicy, ledger: Any = "memory", pooled: bool = False) -> BudgetGuard:
    return BudgetGuard(policy, engine([policy], pooled), ledger)


def meta(i: int, agents: int = 50, tool: str = "t0") -> CostMetadata:
    return CostMetadata(receipt_id=f"m{i}", timestamp=1000, session_id=f"sess-{i % 20}", agent_id=f"a{i % agents}",
                        tool_server="s1", tool_name=tool)


def authorize_commit(g: BudgetGuard, metas: list[CostMetadata], cost: int = 5) -> Callable[[int], None]:
    """``fn(i)``: one ``authorize`` + ``commit`` of a fresh receipt (``metas[i]``'s request);
    raises unless allowed and committed."""
    run, fresh = f"{os.getpid()}-{next(_ids)}", itertools.count()

    def op(i: int) -> None:
        m = metas[i % len(metas)]
        a = g.authorize(m.model_copy(update={"receipt_id": f"{run}-{next(fresh)}"}), cost)
        if not a.allow or a.commit().outcome != "committed":
            raise RuntimeError(f"bench: expected an allowed, committed call, got {a.decision}")
    return op


def with_query(url: str, param: str) -> str:
    """``url`` with ``param`` (``name=value``) added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}{param}"


def unique(fn: Callable[[int], Any]) -> Callable[[int], Any]:
    """Feed ``fn`` an index that never repeats across rounds (receipt ids stay fresh)."""
    counter = itertools.count()
    return lambda _i: fn(next(counter))


# -- timing ---------------------------------------------------------------------------------------


@dataclass
class Subject:
    name: str
    fn: Callable[[int], Any]
    k: int  # calls per round


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)  # seconds per call, one per round
    cpu: list[float] = field(default_factory=list)

    def med_wall(self) -> float:
        return statistics.median(self.wall)

    def med_cpu(self) -> float:
        return statistics.median(self.cpu)


def interleave(subjects: list[Subject], rounds: int, warmup: int = 1) -> dict[str, Samples]:
    """Every subject ``k`` calls per round, the order rotating each round; per-call wall and CPU."""
    out = {s.name: Samples() for s in subjects}
    for r in range(-warmup, rounds):
        n = len(subjects)
        order = subjects[r % n:] + subjects[:r % n]
        for s in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(s.k):
                s.fn(i)
            w, c = time.perf_counter() - t0, time.process_time() - c0
            if r >= 0:
                out[s.name].wall.append(w / s.k)
                out[s.name].cpu.append(c / s.k)
    return out


def pair(a: Samples, b: Samples) -> tuple[float, float]:
    """Median over rounds of a/b, wall and CPU (rounds are paired: both ran in the same one)."""
    return (statistics.median(x / y for x, y in zip(a.wall, b.wall)),
            statistics.median(x / y for x, y in zip(a.cpu, b.cpu) if y > 0) if any(a.cpu) else float("nan"))


def throughput(ops: list[Callable[[int], Any]], seconds: float) -> tuple[float, float]:
    """Run each op in its own thread (started together) for ``seconds``: (decisions/s, CPU s/decision)."""
    barrier = threading.Barrier(len(ops) + 1)
    counts = [0] * len(ops)
    errors: list[BaseException] = []
    end = [0.0]

    def work(w: int) -> None:
        barrier.wait()
        n, op = 0, ops[w]
        try:
            while time.perf_counter() < end[0]:
                op(n)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        counts[w] = n

    threads = [threading.Thread(target=work, args=(w,)) for w in range(len(ops))]
    for t in threads:
        t.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    barrier.wait()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if errors:
        raise errors[0]
    n = sum(counts)
    return n / wall, cpu / max(n, 1)
