"""The ``replay`` event format: validate a whole JSONL file, then run it.

Validation is complete before the first event runs, so a bad line leaves
the ledger untouched (which matters with a durable ledger).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import ValidationError

from .cost import CostMetadata
from .errors import InputError
from .money import check_units
from .policy import format_path

OPS = ("check", "record", "authorize", "remaining", "total_spent")
_NEEDS_COST = ("check", "record", "authorize")


@dataclass(frozen=True)
class Event:
    op: str
    meta: CostMetadata | None
    cost_units: int | None
    line: int


def _event(obj: Any, where: str, line: int) -> Event:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: <line>: must be a JSON object")
    unknown = set(obj) - {"op", "meta", "cost_units"}
    if unknown:
        raise InputError(f"{where}: {sorted(unknown)[0]}: unknown field")
    op = obj.get("op")
    if op not in OPS:
        raise InputError(f"{where}: op: must be one of {', '.join(OPS)}, got {op!r}")
    if op not in _NEEDS_COST:
        return Event(op, None, None, line)
    if "meta" not in obj:
        raise InputError(f"{where}: meta: required for op {op!r}")
    if "cost_units" not in obj:
        raise InputError(f"{where}: cost_units: required for op {op!r}")
    try:
        meta = CostMetadata.model_validate(obj["meta"])
    except ValidationError as exc:
        e = exc.errors()[0]
        path = format_path(("meta",) + tuple(e["loc"]))
        raise InputError(f"{where}: {path}: {e['msg'].removeprefix('Value error, ')}") from None
    try:
        cost = check_units(obj["cost_units"], "cost_units")
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    return Event(op, meta, cost, line)


def load_events(text: str, name: str) -> list[Event]:
    """Parse and validate every line; ``InputError`` names the first bad one."""
    events = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{name}:{n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: <json>: {exc.msg} (column {exc.colno})") from None
        events.append(_event(obj, where, n))
    return events


def run_events(guard: Any, events: list[Event]) -> Iterator[dict[str, Any]]:
    """One output object per event (DESIGN.md, CLI)."""
    for ev in events:
        if ev.op == "check":
            yield guard.check(ev.meta, ev.cost_units).to_json_dict()
        elif ev.op == "authorize":
            auth = guard.authorize(ev.meta, ev.cost_units)
            if auth.allow:
                auth.commit()
            yield auth.decision.to_json_dict()
        elif ev.op == "record":
            guard.record(ev.meta, ev.cost_units)
            yield {"recorded": ev.cost_units}
        elif ev.op == "remaining":
            yield {"remaining": guard.remaining()}
        else:
            yield {"total_spent": guard.total_spent()}
