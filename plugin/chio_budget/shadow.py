"""Shadow mode: a second policy judged beside the enforced one, never enforced.

A shadow is another budget policy (typically the next version of the
enforced one, or a stricter draft) with its own OPA engine. On every call the
chain guard asks it the same question the enforced policy was asked - same
request, same cost, and the *same counters* (the ``totals`` the enforced
decision saw) - so any difference in the answer is a difference in policy,
not in state. Its decision is logged and diffed; it never changes the verdict
and never touches a ledger (it does not reserve, record or read counters).
Shadows that share one engine are judged in one query (``judge_shadows``), and a shadow
over the enforced guard's own engine in that guard's query (``BudgetGuard.authorize(...,
shadows=)`` hands back an ``authorization.Beside``; ``run_shadows(..., beside=)`` takes it).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence

from .decision import Decision
from .engines import decide_all

if TYPE_CHECKING:
    from .authorization import Beside
    from .decisionlog import DecisionLog
    from .metrics import BudgetMetrics


@dataclass(frozen=True)
class ShadowResult:
    policy_id: str
    input: dict[str, Any]
    decision: Decision
    eval_ns: int
    diff: dict[str, Any]
    opa_eval_ns: int | None = None
    """OPA's own evaluation time, where the shadow's engine reports one."""
    revision: str | None = None
    """The shadow's bundle revision (``data_revision`` of the guard it wraps)."""


def diff_decisions(enforced: Decision, shadow: Decision) -> dict[str, Any]:
    """What the shadow would have done differently, by verdict and by violation scope."""
    e = [v.scope for v in enforced.violations]
    s = [v.scope for v in shadow.violations]
    return {
        "agree": enforced.allow == shadow.allow,
        "enforced_allow": enforced.allow,
        "shadow_allow": shadow.allow,
        "only_shadow": [x for x in s if x not in e],
        "only_enforced": [x for x in e if x not in s],
        "shadow_error": shadow.error,
    }


class ShadowPolicy:
    """Wraps anything with ``policy`` and ``engine`` (e.g. a ``BudgetGuard``).

    Only ``guard.policy`` and ``guard.engine`` are used; the guard's ledger is
    never touched, so a shadow built with ``BudgetGuard.from_files(...)`` and
    the default memory ledger is fine. Both are read from the guard on every
    call, so a reload of the shadow's files (``reload()``, ``watch=True``)
    takes effect, and a guard's version in force is held while its engine
    decides (``held``): a reload cannot close the engine under a shadow's
    query. ``evaluate`` never raises: a failing shadow yields a decision
    with ``error`` set.
    """

    def __init__(self, guard: Any):
        self._guard = guard

    @property
    def policy(self) -> Any:
        return self._guard.policy

    @property
    def engine(self) -> Any:
        return self._guard.engine

    def held(self) -> ContextManager[Any]:
        """The wrapped guard's version in force, held for one query (``BudgetGuard._using``);
        for anything else, nothing to hold."""
        using = getattr(self._guard, "_using", None)
        return using() if using is not None else nullcontext()

    def follow(self, callback: Callable[[Any], None]) -> None:
        """``callback(policy)`` with the new policy after each reload of the wrapped guard
        (its ``reloaded`` event hook), e.g. so the enforced guard tracks the new limits."""
        hooks = getattr(self._guard, "event_hooks", None)
        if isinstance(hooks, dict):
            hooks.setdefault("reloaded", []).append(lambda guard: callback(guard.policy))

    @property
    def policy_id(self) -> str:
        return self.policy.id

    def input_for(self, enforced_input: dict[str, Any]) -> dict[str, Any]:
        """The enforced input, asked of this shadow's policy."""
        inp = dict(enforced_input)
        inp["policy_id"] = self.policy.id
        return inp

    def refusal(self, inp: dict[str, Any]) -> Decision | None:
        """The deny for an input this shadow cannot judge (a cost in another currency), else None."""
        cost = inp.get("cost") or {}
        if cost.get("currency") == self.policy.currency:
            return None
        return Decision.deny_error(
            f"shadow policy currency {self.policy.currency} differs from enforced {cost.get('currency')}",
            self.policy.id)

    def result(self, inp: dict[str, Any], enforced: Decision, d: Decision, eval_ns: int,
               opa_ns: int | None = None) -> ShadowResult:
        return ShadowResult(self.policy.id, inp, d, eval_ns, diff_decisions(enforced, d), opa_ns,
                            getattr(self._guard, "data_revision", None))

    def evaluate(self, enforced_input: dict[str, Any], enforced: Decision) -> ShadowResult:
        with self.held():
            inp = self.input_for(enforced_input)
            t0, opa_ns = time.perf_counter_ns(), None
            d = self.refusal(inp)
            if d is None:
                engine = self.engine
                measured = getattr(engine, "decide_measured", None)
                try:
                    d, opa_ns = measured(inp) if measured is not None else (engine.decide(inp), None)
                except Exception as exc:  # an engine must not raise; a shadow must never break the call
                    d = Decision.deny_error(f"shadow engine error: {type(exc).__name__}: {exc}", self.policy.id)
            return self.result(inp, enforced, d, time.perf_counter_ns() - t0, opa_ns)

    def close(self) -> None:
        close = getattr(self._guard, "close", None)
        if close is not None:
            close()


