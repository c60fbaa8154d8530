"""Batch evaluation (issue 15 part 3): ``decide_many`` and ``check_many`` answer exactly as one by one.

Differential: on the embedded and the server engine (the OPA stand-in), over
the shared decision cases merged into one data document and over random
inputs; a bad input among good ones denies itself as ``decide`` would and
nothing else. ``check_many`` equals ``check`` (ledger errors, rolling
``resets_at`` included); replay and shadows give the same output batched.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chio_budget.compiler import Compiled, compile_all
from chio_budget.decision import Decision
from chio_budget.engines import decide_all
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.engines.function import FunctionEngine
from chio_budget.engines.opa_http import make_client, push
from chio_budget.engines.server import ServerEngine
from chio_budget.errors import LedgerError
from chio_budget.policy import parse_policy
from chio_budget.rego_files import rego_modules
from chio_budget.replay import load_events, run_events
from chio_budget.shadow import ShadowPolicy, judge_shadows
from decision_cases import CASES
from support.guards import REGO_DIR, U64_MAX, guard_for, make_meta, rust_policy
from support.opa import start_opa

T = 1772964000


def merged_cases() -> tuple[Compiled, list[dict]]:
    """Every decision case's policies in one document (ids prefixed by the case), and the inputs."""
    policies, inputs = {}, []
    for c in CASES:
        own = c.data["chio"]["budget"]["policies"]
        policies.update({f"{c.id}/{pid}": p for pid, p in own.items()})
        inp = copy.deepcopy(c.input)
        if isinstance(inp, dict) and isinstance(inp.get("policy_id"), str) and inp["policy_id"] in own:
            inp["policy_id"] = f"{c.id}/{inp['policy_id']}"
        inputs.append(inp)
    return Compiled.from_budget({"policies": policies}), inputs


COMPILED, CASE_INPUTS = merged_cases()
# The random inputs: shapes the guard sends and shapes it never would (fail closed on both).
_units = st.one_of(st.integers(0, 3000), st.integers(U64_MAX - 3000, U64_MAX + 5), st.sampled_from([-1, 1.5, "7"]))
_totals = st.fixed_dictionaries({"total": _units, "session": st.one_of(st.none(), _units),
                                 "agent": st.one_of(st.none(), _units), "tool": st.one_of(st.none(), _units)})
_ids = st.sampled_from(sorted(COMPILED.policy_ids) + ["nope", None, 3])


@st.composite
def random_input(draw):
    inp = copy.deepcopy(draw(st.sampled_from(CASE_INPUTS)))
    if not isinstance(inp, dict):
        return inp
    inp["policy_id"] = draw(_ids)
    if draw(st.booleans()):
        inp["cost"] = {"units": draw(_units), "currency": draw(st.sampled_from(["USD", "EUR"]))}
    if draw(st.booleans()):
        inp["totals"] = draw(_totals)
    return inp


@pytest.fixture(scope="module")
def embedded():
    with EmbeddedEngine(COMPILED, REGO_DIR) as e:
        yield e


@pytest.fixture(scope="module")
def server():
    opa = start_opa(None)
    client = make_client(opa.url)
    push(client, COMPILED, rego_modules(REGO_DIR))
    try:
        with ServerEngine(client, COMPILED, url=opa.url) as e:
            yield e
    finally:
        opa.close()


@pytest.fixture(params=["embedded", "server"])
def engine(request):
    return request.getfixturevalue(request.param)


def one_by_one(engine, inputs):
    return [engine.decide(i) for i in inputs]


def test_decide_many_equals_decide_over_every_decision_case(engine):
    many = engine.decide_many(CASE_INPUTS)
    assert many == one_by_one(engine, CASE_INPUTS)
    assert any(d.allow for d in many) and any(d.error for d in many) and any(d.violations for d in many)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(random_input(), min_size=0, max_size=12))
def test_decide_many_equals_decide_on_random_inputs(engine, inputs):
    assert engine.decide_many(inputs) == one_by_one(engine, inputs)


def test_an_unknown_policy_among_good_inputs_denies_only_itself(engine):
    good = CASE_INPUTS[0]
    bad = dict(good, policy_id="nope")
    got = engine.decide_many([good, bad, good])
    assert got[0] == got[2] == engine.decide(good) and got[0].error is None
    assert got[1] == engine.decide(bad)
    assert got[1].error == "engine error: decision undefined: unknown policy_id 'nope'"


BOOM = ('package chio.budget\n\n_boom := 1 if input.request.tool_key == "s9:boom"\n\n'
        '_boom := 2 if input.request.tool_key == "s9:boom"\n\n'
        'violation contains {"scope": "custom", "code": "boom"} if _boom == 1\n')


@pytest.fixture
def boom_rego(tmp_path):
    d = tmp_path / "rego"
    for name, src in rego_modules(REGO_DIR).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(src)
    (d / "chio" / "budget" / "boom.rego").write_text(BOOM)
    return d


