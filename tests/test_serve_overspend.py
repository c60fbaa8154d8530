"""No overspend through the sidecar: 4 client threads against 2 workers on one shared ledger
(SQLite, then Redis), a budget a fraction of the demand, real HTTP all the way.

Each thread evaluates, then settles (an actual cost at most the estimate, a failure, a
settle sent twice, or a retried evaluate first). Invariants, never timings: what the
ledger counts as spent equals what the settlements said they committed, nothing stays
held, and spent never exceeds the limit.
"""

from __future__ import annotations

import random
import threading
import uuid

import pytest

from support.backends import REDIS_URL, delete_redis_prefix, need_redis
from support.sidecar import ctx, start_sidecar, write_policies

pytestmark = pytest.mark.slow

THREADS, CALLS, LIMIT, PRICE = 4, 40, 600, 9


def _client_thread(side, seed: int, out: list[dict]) -> None:
    rnd = random.Random(seed)
    with side.client() as http:
        for i in range(CALLS):
            rid = f"t{seed}-{i}-{uuid.uuid4().hex[:6]}"
            body = ctx(rid, agent_id=f"a{rnd.randrange(3)}", policy_id="tight")
            d = http.post("/v1/evaluate", json=body).json()
            if rnd.random() < 0.2:
                assert http.post("/v1/evaluate", json=body).json() == d  # a retry: the first answer
            if d["verdict"] != "allow":
                out.append({"allowed": False})
                continue
            if rnd.random() < 0.15:
                s = http.post("/v1/settle", json={"request_id": rid, "status": "failed"}).json()
                assert s["outcome"] == "released"
                out.append({"allowed": True, "committed": 0})
                continue
            s = http.post("/v1/settle", json={"request_id": rid, "result": rnd.randint(1, PRICE)}).json()
            assert s["outcome"] == "committed", s
            if rnd.random() < 0.2:
                assert http.post("/v1/settle", json={"request_id": rid, "result": PRICE}).json()["outcome"] == \
                    "already_settled"
            out.append({"allowed": True, "committed": s["committed_units"]})


def _run(side) -> None:
    results: list[list[dict]] = [[] for _ in range(THREADS)]
    threads = [threading.Thread(target=_client_thread, args=(side, n, results[n])) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    calls = [r for rs in results for r in rs]
    assert len(calls) == THREADS * CALLS, "a client thread failed (see its assertion above)"
    committed = sum(r.get("committed", 0) for r in calls)
    with side.client() as http:
        total = http.get("/v1/budget", params={"policy_id": "tight"}).json()["scopes"][0]
    assert total["held_units"] == 0
    assert total["spent_units"] == committed
    assert total["spent_units"] <= LIMIT  # 0 overspend
    assert sum(not r["allowed"] for r in calls) > 0  # the budget did bind
    assert len(side.pids) == 2


def _policies(tmp_path):
    return write_policies(tmp_path / "p", {"default.yaml": "currency: USD\nmax_total: 100\n",
                                           "tight.yaml": f"currency: USD\nmax_total: {LIMIT}\n"
                                                         f"prices:\n  \"s1:search\": {PRICE}\n"})


def test_no_overspend_on_sqlite(tmp_path):
    side = start_sidecar(_policies(tmp_path), "--ledger", f"sqlite:///{tmp_path / 'l.db'}", workers=2, tmp=tmp_path)
    try:
        _run(side)
    finally:
        assert side.stop() == 0


@pytest.mark.redis
def test_no_overspend_on_redis(tmp_path):
    need_redis()
    prefix = f"chio-test-serve-{uuid.uuid4().hex[:10]}"
    uri = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
    side = start_sidecar(_policies(tmp_path), "--ledger", uri, workers=2, tmp=tmp_path)
    try:
        _run(side)
    finally:
        assert side.stop() == 0
        delete_redis_prefix(prefix)
