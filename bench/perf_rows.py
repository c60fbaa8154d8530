"""The rows measured in this process: the decision's cost by path, the ledgers, the threads, batching.

Each ``*_group`` function builds what it measures, times it with
``perf_common.interleave`` (or ``throughput`` for threads), and returns
``(rows, series)``: table rows (``make_row``) and the numbers the figure draws.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

import perf_common as pc
from chio_budget.ledger import open_ledger
from chio_budget.opa_input import build_input
from chio_budget.rust_model import RustEnforcer


def make_row(rid: str, group: str, label: str, *, ratio: float | None = None, cpu_ratio: float | None = None,
             num: dict | None = None, den: dict | None = None, target: tuple[str, float] | None = None,
             status: str | None = None, note: str = "") -> dict[str, Any]:
    """One table row. With a ``target`` (``("<=", 0.6)``) and a ratio, status is PASS or MISS."""
    if status is None:
        if ratio is None:
            status = "n/a"
        elif target is None:
            status = "info"
        else:
            op, value = target
            status = "PASS" if (ratio <= value if op == "<=" else ratio >= value) else "MISS"
    return {"id": rid, "group": group, "label": label, "ratio": ratio, "cpu_ratio": cpu_ratio, "num": num,
            "den": den, "target": None if target is None else f"{target[0]} {target[1]:g}", "status": status,
            "note": note}


def cost(name: str, s: pc.Samples) -> dict[str, Any]:
    return {"name": name, "wall_us": s.med_wall() * 1e6, "cpu_us": s.med_cpu() * 1e6}


def ratio_row(rid: str, group: str, label: str, samples: dict[str, pc.Samples], a: str, b: str,
              target: tuple[str, float] | None = None, note: str = "") -> dict[str, Any]:
    wall, cpu = pc.pair(samples[a], samples[b])
    return make_row(rid, group, label, ratio=wall, cpu_ratio=cpu, num=cost(a, samples[a]),
                    den=cost(b, samples[b]), target=target, note=note)


# -- the decision, path by path -------------------------------------------------------------------


def _inputs(g: pc.BudgetGuard) -> tuple[dict, dict, pc.CostMetadata]:
    """An allow and a deny input exactly as the guard builds them (deny: the tool limit only)."""
    m = pc.meta(0)
    allow = g.evaluate(m, 5)
    deny = g.evaluate(m, 10**9 + 1)
    if not allow.decision.allow or deny.decision.allow:
        raise RuntimeError("bench: the allow/deny inputs do not decide as intended")
    return allow.input, deny.input, m


def _reference_input(inp: dict) -> dict:
    """What the 0f1dbcc Rego reads of an input (it ignores anything else)."""
    return {k: inp[k] for k in ("policy_id", "request", "cost", "totals")}


def _prefilled(policy: pc.BudgetPolicy, counters: int) -> pc.BudgetGuard:
    """A memory-ledger guard holding ``counters`` agent counters (``a0``...), loaded by ``import_``."""
    g = pc.guard(policy)
    key0 = g.counter_keys(pc.meta(0))["agent"]
    prefix = key0[: -len("a0")]
    g.ledger.import_({"key": f"{prefix}a{i}", "spent": 3} for i in range(counters))
    return g


def decision_group(rounds: int, k: int, counters: int) -> tuple[list[dict], dict]:
    policy = pc.make_policy()
    g = pc.guard(policy)
    for i in range(200):
        g.record(pc.meta(i), 3)
    allow, deny, m0 = _inputs(g)
    bare = pc.raw_opa(pc.live_modules(), pc.compile_all({policy.id: policy}).document)
    ref = pc.raw_opa({str(pc.REFERENCE_REGO): pc.REFERENCE_REGO.read_text()}, pc.reference_data(policy))
    trivial = pc.raw_opa({"trivial.rego": "package bench.trivial\n\nx := 1\n"})
    r_allow, r_deny = _reference_input(allow), _reference_input(deny)
    same = [bare.eval_document(pc.DOCUMENT, i)["allow"] == ref.eval_document(pc.DOCUMENT, r)["allow"]
            for i, r in ((allow, r_allow), (deny, r_deny))]
    model = RustEnforcer(policy)
    metas = [pc.meta(i) for i in range(1000)]
    for mm in metas[:200]:
        model.record(mm, 3)
    # The inputs guard.check builds for metas[i]: the guard is compared with OPA on the same inputs
    # (one fixed input evaluates measurably faster than a thousand different ones).
    built = [g.evaluate(mm, 5).input for mm in metas]
    scale = pc.make_policy("scale")
    small, big = _prefilled(scale, 10), _prefilled(scale, counters)
    tools10, tools10k = pc.guard(pc.make_policy("tools", 10)), pc.guard(pc.make_policy("tools", 10_000))
    scale_metas = [pc.meta(i, agents=10) for i in range(1000)]
    S = pc.Subject
    subjects = [
        S("trivial Rego (x := 1)", lambda i: trivial.eval_document("bench.trivial.x", allow), k),
        S("bare eval, allow", lambda i: bare.eval_document(pc.DOCUMENT, allow), k),
        S("bare eval, deny", lambda i: bare.eval_document(pc.DOCUMENT, deny), k),
        S("0f1dbcc eval, allow", lambda i: ref.eval_document(pc.DOCUMENT, r_allow), k),
        S("0f1dbcc eval, deny", lambda i: ref.eval_document(pc.DOCUMENT, r_deny), k),
        S("bare eval, the guard's inputs", lambda i: bare.eval_document(pc.DOCUMENT, built[i % 1000]), k),
        S("guard.check", lambda i: g.check(metas[i % 1000], 5), k),
        S("authorize+commit (memory)", pc.unique(pc.authorize_commit(g, metas)), k),
        S("rust model check", lambda i: model.check(metas[i % 1000], 5), k * 20),
        S("authorize+commit, 10 counters", pc.unique(pc.authorize_commit(small, scale_metas)), k),
        S(f"authorize+commit, {counters:,} counters", pc.unique(pc.authorize_commit(big, scale_metas)), k),
        S("authorize+commit, 10 tool limits", pc.unique(pc.authorize_commit(tools10, scale_metas)), k),
        S("authorize+commit, 10,000 tool limits", pc.unique(pc.authorize_commit(tools10k, scale_metas)), k),
    ]
    smp = pc.interleave(subjects, rounds)
    ident = "" if all(same) else " (live and 0f1dbcc DISAGREE on allow: check the inputs)"
    G = "decision"
    rows = [
        ratio_row("trivial_vs_bare", G, "trivial Rego (`x := 1`) / bare eval of data.chio.budget.decision",
                  smp, "trivial Rego (x := 1)", "bare eval, allow", note="same input; the bindings' floor"),
        ratio_row("rego_allow_vs_0f1dbcc", G, "Rego allow path: live rego/ / 0f1dbcc", smp, "bare eval, allow",
                  "0f1dbcc eval, allow", ("<=", 0.6), "bare evaluation, same input" + ident),
        ratio_row("rego_deny_vs_0f1dbcc", G, "Rego deny path: live rego/ / 0f1dbcc", smp, "bare eval, deny",
                  "0f1dbcc eval, deny", ("<=", 0.9), "one violation (tool limit)" + ident),
        ratio_row("check_vs_bare", G, "guard.check / bare eval", smp, "guard.check",
                  "bare eval, the guard's inputs",
                  ("<=", 1.05), "memory ledger; bare eval of the inputs the guard builds for the same calls"),
        ratio_row("authorize_commit_vs_bare", G, "authorize+commit (memory) / bare eval", smp,
                  "authorize+commit (memory)", "bare eval, the guard's inputs", ("<=", 1.15)),
        ratio_row("check_vs_rust_model", G, "guard.check / plain-Python Rust model", smp, "guard.check",
                  "rust model check", note="chio_budget.rust_model.RustEnforcer.check"),
        ratio_row("counters_1m_vs_10", G, f"{counters:,} vs 10 counters (authorize+commit, memory)", smp,
                  f"authorize+commit, {counters:,} counters", "authorize+commit, 10 counters", ("<=", 1.2),
                  "agent counters pre-filled with ledger.import_"),
        ratio_row("tools_10k_vs_10", G, "10,000 vs 10 tool limits (authorize+commit, memory)", smp,
                  "authorize+commit, 10,000 tool limits", "authorize+commit, 10 tool limits", ("<=", 1.2)),
    ]
    order = ["trivial Rego (x := 1)", "0f1dbcc eval, allow", "bare eval, allow", "0f1dbcc eval, deny",
             "bare eval, deny", "bare eval, the guard's inputs", "guard.check", "authorize+commit (memory)"]
    for x in (g, small, big, tools10, tools10k):
        x.close()
    for o in (bare, ref, trivial):
        o.close()
    return rows, {"cost": [cost(n, smp[n]) for n in order], "rust_model": cost("rust model check",
                                                                              smp["rust model check"])}


# -- the ledgers ------------------------------------------------------------------------------------


def backends_group(rounds: int, k: int, redis_url: str, pg_url: str) -> tuple[list[dict], dict]:
    """authorize + commit on each backend, single thread, against memory in the same rounds."""
    tmp = Path(tempfile.mkdtemp(prefix="chio-perf-"))
    tag = uuid.uuid4().hex[:8]
    uris = {"memory": "memory", "sqlite": f"sqlite:///{tmp / 'full.db'}",
            "sqlite (synchronous=NORMAL)": f"sqlite:///{tmp / 'normal.db'}?synchronous=NORMAL",
            "redis": pc.with_query(redis_url, f"prefix=chio-perf-{tag}"),
            "postgres": pc.with_query(pg_url, f"schema=chio_perf_{tag}")}
    policy, metas = pc.make_policy(), [pc.meta(i) for i in range(1000)]
    guards, skipped = {}, {}
    for name, uri in uris.items():
        try:
            ledger = open_ledger(uri)
            ledger.totals(["bench//total/"])  # reachable? (and a PostgreSQL schema created before timing)
            guards[name] = pc.guard(policy, ledger)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run is a skipped row
            skipped[name] = f"skipped: {type(exc).__name__}: {str(exc)[:120]}"
    try:
        subjects = [pc.Subject(n, pc.unique(pc.authorize_commit(g, metas)), k) for n, g in guards.items()]
        smp = pc.interleave(subjects, rounds)
    finally:
        for g in guards.values():
            for cleanup in ("clear", "drop"):
                if hasattr(g.ledger, cleanup):
                    getattr(g.ledger, cleanup)()
            g.close()
    rows = []
    for name in uris:
        if name == "memory":
            continue
        rid, label = f"backend_{name.split()[0]}{'_normal' if 'NORMAL' in name else ''}", \
            f"authorize+commit: {name} / memory"
        if name in skipped:
            rows.append(make_row(rid, "ledgers", label, status="skipped", note=skipped[name]))
        else:
            rows.append(ratio_row(rid, "ledgers", label, smp, name, "memory", note="one thread, in-process"))
    return rows, {"cost": [cost(f"ledgers: authorize+commit ({n})", smp[n]) for n in uris if n in smp]}


# -- threads ----------------------------------------------------------------------------------------


def threads_group(rounds: int, seconds: float) -> tuple[list[dict], dict]:
    """authorize+commit per second: 1 thread, 2 threads on one guard, 2 threads with a guard each."""
    policy = pc.make_policy()
    shared = pc.guard(policy, pooled=True)
    own = [pc.guard(policy) for _ in range(2)]
    metas = [pc.meta(i) for i in range(1000)]
    setups = {"1 thread": [pc.authorize_commit(shared, metas)],
              "2 threads, one guard": [pc.authorize_commit(shared, metas) for _ in range(2)],
              "2 threads, a guard each": [pc.authorize_commit(x, metas) for x in own]}
    for ops in setups.values():  # warm-up
        pc.throughput(ops, 0.1)
    dps: dict[str, list[float]] = {n: [] for n in setups}
    cpu: dict[str, list[float]] = {n: [] for n in setups}
    names = list(setups)
    for r in range(rounds):
        for n in names[r % 3:] + names[:r % 3]:
            d, c = pc.throughput(setups[n], seconds)
            dps[n].append(d)
            cpu[n].append(c)
    for x in (shared, *own):
        x.close()
    pool = "engine pool (pool_size=None)" if pc.features()["engine_pool"] else "one engine (no pool on this branch)"
    rows = [_tp_row("threads_one_guard", "2 threads on one guard / 1 thread", dps, cpu, "2 threads, one guard",
                    "1 thread", (">=", 1.25), f"authorize+commit, memory; {pool}"),
            _tp_row("threads_guard_each", "2 threads, one guard each / 1 thread", dps, cpu,
                    "2 threads, a guard each", "1 thread", None, "two engines, two memory ledgers")]
    med = {n: statistics.median(v) for n, v in dps.items()}
    return rows, {"threads_one_guard": [[1, med["1 thread"]], [2, med["2 threads, one guard"]]],
                  "threads_guard_each": [[1, med["1 thread"]], [2, med["2 threads, a guard each"]]]}


def _tp_row(rid: str, label: str, dps: dict, cpu: dict, a: str, b: str, target, note: str,
            group: str = "workers") -> dict[str, Any]:
    ratio = statistics.median(x / y for x, y in zip(dps[a], dps[b]))
    cpu_ratio = statistics.median(x / y for x, y in zip(cpu[a], cpu[b]))
    tp = lambda n: {"name": n, "dps": statistics.median(dps[n]), "cpu_us": statistics.median(cpu[n]) * 1e6}  # noqa: E731
    return make_row(rid, group, label, ratio=ratio, cpu_ratio=cpu_ratio, num=tp(a), den=tp(b), target=target,
                    note=note)


# -- batching -------------------------------------------------------------------------------------


def batch_group(n: int, rounds: int) -> tuple[list[dict], dict]:
    """Decisions per second for ``n`` independent inputs: one by one, then in one batch."""
    feats = pc.features()
    policy = pc.make_policy()
    g = pc.guard(policy)
    requests = [(pc.meta(i), 10**9 + 1 if i % 10 == 0 else (i * 7919) % 600) for i in range(n)]
    inputs = [build_input(m, c, {"total": i * 97, "session": i % 5000, "agent": i % 3000, "tool": (i * 13) % 10**9},
                          policy=policy) for i, (m, c) in enumerate(requests)]
    eng = g.engine
    last: dict[str, list] = {}  # each set-up's decisions from its last run, compared below

    def keep(name: str, fn: Any) -> Any:
        return lambda _i: last.__setitem__(name, list(fn()))

    setups: dict[str, Any] = {
        "engine.decide, one by one": keep("engine.decide, one by one", lambda: [eng.decide(x) for x in inputs]),
        "guard.check, one by one": keep("guard.check, one by one", lambda: [g.check(m, c) for m, c in requests])}
    if feats["decide_many"]:
        setups["engine.decide_many"] = keep("engine.decide_many", lambda: eng.decide_many(inputs))
    if feats["check_many"]:
        setups["guard.check_many"] = keep("guard.check_many", lambda: g.check_many(requests))
    smp = pc.interleave([pc.Subject(name, f, 1) for name, f in setups.items()], rounds, warmup=0)
    notes = {}
    for many, one in (("engine.decide_many", "engine.decide, one by one"),
                      ("guard.check_many", "guard.check, one by one")):
        if many in last:
            same = sum(_json(x) == _json(y) for x, y in zip(last[one], last[many]))
            notes[many] = f"identical decisions: {same}/{n}" + ("" if len(last[many]) == n else
                                                                f" (batch returned {len(last[many])})")
    g.close()
    rows = []
    for rid, many, one in (("batch_engine", "engine.decide_many", "engine.decide, one by one"),
                           ("batch_guard", "guard.check_many", "guard.check, one by one")):
        label = f"{many} / one by one, decisions/s ({n:,} inputs)"
        if many not in smp:
            rows.append(make_row(rid, "batch", label, status="n/a", note=pc.NA,
                                 num=None, den=_dps(one, smp[one], n)))
            continue
        wall = pc.pair(smp[one], smp[many])[0]  # time one by one / time batched = the throughput ratio
        cpu = pc.pair(smp[many], smp[one])[1]  # CPU per decision, batched / one by one
        rows.append(make_row(rid, "batch", label, ratio=wall, cpu_ratio=cpu, num=_dps(many, smp[many], n),
                             den=_dps(one, smp[one], n), note=notes.get(many, "")))
    return rows, {}


def _json(d: Any) -> dict:
    """A decision's JSON, whether ``check_many`` yields decisions or evaluations."""
    return getattr(d, "decision", d).to_json_dict()


