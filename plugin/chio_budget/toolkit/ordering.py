"""Calls in timestamp order, for a log of any size.

A simulation must see calls in the order the kernel saw them, and logs
merged from several kernel replicas are not in that order. ``time_ordered``
sorts by ``(timestamp, position in the input)`` - stable: calls with the same
timestamp keep their log order - in memory when the log fits in
``run_size`` calls, else by an external merge sort: sorted runs of
``run_size`` calls are pickled to temporary files and merged with
``heapq.merge``, so memory stays at one run whatever the log size. The
temporary files are removed when the iterator finishes or is closed.

``assume_sorted`` streams calls as they come and raises a located
``ReceiptError`` at the first one out of order.
"""

from __future__ import annotations

import heapq
import os
import pickle
import tempfile
from typing import IO, Iterable, Iterator, NamedTuple

from .receipts import ReceiptError

DEFAULT_RUN_SIZE = 250_000
"""Calls sorted in memory at once (~125 MB); larger logs are sorted externally."""


class Call(NamedTuple):
    """One record as the simulation needs it: ``cost`` minor units of ``currency``."""

    timestamp: int
    seq: int
    receipt_id: str
    session_id: str | None
    agent_id: str
    tool_server: str
    tool_name: str
    cost: int
    currency: str
    where: str

    @property
    def tool_key(self) -> str:
        return f"{self.tool_server}:{self.tool_name}"


def _spill(run: list[Call], tmpdir: str | None) -> IO[bytes]:
    run.sort()
    f = tempfile.TemporaryFile(dir=tmpdir, prefix="chio-sort-")
    pickler = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: each call stands alone (a memo would grow with the run)
    for call in run:
        pickler.dump(tuple(call))
    f.seek(0)
    return f


def _read_run(f: IO[bytes]) -> Iterator[Call]:
    unpickler = pickle.Unpickler(f)
    while True:
        try:
            call = Call(*unpickler.load())
        except EOFError:
            return
        unpickler.memo.clear()  # the unpickler's memo would otherwise keep every call it read
        yield call


def time_ordered(calls: Iterable[Call], *, run_size: int = DEFAULT_RUN_SIZE,
                 tmpdir: str | None = None) -> Iterator[Call]:
    """``calls`` sorted by ``(timestamp, seq)``; reads them all before yielding the first.

    ``seq`` must be unique (the input position), so ties never compare the
    other fields. Raises whatever iterating ``calls`` raises (a bad record)
    before anything is yielded.
    """
    if run_size < 1:
        raise ValueError("run_size must be >= 1")
    runs: list[IO[bytes]] = []
    run: list[Call] = []
    try:
        for call in calls:
            run.append(call)
            if len(run) >= run_size:
                runs.append(_spill(run, tmpdir))
                run = []
        if not runs:
            run.sort()
            yield from run
            return
        if run:
            runs.append(_spill(run, tmpdir))
            run = []
        yield from heapq.merge(*(_read_run(f) for f in runs))
    finally:
        for f in runs:
            f.close()


def assume_sorted(calls: Iterable[Call]) -> Iterator[Call]:
    """``calls`` as they come; a ``ReceiptError`` at the first whose timestamp goes back."""
    prev: Call | None = None
    for call in calls:
        if prev is not None and call.timestamp < prev.timestamp:
            raise ReceiptError(f"{call.where}: timestamp: {call.timestamp} is earlier than {prev.timestamp} of the "
                               f"record before it ({prev.where}); the log is not in timestamp order "
                               "(drop --assume-sorted to sort it)")
        prev = call
        yield call


def spill_dir() -> str | None:
    """Where sorted runs go: ``CHIO_SORT_DIR``, else the system temporary directory."""
    return os.environ.get("CHIO_SORT_DIR") or None
