"""Test support: a loopback TCP proxy that can delay traffic or stop answering.

Every byte is forwarded unchanged, after ``delay`` seconds per chunk in each
direction (a slow network). While ``hang`` is set, replies from the server
are held back (the client's connection stays up and its requests are still
delivered: exactly a server that stopped answering). ``cut()`` closes every
connection made so far (a network partition the client notices); while
``down`` is set, new connections are closed as soon as they are accepted (a
server that is away, as during a restart). Used for
the PostgreSQL and Redis fault tests. A subclass may rewrite the traffic by
overriding ``forward`` (``redis_proxy.RedisProxy`` loses one script's reply).
"""

from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], *, delay: float = 0.0):
        self.upstream = upstream
        self.delay = delay
        self.hang = threading.Event()
        self.down = threading.Event()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            state: dict = {}  # per connection, shared by both directions
            threading.Thread(target=self._pipe, args=(client, server, False, state), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True, state), daemon=True).start()

    def forward(self, data: bytes, replies: bool, state: dict) -> bytes:
        """What to pass on of ``data`` (``replies``: from the server); all of it by default."""
        return data

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool, state: dict) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if self.delay:
                time.sleep(self.delay)
            while replies and self.hang.is_set() and not self._closed:
                time.sleep(0.01)
            data = self.forward(data, replies, state)
            try:
                if data:
                    dst.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        """Close every connection made so far; new ones are still accepted."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.hang.clear()
        self._listener.close()
        self.cut()
