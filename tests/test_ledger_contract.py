"""The ledger contract (``ledger/base.py``), one suite over memory, SQLite and Redis.

Memory is the reference: every behaviour here is what the guard relies on,
and the differential test at the end runs the same random operations on
memory and on each real backend and demands identical answers.
"""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from chio_budget import BudgetGuard
from chio_budget.errors import LedgerError
from chio_budget.ledger import Ledger, MemoryLedger, Reservation, counter_key, open_ledger
from conftest import guard_for, make_meta, rust_policy
from ledger_fixtures import FakeClock, Store, clock, make_store, need_redis, shared_store, store  # noqa: F401

U64_MAX = 2**64 - 1
A, B, C = "p//total/", "p//agent/a1", "p//tool/s1:t1"


def test_every_backend_is_a_ledger(store: Store):
    assert isinstance(store.open(), Ledger)


# -- reserve ---------------------------------------------------------------------


def test_reserve_returns_counters_before_and_adds_cost_to_each(store: Store):
    ledger = store.open()
    ledger.add([A], 100)
    r = ledger.reserve("r1", [A, B], 30)
    assert (r.receipt_id, r.keys, r.amount, r.before, r.created, r.state) == ("r1", (A, B), 30, (100, 0), True, "held")
    assert ledger.totals([A, B, C]) == [130, 30, 0]
    r2 = ledger.reserve("r2", [A, B], 5)
    assert r2.before == (130, 30), "the second reservation sees the first one held"
    assert ledger.open_reservations() == 2


def test_reserve_counts_a_repeated_key_once(store: Store):
    ledger = store.open()
    r = ledger.reserve("r1", [A, B, A], 7)
    assert r.keys == (A, B)
    assert ledger.totals([A, B, A]) == [7, 7, 7]


def test_reserve_is_idempotent_by_receipt(store: Store):
    ledger = store.open()
    first = ledger.reserve("r1", [A, B], 40)
    again = ledger.reserve("r1", [A, C], 999)
    assert again.created is False and again.state == "held"
    assert (again.keys, again.amount, again.before) == (first.keys, first.amount, first.before)
    assert ledger.totals([A, B, C]) == [40, 40, 0]
    assert ledger.open_reservations() == 1


@pytest.mark.parametrize("settle, state", [("commit", "committed"), ("release", "released")])
def test_reserve_of_a_settled_receipt_returns_the_record_and_adds_nothing(store: Store, settle, state):
    ledger = store.open()
    ledger.reserve("r1", [A], 40)
    getattr(ledger, settle)("r1")
    r = ledger.reserve("r1", [A], 40)
    assert (r.created, r.state, r.amount) == (False, state, 40)
    assert ledger.totals([A]) == [40 if state == "committed" else 0]


# -- commit / release ------------------------------------------------------------------


def test_commit_keeps_the_estimate_by_default(store: Store):
    ledger = store.open()
    ledger.reserve("r1", [A, B], 40)
    s = ledger.commit("r1")
    assert (s.outcome, s.amount, s.changed) == ("committed", 40, True)
    assert ledger.totals([A, B]) == [40, 40]
    assert ledger.open_reservations() == 0


@pytest.mark.parametrize("actual", [0, 25, 40, 75])
def test_commit_with_actual_replaces_the_estimate(store: Store, actual):
    ledger = store.open()
    ledger.add([A], 1000)
    ledger.reserve("r1", [A, B], 40)
    assert ledger.commit("r1", actual).amount == actual
    assert ledger.totals([A, B]) == [1000 + actual, actual]


def test_second_commit_and_late_release_change_nothing_and_say_so(store: Store):
    ledger = store.open()
    ledger.reserve("r1", [A], 40)
    ledger.commit("r1", 30)
    for s in (ledger.commit("r1", 35), ledger.commit("r1"), ledger.release("r1")):
        assert (s.outcome, s.changed) == ("already_committed", False)
    assert ledger.totals([A]) == [30]


def test_release_gives_back_and_is_idempotent(store: Store):
    ledger = store.open()
    ledger.add([A], 10)
    ledger.reserve("r1", [A, B], 40)
    s = ledger.release("r1")
    assert (s.outcome, s.amount) == ("released", 40)
    assert ledger.totals([A, B]) == [10, 0]
    for s in (ledger.release("r1"), ledger.commit("r1")):
        assert (s.outcome, s.changed) == ("already_released", False)
    assert ledger.totals([A, B]) == [10, 0]


