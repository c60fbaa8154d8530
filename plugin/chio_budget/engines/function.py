"""``FunctionEngine(handler)``: an engine whose decisions come from a Python callable.

The test double, shipped with the package the way httpx ships
``MockTransport``: a test (or a host trying the guard without OPA) swaps the
engine, never the guard. It keeps the ``Engine`` promises, so the guard
cannot tell it from OPA:

- ``decide(input)`` calls ``handler(input)``, which returns a ``Decision``,
  or an OPA-shaped result (a dict, validated by ``Decision.from_opa``
  exactly as an OPA answer is: anything malformed is a deny with the cause),
  or raises;
- ``decide`` never raises: a handler exception is a deny with
  ``error="engine error: <Type>: <message>"`` (fail closed);
- ``close()`` only marks it closed; the handler is the caller's.
"""

from __future__ import annotations

from typing import Any, Callable

from ..decision import Decision

Handler = Callable[[dict[str, Any]], Any]


class FunctionEngine:
    """An ``Engine`` over ``handler(input) -> Decision | dict``; thread-safe if the handler is."""

    def __init__(self, handler: Handler, *, name: str = "function"):
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.handler = handler
        self.name = name
        self.closed = False

    def decide(self, input: dict[str, Any]) -> Decision:
        policy_id = input.get("policy_id") if isinstance(input, dict) else None
        try:
            result = self.handler(input)
        except Exception as exc:
            return Decision.deny_error(f"engine error: {type(exc).__name__}: {exc}", policy_id)
        if isinstance(result, Decision):
            return result
        return Decision.from_opa(result, policy_id)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "FunctionEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
