"""What ``chio-budget serve`` was told: one frozen value, checked before any process starts.

The options travel to every worker process (they are pickled into it), so a
worker builds exactly what the command line said: the policies, the engine,
the ledger, and the HTTP side (address, token, TLS, body bound).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChioBudgetError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 1_048_576
"""Request bodies are refused (413) past this many bytes; tool arguments ride in the body."""


class ServeError(ChioBudgetError):
    """The sidecar cannot start as told (exit 2); the message names the option."""


@dataclass(frozen=True)
class ServeOptions:
    policies: Path
    policy_id: str = "default"
    rego_dir: Path | None = None
    engine: str = "embedded"
    opa_url: str | None = None
    ledger: str = "memory"
    rates: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    uds: Path | None = None
    workers: int = 1
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    decision_log: Path | None = None
    reservation_ttl: float | None = None
    graceful_timeout: int = 30
    access_log: bool = False

    @property
    def engine_options(self) -> dict[str, Any]:
        return {"opa_url": self.opa_url} if self.engine == "server" else {}

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def where(self) -> str:
        """Where it listens, for messages: ``http://127.0.0.1:8787`` or ``unix:/run/chio/budget.sock``."""
        if self.uds is not None:
            return f"unix:{self.uds}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def check(self) -> list[str]:
        """Refuse what cannot work (``ServeError``); the warnings for what is merely unsafe."""
        if self.workers < 1:
            raise ServeError(f"--workers: must be at least 1, got {self.workers}")
        if self.workers > 1 and self.ledger.split("://", 1)[0].split("?", 1)[0] == "memory":
            raise ServeError(f"--workers {self.workers} needs a ledger the workers share (sqlite:///path, "
                             "redis://..., postgresql://...): a memory ledger would give each worker its own "
                             "budget, so N workers could spend N times it")
        if self.engine == "server" and not self.opa_url:
            raise ServeError("--opa-url (or CHIO_OPA_URL) is required with --engine server")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port: must be 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ServeError(f"--max-body-bytes: must be at least 1024, got {self.max_body_bytes}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServeError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ServeError("--tls-client-ca needs --tls-cert and --tls-key (client certificates ride on TLS)")
        for name, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.tls_client_ca)):
            if path is not None and not path.is_file():
                raise ServeError(f"{name} {path}: no such file")
        warnings = []
        if self.uds is None and not _loopback(self.host):
            if self.token is None:
                warnings.append(f"listening on {self.host} without --token-file: anyone who reaches it can "
                                "spend the budget")
            if not self.tls:
                warnings.append(f"listening on {self.host} without TLS: requests and the token travel in clear")
        return warnings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> tuple[str, list[str]]:
    """The bearer token in ``path`` (surrounding whitespace dropped) and warnings about the file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--token-file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(text) < 16 or any(c.isspace() for c in text) or not text.isascii():
        raise ServeError(f"--token-file {path}: the token must be one line of at least 16 ASCII characters "
                         "without spaces")
    warnings = []
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"--token-file {path} is readable by group or others (chmod 600 it)")
    return text, warnings
