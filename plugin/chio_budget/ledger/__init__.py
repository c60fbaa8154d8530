"""Where counters live, chosen by URI like ``limits`` storages.

``memory`` (default), ``sqlite:///path/to/file.db``, ``redis://host:port/db``.
"""

from __future__ import annotations

from typing import Any

from ..errors import LedgerError
from .base import DEFAULT_TTL_SECONDS, Ledger, Reservation, Settlement, counter_key
from .memory import MemoryLedger

__all__ = ["Ledger", "Reservation", "Settlement", "MemoryLedger", "counter_key", "open_ledger",
           "DEFAULT_TTL_SECONDS"]


def open_ledger(uri: "str | Ledger | None" = "memory", **options: Any) -> Ledger:
    """A ledger from a URI; a ready ``Ledger`` object is passed through."""
    if uri is None or uri in ("memory", "memory://"):
        return MemoryLedger(**options)
    if not isinstance(uri, str):
        return uri
    scheme = uri.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SqliteLedger

        return SqliteLedger.from_uri(uri, **options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisLedger

        return RedisLedger.from_uri(uri, **options)
    raise LedgerError(f"unknown ledger {uri!r}: expected 'memory', 'sqlite:///path' or 'redis://host:port/db'")