def _dps(name: str, s: pc.Samples, n: int) -> dict[str, Any]:
    return {"name": name, "dps": n / s.med_wall(), "cpu_us": s.med_cpu() / n * 1e6}


def shadow_group(rounds: int, k: int) -> tuple[list[dict], dict]:
    """A chain call (evaluate + settle) with one shadow: on its own engine (two queries) or over
    the enforced guard's engine (one query, ``decide_beside``), and with no shadow."""
    from chio_budget.chain_guard import BudgetChainGuard
    from chio_budget.kernel import GuardContext

    enforced, nxt = pc.make_policy("bench"), pc.make_policy("next")
    shared = pc.engine([enforced, nxt])
    setups = {"chain call, no shadow": BudgetChainGuard(pc.guard(enforced)),
              "chain call, shadow on its own engine": BudgetChainGuard(pc.guard(enforced),
                                                                       shadows=[pc.guard(nxt)]),
              "chain call, shadow beside (one query)": BudgetChainGuard(pc.BudgetGuard(enforced, shared),
                                                                        shadows=[pc.BudgetGuard(nxt, shared)])}

    def call(b: BudgetChainGuard, label: str) -> Any:
        ids = itertools.count()

        def op(i: int) -> None:
            rid = f"{label}-{next(ids)}"
            ctx = GuardContext(request_id=rid, tool_name="t0", server_id="s1", agent_id=f"a{i % 7}",
                               session_id=f"s{i % 3}", timestamp=1000, cost_estimate=5)
            if b.evaluate(ctx).verdict != "allow":
                raise RuntimeError("bench: expected an allowed chain call")
            b.on_invocation_complete(rid, 5)
        return op
    smp = pc.interleave([pc.Subject(name, call(b, name), k) for name, b in setups.items()], rounds)
    for b in setups.values():
        b.close()
    G = "batch"
    return [ratio_row("shadow_beside_vs_own", G, "chain call with a shadow: one query (beside) / two queries",
                      smp, "chain call, shadow beside (one query)", "chain call, shadow on its own engine",
                      note="evaluate + settle, memory ledger; the shadow over the enforced guard's engine"),
            ratio_row("shadow_beside_vs_none", G, "chain call with a shadow beside / no shadow", smp,
                      "chain call, shadow beside (one query)", "chain call, no shadow",
                      note="what judging a shadow on every call costs, in one query")], {}
