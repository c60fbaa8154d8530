"""A progress bar for long logs, only where a person is watching.

``LogProgress`` is the ``progress(records, bytes_done)`` callback of
``receipts.iter_receipts``. It draws a rich bar on stderr only when stderr is
a terminal and only once ``threshold`` records (10,000) have been read, so
short runs, pipes, CI logs and ``--json`` consumers never see it. The bar
measures bytes of the log files on disk (compressed bytes for ``.gz``); for
stdin it shows the record count alone.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

THRESHOLD = 10_000


class LogProgress:
    """Call it with ``(records, bytes_done)``; use as a context manager so the bar is closed."""

    def __init__(self, total_bytes: int | None, *, label: str = "reading", threshold: int = THRESHOLD,
                 console: Console | None = None, enabled: bool = True):
        """``total_bytes``: what ``done`` counts up to (bytes, or calls for a run whose size is known)."""
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.total = total_bytes
        self.label = label
        self.threshold = threshold
        self._progress: Progress | None = None
        self._task: Any = None

    def _start(self) -> None:
        if self.total:
            columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[records]:,} records"),
                       TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TimeRemainingColumn()]
        else:
            columns = [SpinnerColumn(), TextColumn("{task.description}"),
                       TextColumn("{task.fields[records]:,} records"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=self.total, records=0)

    def __call__(self, records: int, done: int) -> None:
        if not self.enabled or records < self.threshold:
            return
        if self._progress is None:
            self._start()
        assert self._progress is not None
        self._progress.update(self._task, completed=done if self.total else None, records=records)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
