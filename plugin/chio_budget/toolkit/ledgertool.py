"""Counters by hand, with a trail: show, adjust, reset, export, import.

Built on the ledger's own operations (``counters``, ``adjust``, ``reset``,
``export``, ``import_``: atomic on every backend), so a correction made here
is exactly as safe as a guard's commit. Every command writes an audit event
to the decision log - who ran it, why, on which ledger, and for a change
the balances before and after (``type: "audit"``, the decision-log envelope;
keys listed up to ``MAX_AUDIT_KEYS``, the rest counted). A change needs a
decision log: there is no correction without a record.

Keys are the ledger's ``policy/window/scope/ident`` (``counter_key``), each
segment percent-quoted; ``parse_key`` reads them back.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import IO, Any, Iterable, Iterator
from urllib.parse import quote, unquote

from ..decisionlog import DecisionLog
from ..errors import InputError
from ..ledger import Balance, counter_key
from ..money import U64_MAX

SCOPES = ("total", "session", "agent", "tool")
MAX_AUDIT_KEYS = 1000


def parse_key(key: str) -> dict[str, str]:
    """``policy/window/scope/ident`` -> its four parts (unquoted); a foreign key is all ``ident``."""
    parts = key.split("/")
    if len(parts) != 4:
        return {"policy_id": "", "window": "", "scope": "", "id": key}
    policy, window, scope, ident = (unquote(p) for p in parts)
    return {"policy_id": policy, "window": window, "scope": scope, "id": ident}


def select(ledger: Any, policy_id: str | None = None, scope: str | None = None, ident: str | None = None,
           window: str | None = None) -> list[tuple[str, Balance]]:
    """The counters matching every filter given (``window=""``: all-time counters only)."""
    prefix = "" if policy_id is None else quote(policy_id, safe=":@-_.") + "/"
    if policy_id is not None and window is not None:
        prefix += quote(window, safe=":@-_.") + "/"
    out = []
    for key, balance in ledger.counters(prefix):
        p = parse_key(key)
        if scope is not None and p["scope"] != scope:
            continue
        if ident is not None and p["id"] != ident:
            continue
        if window is not None and p["window"] != window:
            continue
        out.append((key, balance))
    return out


def the_key(policy_id: str, scope: str, ident: str | None, window: str = "") -> str:
    """The one counter ``adjust`` acts on; ``InputError`` when the scope needs an id and has none."""
    if scope not in SCOPES:
        raise InputError(f"--scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope == "total":
        if ident:
            raise InputError("--id: the total counter has no id")
        return counter_key(policy_id, "total", "", window)
    if not ident:
        raise InputError(f"--id: required for scope {scope!r}")
    return counter_key(policy_id, scope, ident, window)


def balance_json(b: Balance) -> dict[str, int]:
    return {"spent": b.spent, "held": b.held}


def counter_json(key: str, b: Balance) -> dict[str, Any]:
    return {"key": key, **parse_key(key), "spent": b.spent, "held": b.held, "total": b.total}


def who() -> str:
    """``user@host`` of whoever runs the command (the audit's default ``who``)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container without one): still audit
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def redacted(uri: str) -> str:
    from ..engines.opa_http import redact

    return redact(uri)


class Audit:
    """Writes the audit events of one command to a decision log (opened up front, so a
    log that cannot be written stops the command before it changes anything)."""

    def __init__(self, path: str | Path | None, *, who: str, why: str | None, ledger_uri: str):
        self.log = None if path is None else DecisionLog(path)
        self.who, self.why, self.ledger = who, why, redacted(ledger_uri)

    def write(self, action: str, **chio: Any) -> dict[str, Any] | None:
        if self.log is None:
            return None
        event = self.log.audit_event(action=action, who=self.who, why=self.why, ledger=self.ledger, **chio)
        self.log.write(event)
        return event

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def changes(keys: list[str], before: list[Balance], after: list[Balance]) -> dict[str, Any]:
    """The audit's ``before``/``after`` maps (at most ``MAX_AUDIT_KEYS`` keys; ``keys`` counts all)."""
    shown = keys[:MAX_AUDIT_KEYS]
    return {"keys": len(keys), "keys_listed": len(shown),
            "before": {k: balance_json(b) for k, b in zip(shown, before)},
            "after": {k: balance_json(b) for k, b in zip(shown, after)}}


def read_import(stream: IO[bytes], name: str) -> list[dict[str, Any]]:
    """``{"key": str, "spent": u64}`` per line, every line validated first (located ``InputError``)."""
    from .receipts import _pairs  # the strict JSON reading of receipt logs: duplicate keys refused

    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    decoder = json.JSONDecoder(object_pairs_hook=_pairs)
    for n, raw in enumerate(stream, start=1):
        if raw.isspace():
            continue
        where = f"{name}:{n}"
        try:
            doc = decoder.decode(raw.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - JSON, UTF-8 or duplicate-key problem, located
            raise InputError(f"{where}: <json>: {getattr(exc, 'msg', None) or getattr(exc, 'problem', exc)}") \
                from None
        records.append(_import_record(doc, where, seen, n))
    return records


def _import_record(doc: Any, where: str, seen: dict[str, int], n: int) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != {"key", "spent"}:
        raise InputError(f"{where}: <record>: must be {{\"key\": ..., \"spent\": ...}} (as ledger export writes)")
    key, spent = doc["key"], doc["spent"]
    if not isinstance(key, str) or not key:
        raise InputError(f"{where}: key: must be a non-empty string")
    if type(spent) is not int or not 0 <= spent <= U64_MAX:
        raise InputError(f"{where}: spent: must be an integer 0..2^64-1, got {spent!r}")
    if key in seen:
        raise InputError(f"{where}: key: {key!r} already on line {seen[key]}")
    seen[key] = n
    return {"key": key, "spent": spent}


def export_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for r in records:
        yield json.dumps({"key": r["key"], "spent": r["spent"]}, separators=(",", ":")) + "\n"
