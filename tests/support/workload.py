"""The overspend workload, and the functions child processes run.

Child processes (``multiprocessing`` spawn, ``subprocess``) import these by
name in a fresh interpreter, so they live in an importable module, not in a
test file.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable
from urllib.parse import unquote

from chio_budget import CostMetadata
from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.engines.function import FunctionEngine
from chio_budget.ledger import open_ledger
from chio_budget.policy import BudgetPolicy

from .guards import guard_for

# Skewed on purpose (sess-0 and a0 are busy) so every scope's limit binds in one run.
SESSIONS = ["sess-0"] * 3 + [f"sess-{i}" for i in range(1, 6)] + [None, None]
AGENTS = ["a0"] * 3 + ["a1", "a2", "a3"]
TOOLS = [("s1", "expensive"), ("s1", "cheap"), ("s2", "search"), ("s3", "other")]
MAX_COST = 250


def tight_policy(total_ops: int):
    """Limits on every scope, sized so each binds well before ``total_ops`` requests end.

    Expected committed spend a request is about 0.6 x 125 units; the total
    limit is a fifth of that demand; the busy session, the busy agent and the
    limited tools reach theirs first.
    """
    demand = max(total_ops, 50) * 75
    return BudgetPolicy.model_validate({
        "id": "tight", "currency": "USD",
        "max_total": demand // 5,
        "max_per_session": demand // 30,
        "max_per_agent": demand // 16,
        "max_per_tool": {"s1:expensive": demand // 40, "s2:search": demand // 12},
    })


def run_requests(guard, worker: int, n: int, seed: int, start: "Callable[[], None] | None" = None) -> dict:
    """``n`` authorize -> commit/release/abandon calls of random cost through ``guard``.

    Returns what a careful caller knows afterwards: every commit the ledger
    confirmed (receipt, scope keys, amount), the abandoned receipts, counts.
    Allowed calls commit an actual cost no larger than the estimate (so a
    committed total above a limit can only come from a race), sometimes
    commit twice (must be a no-op), release, or walk away (TTL expiry).
    """
    rnd = random.Random(seed * 1000 + worker)
    committed: list[tuple[str, dict[str, str], int]] = []
    out = {"committed": committed, "abandoned": [], "allowed": 0, "denied": 0, "errors": 0,
           "denied_scopes": {}, "double_commit_changed": 0}
    if start is not None:
        start()
    for i in range(n):
        server, tool = rnd.choice(TOOLS)
        meta = CostMetadata(receipt_id=f"w{worker}-{seed}-{i}", timestamp=1000 + i, session_id=rnd.choice(SESSIONS),
                            agent_id=rnd.choice(AGENTS), tool_server=server, tool_name=tool)
        cost = rnd.randint(0, MAX_COST)
        a = guard.authorize(meta, cost)
        if not a.allow:
            out["denied"] += 1
            if a.decision.error:
                out["errors"] += 1
            for v in a.decision.violations:
                out["denied_scopes"][v.scope] = out["denied_scopes"].get(v.scope, 0) + 1
            continue
        out["allowed"] += 1
        roll = rnd.random()
        if roll < 0.80:
            actual = rnd.randint(0, cost) if roll < 0.6 else None
            s = a.commit(actual)
            if s.outcome in ("committed", "committed_late"):
                committed.append((meta.receipt_id, guard.counter_keys(meta), s.amount))
            if rnd.random() < 0.1 and a.commit(actual).changed:
                out["double_commit_changed"] += 1
        elif roll < 0.95:
            a.release()
        else:
            out["abandoned"].append(meta.receipt_id)
    return out


def merge_results(results: list[dict]) -> dict:
    merged = {"committed": [], "abandoned": [], "allowed": 0, "denied": 0, "errors": 0, "denied_scopes": {},
              "double_commit_changed": 0}
    for r in results:
        merged["committed"] += r["committed"]
        merged["abandoned"] += r["abandoned"]
        for k in ("allowed", "denied", "errors", "double_commit_changed"):
            merged[k] += r[k]
        for scope, n in r["denied_scopes"].items():
            merged["denied_scopes"][scope] = merged["denied_scopes"].get(scope, 0) + n
    return merged


def audit(policy, ledger, committed: "list[tuple[str, dict[str, str], int]]") -> dict:
    """Compare what was committed with the limits and with the ledger.

    ``overspend``: units committed beyond a limit, summed over every limited
    counter (must be 0). ``mismatch``: counters whose ledger value differs
    from the sum of the commits touching them (must be empty). Call after
    every reservation is settled or expired.
    """
    sums: dict[str, int] = {}
    limit_of: dict[str, int] = {}
    for _, keys, amount in committed:
        for scope, key in keys.items():
            sums[key] = sums.get(key, 0) + amount
            limit = _limit(policy, scope, key)
            if limit is not None:
                limit_of[key] = limit
    seen = sorted(sums)
    values = dict(zip(seen, ledger.totals(seen))) if seen else {}
    over = {k: sums[k] - limit_of[k] for k in limit_of if sums[k] > limit_of[k]}
    mismatch = {k: (values[k], sums[k]) for k in seen if values[k] != sums[k]}
    return {"overspend": sum(over.values()), "over": over, "mismatch": mismatch,
            "committed_units": sum(a for _, _, a in committed), "commits": len(committed),
            "limited_counters": len(limit_of)}


def _limit(policy, scope: str, key: str) -> int | None:
    if scope == "total":
        return policy.max_total.units
    if scope == "session":
        return policy.max_per_session.units if policy.max_per_session else None
    if scope == "agent":
        return policy.max_per_agent.units if policy.max_per_agent else None
    tool = unquote(key.rsplit("/", 1)[1])
    m = policy.max_per_tool.get(tool) if policy.max_per_tool else None
    return None if m is None else m.units


def process_worker(uri: str, total_ops: int, worker: int, n: int, seed: int, go_file: str) -> dict:
    """One process of the multi-process test: its own guard, the shared ledger URI."""
    guard = guard_for(tight_policy(total_ops), ledger=uri, reservation_ttl=3600)

    def wait_for_go() -> None:  # start together so the processes really contend
        while not os.path.exists(go_file):
            time.sleep(0.005)

    try:
        return run_requests(guard, worker, n, seed, start=wait_for_go)
    finally:
        guard.close()


def crash_child(uri: str, log_path: str, seed: int) -> None:
    """Authorize/commit forever on ``uri``; log ``receipt amount`` only after commit returns.

    The parent kills this process with SIGKILL at an arbitrary point. The log
    is written with one ``os.write`` per line on an O_APPEND descriptor, so a
    line is either there whole or not at all.
    """
    policy = BudgetPolicy.model_validate({"id": "crash", "currency": "USD", "max_total": 10**12,
                                          "max_per_session": 10**9, "max_per_agent": 10**10})
    guard = guard_for(policy, ledger=uri, reservation_ttl=60)
    rnd = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = 0
    while True:
        i += 1
        server, tool = rnd.choice(TOOLS)
        meta = CostMetadata(receipt_id=f"crash-{seed}-{i}", timestamp=i, session_id=rnd.choice(SESSIONS),
                            agent_id=rnd.choice(AGENTS), tool_server=server, tool_name=tool)
        a = guard.authorize(meta, rnd.randint(1, 1000))
        if not a.allow:
            continue
        if rnd.random() < 0.85:
            s = a.commit(rnd.randint(0, 1000))
            if s.outcome == "committed":
                os.write(fd, f"{meta.receipt_id} {s.amount}\n".encode())
        elif rnd.random() < 0.5:
            a.release()
        # else: walk away; the reservation must expire, never count as spend


def late_commit_worker(uri: str, receipt_id: str, go_file: str, skew: float) -> str:
    """One process of the late-commit test: wait for the go file, commit ``receipt_id`` with a
    clock ``skew`` seconds ahead (past its TTL); the outcome."""
    ledger = open_ledger(uri, clock=lambda: time.time() + skew)
    try:
        while not os.path.exists(go_file):
            time.sleep(0.002)
        return ledger.commit(receipt_id).outcome
    finally:
        ledger.close()


def settle_worker(uri: str, policy_doc: dict, request_id: str, actual: int, go_file: str) -> str:
    """One process settling ``request_id`` through a chain guard of its own on the shared ledger
    (it never authorized the call); waits for the go file so the processes race. The outcome."""
    policy = BudgetPolicy.model_validate(policy_doc)
    never_asked = FunctionEngine(lambda _input: {"allow": False, "error": "settlement never asks OPA"})
    chain_guard = BudgetChainGuard(guard_for(policy, never_asked, uri))
    try:
        while not os.path.exists(go_file):
            time.sleep(0.002)
        return chain_guard.on_invocation_complete(request_id, actual).outcome
    finally:
        chain_guard.close()


# -- workers of the extension tests (module level: spawned processes import them) ---------------


def _opened_and_started(ledger, start):
    """``(ledger, close?)``: a URI is opened here; ``start`` is a callable or a go file to wait for."""
    opened = isinstance(ledger, str)
    if opened:
        ledger = open_ledger(ledger)
    if callable(start):
        start()
    elif start is not None:
        while not os.path.exists(start):
            time.sleep(0.002)
    return ledger, opened


def window_worker(ledger, worker: int, n: int, start=None) -> int:
    """``n`` reservations of 7 on either bucket of a two-bucket window (limit 100), each
    reading the other bucket; keeps a hold only when it fits, releases it otherwise.
    Returns how many holds it kept."""
    ledger, opened = _opened_and_started(ledger, start)
    buckets = [("p/b2/total/", "p/b1/total/"), ("p/b1/total/", "p/b2/total/")]
    kept = 0
    try:
        for i in range(n):
            key, other = buckets[(worker + i) % 2]
            rid = f"win-{worker}-{i}"
            if ledger.reserve(rid, [key], 7, reads={key: [other]}).before[0] + 7 <= 100:
                kept += 1
            else:
                ledger.release(rid)
        return kept
    finally:
        if opened:
            ledger.close()


def fleet_worker(uri: str, worker: int, n: int, marks: list[str], go_file: str) -> tuple[int, list[str]]:
    """``window_worker`` on ``uri`` once the go file exists, then every mark tried once:
    ``(holds kept, the marks this process was first to set)``."""
    ledger, _ = _opened_and_started(uri, go_file)
    try:
        return window_worker(ledger, worker, n), [m for m in marks if ledger.mark_once(m, ttl=3600)]
    finally:
        ledger.close()
