"""Reload on change: a background thread watching the policy files (``watchfiles``).

``Watcher`` watches directories (a single file is watched through its
directory, so an editor's save-by-rename is seen) and calls ``on_change``
with the changed paths once a burst of changes has been quiet for
``quiet_ms`` (at most ``max_wait_ms`` after the first): saving five files
reloads once. The callback runs on the watcher's thread, one call at a time;
an exception from it is logged and watching goes on. ``watchfiles`` is an
optional dependency (``pip install 'chio-budget-guard[watch]'``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Iterable

from .errors import ChioBudgetError

log = logging.getLogger("chio_budget.watch")

INSTALL_HINT = "pip install 'chio-budget-guard[watch]'"


def _watchfiles():
    try:
        import watchfiles
    except ImportError:
        raise ChioBudgetError(f"watching for changes needs watchfiles: {INSTALL_HINT}") from None
    return watchfiles


class Watcher:
    """Calls ``on_change(paths)`` after changes to ``targets``; ``start``/``stop`` (or ``with``).

    ``targets`` are directories (any file below them whose name ends in one
    of ``suffixes`` counts) and files (that file only).
    """

    def __init__(self, targets: Iterable[str | Path], on_change: Callable[[set[str]], None], *,
                 suffixes: tuple[str, ...] = (".yaml", ".yml", ".rego"), quiet_ms: int = 200,
                 max_wait_ms: int = 2000, name: str = "chio-budget-watch"):
        self._watchfiles = _watchfiles()
        self._dirs: set[Path] = set()
        self._files: set[Path] = set()
        for t in targets:
            p = Path(t).resolve()
            if p.is_dir():
                self._dirs.add(p)
            else:
                self._files.add(p)
        self._watched = sorted(self._dirs | {f.parent for f in self._files})
        self._suffixes = suffixes
        self._on_change = on_change
        self._quiet_ms, self._max_wait_ms = quiet_ms, max_wait_ms
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0
        self.errors = 0

    def _wanted(self, _change: object, path: str) -> bool:
        p = Path(path)
        return p in self._files or (p.suffix in self._suffixes and any(d in p.parents for d in self._dirs))

    def _run(self) -> None:
        w = self._watchfiles
        watching = w.watch(*self._watched, watch_filter=self._wanted, debounce=self._max_wait_ms, step=self._quiet_ms,
                           stop_event=self._stop, rust_timeout=500, yield_on_timeout=True, raise_interrupt=False)
        for changes in watching:
            self._ready.set()
            if not changes:
                continue
            self.batches += 1
            try:
                self._on_change({path for _, path in changes})
            except Exception:
                self.errors += 1
                log.exception("reload after a change failed; watching goes on")

    def start(self, ready_timeout: float = 5.0) -> "Watcher":
        """Start watching; returns once the watch is set up (or after ``ready_timeout`` s)."""
        self._thread.start()
        self._ready.wait(ready_timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "Watcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
