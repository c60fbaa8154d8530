"""Where OPA runs. ``make_engine`` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..compiler import Compiled, as_compiled
from ..errors import EngineError
from ..rego_files import default_rego_dir, rego_modules
from .base import Engine, decide_all

__all__ = ["Engine", "decide_all", "make_engine", "default_rego_dir", "rego_modules"]


def make_engine(kind: str, compiled: Compiled | Mapping[str, Any], rego_dir: str | Path | None = None,
                **options: Any) -> Engine:
    """``"embedded"`` (default; option ``pool_size``) or ``"server"`` (needs ``opa_url``).

    ``compiled`` is ``compiler.compile_all(policies)``; a whole data
    document (``compiler.data_document``, what this took before) is read
    into one by the compiler.
    """
    if kind == "embedded":
        from .embedded import EmbeddedEngine

        unknown = set(options) - {"pool_size"}
        if unknown:
            raise EngineError(f"embedded engine: unknown option(s) {', '.join(sorted(unknown))}")
        return EmbeddedEngine(as_compiled(compiled), rego_dir=rego_dir, pool_size=options.get("pool_size"))
    if kind == "server":
        from .server import ServerEngine

        return ServerEngine.from_options(as_compiled(compiled), rego_dir=rego_dir, **options)
    raise EngineError(f"unknown engine {kind!r}: expected 'embedded' or 'server'")
