"""What the guard sees of OPA: ``decide(input) -> Decision``, nothing more.

Engines differ only in where OPA runs. They load the Rego and the compiled
data once, up front (``EngineError`` if that fails), and never raise from
``decide``: every failure there is a deny with the cause in
``Decision.error``. They are safe to share between threads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..decision import Decision
from ..errors import EngineError


@runtime_checkable
class Engine(Protocol):
    name: str

    def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate ``data.chio.budget.decision``; never raises, fails closed."""
        ...

    def close(self) -> None: ...


def default_rego_dir() -> Path:
    """The ``rego/`` shipped inside the installed package."""
    return Path(str(resources.files("chio_budget") / "rego"))


def rego_modules(rego_dir: str | Path | None = None, *, include_tests: bool = False) -> dict[str, str]:
    """``{relative path: source}`` of every ``.rego`` file under ``rego_dir``.

    Test modules (``*_test.rego``) are left out of the engines: they are for
    ``opa test`` and would only slow compilation.
    """
    root = Path(rego_dir) if rego_dir is not None else default_rego_dir()
    if not root.is_dir():
        raise EngineError(f"{root}: no such Rego directory")
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.rego")):
        if not include_tests and path.name.endswith("_test.rego"):
            continue
        out[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    if not out:
        raise EngineError(f"{root}: no .rego files")
    return out
