"""Issue 9 item 9 against the real Redis: a reserve that ran but whose reply was lost.

``redis_proxy.RedisProxy`` forwards to the real server and drops the replies
of any connection that sent a chosen script, so redis-py times out after the
script has run. The guard must deny, release the hold its own attempt made
(and nothing else), and count a cleanup that fails too.
"""

from __future__ import annotations

import uuid

import pytest

from chio_budget.ledger import open_ledger
from support.backends import REDIS_URL, need_redis
from support.guards import guard_for, make_meta, rust_policy
from redis_proxy import RedisProxy

pytestmark = pytest.mark.redis


@pytest.fixture
def proxied():
    """``(ledger through the proxy, the same prefix opened directly, proxy)``; keys deleted afterwards."""
    need_redis()
    proxy = RedisProxy()
    prefix = f"chio-test-{uuid.uuid4().hex[:12]}"
    through = open_ledger(proxy.url(f"prefix={prefix}&socket_timeout=0.3"))
    direct = open_ledger(f"{REDIS_URL}?prefix={prefix}")
    for script in through._scripts.values():  # loaded up front: a NOSCRIPT reply must not be the one lost
        direct.client.script_load(script.script)
    yield through, direct, proxy
    direct.clear()
    for ledger in (through, direct):
        ledger.close()
    proxy.close()


def _sha(ledger, script: str) -> bytes:
    return ledger._scripts[script].sha.encode()


def test_a_lost_reserve_reply_leaves_no_orphan_hold(proxied):
    through, direct, proxy = proxied
    guard = guard_for(rust_policy(), ledger=through)
    proxy.swallow.add(_sha(through, "reserve"))
    a = guard.authorize(make_meta(receipt="r1"), 2500)
    assert not a.allow and "Timeout" in a.decision.error
    assert proxy.swallowed_connections == 1, "one attempt, never resent by redis-py"
    r = direct.get("r1")
    assert r is not None and r.attempt == a.attempt, "the script did run: the hold was made"
    assert r.state == "released" and direct.open_reservations() == 0 and direct.totals(["default//total/"]) == [0]
    assert guard.orphan_cleanup_failures == 0


def test_a_lost_reply_on_a_retry_keeps_the_first_attempts_hold(proxied):
    through, direct, proxy = proxied
    guard = guard_for(rust_policy(), ledger=through)
    first = guard.authorize(make_meta(receipt="r1"), 2500)
    assert first.allow
    proxy.swallow.add(_sha(through, "reserve"))
    retry = guard.authorize(make_meta(receipt="r1"), 2500)
    assert not retry.allow and "Timeout" in retry.decision.error
    assert direct.get("r1").state == "held" and direct.balances(["default//total/"])[0].held == 2500
    proxy.swallow.clear()
    assert first.commit().outcome == "committed"


def test_a_failed_cleanup_is_counted(proxied):
    through, direct, proxy = proxied
    guard = guard_for(rust_policy(), ledger=through)
    seen = []
    guard.event_hooks["cleanup_failed"].append(lambda rid, exc: seen.append(rid))
    proxy.swallow |= {_sha(through, "reserve"), _sha(through, "release")}
    a = guard.authorize(make_meta(receipt="r1"), 2500)
    assert not a.allow
    assert guard.orphan_cleanup_failures == 1 and seen == ["r1"]
    assert direct.get("r1").state == "released", "the release ran too; only its reply was lost"
