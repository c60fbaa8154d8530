"""The embedded engine's pool of OPA instances (issue 15 part 2): lazy, bounded, one revision, all closed."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from chio_budget import BudgetGuard
from chio_budget.compiler import compile_all
from chio_budget.engines import make_engine
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.errors import EngineError
from chio_budget.reload import Source
from support.guards import REGO_DIR, make_meta, rust_policy


@contextmanager
def busy(e):
    """One of ``e``'s instances, held as a decision holds it (taken, given back at the end)."""
    opa = e._take()
    try:
        yield opa
    finally:
        e._give(opa)


def engine(pool_size=None, policy=None):
    policy = policy or rust_policy()
    return EmbeddedEngine(compile_all({policy.id: policy}), REGO_DIR, pool_size=pool_size)


def an_input(cost=100):
    g = BudgetGuard(rust_policy(), engine(1))
    try:
        return g.decide(make_meta(), cost, {"total": 0, "session": 0, "agent": 0, "tool": None}).input
    finally:
        g.close()


def hammer(e, threads=4, each=30):
    """Decide from several threads at once; every answer must be the one-thread answer."""
    inputs = [an_input(c) for c in (100, 20000)]
    want = [e.decide(i) for i in inputs]
    bad, start = [], threading.Barrier(threads)

    def work():
        start.wait()
        for n in range(each):
            if e.decide(inputs[n % 2]) != want[n % 2]:
                bad.append(n)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return bad


def test_default_pool_size_is_the_cpu_count(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    with engine() as e:
        assert e.pool_size == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_pool_size_must_be_a_positive_integer(bad):
    with pytest.raises(EngineError, match="pool_size must be an integer >= 1"):
        engine(bad)


def test_instances_are_created_lazily_and_never_past_the_bound():
    with engine(2) as e:
        assert e.instances == 1  # loaded up front: a Rego error surfaces at start-up
        assert hammer(e, threads=4) == []
        assert 1 <= e.instances <= 2


def test_pool_size_one_is_one_instance_shared_by_every_thread():
    with engine(1) as e:
        assert hammer(e, threads=3) == []
        assert e.instances == 1


def test_close_closes_every_instance_and_later_decisions_deny():
    e = engine(2)
    hammer(e, threads=2)
    created = list(e._idle)
    e.close()
    assert e._idle == [] and all(opa._handle is None for opa in created)
    d = e.decide(an_input())
    assert not d.allow and "closed" in d.error


def test_an_instance_busy_at_close_is_closed_when_its_decision_ends():
    e = engine(1)
    with busy(e) as opa:
        e.close()
        assert opa._handle is not None  # still deciding
    assert opa._handle is None


def test_a_waiting_decision_is_denied_when_the_engine_closes():
    e = engine(1)
    out = []
    with busy(e):
        t = threading.Thread(target=lambda: out.append(e.decide(an_input())))
        t.start()
        t.join(0.2)
        e.close()
        t.join(5)
    assert out and not out[0].allow and "closed" in out[0].error


def test_make_engine_passes_pool_size_and_refuses_other_options():
    compiled = compile_all({"default": rust_policy()})
    with make_engine("embedded", compiled, REGO_DIR, pool_size=3) as e:
        assert e.pool_size == 3
    with pytest.raises(EngineError, match="unknown option"):
        make_engine("embedded", compiled, REGO_DIR, pool_size=2, opa_url="x")


def test_a_reload_swaps_the_whole_pool_and_closes_the_old_one(policies_dir):
    with BudgetGuard.from_files(policies_dir, pool_size=2) as g:
        old = g.engine
        assert hammer(old, threads=2) == []
        instances = list(old._idle)
        (policies_dir / "default.yaml").write_text((policies_dir / "default.yaml").read_text().replace("10000", "9000"))
        g.reload()
        assert g.engine is not old and g.engine.pool_size == 2
        assert all(opa._handle is None for opa in instances)
        assert g.check(make_meta(), 9001).violations[0].limit_units == 9000


def test_the_shared_engine_of_a_policy_set_is_one_pool_closed_with_the_last_guard(policies_dir):
    (policies_dir / "other.yaml").write_text("currency: USD\nmax_total: 5\n")
    loaded = Source(policies_dir, engine_options={"pool_size": 2}).load_all()
    engines = {id(v.engine) for v in loaded.values()}
    shared = loaded["default"].engine
    assert len(engines) == 1 and shared.pool_size == 2
    assert hammer(shared, threads=2) == []
    loaded["default"].close()
    assert shared.decide(an_input()).error is None  # still open for the other policy
    loaded["other"].close()
    assert shared._closed


def test_an_instance_that_cannot_be_created_denies_that_decision_and_frees_its_place(monkeypatch):
    e = engine(2)
    inp = an_input()
    real_new = e._new
    monkeypatch.setattr(e, "_new", lambda: (_ for _ in ()).throw(EngineError("embedded OPA: out of memory")))
    with busy(e):  # the loaded instance is busy: the next decision must create one
        d = e.decide(inp)
    assert not d.allow and d.error == "engine error: embedded OPA: out of memory"
    assert e.instances == 1
    monkeypatch.setattr(e, "_new", real_new)
    with busy(e):
        assert e.decide(inp).allow and e.instances == 2
    e.close()
