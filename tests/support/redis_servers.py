"""Test support: Redis servers of the tests' own, started and stopped by PID.

``RedisServer``: one ``redis-server`` on a free loopback port in a temporary
directory, optionally with ``appendonly yes`` + ``appendfsync always`` so it
can be SIGKILLed and started again on the same port with every acknowledged
write (the fault tests; the machine's shared Redis keeps nothing on disk).

``RedisClusterProcess``: three of them with ``--cluster-enabled yes``, joined
by ``redis-cli --cluster create ... --cluster-yes`` into a 3-master cluster
(no replicas), waited on until every node reports ``cluster_state:ok``.

Nothing here is found by name or killed broadly: each server is a child of
this process, stopped with its own PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port(*, cluster: bool = False) -> int:
    """A loopback port free now (and, for a cluster node, its bus port + 10000 too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 and cluster:
            continue
        if not cluster or _free(port + 10000):
            return port
    raise RuntimeError("no free loopback port")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process; ``kill()`` is SIGKILL, ``start()`` starts it again on its port."""

    def __init__(self, *, durable: bool = False, cluster: bool = False, port: int | None = None,
                 directory: Path | None = None):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port(cluster=cluster)
        self.durable, self.cluster = durable, cluster
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="chio-redis-"))
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / f"redis-{self.port}.log"),
                "--protected-mode", "no"]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                     "--cluster-node-timeout", "5000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / f"redis-{self.port}.log")
                raise RuntimeError(f"redis-server on {self.port} did not start: "
                                   f"{log.read_text()[-2000:] if log.exists() else 'no log'}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown save, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterProcess:
    """A 3-master Redis Cluster on loopback ports, its nodes children of this process."""

    def __init__(self, masters: int = 3, *, durable: bool = False):
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="chio-cluster-"))
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.nodes.append(RedisServer(cluster=True, durable=durable, directory=self.dir))
            hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
            out = subprocess.run([REDIS_CLI, "--cluster", "create", *hosts, "--cluster-replicas", "0",
                                  "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def owner(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot now."""
        slot = int(self._cli(self.nodes[0], "cluster", "keyslot", key))
        return next(node for node in self.nodes if self._serves(node, slot))

    def _cli(self, node: RedisServer, *args: str) -> str:
        return subprocess.run([REDIS_CLI, "-p", str(node.port), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    def _serves(self, node: RedisServer, slot: int) -> bool:
        out = self._cli(node, "cluster", "nodes")
        me = next(line for line in out.splitlines() if "myself" in line).split()
        for part in me[8:]:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return True
        return False

    def wait_ok(self) -> None:
        """Until every node reports ``cluster_state:ok`` (30 s at most)."""
        deadline = time.monotonic() + 30
        for node in self.nodes:
            while True:
                info = self._cli(node, "cluster", "info")
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok on {node.port}: {info}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        """The ledger URI of this cluster (every node named; one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