def _together(group: Sequence[ShadowPolicy], enforced_input: dict[str, Any],
              enforced: Decision) -> list[ShadowResult]:
    """Shadows sharing one engine, judged in one query (``decide_all``); each is timed at its share."""
    inputs = [s.input_for(enforced_input) for s in group]
    refused = [s.refusal(inp) for s, inp in zip(group, inputs)]
    asked = [i for i, r in enumerate(refused) if r is None]
    t0 = time.perf_counter_ns()
    try:
        with group[0].held():  # the shared engine stays open while it decides
            decided = decide_all(group[0].engine, [inputs[i] for i in asked])
    except Exception as exc:  # an engine must not raise; a shadow must never break the call
        decided = [Decision.deny_error(f"shadow engine error: {type(exc).__name__}: {exc}", group[i].policy.id)
                   for i in asked]
    share = (time.perf_counter_ns() - t0) // max(len(asked), 1)
    found = dict(zip(asked, decided))
    return [s.result(inp, enforced, refused[i] or found[i], 0 if refused[i] else share)
            for i, (s, inp) in enumerate(zip(group, inputs))]


def _taken(beside: "Beside | None", enforced_input: dict[str, Any]) -> dict[int, tuple[dict[str, Any], Decision, int]]:
    """``beside``'s decisions (with their input and time share) by shadow - if judged beside this very input."""
    if beside is None or beside.input is not enforced_input:
        return {}
    return {id(s): (inp, d, beside.share_ns) for s, inp, d in beside.judged}


def judge_shadows(shadows: Sequence[ShadowPolicy], enforced_input: dict[str, Any], enforced: Decision,
                  beside: "Beside | None" = None) -> list[ShadowResult]:
    """Every shadow's result, in order. A shadow ``beside`` judged in the enforced query (on
    ``enforced_input`` itself) takes that decision; shadows over one engine (say guards from
    ``reload.Source.load_all``) are judged in one query; a shadow alone on its engine exactly
    as ``ShadowPolicy.evaluate`` judges it."""
    taken = _taken(beside, enforced_input)
    out: list[Any] = [None] * len(shadows)
    by_engine: dict[int, list[int]] = {}
    for i, s in enumerate(shadows):
        if id(s) in taken:
            inp, d, share = taken[id(s)]
            out[i] = s.result(inp, enforced, d, share)
        else:
            by_engine.setdefault(id(s.engine), []).append(i)
    for idx in by_engine.values():
        group = [shadows[i] for i in idx]
        results = [group[0].evaluate(enforced_input, enforced)] if len(group) == 1 else \
            _together(group, enforced_input, enforced)
        for i, r in zip(idx, results):
            out[i] = r
    return out


def run_shadows(shadows: Sequence[ShadowPolicy], enforced_input: dict[str, Any], enforced: Decision, *,
                decision_id: str, enforced_policy_id: str, chio: dict[str, Any],
                decision_log: "DecisionLog | None" = None, metrics: "BudgetMetrics | None" = None,
                beside: "Beside | None" = None) -> None:
    """Judge every shadow beside ``enforced``, log each as a ``shadow`` event, count disagreements.

    Each shadow event has its own decision id and points at the enforced
    decision ``decision_id`` with ``chio.parent_decision_id``. ``beside``: the
    shadows already judged in the enforced query (``judge_shadows``).

    Never raises: a shadow never affects the call. A failure to judge, log
    or count one is counted in ``decision_log_errors`` and the next shadow
    is judged. ``chio`` (guard name, request id) is copied into each event.
    """
    try:
        results = judge_shadows(shadows, enforced_input, enforced, beside)
    except Exception:  # noqa: BLE001 - never raises: judge them one at a time instead
        results = [None] * len(shadows)
    for shadow, judged in zip(shadows, results):
        try:
            r = judged if judged is not None else shadow.evaluate(enforced_input, enforced)
            if metrics and not r.diff["agree"]:
                metrics.shadow_disagreements.labels(enforced_policy_id, r.policy_id).inc()
            if decision_log is not None:
                decision_log.write(decision_log.decision_event(
                    event="shadow", parent_decision_id=decision_id, input=r.input, result=r.decision.to_json_dict(),
                    revision=r.revision, eval_ns=r.eval_ns if r.opa_eval_ns is None else r.opa_eval_ns,
                    client_wall_ns=r.eval_ns, chio=dict(chio, policy_id=r.policy_id, enforced=False, diff=r.diff)))
        except Exception:
            if metrics:
                metrics.log_errors.inc()
