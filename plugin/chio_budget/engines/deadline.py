"""A total deadline for an HTTP call made with ``requests``: connect + send + every read.

urllib3's timeouts bound each socket operation, not their sum: a server that
sends one byte a second answers every read in time and holds the call for
as long as it likes. Here a call is a ``Call`` with a deadline:

* its timeout is a ``CallTimeout``, a urllib3 ``Timeout`` whose connect and
  read limits are the time left (recomputed whenever urllib3 copies it, so
  each new connection attempt gets only what remains);
* the pools (``deadline_pools``) tell the call which connection it holds,
  from the moment it takes one (``_make_request``) until the connection goes
  back to the pool (``_put_conn``) - the two urllib3 pool methods overridden
  here; both keep urllib3's behaviour and only add that bookkeeping;
* a ``Watchdog`` thread (one per engine) shuts the socket down when a call
  that still holds it reaches its deadline. A read blocked on that socket
  returns at once; the call's caller sees ``expired`` and reports
  ``DeadlineExceeded``.

Because a connection is detached from its call under the call's lock before
it re-enters the pool, the watchdog can never cut a connection that another
call has taken since. Cost per call: a lock, a deque append and two small
objects; the watchdog thread sleeps until the oldest deadline and needs no
wake-ups, since every call of one watchdog has the same length.

Limits: name resolution (``getaddrinfo``) cannot be interrupted in Python,
so use an address or a fast local resolver; a TLS handshake in progress at
the deadline has no socket to cut yet (each of its reads is bounded by the
time that was left), and the call still ends as ``DeadlineExceeded``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections import deque
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.timeout import Timeout

_MIN = 0.001  # urllib3 refuses a timeout of 0; a call with no time left gets this and fails at once


class DeadlineExceeded(Exception):
    """The call did not finish within its deadline (its answer, if any came, was not used)."""

    def __init__(self, seconds: float):
        super().__init__(f"timeout: no answer from OPA within {seconds:g}s")
        self.seconds = seconds


class Call:
    """One HTTP exchange under a deadline; see the module docstring. Thread-safe."""

    __slots__ = ("deadline", "seconds", "fired", "finished", "_conn", "_lock")

    def __init__(self, deadline: float, seconds: float):
        self.deadline, self.seconds = deadline, seconds
        self.fired = self.finished = False
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            conn.chio_call = self

    def detach(self, conn: Any) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
            conn.chio_call = None

    def expire(self) -> None:
        """The watchdog's part: past the deadline, cut the connection this call still holds."""
        with self._lock:
            if self.finished:
                return
            self.fired = True
            sock = getattr(self._conn, "sock", None)
            if sock is not None:
                try:  # the plain socket's shutdown, also under TLS: it wakes any blocked read with EOF
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def finish(self) -> None:
        """The caller's part, when the exchange is over (whatever its outcome): nothing left to cut."""
        with self._lock:
            self.finished = True
            conn, self._conn = self._conn, None
        if conn is not None and getattr(conn, "chio_call", None) is self:
            conn.chio_call = None


class CallTimeout(Timeout):
    """A urllib3 ``Timeout`` of the time ``call`` has left; urllib3's copies (``clone``) keep the call."""

    def __init__(self, call: Call):
        left = max(call.remaining(), _MIN)
        super().__init__(total=left, connect=left, read=left)
        self.call = call

    def clone(self) -> "CallTimeout":
        return CallTimeout(self.call)


class _DeadlinePoolMixin:
    """Pool bookkeeping: which ``Call`` holds which connection (only for requests with a ``CallTimeout``)."""

    def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(kwargs.get("timeout"), "call", None)
        if call is not None:
            call.attach(conn)
            if call.expired:  # a read error, so urllib3 never re-sends it
                raise ReadTimeoutError(self, url, "the call's deadline has passed")  # type: ignore[arg-type]
        return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]

    def _put_conn(self, conn: Any) -> None:
        call = getattr(conn, "chio_call", None)
        if call is not None:
            call.detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _DeadlineHTTPPool(_DeadlinePoolMixin, HTTPConnectionPool):
    pass


class _DeadlineHTTPSPool(_DeadlinePoolMixin, HTTPSConnectionPool):
    pass


def deadline_pools() -> dict[str, type]:
    """``pool_classes_by_scheme`` for a urllib3 ``PoolManager`` whose requests may carry a ``CallTimeout``."""
    return {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class Watchdog:
    """Starts ``Call``s of ``seconds`` each and cuts those still running at their deadline.

    One daemon thread, started with the first call (again in a forked
    child), stopped by ``close`` or when the watchdog is garbage-collected.
    Calls are kept in start order, which is deadline order since they all
    last ``seconds``; the thread sleeps until the oldest unfinished
    deadline, or ``seconds`` when there is none - no call started meanwhile
    can be due sooner, so starting one never has to wake it.
    """

    def __init__(self, seconds: float):
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {seconds!r}")
        self.seconds = seconds
        self._pid = -1
        self._closed = threading.Event()
        weakref.finalize(self, self._closed.set)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._calls: deque[Call] = deque()
        # The thread holds no reference to the watchdog, so an engine dropped without close() still ends it.
        threading.Thread(target=_watch, args=(self._calls, self._lock, self._closed, self.seconds),
                         name="chio-opa-deadline", daemon=True).start()

    def start(self) -> Call:
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            calls = self._calls
            while calls and calls[0].finished:
                calls.popleft()
            call = Call(time.monotonic() + self.seconds, self.seconds)
            calls.append(call)
        return call

    def close(self) -> None:
        self._closed.set()


def _watch(calls: deque[Call], lock: threading.Lock, closed: threading.Event, seconds: float) -> None:
    """The watchdog thread: expire every call that reaches its deadline unfinished."""
    delay = seconds
    while not closed.wait(delay):
        now = time.monotonic()
        due: list[Call] = []
        with lock:
            while calls and (calls[0].finished or calls[0].deadline <= now):
                due.append(calls.popleft())
            delay = calls[0].deadline - now if calls else seconds
        for call in due:
            call.expire()  # a no-op for a finished call