def test_unknown_receipts_change_nothing(store: Store):
    ledger = store.open()
    ledger.add([A], 10)
    assert ledger.commit("nope").outcome == "unknown"
    assert ledger.release("nope").outcome == "unknown"
    assert ledger.totals([A]) == [10]


def test_add_returns_new_values_without_holding_anything(store: Store):
    ledger = store.open()
    assert ledger.add([A, B], 5) == [5, 5]
    assert ledger.add([A], 7) == [12]
    assert ledger.open_reservations() == 0


def test_totals_of_unknown_and_no_keys(store: Store):
    ledger = store.open()
    assert ledger.totals([]) == []
    assert ledger.totals(["never/seen"]) == [0]


# -- TTL -----------------------------------------------------------------------------------


def test_expired_reservation_is_given_back_and_reported(store: Store, clock: FakeClock):
    ledger = store.open(clock=clock, default_ttl=60)
    ledger.add([A], 100)
    ledger.reserve("short", [A, B], 30, ttl=10)
    ledger.reserve("long", [A, B], 5)
    clock.advance(9.5)
    assert ledger.expire() == []
    assert ledger.totals([A, B]) == [135, 35]
    clock.advance(0.5)  # expires_at <= now: due exactly at its TTL
    assert ledger.expire() == ["short"]
    assert ledger.totals([A, B]) == [105, 5]
    assert ledger.open_reservations() == 1
    s = ledger.commit("short")
    assert (s.outcome, s.amount, s.changed) == ("expired", 30, False)
    assert ledger.release("short").outcome == "expired"
    assert ledger.reserve("short", [A], 30).state == "expired"
    assert ledger.totals([A, B]) == [105, 5]


def test_expiry_happens_without_an_explicit_sweep(store: Store, clock: FakeClock):
    ledger = store.open(clock=clock)
    ledger.reserve("r1", [A], 30, ttl=1)
    clock.advance(2)
    assert ledger.totals([A]) == [0]
    assert ledger.commit("r1").outcome == "expired"
    r = ledger.reserve("r2", [A], 4)
    assert r.before == (0,)


def test_commit_before_the_ttl_wins_over_expiry(store: Store, clock: FakeClock):
    ledger = store.open(clock=clock)
    ledger.reserve("r1", [A], 30, ttl=5)
    clock.advance(4.9)
    assert ledger.commit("r1").outcome == "committed"
    clock.advance(100)
    assert ledger.expire() == []
    assert ledger.totals([A]) == [30]


# -- u64 -----------------------------------------------------------------------------------


def test_exact_past_2_53_and_2_63(store: Store):
    """Doubles lose 2^53+1, signed 64-bit integers lose 2^63: we lose neither."""
    ledger = store.open()
    assert ledger.add([A], 2**53) == [2**53]
    assert ledger.add([A], 1) == [2**53 + 1]
    assert ledger.add([B], 2**63) == [2**63]
    r = ledger.reserve("r1", [B], 2**63 - 2)
    assert r.before == (2**63,)
    assert ledger.totals([B]) == [U64_MAX - 1]
    assert ledger.commit("r1", 2**63 - 1).amount == 2**63 - 1
    assert ledger.totals([A, B]) == [2**53 + 1, U64_MAX]


def test_saturates_at_u64_max_and_floors_at_zero(store: Store):
    ledger = store.open()
    ledger.add([A], U64_MAX - 1)
    r = ledger.reserve("r1", [A, B], 5)
    assert r.before == (U64_MAX - 1, 0)
    assert ledger.totals([A, B]) == [U64_MAX, 5]
    assert ledger.add([A], U64_MAX) == [U64_MAX]
    ledger.release("r1")
    assert ledger.totals([A, B]) == [U64_MAX - 5, 0]
    # floor: two reservations of the whole range, both given back
    ledger.reserve("big", [C], U64_MAX)
    ledger.reserve("small", [C], 5)
    assert ledger.totals([C]) == [U64_MAX]
    ledger.release("big")
    ledger.release("small")
    assert ledger.totals([C]) == [0]


@pytest.mark.parametrize("bad", [-1, U64_MAX + 1, 1.5, True, "5", None])
def test_amounts_outside_u64_are_refused_and_change_nothing(store: Store, bad):
    ledger = store.open()
    ledger.reserve("held", [A], 3)
    with pytest.raises(ValueError):
        ledger.reserve("r1", [A], bad)
    with pytest.raises(ValueError):
        ledger.add([A], bad)
    if bad is not None:
        with pytest.raises(ValueError):
            ledger.commit("held", bad)
    assert ledger.totals([A]) == [3]
    assert ledger.commit("held").outcome == "committed"


