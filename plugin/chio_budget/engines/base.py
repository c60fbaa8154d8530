"""What the guard sees of OPA: ``decide(input) -> Decision``, nothing more.

Engines differ only in where OPA runs. They take the compiled policies as a
``compiler.Compiled`` and load the Rego once, up front (``EngineError`` if
that fails), and never raise from ``decide``: every failure there is a deny
with the cause in ``Decision.error``. They are safe to share between
threads, and close with ``close()`` or a ``with`` block.

An engine may also offer ``decide_many(inputs) -> list[Decision]``: many
independent inputs in one query, each answer identical to ``decide`` of that
input (the embedded and server engines do it through ``rego/chio/budget/batch.rego``).
``decide_all(engine, inputs)`` is how callers use it: the engine's
``decide_many`` where there is one, else ``decide`` one by one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..decision import Decision
# Rego files are read in one place (rego_files); these names stay importable from here.
from ..rego_files import default_rego_dir, rego_modules

__all__ = ["BATCH_PATH", "Engine", "decide_all", "default_rego_dir", "rego_modules"]

#: The batch document (``rego/chio/budget/batch.rego``): ``{"inputs": [...]}`` in, one slot per input out.
BATCH_PATH = "chio/budget/batch/decisions"


@runtime_checkable
class Engine(Protocol):
    name: str

    def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate ``data.chio.budget.decision``; never raises, fails closed."""
        ...

    def close(self) -> None: ...


def decide_all(engine: Any, inputs: Iterable[dict[str, Any]]) -> list[Decision]:
    """``[engine.decide(i) for i in inputs]``, in one query where the engine has ``decide_many``.

    The one place that falls back: engines without batching (function,
    wasm, any custom ``Engine``) are asked one input at a time.
    """
    inputs = list(inputs)
    many = getattr(engine, "decide_many", None)
    if many is not None:
        return list(many(inputs))
    return [engine.decide(i) for i in inputs]


def batch_input(inputs: Sequence[Any]) -> dict[str, Any]:
    """The input of the batch document: ``{"inputs": [...]}``."""
    return {"inputs": list(inputs)}


def judge_batch(results: Any, inputs: Sequence[Any], decide: Callable[[Any], Decision],
                judge: Callable[[Mapping[str, Any], Any], Decision]) -> list[Decision]:
    """The batch document's answer, slot by slot (``judge(slot, input)``).

    A slot is ``{"decision": d}`` or ``{}`` (undefined for that input). An
    answer of any other shape (not a list of one such slot per input: an
    older Rego without ``batch.rego``, an extension that broke it) is not
    trusted: those inputs are decided one by one with ``decide``.
    """
    if not isinstance(results, list) or len(results) != len(inputs):
        return [decide(i) for i in inputs]
    out = []
    for slot, inp in zip(results, inputs):
        ok = isinstance(slot, dict) and set(slot) <= {"decision"}
        out.append(judge(slot, inp) if ok else decide(inp))
    return out
