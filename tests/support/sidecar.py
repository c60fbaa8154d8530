"""A real ``chio-budget serve`` process on a free loopback port, for the black-box tests.

``start_sidecar(policies_dir, *args)`` runs ``.venv/bin/chio-budget serve
--port 0 ...`` (this tree's code), reads the one ``listening on`` line for
the address, and waits until every worker answers ``/health``.
``SidecarProcess`` has ``url``, ``token``, ``client()`` (an ``httpx.Client``
with the token), ``pids`` (the workers seen so far), ``signal(sig)`` and
``stop()`` (SIGTERM, then the exit code). Nothing here reaches into the
server: tests talk HTTP only, as a kernel adapter would.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .guards import ROOT

CHIO_BUDGET = ROOT / ".venv" / "bin" / "chio-budget"
TOKEN = "test-token-0123456789abcdef"

POLICIES = {
    "default.yaml": "currency: USD\nmax_total: 100000\nmax_per_agent: 3000\nmax_per_session: 5000\n"
                    "max_per_tool:\n  \"s1:expensive\": 500\n"
                    "prices:\n  \"s1:search\": 5\n  \"s1:expensive\": 200\n",
    "small.yaml": "currency: USD\nmax_total: 1000\nprices:\n  \"s1:search\": 7\n",
    "eur.yaml": "currency: EUR\nmax_total: 500000\nwindow: monthly\ntimezone: Europe/Berlin\n"
                "max_per_agent: {units: 3000, window: daily}\n",
}


def write_policies(directory: Path, policies: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (policies or POLICIES).items():
        (directory / name).write_text(text)
    return directory


def ctx(request_id: str, **kw: Any) -> dict[str, Any]:
    """A ``/v1/evaluate`` body (``GuardContext`` + ``policy_id``) for ``s1:search`` by ``a1``."""
    body = {"request_id": request_id, "tool_name": "search", "server_id": "s1", "agent_id": "a1",
            "arguments": {"q": "x"}}
    body.update(kw)
    return body


@dataclass
class SidecarProcess:
    proc: subprocess.Popen
    url: str
    token: str | None
    workers: int
    stderr_lines: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kw: Any) -> httpx.Client:
        """A client with the token; ``max_connections=1`` keeps it on one worker."""
        limits = httpx.Limits(max_connections=kw.pop("max_connections", 10))
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=kw.pop("timeout", 30), limits=limits,
                            **kw)

    def pinned_clients(self, n: int = 2, tries: int = 60) -> list[tuple[int, httpx.Client]]:
        """``n`` one-connection clients, each kept by a different worker (found by ``/health``)."""
        found: dict[int, httpx.Client] = {}
        for _ in range(tries):
            c = self.client(max_connections=1)
            pid = c.get("/health").json()["worker"]
            if pid in found:
                c.close()
            else:
                found[pid] = c
            if len(found) == n:
                return list(found.items())
        raise AssertionError(f"only workers {sorted(found)} answered in {tries} connections")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self) -> str:
        return "".join(self.stderr_lines)


def start_sidecar(policies_dir: Path, *args: str, token: str | None = TOKEN, workers: int = 1,
                  tmp: Path | None = None, scheme: str = "http", client_kw: dict[str, Any] | None = None,
                  ready_timeout: float = 90, healthy: bool = True) -> SidecarProcess:
    """Start ``chio-budget serve`` and wait until all ``workers`` answer ``/health`` with 200 (any
    answer when not ``healthy``: a test that starts it with its ledger down), or raise with its log."""
    cmd = [str(CHIO_BUDGET), "serve", "--policies", str(policies_dir), "--port", "0", "--workers", str(workers),
           *args]
    if token is not None:
        assert tmp is not None, "a token needs tmp to write --token-file into"
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        cmd += ["--token-file", str(token_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIO_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    found: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on " in line:
                found.put(line.split("listening on ", 1)[1].split(" ", 1)[0])
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        where = found.get(timeout=ready_timeout)
    except queue.Empty:
        where = None
    if where is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{' '.join(cmd)} did not start:\n{''.join(lines)[-4000:]}")
    url = where.replace("http://", f"{scheme}://") if where.startswith("http") else where
    side = SidecarProcess(proc, url, token, workers, lines)
    _wait_ready(side, ready_timeout, client_kw or {}, (200,) if healthy else (200, 503))
    return side


def _wait_ready(side: SidecarProcess, timeout: float, client_kw: dict[str, Any], ok: tuple[int, ...]) -> None:
    deadline = time.monotonic() + timeout
    while len(side.pids) < side.workers:
        if side.proc.poll() is not None or time.monotonic() > deadline:
            side.stop() if side.proc.poll() is None else None
            raise RuntimeError(f"sidecar not ready ({len(side.pids)}/{side.workers} workers):\n{side.log()[-4000:]}")
        try:
            with httpx.Client(base_url=side.url, headers=side.headers(), timeout=5, **client_kw) as c:
                r = c.get("/health")
            if r.status_code in ok:
                side.pids.add(r.json()["worker"])
                continue
        except (httpx.HTTPError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
