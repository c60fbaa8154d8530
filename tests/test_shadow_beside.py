"""A shadow over the enforced guard's own engine is judged in the enforced decision's query (issue 15 part 3).

``BudgetGuard.authorize(..., shadows=)`` puts the shadows that share the
engine in force into one ``decide_many`` with the enforced input
(``loaded.Loaded.decide_beside``); ``run_shadows(..., beside=)`` takes those
decisions instead of asking again. Everything logged is what the old path
(each shadow asked on its own engine) logs, timings and ids aside; the
enforced decisions and the ledger are the same with and without riders.
Real embedded OPA throughout; the engine's methods are only wrapped to count.
"""

from __future__ import annotations

import json
from typing import Any

from chio_budget.chain_guard import BudgetChainGuard
from chio_budget.compiler import compile_all
from chio_budget.cost import CostMetadata
from chio_budget.decisionlog import DecisionLog, event_kind
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.kernel import GuardContext
from chio_budget.policy import parse_policy
from support.chain import ctx
from support.guards import REGO_DIR, rust_policy

T = 1772964000
ENFORCED = rust_policy(prices={"s1:search": 5})
NEXT = rust_policy(id="next", max_total=300, max_per_tool={"s1:expensive": 100})
LOOSE = rust_policy(id="loose", max_per_agent=None)
EURO = rust_policy(id="euro", currency="EUR")
MINUTE = parse_policy("id: minute\ncurrency: USD\nmax_total: 1000000000\n"
                      "max_per_agent: {units: 1000, window: {rolling: 60}}\n", "minute.yaml")
MINUTE_NEXT = parse_policy("id: minute-next\ncurrency: USD\nmax_total: 1200\n"
                           "max_per_agent: {units: 1000, window: {rolling: 60}}\n", "minute-next.yaml")

# Allows, denies (agent 3000, tool 500, the shadow's 300 total), a settled call, a failed one, a repeat.
CALLS: list[tuple[str, dict[str, Any], str | None]] = [
    ("r1", {"cost_estimate": 200}, "completed"),
    ("r2", {"cost_estimate": 200}, None),
    ("r2", {"cost_estimate": 200}, "completed"),  # the same request again: a repeat
    ("r3", {"cost_estimate": 4000}, None),
    ("r4", {"tool": "expensive", "cost_estimate": 450}, "failed"),
    ("r5", {"tool": "expensive", "cost_estimate": 600}, None),
    ("r6", {"agent": "a2", "cost_estimate": 2900}, "completed"),
    ("r7", {"agent": "a2", "cost_estimate": 200}, None),
    ("r8", {"agent": "a3", "cost_estimate": 100}, None),  # held at the end
]


