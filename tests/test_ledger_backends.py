"""Each backend's own behaviour: opening by URI, options, files, servers, failures, migration.

The shared contract is ``test_ledger_contract.py``; this file is what only
one backend (or the registry) can show: a SQLite file's bytes, a Redis
server's keys, schema-1 data written by the previous version and opened by
this one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading

import pytest

from chio_budget import BudgetGuard
from chio_budget.errors import LedgerError
from chio_budget.ledger import BACKENDS, Balance, MemoryLedger, open_ledger
from support.backends import Store, make_store
from support.clock import FakeClock
from support.guards import U64_MAX, guard_for, make_meta, rust_policy

A, B = "p//total/", "p//agent/a1"


# -- the registry and the one option parser ---------------------------------------------------


def test_open_ledger_dispatches_by_uri(tmp_path):
    from chio_budget.ledger.sqlite import SqliteLedger

    s = open_ledger(f"sqlite:///{tmp_path / 'x.db'}?ttl=30&synchronous=normal")
    assert isinstance(s, SqliteLedger) and s.path == tmp_path / "x.db" and s.options.ttl == 30
    s.close()
    assert set(BACKENDS) >= {"memory", "sqlite", "redis", "rediss", "unix"}
    for uri in ("memory", "memory://", None):
        assert isinstance(open_ledger(uri), MemoryLedger)
    m = open_ledger("memory://?ttl=60&settled_retention=10&settled_max=5")
    assert (m.options.ttl, m.options.settled_retention, m.options.settled_max) == (60, 10, 5)
    assert open_ledger("memory://?ttl=60", ttl=7).options.ttl == 7, "keywords win over the URI"
    for bad in ("mysql://x", f"sqlite:///{tmp_path / 'x.db'}?colour=blue", "sqlite:///:memory:",
                "memory://?colour=blue", "memory://?settled_max=0", "memory://?settled_retention=-1"):
        with pytest.raises(LedgerError):
            open_ledger(bad)
    with pytest.raises(LedgerError, match="ttl"):
        open_ledger(f"sqlite:///{tmp_path / 'x.db'}?ttl=soon")
    with pytest.raises(LedgerError, match="ttl"):
        open_ledger("redis://127.0.0.1:6379/0?ttl=-1")


def test_redis_uri_without_redis_py_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.") or m == "chio_budget.ledger.redis"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ModuleNotFoundError
    with pytest.raises(LedgerError, match=r"pip install 'chio-budget-guard\[redis\]'"):
        open_ledger("redis://127.0.0.1:6379/0")


def test_redis_uri_options_split_between_ledger_and_redis_py():
    from chio_budget.ledger.redis import RedisLedger

    r = open_ledger("redis://127.0.0.1:6379/2?prefix=team-a&ttl=5&settled_retention=60&settled_max=9"
                    "&socket_timeout=1")
    assert isinstance(r, RedisLedger) and r.prefix == "team-a" and r.keys[1] == "{team-a}:spent"
    assert (r.options.ttl, r.options.settled_retention, r.options.settled_max) == (5, 60, 9)
    kw = r.client.connection_pool.connection_kwargs
    assert (kw["db"], kw["socket_timeout"], kw["socket_connect_timeout"]) == (2, 1.0, 5.0)
    assert kw["retry"].get_retries() == 0, "redis-py never resends a script by itself (add is not idempotent)"
    u = open_ledger("unix:///run/redis.sock?db=3&prefix=x")
    assert u.client.connection_pool.connection_kwargs["path"] == "/run/redis.sock"
    with pytest.raises(LedgerError):
        open_ledger("redis://h:6379/0?prefix=a{b}")


# -- SQLite ------------------------------------------------------------------------------------


def test_sqlite_stores_amounts_exactly_as_decimal_text(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'u.db'}")
    ledger.add(["k"], U64_MAX)
    ledger.reserve("a", ["k"], U64_MAX)
    ledger.reserve("b", ["k"], U64_MAX)
    ledger.close()
    db = sqlite3.connect(tmp_path / "u.db")
    row = db.execute("SELECT spent, typeof(spent), held, typeof(held) FROM counters").fetchone()
    assert row == (str(U64_MAX), "text", str(2 * U64_MAX), "text")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_sqlite_corrupt_counter_is_a_ledger_error_and_a_deny(tmp_path):
    path = tmp_path / "c.db"
    ledger = open_ledger(f"sqlite:///{path}")
    guard = guard_for(rust_policy(), ledger=ledger)
    guard.record(make_meta(), 1)
    ledger.add([A], 1)
    db = sqlite3.connect(path)
    db.execute("UPDATE counters SET spent = '1.5e3'")
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
        assert guard.orphan_cleanup_failures == 1, "the cleanup release could not get the lock either"
    finally:
        blocker.execute("ROLLBACK")
    assert ledger.reserve("r1", [A], 1).created, "nothing was left behind by the failed attempts"
    assert ledger.totals([A]) == [1]
    ledger.close()


def test_sqlite_waits_for_a_writer_that_lets_go_and_reads_beside_it(tmp_path):
    """The ledger waits for locks itself (SQLite's busy timeout is 0 on its connection, whose
    handler would sleep 1, 2, 5, 10 ms): a writer is waited for until it lets go, and reads
    go on beside a writer (WAL)."""
    path = tmp_path / "l.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout=10")
    assert ledger._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # type: ignore[attr-defined]
    ledger.add([A], 3)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    letting_go = threading.Timer(0.05, lambda: blocker.execute("ROLLBACK"))
    letting_go.start()
    try:
        assert ledger.totals([A]) == [3], "a read does not wait for the writer"
        assert ledger.reserve("r1", [A], 1).created
    finally:
        letting_go.join()
        blocker.close()
    assert ledger.commit("r1").outcome == "committed"
    assert ledger.totals([A]) == [4]
    ledger.close()


def test_sqlite_open_waits_for_a_writer_on_a_fresh_file(tmp_path):
    """Replicas starting together: one is mid-write on a file not yet in WAL mode while another
    opens it. Switching to WAL must upgrade a read lock, which SQLite refuses at once (no busy
    handler); the open must wait like any other operation, not fail (CI saw 'database is locked')."""
    path = tmp_path / "l.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (a)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    done = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    done.start()
    try:
        ledger = open_ledger(f"sqlite:///{path}?busy_timeout=10")
    finally:
        done.join()
        writer.close()
    assert ledger.reserve("r1", [A], 1).created
    ledger.close()


def test_sqlite_open_still_gives_up_after_busy_timeout(tmp_path):
    path = tmp_path / "l.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE other (a)")
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerError, match="locked"):
            open_ledger(f"sqlite:///{path}?busy_timeout=0.05")
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_sqlite_unopenable_path_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError):
        open_ledger(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")


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


# Schema 1, exactly as the previous version wrote it (one combined counter per key).
_SQLITE_V1 = """
CREATE TABLE counters (key TEXT PRIMARY KEY, units TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE reservations (receipt_id TEXT PRIMARY KEY, keys TEXT NOT NULL, amount TEXT NOT NULL,
    before TEXT NOT NULL, expires_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    settled_amount TEXT, settled_at REAL);
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_settled_at ON reservations (settled_at) WHERE state != 'held';
INSERT INTO counters VALUES ('p//total/', '1070'), ('p//agent/a1', '70'), ('p//agent/a2', '18446744073709551615');
INSERT INTO reservations VALUES
    ('live1', '["p//total/", "p//agent/a1"]', '50', '["900", "0"]', 2000000.0, 'held', NULL, NULL),
    ('live2', '["p//total/"]', '20', '["950", "0"]', 2000000.0, 'held', NULL, NULL),
    ('done', '["p//total/", "p//agent/a1"]', '20', '["0", "0"]', 1000.0, 'committed', '20', 1000.0),
    ('old', '["p//total/"]', '5', '["0"]', 900.0, 'expired', '5', 950.0);
PRAGMA user_version = 1;
"""


def test_sqlite_schema_1_is_migrated_on_open(tmp_path):
    clock = FakeClock(1100.0)
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(_SQLITE_V1)
    db.close()
    ledger = open_ledger(f"sqlite:///{path}", clock=clock)
    assert ledger.balances([A, B, "p//agent/a2"]) == [Balance(1000, 70), Balance(20, 50), Balance(U64_MAX, 0)]
    assert ledger.totals([A]) == [1070], "what OPA sees is unchanged by the migration"
    assert (ledger.get("done").state, ledger.get("old").state) == ("committed", "expired")
    assert ledger.commit("live1", 40).outcome == "committed"
    assert ledger.commit("old").outcome == "committed_late"
    assert ledger.balances([A, B]) == [Balance(1045, 20), Balance(60, 0)]
    ledger.close()
    assert open_ledger(f"sqlite:///{path}", clock=clock).balances([A]) == [Balance(1045, 20)], "migrated once"
    v = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert v == 2


def test_sqlite_schema_2_file_without_marks_gets_the_table_on_open(tmp_path):
    """Files written before mark_once existed: the table is added, the version stays 2."""
    path = tmp_path / "v2.db"
    open_ledger(f"sqlite:///{path}").add([A], 5)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE marks")
    db.commit()
    db.close()
    ledger = open_ledger(f"sqlite:///{path}")
    assert ledger.mark_once("m") and not ledger.mark_once("m")
    assert ledger.totals([A]) == [5]
    ledger.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_sqlite_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "v9.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(LedgerError, match="schema version 9"):
        open_ledger(f"sqlite:///{path}")


# -- Redis -------------------------------------------------------------------------------------


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
        ledger.client.hset(ledger.keys[1], A, "1e3")
        with pytest.raises(LedgerError, match="corrupt"):
            ledger.reserve("r1", [A], 1)
        assert ledger.open_reservations() == 0, "the failed script wrote nothing"
    finally:
        s.cleanup()


@pytest.mark.redis
def test_redis_uses_server_time_by_default(tmp_path):
    """No clock passed: expiry follows the Redis server's TIME, so replicas agree."""
    import time

    s = make_store("redis", tmp_path)
    try:
        ledger = s.open()
        server_now = float(".".join(str(int(x)) for x in ledger.client.time()))
        r = ledger.reserve("r1", [A], 5, ttl=30)
        assert server_now + 29 <= r.expires_at <= server_now + 31 + 60  # 60 s slack for a slow machine
        ledger.reserve("r0", [A], 5, ttl=0.05)
        time.sleep(0.1)
        assert "r0" in ledger.expire()
        assert ledger.totals([A]) == [5]
    finally:
        s.cleanup()


@pytest.mark.redis
def test_redis_schema_1_is_migrated_by_the_first_script(tmp_path):
    s = make_store("redis", tmp_path)
    import redis  # the [redis] extra; make_store skipped the test without a server
    try:
        ledger = s.open(clock=FakeClock(1000.0))
        c, tag = ledger.client, "{" + s.prefix + "}"
        c.hset(f"{tag}:counters", mapping={A: "1070", B: "70", "p//agent/a2": str(U64_MAX)})
        c.hset(f"{tag}:reservations", mapping={
            "live1": json.dumps({"k": [A, B], "a": "50", "b": ["900", "0"], "e": "2000000.000000", "s": "held"}),
            "live2": json.dumps({"k": [A], "a": "20", "b": ["950", "0"], "e": "2000000.000000", "s": "held"}),
            "done": json.dumps({"k": [A, B], "a": "20", "b": ["0", "0"], "e": "1000.000000", "s": "committed",
                                "c": "20", "t": "999.000000"}),
        })
        c.zadd(f"{tag}:held", {"live1": 2000000.0, "live2": 2000000.0})
        c.zadd(f"{tag}:settled", {"done": 999.0})
        assert ledger.balances([A, B, "p//agent/a2"]) == [Balance(1000, 70), Balance(20, 50), Balance(U64_MAX, 0)]
        assert c.get(f"{tag}:version") == b"2" and c.type(f"{tag}:counters") == b"string"
        assert ledger.open_reservations() == 2 and ledger.get("done").state == "committed"
        assert ledger.commit("live1", 40).outcome == "committed"
        assert ledger.balances([A, B]) == [Balance(1040, 20), Balance(60, 0)]
        with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
            c.hget(f"{tag}:counters", A)  # what schema-1 code would do now: it fails, so it denies
    finally:
        s.cleanup()


# -- the guard over a ledger URI ----------------------------------------------------------------


def test_guard_authorize_commit_release_on_every_backend(store: Store):
    guard = guard_for(rust_policy(), ledger=store.open())
    a = guard.authorize(make_meta(receipt="r1"), 2900)
    assert a.allow
    denied = guard.authorize(make_meta(receipt="r2"), 200)
    assert not denied.allow and denied.decision.violation.scope == "agent"
    assert (guard.total_spent(), guard.total_held()) == (0, 2900), "a denied request leaves no trace"
    assert a.commit(2500).outcome == "committed"
    assert guard.authorize(make_meta(receipt="r1"), 1).decision.error == "receipt 'r1' was already committed"
    assert guard.total_spent() == 2500
    b = guard.authorize(make_meta(receipt="r3"), 500)
    assert b.allow and guard.remaining() == 10000 - 3000
    assert b.release().outcome == "released"
    assert guard.remaining() == 10000 - 2500


def test_guard_commit_after_expiry_counts_once_on_every_backend(store: Store, clock: FakeClock):
    guard = guard_for(rust_policy(), ledger=store.open(clock=clock), reservation_ttl=30)
    a = guard.authorize(make_meta(receipt="slow"), 400)
    assert a.allow
    clock.advance(31)
    assert (guard.total_spent(), guard.total_held()) == (0, 0), "the expired reservation was given back"
    s = a.commit(350)
    assert (s.outcome, s.amount) == ("committed_late", 350)
    assert a.commit(350).changed is False
    assert guard.total_spent() == 350


def test_guard_from_files_takes_a_ledger_uri(policies_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'g.db'}"
    with BudgetGuard.from_files(policies_dir, ledger=uri) as guard:
        guard.authorize(make_meta(receipt="x1"), 700).commit()
    with BudgetGuard.from_files(policies_dir, ledger=uri) as again:
        assert again.total_spent() == 700


def test_cli_ledger_option_keeps_spend_between_runs(policies_dir, tmp_path):
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
