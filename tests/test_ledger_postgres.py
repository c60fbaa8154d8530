"""What only the PostgreSQL ledger can show: its URI, NUMERIC storage, the schema's creation,
versioning and migration, row locks without deadlocks, SERIALIZABLE with retries, and failing
closed within its bounds (unreachable server, terminated backend, lock wait, a server that stops
answering). The shared contract runs on it from ``test_ledger_contract.py`` and
``test_ledger_extensions.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import random
import threading
import uuid

import pytest

from chio_budget.errors import LedgerError
from chio_budget.ledger import Balance, open_ledger
from support.backends import POSTGRES_URL, drop_schema, need_postgres, postgres_uri
from support.guards import guard_for, make_meta, rust_policy
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres
U64_MAX = 2**64 - 1


@pytest.fixture
def schema():
    need_postgres()
    name = f"chio_test_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(name)


def _sql(query: str, *args):
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def test_uri_options_split_between_the_ledger_and_libpq(schema):
    from chio_budget.ledger.postgres import PostgresLedger

    ledger = open_ledger(postgres_uri(schema, "ttl=5&settled_max=9&pool_max=3&statement_timeout=2"
                                              "&sslmode=disable&application_name=kernel-7"))
    assert isinstance(ledger, PostgresLedger) and ledger.schema == schema
    assert (ledger.options.ttl, ledger.options.settled_max, ledger._pool_sizes) == (5, 9, (1, 3))
    for part in ("sslmode=disable", "application_name=kernel-7", "statement_timeout=2000", "tcp_user_timeout=5000"):
        assert part in ledger.conninfo
    assert isinstance(open_ledger(f"postgres://postgres@127.0.0.1/test?schema={schema}"), PostgresLedger)
    for bad in ("schema=Bad-Name", "schema=pg_x", "isolation=chaos", "pool_max=0", "pool_min=5&pool_max=2",
                "ttl=0", "retries=-1"):
        with pytest.raises(LedgerError):
            open_ledger(postgres_uri(schema, "") + "&" + bad if "schema=" not in bad else f"{POSTGRES_URL}?{bad}")
    ledger.close()


def test_amounts_are_exact_numerics_and_the_schema_is_versioned(schema):
    ledger = open_ledger(postgres_uri(schema))
    ledger.add(["k"], U64_MAX)
    ledger.reserve("a", ["k"], U64_MAX)
    ledger.reserve("b", ["k"], U64_MAX)
    assert _sql(f"SELECT spent, held, pg_typeof(spent)::text FROM {schema}.counters") == \
        [(U64_MAX, 2 * U64_MAX, "numeric")]
    assert _sql(f"SELECT value FROM {schema}.meta WHERE name = 'version'") == [("1",)]
    with pytest.raises(LedgerError):  # the column's CHECK: spent is a u64, whatever writes it
        _check_violation(schema)
    ledger.close()


def _check_violation(schema):
    import psycopg

    try:
        _sql(f"UPDATE {schema}.counters SET spent = spent + 1")
    except psycopg.errors.CheckViolation as exc:
        raise LedgerError(str(exc)) from None


def _first_use(uri: str) -> int:
    ledger = open_ledger(uri)
    try:
        return ledger.add(["k"], 1)[0]
    finally:
        ledger.close()


def test_schema_is_created_once_when_replicas_start_together(schema):
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(4, mp_context=ctx) as pool:
        results = sorted(pool.map(_first_use, [postgres_uri(schema)] * 4))
    assert results == [1, 2, 3, 4]


def test_a_newer_schema_is_refused_and_an_older_one_migrated(schema, monkeypatch):
    from chio_budget.ledger import postgres_schema

    ledger = open_ledger(postgres_uri(schema))
    ledger.reserve("r1", ["k"], 5)
    ledger.close()
    # the migration path: version 1 -> 2 by a (test) migration, functions re-created, data kept
    real = postgres_schema._sql
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", {1: "test-migration.sql"})
    monkeypatch.setattr(postgres_schema, "_sql", lambda name: "ALTER TABLE counters ADD COLUMN note text"
                        if name == "test-migration.sql" else real(name))
    migrated = open_ledger(postgres_uri(schema))
    assert migrated.commit("r1").outcome == "committed" and migrated.balances(["k"]) == [Balance(5, 0)]
    assert _sql(f"SELECT value FROM {schema}.meta WHERE name = 'version'") == [("2",)]
    assert _sql(f"SELECT note FROM {schema}.counters") == [(None,)]
    migrated.close()
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", 1)
    old = open_ledger(postgres_uri(schema))
    with pytest.raises(LedgerError, match="version 2; this code knows up to 1"):
        old.totals(["k"])
    old.close()


def test_overlapping_reservations_in_any_key_order_never_deadlock(schema):
    """Row locks are taken in key order in one statement; with retries=0 a deadlock would surface."""
    ledger = open_ledger(postgres_uri(schema, "retries=0&pool_max=8"))
    keys = [f"p//agent/a{i}" for i in range(6)]

    def work(w: int) -> int:
        rnd = random.Random(w)
        for i in range(60):
            rid = f"d{w}-{i}"
            ledger.reserve(rid, rnd.sample(keys, rnd.randint(2, 6)), 1, reads={})
            getattr(ledger, rnd.choice(["commit", "release"]))(rid)
        return 60

    with cf.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(8))) == 480
    assert ledger.open_reservations() == 0
    ledger.close()


def test_serializable_isolation_retries_and_keeps_the_invariants(schema):
    ledger = open_ledger(postgres_uri(schema, "isolation=serializable&pool_max=6&retries=100"))
    barrier = threading.Barrier(6)

    def work(w: int) -> int:
        barrier.wait()
        kept = 0
        for i in range(40):
            r = ledger.reserve(f"s{w}-{i}", ["p//total/", f"p//agent/a{w % 2}"], 3)
            if r.before[0] + 3 <= 300:
                kept += ledger.commit(r.receipt_id).amount
            else:
                ledger.release(r.receipt_id)
        return kept

    with cf.ThreadPoolExecutor(6) as pool:
        committed = sum(pool.map(work, range(6)))
    assert ledger.balances(["p//total/"]) == [Balance(committed, 0)] and committed == 300
    assert ledger.conflicts > 0, "the test made transactions conflict (and they were retried)"
    ledger.close()


def test_unreachable_server_denies_within_the_pool_timeout():
    ledger = open_ledger("postgresql://postgres@127.0.0.1:1/test?pool_timeout=0.5&connect_timeout=1")
    with pytest.raises(LedgerError, match="PoolTimeout"):
        ledger.reserve("r1", ["k"], 1)
    guard = guard_for(rust_policy(), ledger=ledger)
    d = guard.authorize(make_meta(), 1).decision
    assert not d.allow and "ledger error" in d.error
    ledger.close()


def test_a_terminated_backend_fails_one_call_then_the_pool_recovers(schema):
    ledger = open_ledger(postgres_uri(schema, "pool_min=1&pool_max=1"))
    ledger.add(["k"], 1)
    _sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'chio-budget' "
         "AND pid <> pg_backend_pid() AND query LIKE %s", f"%{schema}%")
    with pytest.raises(LedgerError):
        ledger.add(["k"], 1)
    assert ledger.add(["k"], 1) == [2], "the failed call wrote nothing; the next one reconnected"
    ledger.close()


def test_a_lock_held_too_long_denies_and_leaves_nothing(schema):
    import psycopg

    ledger = open_ledger(postgres_uri(schema, "statement_timeout=0.3"))
    ledger.add(["p//total/"], 1)
    with psycopg.connect(POSTGRES_URL) as blocker:
        blocker.execute(f"SELECT * FROM {schema}.counters WHERE key = 'p//total/' FOR UPDATE")
        with pytest.raises(LedgerError, match="statement timeout"):
            ledger.reserve("r1", ["p//total/"], 5)
        blocker.rollback()
    assert ledger.get("r1") is None and ledger.balances(["p//total/"]) == [Balance(1, 0)]
    ledger.close()


def test_a_server_that_stops_answering_is_cut_at_the_deadline(schema):
    proxy = TcpProxy(("127.0.0.1", 5432))
    uri = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}&deadline=0.5&pool_max=1"
    ledger = open_ledger(uri)
    try:
        ledger.add(["k"], 1)
        proxy.hang.set()
        with pytest.raises(LedgerError):
            ledger.add(["k"], 1)
        assert ledger._watchdog.cut == 1
        proxy.hang.clear()
        assert ledger.totals(["k"]) in ([1], [2]), "the cut call may or may not have run"
    finally:
        ledger.close()
        proxy.close()