class Counted:
    """Counts the queries an ``EmbeddedEngine`` makes (``_evaluate``) and how it was asked."""

    def __init__(self, engine: EmbeddedEngine):
        self.engine, self.calls = engine, []
        for name in ("decide", "decide_many", "_evaluate"):
            real = getattr(engine, name)
            setattr(engine, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def counted(*args):
            self.calls.append(name if name != "decide_many" else f"decide_many:{len(args[0])}")
            return real(*args)
        return counted

    def take(self) -> list[str]:
        out, self.calls = self.calls, []
        return out


def shared_engine(*policies):
    return EmbeddedEngine(compile_all({p.id: p for p in policies}), REGO_DIR)


def chain(make_guard, tmp_path, enforced, shadows, engine=None, log="d.jsonl"):
    """A chain guard for ``enforced`` (over ``engine``, else its own) with these shadow guards, logging."""
    b = BudgetChainGuard(make_guard(enforced, engine=engine), shadows=shadows, decision_log=DecisionLog(tmp_path / log))
    b.log_file = tmp_path / log  # type: ignore[attr-defined]
    return b


def run(b: BudgetChainGuard, calls=CALLS, per_call=None) -> list[Any]:
    verdicts = []
    for rid, kw, settle in calls:
        d = b.evaluate(ctx(rid, **kw))
        if per_call is not None:
            per_call(rid)
        verdicts.append((d.verdict, d.reason, d.evidence[0].details["decision"]))
        if settle is not None:
            b.on_invocation_complete(rid, status=settle)
    return verdicts


def events(b: BudgetChainGuard, shadows: bool = True) -> list[dict[str, Any]]:
    """The log (``shadows=False``: without shadow events) without what differs run to run (ids,
    clocks, timings); decision ids by position."""
    evs = [e for e in map(json.loads, b.log_file.read_text().splitlines())
           if shadows or e["chio"]["event"] != "shadow"]
    ids = {e["decision_id"]: f"#{i}" for i, e in enumerate(evs)}

    def same(v):
        if isinstance(v, dict):
            return {k: same(x) for k, x in v.items()
                    if k not in ("decision_id", "timestamp", "labels", "metrics", "client_wall_ns")}
        if isinstance(v, list):
            return [same(x) for x in v]
        return ids.get(v, v) if isinstance(v, str) else v

    return [same(e) for e in evs]


def shadow_events(b):
    return [(e["input"], e["result"], e["chio"]["diff"], e["chio"]["parent_decision_id"], e["chio"]["policy_id"])
            for e in events(b) if e["chio"]["event"] == "shadow"]


def ledger_state(b: BudgetChainGuard) -> Any:
    metas = [CostMetadata(receipt_id="peek", timestamp=1000, agent_id=a, session_id="sess-1", tool_server="s1",
                          tool_name=t) for a in ("a1", "a2", "a3") for t in ("search", "expensive")]
    keys = sorted({k for m in metas for k in b.guard.counter_keys(m).values()})
    return (b.guard.total_spent(), b.guard.total_held(), b.open_holds(),
            [(x.spent, x.held) for x in b.guard.ledger.balances(keys)])


def test_a_shadow_on_the_enforced_engine_costs_no_query_and_logs_the_same(make_guard, tmp_path):
    engine = shared_engine(ENFORCED, NEXT)
    counted = Counted(engine)
    together = chain(make_guard, tmp_path, ENFORCED, [make_guard(NEXT, engine=engine)], engine, "one.jsonl")
    apart = chain(make_guard, tmp_path, ENFORCED, [make_guard(NEXT)], log="two.jsonl")
    counted.take()
    per_call = []
    got = run(together, per_call=lambda rid: per_call.append((rid, counted.take())))
    # One query per evaluate: the first with the shadow riding along, the repeat (r2 again) alone.
    assert per_call == [(rid, ["decide", "_evaluate"] if i == 2 else ["decide_many:2", "_evaluate"])
                        for i, (rid, _, _) in enumerate(CALLS)]
    assert got == run(apart)
    assert shadow_events(together) == shadow_events(apart)
    assert events(together) == events(apart)
    kinds = [e["result"]["allow"] for e in events(together) if e["chio"]["event"] == "shadow"]
    assert True in kinds and False in kinds and len(kinds) == len(CALLS) - 1  # the repeat judges no shadow
    assert any(not e["chio"]["diff"]["agree"] for e in events(together) if e["chio"]["event"] == "shadow")


def test_the_enforced_decisions_and_the_ledger_are_the_same_with_and_without_riders(make_guard, tmp_path):
    engine = shared_engine(ENFORCED, NEXT, LOOSE)
    riders = chain(make_guard, tmp_path, ENFORCED, [make_guard(NEXT, engine=engine), make_guard(LOOSE, engine=engine)],
                   engine, "riders.jsonl")
    plain = chain(make_guard, tmp_path, ENFORCED, [], shared_engine(ENFORCED), "plain.jsonl")
    assert run(riders) == run(plain)
    assert ledger_state(riders) == ledger_state(plain)
    assert ledger_state(riders)[0] > 0 and ledger_state(riders)[1] > 0
    assert events(riders, shadows=False) == events(plain)
    assert len(events(riders)) == len(events(plain)) + 2 * (len(CALLS) - 1)  # two shadows, none on the repeat


def test_a_guard_hands_back_the_shadows_judged_beside_its_decision(make_guard):
    from chio_budget.shadow import ShadowPolicy

    engine = shared_engine(ENFORCED, NEXT, EURO)
    guard = make_guard(ENFORCED, engine=engine)
    shadows = [ShadowPolicy(make_guard(p, engine=engine)) for p in (NEXT, EURO)] + [ShadowPolicy(make_guard(LOOSE))]
    meta = CostMetadata(receipt_id="g1", timestamp=1000, agent_id="a1", tool_server="s1", tool_name="t1")
    auth = guard.authorize(meta, 400, shadows=shadows)
    alone = make_guard(ENFORCED).authorize(meta, 400)
    assert (auth.decision, auth.input, auth.estimate_units) == (alone.decision, alone.input, alone.estimate_units)
    assert auth.beside is not None and auth.beside.input is auth.input
    ((shadow, inp, d),) = auth.beside.judged  # the EUR shadow is refused, LOOSE is on its own engine
    assert shadow is shadows[0] and inp == dict(auth.input, policy_id="next") and not d.allow
    assert d == shadows[0].evaluate(auth.input, auth.decision).decision
    assert guard.authorize(meta.model_copy(update={"receipt_id": "g2"}), 1).beside is None  # no shadows, none


def test_a_mixed_set_refuses_another_currency_unasked_and_asks_another_engine_apart(make_guard, tmp_path):
    engine = shared_engine(ENFORCED, NEXT, LOOSE, EURO)
    counted = Counted(engine)
    other = make_guard(LOOSE)
    other_counted = Counted(other.engine)
    mixed = [make_guard(NEXT, engine=engine), make_guard(EURO, engine=engine), other, make_guard(LOOSE, engine=engine)]
    together = chain(make_guard, tmp_path, ENFORCED, mixed, engine, "one.jsonl")
    apart = chain(make_guard, tmp_path, ENFORCED, [make_guard(p) for p in (NEXT, EURO, LOOSE, LOOSE)],
                  log="two.jsonl")
    counted.take(), other_counted.take()
    calls = [("m1", {"cost_estimate": 250}, "completed"), ("m2", {"cost_estimate": 250}, None)]
    per_call = []
    got = run(together, calls, lambda rid: per_call.append((counted.take(), other_counted.take())))
    assert per_call == [(["decide_many:3", "_evaluate"], ["decide", "_evaluate"])] * 2
    assert got == run(apart, calls)
    assert events(together) == events(apart)
    euro = [e for e in events(together) if e["chio"].get("policy_id") == "euro"]
    assert len(euro) == 2 and all("differs from enforced USD" in e["result"]["error"] for e in euro)


def test_shadows_riding_a_narrowed_rolling_deny_are_judged_on_the_final_input(make_guard, tmp_path):
    engine = shared_engine(MINUTE, MINUTE_NEXT)
    counted = Counted(engine)
    together = chain(make_guard, tmp_path, MINUTE, [make_guard(MINUTE_NEXT, engine=engine)], engine, "one.jsonl")
    apart = chain(make_guard, tmp_path, MINUTE, [make_guard(MINUTE_NEXT)], log="two.jsonl")
    for b in (together, apart):
        for t, units in ((T, 600), (T + 30, 400)):
            b.guard.record(CostMetadata(receipt_id="seed", timestamp=t, agent_id="a1", tool_server="s1",
                                        tool_name="t1"), units)
    counted.take()
    asks = [GuardContext(request_id="late", tool_name="t1", server_id="s1", agent_id="a1", timestamp=T + 40,
                         cost_estimate=500)]
    verdicts = [b.evaluate(asks[0]) for b in (together, apart)]
    assert verdicts[0].verdict == verdicts[1].verdict == "deny"
    # Decided, found rolling, decided again narrowed: both times with the shadow riding, nothing more.
    assert counted.take() == ["decide_many:2", "_evaluate"] * 2
    decision, shadow = [e for e in events(together) if e["chio"]["event"] in ("decision", "shadow")]
    assert decision["input"]["windows"]["agent"]["resets_at"] == T + 60  # narrowed (all gone: T + 90)
    assert shadow["input"] == dict(decision["input"], policy_id="minute-next")
    assert [(v["scope"], v.get("resets_at")) for v in shadow["result"]["violations"]] == \
        [("total", None), ("agent", T + 60)]
    assert events(together) == events(apart)


class NoBatch(EmbeddedEngine):
    """An engine whose ``decide_many`` raises (an engine must not; a custom one might)."""

    def decide_many(self, inputs):
        raise RuntimeError("no batch today")


def test_an_engine_whose_decide_many_raises_decides_alone_and_shadows_are_judged_apart(make_guard, tmp_path):
    engine = NoBatch(compile_all({p.id: p for p in (ENFORCED, NEXT)}), REGO_DIR)
    counted = Counted(engine)
    together = chain(make_guard, tmp_path, ENFORCED, [make_guard(NEXT, engine=engine)], engine, "one.jsonl")
    apart = chain(make_guard, tmp_path, ENFORCED, [make_guard(NEXT)], log="two.jsonl")
    counted.take()
    calls = CALLS[:4]
    got = run(together, calls)
    assert got == run(apart, calls)
    assert events(together) == events(apart)
    assert counted.take().count("decide_many:2") == 3  # tried, raised; then decided alone and the shadow apart
    assert len([e for e in events(together) if e["chio"]["event"] == "shadow"]) == 3