def test_an_input_that_breaks_evaluation_denies_only_itself_embedded(boom_rego):
    policy = rust_policy()
    good = guard_for(policy).decide(make_meta(), 10, {"total": 0, "session": 0, "agent": 0, "tool": None}).input
    bad = copy.deepcopy(good)
    bad["request"].update(tool_server="s9", tool_name="boom", tool_key="s9:boom")
    with EmbeddedEngine(compile_all({policy.id: policy}), boom_rego) as e:
        got = e.decide_many([good, bad, good])
        assert got == [e.decide(good), e.decide(bad), e.decide(good)]
    assert got[0].allow and not got[1].allow and "conflict" in got[1].error


def test_an_input_that_breaks_evaluation_denies_only_itself_server(boom_rego):
    policy = rust_policy()
    compiled = compile_all({policy.id: policy})
    good = guard_for(policy).decide(make_meta(), 10, {"total": 0, "session": 0, "agent": 0, "tool": None}).input
    bad = copy.deepcopy(good)
    bad["request"].update(tool_server="s9", tool_name="boom", tool_key="s9:boom")
    opa = start_opa(None)
    try:
        client = make_client(opa.url)
        push(client, compiled, rego_modules(boom_rego))
        with ServerEngine(client, compiled, url=opa.url) as e:
            got = e.decide_many([good, bad, good])
            assert got == [e.decide(good), e.decide(bad), e.decide(good)]
    finally:
        opa.close()
    assert got[0].allow and not got[1].allow and got[1].error.startswith("engine error: HTTP 500")


def test_a_rego_without_batch_rego_is_decided_one_by_one(tmp_path):
    d = tmp_path / "rego"
    for name, src in rego_modules(REGO_DIR).items():
        if not name.endswith("batch.rego"):
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(src)
    with EmbeddedEngine(COMPILED, d) as e:
        assert e.decide_many(CASE_INPUTS) == one_by_one(e, CASE_INPUTS)


def test_the_server_batches_in_requests_of_batch_size(server, monkeypatch):
    import chio_budget.engines.server as server_module

    monkeypatch.setattr(server_module, "BATCH_SIZE", 4)
    inputs = CASE_INPUTS[:10]
    assert server.decide_many(inputs) == one_by_one(server, inputs)


def test_the_server_denies_every_input_of_a_batch_it_cannot_reach(server):
    opa = start_opa(None)
    client = make_client(opa.url)
    push(client, COMPILED, rego_modules(REGO_DIR))
    e = ServerEngine(client, COMPILED, url=opa.url)
    opa.close()
    got = e.decide_many(CASE_INPUTS[:3])
    e.close()
    assert [d.allow for d in got] == [False] * 3
    assert all(d.error.startswith("engine error: connection") for d in got), got[0].error


def test_engines_without_batching_are_asked_one_by_one():
    seen = []

    def handler(inp):
        seen.append(inp["n"])
        if inp["n"] == 1:
            raise RuntimeError("down")
        return {"allow": True, "violations": [], "policy_id": "default", "policy_revision": "r"}

    got = decide_all(FunctionEngine(handler), [{"n": 0}, {"n": 1}, {"n": 2}])
    assert seen == [0, 1, 2] and [d.allow for d in got] == [True, False, True]
    assert got[1].error == "engine error: RuntimeError: down"


def test_empty_and_single_batches(engine):
    assert engine.decide_many([]) == []
    assert engine.decide_many(CASE_INPUTS[:1]) == one_by_one(engine, CASE_INPUTS[:1])


# -- check_many ------------------------------------------------------------------------------------------------

def requests_mix():
    metas = [make_meta(agent=a, tool=t, receipt=f"r{i}", session=s) for i, (a, t, s) in enumerate(
        [("a1", "t1", "sess-1"), ("a2", "expensive", None), ("a1", "expensive", "sess-2"), ("a3", "t1", None)])]
    return [(m, c) for m in metas for c in (0, 100, 499, 501, 2999, 3001, U64_MAX)]


def test_check_many_equals_check(make_guard):
    guard = make_guard()
    for meta, cost in requests_mix()[::5]:
        guard.record(meta, cost % 700)
    reqs = requests_mix() + [({"receipt_id": "m", "timestamp": 1000, "agent_id": "a1", "tool_server": "s1",
                               "tool_name": "t1"}, 5)]
    assert guard.check_many(reqs) == [guard.check(m, c) for m, c in reqs]
    assert guard.check_many([]) == []


def test_check_many_narrows_a_rolling_deny_like_check(make_guard):
    minute = parse_policy("id: minute\ncurrency: USD\nmax_total: 1000000000\n"
                          "max_per_agent: {units: 1000, window: {rolling: 60}}\n", "minute.yaml")
    guard = make_guard(minute)
    meta = make_meta().model_copy(update={"timestamp": T})
    guard.record(meta, 600)
    guard.record(meta.model_copy(update={"timestamp": T + 30}), 400)
    reqs = [(meta.model_copy(update={"timestamp": T + 40}), c) for c in (0, 1, 500, 1001)]
    got = guard.check_many(reqs)
    assert got == [guard.check(m, c) for m, c in reqs]
    assert got[0].allow and got[1].violations[0].resets_at == T + 60 and got[2].violations[0].resets_at == T + 60 \
        and got[3].violations[0].resets_at == T + 100


