"""The ledger extensions (``ledger/base.py``), one suite over every backend.

Windowed reads (rolling windows read their older buckets atomically with the
reservation), once-only marks (a soft-limit warning emitted once across
processes), and counters by hand (list, adjust, reset, export, import). The
differential test in ``test_ledger_contract.py`` replays them too.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
import uuid

import pytest

from chio_budget.errors import AmountError, LedgerError
from chio_budget.ledger import Balance, MemoryLedger
from support.backends import Store
from support.clock import FakeClock
from support.guards import U64_MAX
from support.workload import fleet_worker, window_worker
K, R1, R2, OTHER = "p/b2/total/", "p/b1/total/", "p/b0/total/", "p//agent/a1"


# -- windowed reads -------------------------------------------------------------------------------


def test_reserve_reads_older_buckets_into_before_and_holds_only_on_its_key(store: Store):
    ledger = store.open()
    ledger.add([R1], 100)
    ledger.add([R2], 20)
    ledger.reserve("old", [R1], 3)
    r = ledger.reserve("r1", [K, OTHER], 50, reads={K: [R1, R2]})
    assert r.before == (123, 0)
    assert ledger.balances([K, R1, R2, OTHER]) == [Balance(0, 50), Balance(100, 3), Balance(20, 0), Balance(0, 50)]
    assert ledger.totals([K, OTHER, K], reads={K: [R1, R2]}) == [173, 50, 173]
    assert ledger.totals([K]) == [50], "without reads a key is its own total"
    assert ledger.reserve("r1", [K], 50, reads={K: [R1]}).before == (123, 0), "a repeat returns the record"
    assert ledger.release("r1").amount == 50
    assert ledger.balances([K, R1]) == [Balance(0, 0), Balance(100, 3)]


def test_reads_never_create_a_counter(store: Store):
    ledger = store.open()
    ledger.reserve("r1", [K], 5, reads={K: ["p/never/total/", "p/nor/total/"]})
    assert ledger.totals([K], reads={K: ["p/never-either/total/"]}) == [5]
    assert [k for k, _ in ledger.counters()] == [K]


def test_reads_count_a_key_once_and_cap_at_u64_max(store: Store):
    ledger = store.open()
    ledger.add([R1], U64_MAX - 10)
    ledger.add([K], 7)
    assert ledger.totals([K], reads={K: [R1, R1, K]}) == [U64_MAX - 3], "R1 once, K itself not again"
    ledger.add([R2], 100)
    assert ledger.totals([K], reads={K: [R1, R2]}) == [U64_MAX]
    assert ledger.reserve("r1", [K], 1, reads={K: [R1, R2]}).before == (U64_MAX,)


@pytest.mark.parametrize("reads", [{OTHER: [R1]}, {K: R1}, {K: [1]}, [(K, [R1])]])
def test_malformed_reads_are_refused_before_anything_is_held(store: Store, reads):
    ledger = store.open()
    with pytest.raises(LedgerError, match="reads"):
        ledger.reserve("r1", [K], 5, reads=reads)
    with pytest.raises(LedgerError, match="reads"):
        ledger.totals([K], reads=reads)
    assert ledger.get("r1") is None and ledger.totals([K]) == [0]


def test_reads_are_atomic_with_the_reservation_under_threads(store: Store):
    """Two buckets of one rolling window, a limit over their sum: threads reserve on either
    bucket reading the other and keep the hold only when it fits. Held never passes the limit
    (a read taken apart from the hold would let two threads both see room)."""
    ledger = store.open()
    barrier = threading.Barrier(4)
    with cf.ThreadPoolExecutor(4) as pool:
        kept = sum(pool.map(lambda w: window_worker(ledger, w, 60, barrier.wait), range(4)))
    balances = ledger.balances([K, R1])
    assert sum(b.held for b in balances) == kept * 7 <= 100
    assert kept == 100 // 7, "the window filled up"


def test_reads_and_marks_are_atomic_across_processes(shared_store: Store, tmp_path):
    """Three processes fill a two-bucket window through windowed reads (held never passes its
    limit), then race for 50 marks (each is won by exactly one of them)."""
    go = tmp_path / "go"
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(3, mp_context=ctx) as pool:
        futures = [pool.submit(fleet_worker, shared_store.uri, w, 60, [f"m{i}" for i in range(50)], str(go))
                   for w in range(3)]
        go.touch()
        results = [f.result() for f in futures]
    kept = sum(k for k, _ in results)
    balances = shared_store.open().balances([K, R1])
    assert sum(b.held for b in balances) == kept * 7 == (100 // 7) * 7
    assert sorted(sum((won for _, won in results), [])) == sorted(f"m{i}" for i in range(50)), \
        "each mark won by exactly one process"


# -- once-only marks --------------------------------------------------------------------------------


def test_mark_once_is_true_for_the_first_caller_only(store: Store, clock: FakeClock):
    ledger = store.open(clock=clock)
    assert ledger.mark_once("warn/p//total//8000") is True
    assert ledger.mark_once("warn/p//total//8000") is False
    assert ledger.mark_once("warn/p//total//9500") is True, "another mark is another first time"
    clock.advance(10**8)
    assert ledger.mark_once("warn/p//total//8000") is False, "without a ttl a mark is kept"
    if store.shared:
        assert store.open(clock=clock).mark_once("warn/p//total//9500") is False, "another replica sees it"


def test_a_mark_is_forgotten_after_its_ttl(store: Store, clock: FakeClock):
    ledger = store.open(clock=clock)
    assert ledger.mark_once("m", ttl=10) is True
    clock.advance(9.5)
    assert ledger.mark_once("m", ttl=10) is False
    clock.advance(0.5)  # due exactly at its ttl, like a reservation
    assert ledger.mark_once("m", ttl=10) is True
    assert ledger.mark_once("m") is False, "a later caller changes nothing, whatever its ttl"
    clock.advance(10)
    assert ledger.mark_once("m") is True
    clock.advance(10**6)
    ledger.expire()
    assert ledger.mark_once("m", ttl=1) is False, "set without a ttl, it is kept"


@pytest.mark.parametrize("mark, ttl", [("", None), (None, None), (5, None), ("m", 0), ("m", float("nan"))])
def test_bad_marks_and_mark_ttls_are_refused(store: Store, mark, ttl):
    with pytest.raises(LedgerError):
        store.open().mark_once(mark, ttl)


# -- counters by hand -----------------------------------------------------------------------------------


def test_counters_lists_what_is_not_zero_by_prefix(store: Store):
    ledger = store.open()
    ledger.add(["p//total/", "p//agent/a*1"], 5)
    ledger.reserve("r1", ["p//agent/a[2]", "q//total/"], 3)
    ledger.add(["p//agent/zero"], 0)
    ledger.reserve("gone", ["p//agent/released"], 4)
    ledger.release("gone")
    got = dict(ledger.counters())
    assert got == {"p//total/": Balance(5, 0), "p//agent/a*1": Balance(5, 0), "p//agent/a[2]": Balance(0, 3),
                   "q//total/": Balance(0, 3)}
    assert dict(ledger.counters("p//agent/a")) == {"p//agent/a*1": Balance(5, 0), "p//agent/a[2]": Balance(0, 3)}
    assert dict(ledger.counters("p//agent/a*")) == {"p//agent/a*1": Balance(5, 0)}, "the prefix is literal"
    assert dict(ledger.counters("p//agent/a[")) == {"p//agent/a[2]": Balance(0, 3)}
    assert list(ledger.counters("nothing")) == []


def test_counters_pages_through_thousands(store: Store):
    ledger = store.open()
    assert ledger.import_([{"key": f"p//agent/a{i:05d}", "spent": i + 1} for i in range(2500)]) == 2500
    ledger.reserve("r1", ["p//agent/a00000", "p//session/s"], 9)
    got = list(ledger.counters("p//agent/"))
    assert len(got) == 2500 and len({k for k, _ in got}) == 2500
    assert sum(b.spent for _, b in got) == 2500 * 2501 // 2 and sum(b.held for _, b in got) == 9
    if store.kind not in ("redis", "cluster"):
        assert [k for k, _ in got] == sorted(k for k, _ in got), "key order"


def test_adjust_moves_spent_by_a_signed_delta_clamped(store: Store):
    ledger = store.open()
    ledger.add([K], 1000)
    ledger.reserve("r1", [K], 40)
    assert ledger.adjust(K, -300) == (Balance(1000, 40), Balance(700, 40))
    assert ledger.adjust(K, -5000) == (Balance(700, 40), Balance(0, 40)), "a refund stops at nothing spent"
    assert ledger.adjust(K, U64_MAX) == (Balance(0, 40), Balance(U64_MAX, 40))
    assert ledger.adjust(K, 2**70) == (Balance(U64_MAX, 40), Balance(U64_MAX, 40))
    assert ledger.adjust(K, -(2**70)) == (Balance(U64_MAX, 40), Balance(0, 40))
    assert ledger.adjust(OTHER, -5) == (Balance(0, 0), Balance(0, 0))
    assert dict(ledger.counters()) == {K: Balance(0, 40)}, "a refund on nothing creates nothing"
    assert ledger.commit("r1").amount == 40 and ledger.balances([K]) == [Balance(40, 0)]


@pytest.mark.parametrize("bad", [True, 1.5, "5", None])
def test_adjust_refuses_what_is_not_an_integer(store: Store, bad):
    ledger = store.open()
    with pytest.raises(AmountError):
        ledger.adjust(K, bad)
    assert ledger.totals([K]) == [0]


def test_reset_zeroes_spent_and_leaves_holds_held(store: Store):
    ledger = store.open()
    ledger.add([K, OTHER], 500)
    ledger.reserve("r1", [K], 30)
    assert ledger.reset([K, R1, K]) == [Balance(500, 30), Balance(0, 0), Balance(500, 30)]
    assert ledger.balances([K, OTHER, R1]) == [Balance(0, 30), Balance(500, 0), Balance(0, 0)]
    assert ledger.reset([]) == []
    assert ledger.commit("r1", 25).outcome == "committed" and ledger.balances([K]) == [Balance(25, 0)]
    assert dict(ledger.counters()) == {K: Balance(25, 0), OTHER: Balance(500, 0)}


def test_export_has_spent_only_and_import_round_trips(store: Store, tmp_path):
    ledger = store.open()
    ledger.add([K, "p//agent/\u00fc s"], 2**64 - 2)
    ledger.add([OTHER], 7)
    ledger.reserve("live", [K, R1], 11)
    exported = sorted(ledger.export(), key=lambda r: r["key"])
    assert exported == sorted([{"key": K, "spent": 2**64 - 2}, {"key": OTHER, "spent": 7},
                               {"key": "p//agent/\u00fc s", "spent": 2**64 - 2}], key=lambda r: r["key"])
    target = MemoryLedger()
    assert target.import_(exported) == 3
    assert sorted(target.export(), key=lambda r: r["key"]) == exported
    (tmp_path / "back").mkdir()
    back = store.another(tmp_path / "back") if store.kind != "memory" else None
    if back is not None:
        try:
            fresh = back.open()
            assert fresh.import_(target.export()) == 3
            assert dict(fresh.counters()) == {r["key"]: Balance(r["spent"], 0) for r in exported}
        finally:
            back.cleanup()


def test_import_refuses_a_ledger_that_holds_counters_unless_merged(store: Store):
    ledger = store.open()
    ledger.reserve("live", [OTHER], 3)
    with pytest.raises(LedgerError, match="import refused"):
        ledger.import_([{"key": K, "spent": 5}])
    assert ledger.totals([K]) == [0]
    assert ledger.import_([{"key": K, "spent": 5}, {"key": K, "spent": 6}, {"key": R1, "spent": 0}],
                          merge=True) == 1
    assert ledger.import_([{"key": K, "spent": U64_MAX}], merge=True) == 1
    assert ledger.balances([K, OTHER, R1]) == [Balance(U64_MAX, 0), Balance(0, 3), Balance(0, 0)]
    ledger.release("live")
    ledger.reset([K])
    assert ledger.import_([{"key": R1, "spent": 1}]) == 1, "a ledger of zeros is empty"


@pytest.mark.parametrize("bad", [{"key": K}, {"key": K, "spent": -1}, {"key": K, "spent": 1.0},
                                 {"key": 5, "spent": 1}, {"key": K, "spent": 1, "held": 2}, [K, 1],
                                 {"key": K, "spent": U64_MAX + 1}, {"key": K, "spent": True}])
def test_a_bad_import_record_writes_nothing(store: Store, bad):
    ledger = store.open()
    with pytest.raises(LedgerError, match="import record 1"):
        ledger.import_([{"key": R1, "spent": 5}, bad, {"key": R2, "spent": 5}])
    assert list(ledger.counters()) == []
    if store.kind in ("redis", "cluster"):
        assert not ledger.client.keys(ledger._tag + ":import:*"), "no staging hash left behind"


def test_extensions_change_nothing_for_other_keys_and_expire_first(store: Store, clock: FakeClock):
    """Like every operation, the extensions give back what is due before they read."""
    ledger = store.open(clock=clock)
    ledger.reserve("short", [K], 9, ttl=1)
    clock.advance(2)
    assert dict(ledger.counters()) == {}
    assert ledger.adjust(K, 1) == (Balance(0, 0), Balance(1, 0))
    assert ledger.reset([K]) == [Balance(1, 0)]
    assert ledger.get("short").state == "expired"
    uid = uuid.uuid4().hex
    assert ledger.mark_once(uid) and not ledger.mark_once(uid)