def test_keys_are_opaque_strings(store: Store):
    ledger = store.open()
    keys = [counter_key("p", "session", "sess/1 ü%", "2026-11"), counter_key("p", "session", "sess/1 ü%"),
            "1", "a{b}c", ""]
    ledger.reserve("r\u00e9/1", keys, 9)
    assert ledger.totals(keys) == [9] * len(keys)
    assert ledger.commit("r\u00e9/1").outcome == "committed"
    assert keys[0] != keys[1], "a window is another counter"


# -- shared, durable stores ----------------------------------------------------------------


def test_two_ledger_objects_share_counters_reservations_and_receipts(shared_store: Store, clock: FakeClock):
    one, two = shared_store.open(clock=clock), shared_store.open(clock=clock)
    one.reserve("r1", [A], 10, ttl=5)
    assert two.reserve("r2", [A], 1).before == (10,)
    assert two.reserve("r1", [A], 10).created is False
    assert two.commit("r1").outcome == "committed"
    assert one.commit("r1").outcome == "already_committed"
    clock.advance(600)
    assert two.expire() == ["r2"]
    assert one.totals([A]) == [10]


def test_counters_and_receipts_survive_reopening(shared_store: Store, clock: FakeClock):
    ledger = shared_store.open(clock=clock)
    ledger.add([A], 2**64 - 2)
    ledger.reserve("held", [B], 7)
    ledger.reserve("done", [B], 3)
    ledger.commit("done")
    ledger.close()
    again = shared_store.open(clock=clock)
    assert again.totals([A, B]) == [2**64 - 2, 10]
    assert again.open_reservations() == 1
    assert again.commit("done").outcome == "already_committed"
    assert again.commit("held", 6).outcome == "committed"
    assert again.totals([B]) == [9]


def test_settled_receipts_are_forgotten_after_retention(shared_store: Store, clock: FakeClock):
    ledger = shared_store.open(clock=clock, settled_retention=100)
    ledger.reserve("r1", [A], 5)
    ledger.commit("r1")
    clock.advance(50)
    ledger.expire()
    assert ledger.commit("r1").outcome == "already_committed"
    clock.advance(51)
    ledger.expire()
    assert ledger.commit("r1").outcome == "unknown"
    assert ledger.totals([A]) == [5]


# -- opening, failing closed -------------------------------------------------------------


def test_open_ledger_dispatches_by_uri(tmp_path):
    from chio_budget.ledger.sqlite import SqliteLedger

    s = open_ledger(f"sqlite:///{tmp_path / 'x.db'}?ttl=30&synchronous=normal")
    assert isinstance(s, SqliteLedger) and s.path == tmp_path / "x.db"
    s.close()
    assert isinstance(open_ledger("memory"), MemoryLedger)
    with pytest.raises(LedgerError):
        open_ledger("postgres://x")
    with pytest.raises(LedgerError):
        open_ledger(f"sqlite:///{tmp_path / 'x.db'}?colour=blue")
    with pytest.raises(LedgerError):
        open_ledger("sqlite:///:memory:")
    with pytest.raises(LedgerError, match="ttl"):
        open_ledger(f"sqlite:///{tmp_path / 'x.db'}?ttl=soon")
    with pytest.raises(LedgerError, match="ttl"):
        open_ledger("redis://127.0.0.1:6379/0?ttl=-1")


def test_sqlite_stores_u64_exactly_as_decimal_text(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'u.db'}")
    ledger.add(["k"], U64_MAX)
    ledger.close()
    (units, kind), = sqlite3.connect(tmp_path / "u.db").execute("SELECT units, typeof(units) FROM counters")
    assert (units, kind) == (str(U64_MAX), "text")
    db = sqlite3.connect(tmp_path / "u.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_corrupt_counter_is_a_ledger_error_and_a_deny(tmp_path):
    path = tmp_path / "c.db"
    ledger = open_ledger(f"sqlite:///{path}")
    guard = guard_for(rust_policy(), ledger=ledger)
    guard.record(make_meta(), 1)
    ledger.add([A], 1)
    db = sqlite3.connect(path)
    db.execute("UPDATE counters SET units = '1.5e3'")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="corrupt"):
        ledger.totals([A])
    d = guard.authorize(make_meta(), 1).decision
    assert not d.allow and "ledger error" in d.error
    ledger.close()


