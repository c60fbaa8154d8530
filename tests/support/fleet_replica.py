"""Test support: one kernel replica of the multi-replica fault test, run as its own process.

``python -c "import support.fleet_replica as f; f.main(...)"``: its own ``BudgetGuard``
(the real embedded OPA) on the shared ledger URI, doing authorize -> commit
(85%, an actual cost up to the estimate) or release (15%) with random costs
until the budget is spent (40 denies in a row on the total limit), the parent
writes the stop file, or 60 s pass. It writes one JSON line per event to its
log with a single ``os.write`` on an O_APPEND descriptor, so a line is there
whole or not at all even when the parent SIGKILLs it:

- ``{"k": "ready"}`` once the guard is built; then it waits for the go file;
- ``{"k": "d", "rid", "t0", "t1", "allow", "error", "scopes"}`` per decision
  (``t0``/``t1``: wall time around ``authorize``);
- ``{"k": "ack", "rid", "amount", "keys", "outcome"}`` once a commit is
  acknowledged: after a ``LedgerError`` the settlement stays pending and is
  retried before each next decision (it is idempotent; the replica goes on
  deciding meanwhile), and ``already_committed`` is acknowledged with the
  amount the ledger records for the receipt, as a careful caller does;
- ``{"k": "settle_error", "rid", "error"}`` per failed settle attempt.
"""

from __future__ import annotations

import json
import os
import random
import time

POLICY = {"id": "fleet", "currency": "USD", "max_total": 20_000, "max_per_agent": 8_000,
          "max_per_tool": {"s1:expensive": 4_000}}
AGENTS = ["a0", "a1", "a2", "a3"]
TOOLS = [("s1", "expensive"), ("s1", "cheap"), ("s2", "search")]
TTL = 3.0
MAX_COST = 300


def _writer(path: str):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return lambda **event: os.write(fd, (json.dumps(event) + "\n").encode())


def _wait(path: str, deadline: float) -> None:
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.005)


def _settle(guard, pending: list, log) -> None:
    """Try each pending settlement once (commit: ``actual`` not None; else release); keep those
    that failed for the next round. A replica goes on deciding while the ledger is away, as a
    kernel keeps taking calls while older settlements retry."""
    from chio_budget.errors import LedgerError

    still = []
    for a, rid, keys, actual in pending:
        try:
            s = a.commit(actual) if actual is not None else a.release()
        except LedgerError as exc:
            log(k="settle_error", rid=rid, error=str(exc)[:200])
            still.append((a, rid, keys, actual))
            continue
        if s.outcome in ("committed", "committed_late"):
            log(k="ack", rid=rid, amount=s.amount, keys=keys, outcome=s.outcome)
        elif s.outcome == "already_committed":  # an earlier attempt ran; its reply was lost
            log(k="ack", rid=rid, amount=guard.ledger.get(rid).settled_amount, keys=keys, outcome=s.outcome)
    pending[:] = still


def main(uri: str, log_path: str, seed: int, go_file: str, stop_file: str) -> None:
    from chio_budget import CostMetadata
    from chio_budget.policy import BudgetPolicy
    from support.guards import guard_for

    log = _writer(log_path)
    guard = guard_for(BudgetPolicy.model_validate(POLICY), ledger=uri, reservation_ttl=TTL)
    log(k="ready")
    end = time.time() + 60
    _wait(go_file, end)
    rnd = random.Random(seed)
    streak, i, pending = 0, 0, []
    while streak < 40 and not os.path.exists(stop_file) and time.time() < end:
        _settle(guard, pending, log)
        i += 1
        server, tool = rnd.choice(TOOLS)
        meta = CostMetadata(receipt_id=f"r{seed}-{i}", timestamp=i, agent_id=rnd.choice(AGENTS),
                            tool_server=server, tool_name=tool)
        cost = rnd.randint(1, MAX_COST)
        t0 = time.time()
        a = guard.authorize(meta, cost)
        d = a.decision
        log(k="d", rid=meta.receipt_id, t0=t0, t1=time.time(), allow=d.allow, error=d.error,
            scopes=[v.scope for v in d.violations])
        if not d.allow:
            spent = d.error is None and "total" in [v.scope for v in d.violations]
            streak = streak + 1 if spent else 0
            if d.error:
                time.sleep(0.01)  # an outage: do not spin
            continue
        streak = 0
        actual = rnd.randint(0, cost) if rnd.random() < 0.85 else None
        pending.append((a, meta.receipt_id, guard.counter_keys(meta), actual))
        _settle(guard, pending, log)
    while pending and time.time() < end:  # the budget is spent; finish what is still open
        time.sleep(0.05)
        _settle(guard, pending, log)
    guard.close()
