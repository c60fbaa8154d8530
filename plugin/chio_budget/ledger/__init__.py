"""Where counters live, chosen by URI like ``limits`` storages.

``memory`` (default, also ``memory://?ttl=60``), ``sqlite:///path/to/file.db``,
``redis://host:port/db`` (also ``rediss://``, ``unix://``; needs the
``[redis]`` extra; ``redis+cluster://host:port,host:port/0`` for Redis
Cluster), ``postgresql://user@host:port/db?schema=name`` (also
``postgres://``; needs the ``[postgres]`` extra). ``BACKENDS`` maps a scheme to the class that opens it;
each class has ``from_uri(uri, **options)`` and is imported only when used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..errors import LedgerError
from .base import (DEFAULT_SETTLED_MAX, DEFAULT_SETTLED_RETENTION, DEFAULT_TTL_SECONDS, Balance, Ledger,
                   Reservation, Settlement, counter_key)
from .memory import MemoryLedger

__all__ = ["BACKENDS", "Balance", "Ledger", "Reservation", "Settlement", "MemoryLedger", "counter_key",
           "open_ledger", "DEFAULT_TTL_SECONDS", "DEFAULT_SETTLED_RETENTION", "DEFAULT_SETTLED_MAX"]

BACKENDS: dict[str, str] = {
    "memory": "chio_budget.ledger.memory:MemoryLedger",
    "sqlite": "chio_budget.ledger.sqlite:SqliteLedger",
    "redis": "chio_budget.ledger.redis:RedisLedger",
    "rediss": "chio_budget.ledger.redis:RedisLedger",
    "unix": "chio_budget.ledger.redis:RedisLedger",
    "redis+cluster": "chio_budget.ledger.redis:RedisLedger",
    "rediss+cluster": "chio_budget.ledger.redis:RedisLedger",
    "postgresql": "chio_budget.ledger.postgres:PostgresLedger",
    "postgres": "chio_budget.ledger.postgres:PostgresLedger",
}
"""URI scheme -> ``module:Class``; add an entry to plug in another backend."""

_EXTRAS = {"redis": "redis", "psycopg": "postgres", "psycopg_pool": "postgres"}


def backend_class(scheme: str) -> Any:
    """The class registered for ``scheme``, imported now; ``LedgerError`` if unknown or not installed."""
    target = BACKENDS.get(scheme)
    if target is None:
        raise LedgerError(f"unknown ledger scheme {scheme!r}: expected one of "
                          f"{', '.join(repr(s) for s in BACKENDS)} (e.g. 'memory', 'sqlite:///path', "
                          "'redis://host:port/db', 'postgresql://user@host/db')")
    module, _, name = target.partition(":")
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        raise LedgerError(f"a {scheme}:// ledger needs {exc.name!r}: pip install 'chio-budget-guard[{extra}]'") from None


def open_ledger(uri: "str | Ledger | None" = "memory", **options: Any) -> Ledger:
    """A ledger from a URI (options in its query or as keywords; keywords win).

    A ready ``Ledger`` object is passed through unchanged.
    """
    if uri is None:
        uri = "memory"
    if not isinstance(uri, str):
        return uri
    scheme = uri.split("://", 1)[0] if "://" in uri else uri.split("?", 1)[0]
    return backend_class(scheme).from_uri(uri, **options)
