"""Running the sidecar: the listening socket, uvicorn, worker processes and signals.

- The socket is bound once, before any worker exists (TCP, or a Unix socket
  created ``0660``; a stale socket file nobody answers on is replaced, a live
  one is refused). The bound address is printed on one line,
  ``chio-budget serve: listening on <address> ...``, so ``--port 0`` is usable.
- ``--workers 1`` serves in this process. ``--workers N`` spawns N worker
  processes (``multiprocessing`` *spawn*: each imports afresh and builds its
  own engine, ledger connection and metrics after it started, never
  inherited) that share the socket; a worker that dies is started again
  (with a growing pause if it keeps dying).
- SIGTERM or SIGINT: no new connection is accepted (every copy of the
  listening socket is closed, so connecting is refused), requests in flight
  get their answers, then each process exits 0. SIGHUP: every worker reloads
  every policy (``Sidecar.reload``); a failed reload keeps the old ones and
  is logged.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import ServeError, ServeOptions

log = logging.getLogger("chio_budget.serve")
UDS_MODE = 0o660


def serve(options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; the exit code. Refusals before serving raise ``ServeError``
    (or the loading error, located); the caller turns them into exit 2."""
    from .sidecar import Sidecar

    _logging()
    sidecar = Sidecar(options)  # every policy, the engine and the ledger load now, or we stop here
    try:
        _check_tls(options)
        sock = bind(options)
    except BaseException:
        sidecar.close()
        raise
    announce(options, sock, sidecar.policy_ids)
    try:
        if options.workers == 1:
            return run_worker(options, [sock], sidecar)
        sidecar.close()  # it proved the configuration; each worker builds its own after it starts
        return Supervisor(options, sock).run()
    finally:
        if options.uds is not None:
            options.uds.unlink(missing_ok=True)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")


def _check_tls(options: ServeOptions) -> None:
    if not options.tls:
        return
    import ssl

    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
        if options.tls_client_ca is not None:
            context.load_verify_locations(str(options.tls_client_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"--tls-cert/--tls-key/--tls-client-ca: cannot load: {exc}") from None


def bind(options: ServeOptions) -> socket.socket:
    """The listening socket, inheritable by the workers; ``ServeError`` naming the address."""
    if options.uds is not None:
        return _bind_unix(options.uds)
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
    # every answer on a kept-alive connection waits ~40 ms (Nagle + the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"--host {options.host} --port {options.port}: cannot listen: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _bind_unix(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServeError(f"--uds {path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise ServeError(f"--uds {path}: another server answers on it")
        except OSError:
            path.unlink()  # stale: nobody listens
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~UDS_MODE)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServeError(f"--uds {path}: cannot listen: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, UDS_MODE)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def announce(options: ServeOptions, sock: socket.socket, policies: list[str]) -> None:
    """The one line that says where it listens (tests and scripts read it)."""
    where = options.where() if options.uds is not None else ServeOptions(
        options.policies, host=options.host, port=sock.getsockname()[1], tls_cert=options.tls_cert).where()
    print(f"chio-budget serve: listening on {where} (policies {', '.join(policies)}; default {options.policy_id}; "
          f"engine {options.engine}; ledger {_redact(options.ledger)}; workers {options.workers})",
          file=sys.stderr, flush=True)


def _redact(uri: str) -> str:
    """A ledger URI without its password (``redis://:secret@host`` -> ``redis://***@host``)."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def run_worker(options: ServeOptions, sockets: list[socket.socket], sidecar: Any = None) -> int:
    """Serve on ``sockets`` in this process until SIGTERM/SIGINT (graceful), reloading on SIGHUP."""
    import uvicorn

    from .app import create_app
    from .sidecar import Sidecar

    if sidecar is None:
        sidecar = Sidecar(options)
    app = create_app(sidecar, token=options.token, max_body=options.max_body_bytes)
    config = uvicorn.Config(
        app, lifespan="on", log_level="info", access_log=options.access_log, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=options.graceful_timeout,
        ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key, ssl_ca_certs=options.tls_client_ca,
        ssl_cert_reqs=2 if options.tls_client_ca is not None else 0)  # ssl.CERT_REQUIRED / CERT_NONE
    server = uvicorn.Server(config)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=sidecar.reload_logged, daemon=True).start())
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn re-raises the signal it stopped for once it is done; this makes that a no-op (exit 0).
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=sockets)
    finally:
        sidecar.close()  # idempotent; the app's lifespan closed it already after a normal shutdown
    return 0 if server.started else 2


def _worker_main(options: ServeOptions, sock: socket.socket) -> None:
    """A spawned worker: build everything here (after the process started), then serve."""
    _logging()
    from ..errors import ChioBudgetError

    try:
        code = run_worker(options, [sock])
    except ChioBudgetError as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        code = 2
    sys.exit(code)


@dataclass
class _Slot:
    """One worker place: its process (None while it waits to be started again)."""

    process: Any = None
    started: float = 0.0
    pause: float = 0.0
    due: float = 0.0


class Supervisor:
    """N worker processes on one socket: forwards SIGHUP, restarts the dead, stops them gracefully."""

    def __init__(self, options: ServeOptions, sock: socket.socket):
        self.options, self.sock = options, sock
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot() for _ in range(options.workers)]
        self.wake = threading.Event()
        self.stopping = self.hangup = False

    def _signal(self, sig: int, _frame: Any) -> None:
        if sig == signal.SIGHUP:
            self.hangup = True
        else:
            self.stopping = True
        self.wake.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        while not self.stopping:
            if self.hangup:
                self.hangup = False
                for slot in self.slots:
                    if slot.process is not None and slot.process.is_alive():
                        os.kill(slot.process.pid, signal.SIGHUP)
            for slot in self.slots:
                self._tend(slot, time.monotonic())
            self.wake.wait(0.25)
            self.wake.clear()
        return self._stop()

    def _tend(self, slot: _Slot, now: float) -> None:
        """Start a slot's worker when due; notice one that died (again soon: a growing pause)."""
        p = slot.process
        if p is not None and p.is_alive():
            return
        if p is not None:
            slot.pause = min(max(slot.pause * 2, 1.0), 30.0) if now - slot.started < 10 else 0.0
            log.error("worker %d exited with %s; starting another in %.0f s", p.pid, p.exitcode, slot.pause)
            slot.process, slot.due = None, now + slot.pause
        if now >= slot.due and not self.stopping:
            slot.process = self.context.Process(target=_worker_main, args=(self.options, self.sock))
            slot.process.start()
            slot.started = now

    def _stop(self) -> int:
        self.sock.close()  # our copy: once the workers close theirs, connecting is refused
        alive = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for p in alive:
            p.terminate()  # SIGTERM: graceful
        deadline = time.monotonic() + self.options.graceful_timeout + 5
        for p in alive:
            p.join(max(deadline - time.monotonic(), 0.1))
            if p.is_alive():
                p.kill()
                p.join()
        return 0
