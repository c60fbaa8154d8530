"""Finding and reading Rego files: the one place that does it.

The engines, the bundle writer and ``chio-budget test-rego`` all read Rego
through ``rego_modules``, so they agree on which files count (every
``*.rego`` below the directory, in sorted order; ``*_test.rego`` only when
asked for) and on how a missing or empty directory is reported.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import EngineError


def default_rego_dir() -> Path:
    """The ``rego/`` shipped inside the installed package."""
    return Path(str(resources.files("chio_budget") / "rego"))


def rego_modules(rego_dir: str | Path | None = None, *, include_tests: bool = False,
                 full_paths: bool = False) -> dict[str, str]:
    """``{name: source}`` of every ``.rego`` file under ``rego_dir`` (default: the shipped one), sorted.

    ``name`` is the path relative to ``rego_dir`` (what a bundle or a push
    calls the module), or with ``full_paths`` the file's own path, so that
    OPA's error messages point at a file the user can open. A single
    ``.rego`` file is read as a directory holding just it. Test modules
    (``*_test.rego``) are for ``opa test`` and left out unless
    ``include_tests``. ``EngineError`` when there is no such directory or no
    ``.rego`` file in it.
    """
    root = Path(rego_dir) if rego_dir is not None else default_rego_dir()
    if root.is_file():
        paths, base = [root], root.parent
    elif root.is_dir():
        paths, base = sorted(root.rglob("*.rego")), root
    else:
        raise EngineError(f"{root}: no such Rego directory")
    out: dict[str, str] = {}
    for path in paths:
        if not include_tests and path.name.endswith("_test.rego"):
            continue
        name = path.as_posix() if full_paths else path.relative_to(base).as_posix()
        out[name] = path.read_text(encoding="utf-8")
    if not out:
        raise EngineError(f"{root}: no .rego files")
    return out
