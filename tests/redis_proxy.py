"""Test support: a loopback TCP proxy in front of the real Redis that can lose replies.

Every byte goes through unchanged until a client connection sends a request
containing one of ``swallow`` (e.g. a Lua script's SHA1): from then on that
connection's replies are dropped. The request itself still reaches Redis and
runs; the client only waits until its socket timeout. That is exactly "the
script ran, the reply never came".
"""

from __future__ import annotations

import socket
import threading


class RedisProxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379)):
        self.upstream = upstream
        self.swallow: set[bytes] = set()
        self.swallowed_connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, query: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            state = {"mute": False}
            threading.Thread(target=self._requests, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, state), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        tail = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            window = tail + data
            if not state["mute"] and any(p in window for p in self.swallow):
                state["mute"] = True
                with self._lock:
                    self.swallowed_connections += 1
            tail = window[-64:]
            try:
                dst.sendall(data)
            except OSError:
                return

    def _replies(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if state["mute"]:
                continue  # the reply is lost on the way back
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass
