"""A deadline for a call on a connection that may never answer.

A server that stops answering while its TCP connection stays up (a frozen
process, a stuck proxy) is not noticed by TCP keepalives or by a
server-side timeout, and a thread blocked reading from it would hang the
decision for ever. The watchdog cuts such a connection (``shutdown`` of the
socket) once the call has run past its deadline, so the blocked read fails
at once and the decision denies (fail closed). One thread per watchdog,
started on first use; calls register and unregister under one lock, so a
connection is only ever cut while its call is still running.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator


class Watchdog:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut = 0
        """How many connections were cut (for tests and monitoring)."""
        self._cv = threading.Condition()
        self._live: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake_at = 0.0  # when the thread will look next; a later deadline need not wake it

    @contextmanager
    def watch(self, conn: Any) -> Iterator[None]:
        """Cut ``conn`` (anything with ``fileno()``) if the block is still running after ``seconds``."""
        if not self.seconds:
            yield
            return
        token, deadline = id(conn), time.monotonic() + self.seconds
        with self._cv:
            self._live[token] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chio-ledger-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._wake_at:
                self._cv.notify()
        try:
            yield
        finally:
            with self._cv:
                self._live.pop(token, None)

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                for token, (deadline, conn) in list(self._live.items()):
                    if deadline <= now:
                        del self._live[token]
                        self._cut(conn)
                self._wake_at = min((d for d, _ in self._live.values()), default=now + 60)
                self._cv.wait(max(self._wake_at - now, 0.001))

    def _cut(self, conn: Any) -> None:
        try:
            dup = socket.socket(fileno=os.dup(conn.fileno()))
        except (OSError, ValueError, AttributeError):
            return
        try:
            dup.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once; the connection is dead
            self.cut += 1
        except OSError:
            pass
        finally:
            dup.close()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
