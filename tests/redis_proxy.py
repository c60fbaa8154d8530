"""Test support: a loopback TCP proxy in front of the real Redis that can lose replies.

Every byte goes through unchanged until a client connection sends a request
containing one of ``swallow`` (e.g. a Lua script's SHA1): from then on that
connection's replies are dropped. The request itself still reaches Redis and
runs; the client only waits until its socket timeout. That is exactly "the
script ran, the reply never came".
"""

from __future__ import annotations

import threading

from support.tcp_proxy import TcpProxy


class RedisProxy(TcpProxy):
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379)):
        self.swallow: set[bytes] = set()
        self.swallowed_connections = 0
        self._count_lock = threading.Lock()
        super().__init__(upstream)

    def url(self, query: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def forward(self, data: bytes, replies: bool, state: dict) -> bytes:
        if replies:
            return b"" if state.get("mute") else data  # the reply is lost on the way back
        window = state.get("tail", b"") + data
        if not state.get("mute") and any(p in window for p in self.swallow):
            state["mute"] = True
            with self._count_lock:
                self.swallowed_connections += 1
        state["tail"] = window[-64:]
        return data
