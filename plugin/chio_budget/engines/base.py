"""What the guard sees of OPA: ``decide(input) -> Decision``, nothing more.

Engines differ only in where OPA runs. They take the compiled policies as a
``compiler.Compiled`` and load the Rego once, up front (``EngineError`` if
that fails), and never raise from ``decide``: every failure there is a deny
with the cause in ``Decision.error``. They are safe to share between
threads, and close with ``close()`` or a ``with`` block.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..decision import Decision
# Rego files are read in one place (rego_files); these names stay importable from here.
from ..rego_files import default_rego_dir, rego_modules

__all__ = ["Engine", "default_rego_dir", "rego_modules"]


@runtime_checkable
class Engine(Protocol):
    name: str

    def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate ``data.chio.budget.decision``; never raises, fails closed."""
        ...

    def close(self) -> None: ...