class FlakyLedger:
    """Reads fail for one agent's counters; everything else goes to the real ledger."""

    def __init__(self, inner):
        self.inner = inner

    def totals(self, keys, **kw):
        if any("a2" in k for k in keys):
            raise LedgerError("down")
        return self.inner.totals(keys, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_ledger_error_denies_only_its_request(make_guard):
    guard = make_guard()
    guard.ledger = FlakyLedger(guard.ledger)
    reqs = requests_mix()
    got = guard.check_many(reqs)
    assert got == [guard.check(m, c) for m, c in reqs]
    assert {d.error for d, (m, _) in zip(got, reqs) if m.agent_id == "a2"} == {"ledger error: down"}
    assert any(d.allow for d in got)


def test_check_many_raises_what_check_raises(make_guard):
    guard = make_guard()
    with pytest.raises(Exception) as many:
        guard.check_many([(make_meta(), 1), ({"receipt_id": ""}, 1)])
    with pytest.raises(Exception) as one:
        guard.check({"receipt_id": ""}, 1)
    assert type(many.value) is type(one.value)


def test_check_many_on_an_engine_without_batching(make_guard):
    answers = iter([True, False, True])

    def handler(inp):
        return {"allow": next(answers), "violations": [], "policy_id": "default", "policy_revision": "r"}

    guard = make_guard(engine=FunctionEngine(handler))
    got = guard.check_many([(make_meta(), 1)] * 3)
    assert [d.allow for d in got] == [True, False, True]


# -- replay and shadows ------------------------------------------------------------------------------------------

def test_replay_output_is_unchanged_by_batching(make_guard):
    lines = []
    for i, (meta, cost) in enumerate(requests_mix()):
        op = ["check", "check", "authorize", "check", "record", "check", "check", "check", "total_spent"][i % 9]
        ev = {"op": op} if op == "total_spent" else {"op": op, "meta": json.loads(meta.model_dump_json()),
                                                     "cost_units": cost % 4000}
        lines.append(json.dumps(ev))
    events = load_events("\n".join(lines), "t.jsonl")
    batched = list(run_events(make_guard(), events))

    class OneByOne:
        """The same guard without ``check_many``: replay's one-by-one path."""

        def __init__(self, guard):
            self._g = guard

        def __getattr__(self, name):
            if name == "check_many":
                raise AttributeError(name)
            return getattr(self._g, name)

    assert batched == list(run_events(OneByOne(make_guard()), events))


def test_shadows_sharing_an_engine_are_judged_in_one_query_with_the_same_results(make_guard):
    policies = {p.id: p for p in (rust_policy(id="a", max_total=50), rust_policy(id="b"), rust_policy(id="c",
                                                                                                     currency="EUR"))}
    calls = []
    shared = EmbeddedEngine(compile_all(policies), REGO_DIR)
    real = shared.decide_many
    shared.decide_many = lambda inputs: calls.append(len(inputs)) or real(inputs)
    together = [ShadowPolicy(make_guard(p, engine=shared)) for p in policies.values()]
    alone = [ShadowPolicy(make_guard(p)) for p in policies.values()]
    enforced = make_guard(rust_policy())
    e = enforced.evaluate(make_meta(), 100)
    got = judge_shadows(together, e.input, e.decision)
    want = [s.evaluate(e.input, e.decision) for s in alone]
    assert calls == [2]  # the EUR shadow is refused without asking
    assert [(r.policy_id, r.input, r.decision, r.diff) for r in got] == \
        [(r.policy_id, r.input, r.decision, r.diff) for r in want]
    assert not got[0].decision.allow and got[1].decision.allow and got[2].decision.error


def test_decisions_equal_one_by_one_for_a_guard_built_from_files(policies_dir):
    from chio_budget import BudgetGuard

    with BudgetGuard.from_files(policies_dir, pool_size=2) as guard:
        reqs = requests_mix()
        assert guard.check_many(reqs) == [guard.check(m, c) for m, c in reqs]
        assert isinstance(guard.check_many(reqs)[0], Decision)


def test_a_batch_is_one_query(engine, monkeypatch):
    import chio_budget.engines.embedded as embedded_module
    from chio_budget.engines import opa_http

    paths = []
    if isinstance(engine, EmbeddedEngine):
        real = engine._evaluate
        monkeypatch.setattr(engine, "_evaluate", lambda path, inp: paths.append(path) or real(path, inp))
        batch_path = embedded_module._BATCH
    else:
        real_query = opa_http.query
        monkeypatch.setattr(opa_http, "query",
                            lambda c, path, *a, **k: paths.append(path) or real_query(c, path, *a, **k))
        batch_path = "chio/budget/batch/decisions"
    good = [i for i, d in zip(CASE_INPUTS, one_by_one(engine, CASE_INPUTS)) if d.error is None]
    paths.clear()
    engine.decide_many(good)
    assert paths == [batch_path]
