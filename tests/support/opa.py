"""OPA over HTTP for the tests (plugin): a real ``opa run --server`` when one exists, else the stand-in.

A real ``opa`` is looked up in env ``OPA_BIN``, then ``PATH``. When found it
is started on a free loopback port (``opa run --server --addr
127.0.0.1:<port> --bundle build/bundle.tar.gz``) and the tests talk to it
through a forwarding ``StandIn(upstream=...)`` front, which adds only the
fault switches; without it, the stand-in itself (``tests/opa_standin.py``,
test support) loads the same bundle. Either way a test sees an
``OpaServer``: ``url`` for the guard, ``faults`` to make it misbehave,
``stop()``/``start()`` to take it away and bring it back on the same port.

Fixtures ``opa_server`` (this repository's bundle loaded), ``opa_server_blank``
(nothing loaded) and ``opa_bin``; ``REPO_COMPILED`` and ``engine_input`` are
what the server-engine tests decide with.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from chio_budget.bundle import write_bundle
from chio_budget.compiler import compile_all
from chio_budget.policy import load_policies
from opa_standin import Faults, StandIn

from .guards import POLICIES_DIR, REGO_DIR

REPO_COMPILED = compile_all(load_policies(POLICIES_DIR))
"""This repository's ``policies/``, compiled: what the bundle the servers load holds."""


def find_opa() -> str | None:
    """A real ``opa`` binary (``OPA_BIN``, then PATH), or None."""
    return os.environ.get("OPA_BIN") or shutil.which("opa")


def engine_input(units: int, agent: str = "a1") -> dict:
    """An OPA input for policy ``default`` with every counter at 0 (no session)."""
    return {"policy_id": "default",
            "request": {"receipt_id": "r1", "timestamp": 1000, "agent_id": agent, "session_id": None,
                        "tool_server": "s1", "tool_name": "t1", "tool_key": "s1:t1"},
            "cost": {"units": units, "currency": "USD"},
            "totals": {"total": 0, "session": None, "agent": 0, "tool": 0}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OpaServer:
    """A running OPA (real or stand-in) behind a fault-injecting front."""

    front: StandIn
    kind: str  # "opa" (a real binary) or "standin"
    direct_url: str  # the server itself, bypassing the front
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.front.url

    @property
    def faults(self) -> Faults:
        return self.front.faults

    def stop(self) -> None:
        """OPA is gone: connections are refused until ``start()``."""
        self.front.stop()

    def start(self) -> None:
        self.front.start()

    def close(self) -> None:
        self.front.stop()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_opa(bundle: Path | None, *, args: tuple[str, ...] = (), **standin: Any) -> OpaServer:
    """Start OPA with ``bundle`` loaded (``None``: empty, for push).

    ``args`` go to a real ``opa run`` (e.g. ``--set decision_logs.console=true``),
    ``standin`` to the stand-in for the same state (e.g. ``decision_logs=True``).
    """
    opa = find_opa()
    if opa is None:
        s = StandIn(bundle=bundle, **standin).start()
        return OpaServer(s, "standin", s.url)
    port = _free_port()
    cmd = [opa, "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error", *args]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    direct = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(direct + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")
            raise RuntimeError(f"{' '.join(cmd)} did not become healthy: {err[-2000:]}")
        time.sleep(0.05)
    return OpaServer(StandIn(upstream=direct).start(), "opa", direct, proc)


_BUNDLE: list[Path] = []


def repo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chio-budget bundle policies/ rego/`` of this repository, built once per test run."""
    if not _BUNDLE:
        path = tmp_path_factory.mktemp("bundle") / "bundle.tar.gz"
        write_bundle(POLICIES_DIR, REGO_DIR, path)
        _BUNDLE.append(path)
    return _BUNDLE[0]


@pytest.fixture(scope="session")
def opa_bin() -> str | None:
    """A real ``opa`` binary, or None."""
    return find_opa()


@pytest.fixture
def opa_server(tmp_path_factory: pytest.TempPathFactory):
    """OPA serving this repository's bundle (``policies/`` + ``rego/``)."""
    server = start_opa(repo_bundle(tmp_path_factory))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def opa_server_blank():
    """OPA with nothing loaded: for ``push`` and for per-case data."""
    server = start_opa(None)
    try:
        yield server
    finally:
        server.close()
