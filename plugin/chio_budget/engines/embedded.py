"""OPA in-process: the real evaluator (OPA v1.20 as a Go shared library).

The default engine: nothing to start, ~0.3 ms a decision. Policies and data
are compiled once per OPA instance; the library's prepared-query cache keeps
the decision query compiled between calls.

One ``OpaEngine`` evaluates one query at a time (the bindings hold a lock
per instance), so threads sharing one would queue on it. This engine keeps
a **pool** of up to ``pool_size`` instances (default ``os.cpu_count()``;
``1``: a single instance, as before the pool): a decision takes an idle
one, or creates one while the pool is under its bound, or waits for one to
come back. Every instance is loaded from the same modules and data (the
same policy revision); the first is loaded in ``__init__`` (so a Rego error
surfaces at start-up), the others the first time they are needed. A reload
builds a whole new ``EmbeddedEngine``, so every instance of a pool always
swaps together; ``close()`` closes them all (one busy at that moment is
closed when its decision ends).

``decide_many(inputs)`` evaluates many inputs in one query of
``data.chio.budget.batch.decisions`` (``rego/chio/budget/batch.rego``),
with the same answers as ``decide`` on each (see ``base.decide_all``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from ..compiler import DECISION_PATH, Compiled, as_compiled
from ..decision import Decision
from ..errors import EngineError
from ..rego_files import rego_modules
from .base import BATCH_PATH, batch_input, judge_batch

_DOCUMENT = DECISION_PATH.replace("/", ".")
_BATCH = BATCH_PATH.replace("/", ".")


def check_pool_size(pool_size: Any) -> int:
    """``pool_size`` as given (an int >= 1), or ``os.cpu_count()`` for None; ``EngineError`` otherwise."""
    if pool_size is None:
        return os.cpu_count() or 1
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise EngineError(f"embedded engine: pool_size must be an integer >= 1, got {pool_size!r}")
    return pool_size


def _policy_id(input: Any) -> str | None:
    """The input's ``policy_id`` when it is a string (anything else names no policy)."""
    raw = input.get("policy_id") if isinstance(input, dict) else None
    return raw if isinstance(raw, str) else None


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, compiled: Compiled | Mapping[str, Any], rego_dir: str | Path | None = None,
                 modules: Mapping[str, str] | None = None, pool_size: int | None = None):
        """``compiled`` is ``compiler.compile_all(policies)`` (a whole data document is read into one).

        ``modules`` (``{name: source}``) replaces reading ``rego_dir``.
        ``pool_size``: at most this many OPA instances evaluate at once
        (default ``os.cpu_count()``; see the module docstring).
        """
        compiled = as_compiled(compiled)
        self.pool_size = check_pool_size(pool_size)
        # Module names are real paths, so Rego errors point at files.
        self._modules = dict(modules if modules is not None else rego_modules(rego_dir, full_paths=True))
        self._document = compiled.document
        self._policy_ids = set(compiled.policy_ids)
        self._cond = threading.Condition()
        self._closed = False
        first = self._new()
        self._idle: list[OpaEngine] = [first]
        self._created = 1

    def _new(self) -> OpaEngine:
        """One OPA instance with the modules and data, the decision query compiled; ``EngineError``."""
        opa = OpaEngine()
        opa.print_handler = lambda _msg, _loc: None
        try:
            for path, src in self._modules.items():
                opa.add_policy(path, src)
            opa.add_data(self._document)
            # Compile now so a Rego error surfaces at start-up, not on a call.
            opa.eval_query("x := data.chio.budget.decision")
        except OpaError as exc:
            opa.close()
            raise EngineError(f"embedded OPA: {exc.message}") from None
        return opa

    @property
    def instances(self) -> int:
        """How many OPA instances the pool has created so far (at most ``pool_size``)."""
        return self._created

    def _take(self) -> OpaEngine:
        """An idle instance (or a new one under the bound, or the next one given back), for one query."""
        create = False
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise OpaError("closed", "engine has been closed")
                if self._created < self.pool_size:
                    self._created, create = self._created + 1, True
                    break
                self._cond.wait()
            if self._closed:
                raise OpaError("closed", "engine has been closed")
            if not create:
                return self._idle.pop()
        try:
            return self._new()
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def _give(self, opa: OpaEngine) -> None:
        """Back to the pool (closed instead, when the engine closed meanwhile)."""
        with self._cond:
            if self._closed:
                opa.close()
            else:
                self._idle.append(opa)
                self._cond.notify()

    def _evaluate(self, path: str, input: Any) -> Any:
        # take/give, not a generator context manager: this brackets every decision.
        opa = self._take()
        try:
            return opa.eval_document(path, input)
        finally:
            self._give(opa)

    def decide(self, input: dict[str, Any]) -> Decision:
        policy_id = _policy_id(input)
        try:
            result = self._evaluate(_DOCUMENT, input)
        except OpaUndefinedError:
            return self._undefined(policy_id)
        except Exception as exc:  # any OPA or binding failure denies
            return Decision.deny_error(f"engine error: {exc}", policy_id)
        d = Decision.from_opa(result, policy_id)
        return d if d.error is None else d.model_copy(update={"error": f"engine error: {d.error}"})

    def _undefined(self, policy_id: Any) -> Decision:
        cause = ("decision undefined: unknown policy_id %r" % policy_id) \
            if policy_id not in self._policy_ids else "decision undefined"
        return Decision.deny_error(f"engine error: {cause}", policy_id)

    def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[Decision]:
        """``[self.decide(i) for i in inputs]``, evaluated in one query (one instance, one call).

        When the batched query fails as a whole (an evaluation error that one
        input caused, a Rego without ``batch.rego``), every input is decided
        on its own, so one bad input never denies the others.
        """
        inputs = list(inputs)
        if len(inputs) < 2:
            return [self.decide(i) for i in inputs]
        try:
            results = self._evaluate(_BATCH, batch_input(inputs))
        except Exception:  # noqa: BLE001 - one by one instead, each failing closed on its own
            return [self.decide(i) for i in inputs]
        return judge_batch(results, inputs, self.decide, self._judge)

    def _judge(self, slot: Mapping[str, Any], input: Any) -> Decision:
        """One input's slot of the batch (``{"decision": d}`` or ``{}``), judged as ``decide`` would."""
        policy_id = _policy_id(input)
        if "decision" not in slot:
            return self._undefined(policy_id)
        d = Decision.from_opa(slot["decision"], policy_id)
        return d if d.error is None else d.model_copy(update={"error": f"engine error: {d.error}"})

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for opa in idle:
            opa.close()

    def __enter__(self) -> "EmbeddedEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
