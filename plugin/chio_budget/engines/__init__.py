"""Where OPA runs. ``make_engine`` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import EngineError
from .base import Engine, default_rego_dir, rego_modules

__all__ = ["Engine", "make_engine", "default_rego_dir", "rego_modules"]


def make_engine(kind: str, data: Mapping[str, Any], rego_dir: str | Path | None = None, **options: Any) -> Engine:
    """``"embedded"`` (default) or ``"server"`` (needs ``opa_url``)."""
    if kind == "embedded":
        from .embedded import EmbeddedEngine

        return EmbeddedEngine(data, rego_dir=rego_dir)
    if kind == "server":
        from .server import ServerEngine

        return ServerEngine.from_options(data=data, rego_dir=rego_dir, **options)
    raise EngineError(f"unknown engine {kind!r}: expected 'embedded' or 'server'")