def test_sqlite_lock_held_too_long_denies(tmp_path):
    """Another process holding the write lock past busy_timeout: deny, not hang."""
    path = tmp_path / "l.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout=0.05")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerError, match="locked"):
            ledger.reserve("r1", [A], 1)
        guard = guard_for(rust_policy(), ledger=ledger)
        d = guard.authorize(make_meta(), 1).decision
        assert not d.allow and "ledger error" in d.error
    finally:
        blocker.execute("ROLLBACK")
    assert ledger.reserve("r1", [A], 1).created, "nothing was left behind by the failed attempts"
    assert ledger.totals([A]) == [1]
    ledger.close()


def test_sqlite_unopenable_path_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError):
        open_ledger(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")


def test_redis_unreachable_is_a_ledger_error_and_a_deny():
    ledger = open_ledger("redis://127.0.0.1:1/0?socket_connect_timeout=0.5")
    with pytest.raises(LedgerError):
        ledger.reserve("r1", [A], 1)
    with pytest.raises(LedgerError):
        ledger.commit("r1")
    guard = guard_for(rust_policy(), ledger=ledger)
    assert guard.check(make_meta(), 1).allow is False
    d = guard.authorize(make_meta(), 1).decision
    assert not d.allow and "ledger error" in d.error


@pytest.mark.redis
def test_redis_corrupt_counter_is_a_ledger_error(tmp_path):
    s = make_store("redis", tmp_path)
    try:
        ledger = s.open()
        ledger.add([A], 1)
        ledger.client.hset(ledger.keys[0], A, "1e3")  # type: ignore[attr-defined]
        with pytest.raises(LedgerError, match="corrupt"):
            ledger.reserve("r1", [A], 1)
        assert ledger.open_reservations() == 0, "the failed script wrote nothing"
    finally:
        s.cleanup()


@pytest.mark.redis
def test_redis_uses_server_time_by_default(tmp_path):
    """No clock passed: expiry follows the Redis server's TIME, so replicas agree."""
    s = make_store("redis", tmp_path)
    try:
        ledger = s.open()
        server_now = float(".".join(str(int(x)) for x in ledger.client.time()))  # type: ignore[attr-defined]
        r = ledger.reserve("r1", [A], 5, ttl=30)
        assert server_now + 29 <= r.expires_at <= server_now + 31 + 60  # 60 s slack for a slow machine
        ledger.reserve("r0", [A], 5, ttl=0)
        assert "r0" in ledger.expire()
        assert ledger.totals([A]) == [5]
    finally:
        s.cleanup()


# -- the guard on every backend -------------------------------------------------------------


def test_guard_authorize_commit_release_on_every_backend(store: Store):
    guard = guard_for(rust_policy(), ledger=store.open())
    a = guard.authorize(make_meta(receipt="r1"), 2900)
    assert a.allow
    denied = guard.authorize(make_meta(receipt="r2"), 200)
    assert not denied.allow and denied.decision.violation.scope == "agent"
    assert guard.total_spent() == 2900, "a denied request leaves no trace"
    assert a.commit(2500).outcome == "committed"
    assert guard.authorize(make_meta(receipt="r1"), 1).decision.error, "a settled receipt is not re-authorized"
    assert guard.total_spent() == 2500
    b = guard.authorize(make_meta(receipt="r3"), 500)
    assert b.allow and b.release().outcome == "released"
    assert guard.remaining() == 10000 - 2500


def test_guard_from_files_takes_a_ledger_uri(policies_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'g.db'}"
    guard = BudgetGuard.from_files(policies_dir, ledger=uri)
    guard.authorize(make_meta(receipt="x1"), 700).commit()
    guard.close()
    again = BudgetGuard.from_files(policies_dir, ledger=uri)
    assert again.total_spent() == 700
    again.close()


# -- differential: every backend answers exactly like memory -----------------------------------


def _random_ops(seed: int, n: int):
    rnd = random.Random(seed)
    keys = [A, B, C, "p//session/s1"]
    amounts = [0, 1, 7, 100, 2**53 + 1, 2**63, U64_MAX - 3, U64_MAX]
    ids = [f"r{i}" for i in range(12)]
    for _ in range(n):
        op = rnd.choice(["reserve", "reserve", "commit", "commit_actual", "release", "add", "totals", "tick",
                         "expire", "open"])
        amount = rnd.choice(amounts) if rnd.random() < 0.15 else rnd.randrange(0, 500)
        yield op, rnd.choice(ids), rnd.sample(keys, rnd.randint(1, 3)), amount, rnd.choice([1, 5, 30])


def _answer(ledger: Ledger, clk: FakeClock, op, rid, keys, amount, ttl):
    if op == "reserve":
        r: Reservation = ledger.reserve(rid, keys, amount, ttl=ttl)
        return ("reserve", r.keys, r.amount, r.before, r.created, r.state, round(r.expires_at, 3))
    if op == "commit":
        s = ledger.commit(rid)
    elif op == "commit_actual":
        s = ledger.commit(rid, amount)
    elif op == "release":
        s = ledger.release(rid)
    elif op == "add":
        return ("add", ledger.add(keys, amount))
    elif op == "totals":
        return ("totals", ledger.totals([A, B, C, "p//session/s1"]))
    elif op == "tick":  # time passes; the next operation, whatever it is, must see expiry
        clk.advance(ttl / 2)
        return ("tick",)
    elif op == "open":
        return ("open", ledger.open_reservations())
    else:
        return ("expire", sorted(ledger.expire()))
    return (op, s.outcome, s.amount)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_backends_agree_with_memory_on_random_operations(shared_store: Store, seed):
    mem_clock, clk = FakeClock(), FakeClock()
    reference, ledger = MemoryLedger(clock=mem_clock), shared_store.open(clock=clk)
    for step, op in enumerate(_random_ops(seed, 250)):
        want = _answer(reference, mem_clock, *op)
        got = _answer(ledger, clk, *op)
        assert got == want, f"step {step}: {op}"
    assert ledger.open_reservations() == reference.open_reservations()


def test_redis_uri_options_split_between_ledger_and_redis_py():
    from chio_budget.ledger.redis import RedisLedger

    r = open_ledger("redis://127.0.0.1:6379/2?prefix=team-a&ttl=5&settled_retention=60&socket_timeout=1")
    assert isinstance(r, RedisLedger) and r.prefix == "team-a" and r.keys[0] == "{team-a}:counters"
    kw = r.client.connection_pool.connection_kwargs
    assert (kw["db"], kw["socket_timeout"], kw["socket_connect_timeout"]) == (2, 1.0, 5.0)
    u = open_ledger("unix:///run/redis.sock?db=3&prefix=x")
    assert u.client.connection_pool.connection_kwargs["path"] == "/run/redis.sock"
    with pytest.raises(LedgerError):
        open_ledger("redis://h:6379/0?prefix=a{b}")


def test_cli_ledger_option_keeps_spend_between_runs(policies_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from chio_budget.cli import app

    events = tmp_path / "events.jsonl"
    meta = make_meta().model_dump()
    events.write_text(json.dumps({"op": "record", "meta": meta, "cost_units": 1200}) + "\n"
                      + json.dumps({"op": "total_spent"}) + "\n")
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    outs = []
    for _ in range(2):
        res = runner.invoke(app, ["replay", str(events), "--policies", str(policies_dir), "--ledger", uri])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs == [{"total_spent": 1200}, {"total_spent": 2400}]
    res = runner.invoke(app, ["replay", str(events), "--policies", str(policies_dir), "--ledger", "ftp://x"])
    assert res.exit_code == 2 and "unknown ledger" in res.output


def test_guard_commit_after_expiry_counts_once_on_every_backend(store: Store, clock: FakeClock):
    guard = guard_for(rust_policy(), ledger=store.open(clock=clock), reservation_ttl=30)
    a = guard.authorize(make_meta(receipt="slow"), 400)
    assert a.allow
    clock.advance(31)
    assert guard.total_spent() == 0, "the expired reservation was given back"
    s = a.commit(350)
    assert (s.outcome, s.amount) == ("committed_late", 350)
    assert a.commit(350).changed is False
    assert guard.total_spent() == 350


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_ledger_object_survives_fork(tmp_path):
    """A forked child (pre-fork servers) gets its own connection, not the parent's."""
    ledger = open_ledger(f"sqlite:///{tmp_path / 'fork.db'}")
    ledger.add([A], 5)
    pid = os.fork()
    if pid == 0:  # child: no pytest here, report through the exit code only
        try:
            ledger.reserve("child", [A], 7)
            code = 0 if ledger.commit("child").outcome == "committed" else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.totals([A]) == [12]
    assert ledger.commit("child").outcome == "already_committed"
    ledger.close()
