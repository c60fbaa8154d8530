"""What only Redis Cluster can show, on a real 3-master cluster (``redis_cluster`` fixture):
the ``redis+cluster://`` URI, one hash slot per ledger prefix (prefixes spread over the shards),
redirects followed while the ledger's slot moves to another master (ASK during the migration,
MOVED after it), and a clear error on CROSSSLOT. The whole contract suite also runs on this
cluster (``test_ledger_contract.py``, ``test_ledger_extensions.py``).
"""

from __future__ import annotations

import uuid

import pytest
import redis

from chio_budget.errors import LedgerError
from chio_budget.ledger import Balance, open_ledger
from support.guards import guard_for, make_meta, rust_policy

pytestmark = pytest.mark.cluster


def _prefix() -> str:
    return f"chio-test-{uuid.uuid4().hex[:12]}"


def _nodes(url: str) -> list[redis.Redis]:
    hosts = url.split("://", 1)[1].split("/", 1)[0].split(",")
    return [redis.Redis(host=h.rsplit(":", 1)[0], port=int(h.rsplit(":", 1)[1])) for h in hosts]


def test_cluster_uri_forms(redis_cluster):
    from redis.cluster import RedisCluster

    first = redis_cluster.split("://", 1)[1].split(",")[0].split("/")[0]
    ledger = open_ledger(f"redis+cluster://{first}?prefix=p1&socket_timeout=1.5&ttl=9")
    assert isinstance(ledger.client, RedisCluster) and ledger.options.ttl == 9
    assert len(ledger.client.get_primaries()) == 3, "one startup node is enough to learn the cluster"
    assert ledger.client.get_default_node().redis_connection.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    assert ledger.client.retry.get_retries() == 0, "never resent by the client (add is not idempotent)"
    ledger.close()
    for bad in (f"redis+cluster://{first}/3", "redis+cluster:///0", "redis+cluster://host-without-port/0",
                f"redis+cluster://{first}?socket_timeout=soon"):
        with pytest.raises(LedgerError):
            open_ledger(bad)


def test_one_slot_per_prefix_and_prefixes_spread_over_the_shards(redis_cluster):
    """A ledger is one slot; tenants with their own prefixes land on every master."""
    probe = open_ledger(f"{redis_cluster}?prefix=probe")
    owner = {f"tenant-{i}": probe.client.get_node_from_key("{tenant-%d}:spent" % i).name for i in range(12)}
    probe.close()
    assert len(set(owner.values())) == 3, owner
    for prefix in {name: p for p, name in owner.items()}.values():  # one tenant per master
        ledger = open_ledger(f"{redis_cluster}?prefix={prefix}")  # the cluster is this session's own
        try:
            ledger.reserve("r1", ["p//total/", "p//agent/a1"], 5)
            assert ledger.mark_once("m") and ledger.commit("r1").outcome == "committed"
            assert len({ledger.client.keyslot(k) for k in ledger.keys}) == 1, "every key shares its hash tag"
        finally:
            ledger.clear()
            ledger.close()


def _move_slot(url: str, key: str, *, finish: bool) -> tuple[redis.Redis, redis.Redis]:
    """Migrate ``key``'s slot (with every key in it) to another master; ``finish``: also reassign
    the slot (clients then get MOVED), else leave it MIGRATING/IMPORTING (clients get ASK)."""
    nodes = _nodes(url)
    slot = nodes[0].execute_command("CLUSTER", "KEYSLOT", key)
    ids = {n: n.execute_command("CLUSTER", "MYID").decode() for n in nodes}
    owner = next(r[2][1] for r in nodes[0].execute_command("CLUSTER", "SLOTS") if r[0] <= slot <= r[1])
    src = next(n for n in nodes if n.connection_pool.connection_kwargs["port"] == owner)
    dst = next(n for n in nodes if n is not src)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    port = dst.connection_pool.connection_kwargs["port"]
    if keys:
        src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    if finish:
        for n in [dst, src, *[n for n in nodes if n not in (src, dst)]]:
            n.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    return src, dst


def _finish(url: str, key: str, dst: redis.Redis) -> None:
    nodes = _nodes(url)
    slot = nodes[0].execute_command("CLUSTER", "KEYSLOT", key)
    target = dst.execute_command("CLUSTER", "MYID").decode()
    for n in nodes:
        n.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)


def test_redirects_are_followed_while_the_ledger_slot_moves(redis_cluster):
    """While the slot migrates, a one-key command follows ASK to the importing master, and the
    multi-key scripts are refused by Redis (TRYAGAIN: some of their keys do not exist there), so
    decisions deny, within a second, until the move ends. Once the slot has moved, MOVED is
    followed, the scripts are loaded on the new master (NOSCRIPT), and the counters are intact."""
    ledger = open_ledger(f"{redis_cluster}?prefix={_prefix()}")
    try:
        ledger.add(["p//total/"], 100)
        ledger.reserve("held", ["p//total/"], 7, attempt="t")
        src, dst = _move_slot(redis_cluster, ledger.keys[1], finish=False)
        assert ledger.open_reservations() == 1, "ZCARD served by the importing master after ASK"
        with pytest.raises(LedgerError, match="TTL exhausted|TRYAGAIN"):
            ledger.balances(["p//total/"])
        assert not guard_for(rust_policy(), ledger=ledger).authorize(make_meta(), 1).allow, "fail closed"
        _finish(redis_cluster, ledger.keys[1], dst)
        assert ledger.balances(["p//total/"]) == [Balance(100, 7)]
        assert ledger.reserve("r2", ["p//total/"], 3).before == (107,), "served after MOVED by the new owner"
        assert ledger.commit("held").outcome == "committed" and ledger.commit("r2").outcome == "committed"
        assert ledger.balances(["p//total/"]) == [Balance(110, 0)]
        assert ledger.client.get_node_from_key(ledger.keys[1]).port == dst.connection_pool.connection_kwargs["port"]
        slot = ledger.client.keyslot(ledger.keys[1])
        assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0 and dst.exists(ledger.keys[1]) == 1
    finally:
        ledger.clear()
        ledger.close()


def test_crossslot_is_a_clear_ledger_error_and_a_deny(redis_cluster):
    ledger = open_ledger(f"{redis_cluster}?prefix={_prefix()}")
    try:
        ledger.keys = [*ledger.keys[:-1], "{another-slot}:mark_expiry"]  # as a broken key layout would be
        with pytest.raises(LedgerError, match="CROSSSLOT.*hash tag"):
            ledger.reserve("r1", ["k"], 1)
        d = guard_for(rust_policy(), ledger=ledger).authorize(make_meta(), 1).decision
        assert not d.allow and "CROSSSLOT" in d.error
    finally:
        ledger.close()
