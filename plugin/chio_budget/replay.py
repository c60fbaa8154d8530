"""The ``replay`` event format: validate a whole JSONL file, then run it.

Validation is complete before the first event runs, so a bad line leaves
the ledger untouched (which matters with a durable ledger). It covers what
the run itself could trip on: every string of a line (extra, ignored fields
included) must be encodable Unicode, JSON keys must be unique (a duplicate
would silently mean the last one), numbers and nesting must be readable.
Lines are split on ``\\n`` only: JSON allows a raw U+2028 inside a string.

What validation cannot see (the ledger failing, locked, unreachable) stops
the run at that event with ``ReplayError`` naming its line; the events
before it have run and stay recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import ValidationError

from .cost import CostMetadata
from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry, check_code
from .errors import ChioBudgetError, InputError
from .money import MonetaryAmount, check_units
from .policy import format_path
from .text import lone_surrogate

OPS = ("check", "record", "authorize", "remaining", "total_spent")
_NEEDS_COST = ("check", "record", "authorize")


class ReplayError(ChioBudgetError):
    """An event failed while running (``FILE:LINE: op: cause``); earlier events stay recorded."""


@dataclass(frozen=True)
class Event:
    op: str
    meta: CostMetadata | None
    cost_units: int | MonetaryAmount | None  # an amount when the line (or --currency) names a currency
    line: int
    at: int | None = None  # remaining/total_spent: the window containing this Unix second (default now)


class _Object(dict):
    """A JSON object that remembers the first key it saw twice."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    out = _Object()
    for key, value in pairs:
        if key in out:
            out.duplicate = out.duplicate if out.duplicate is not None else key
        else:
            out[key] = value
    return out


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_MAX_INT_DIGITS = 100  # a u64 has 20; past Python's limit (4300) int() itself would raise


def _int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {_MAX_INT_DIGITS} digits")
    return int(text)


def _problem(value: Any) -> tuple[tuple, str] | None:
    """The path and problem of the first bad part of a parsed value, in document order.

    Iterative, so the depth ``json.loads`` allows cannot overflow it.
    """
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            bad = lone_surrogate(v)
            if bad:
                return path, f"lone surrogate {bad} is not valid Unicode"
        elif isinstance(v, dict):
            for key in v:
                bad = lone_surrogate(key)
                if bad:
                    return path + (key,), f"lone surrogate {bad} is not valid Unicode"
            if getattr(v, "duplicate", None) is not None:
                return path + (v.duplicate,), "duplicate key"
            stack.extend((path + (k,), x) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((path + (i,), x) for i, x in reversed(list(enumerate(v))))
    return None


def parse_json(raw: str, where: str, prefix: tuple = ()) -> Any:
    """Strict JSON: ``InputError`` ``where: path: problem`` for anything a run could not use.

    Refused: invalid JSON, ``NaN``/``Infinity``, integers longer than 100
    digits, nesting past the interpreter's recursion limit, duplicate keys and
    lone surrogates anywhere (keys and ignored fields included).
    """
    try:
        value = json.loads(raw, object_pairs_hook=_object, parse_constant=_not_json, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: <json>: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: <json>: nested too deeply") from None
    except ValueError as exc:  # from the hooks: NaN/Infinity, a huge integer
        raise InputError(f"{where}: <json>: {exc}") from None
    problem = _problem(value)
    if problem:
        path, msg = problem
        raise InputError(f"{where}: {format_path(prefix + path)}: {msg}")
    return value


def parse_meta(obj: Any, where: str, prefix: tuple = ()) -> CostMetadata:
    """``CostMetadata`` from a parsed JSON value; ``InputError`` names the first bad field."""
    try:
        return CostMetadata.model_validate(obj)
    except ValidationError as exc:
        e = exc.errors()[0]
        path = format_path(prefix + tuple(e["loc"])) or "<json>"
        raise InputError(f"{where}: {path}: {e['msg'].removeprefix('Value error, ')}") from None


def _event(obj: Any, where: str, line: int, currency: str | None, currencies: CurrencyRegistry) -> Event:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: <line>: must be a JSON object")
    unknown = set(obj) - {"op", "meta", "cost_units", "currency", "at"}
    if unknown:
        raise InputError(f"{where}: {sorted(unknown)[0]}: unknown field")
    op = obj.get("op")
    if op not in OPS:
        raise InputError(f"{where}: op: must be one of {', '.join(OPS)}, got {op!r}")
    if op not in _NEEDS_COST:
        return Event(op, None, None, line, _at(obj, where))
    if "at" in obj:
        raise InputError(f"{where}: at: only for remaining and total_spent (a request's window is its meta.timestamp)")
    if "meta" not in obj:
        raise InputError(f"{where}: meta: required for op {op!r}")
    if "cost_units" not in obj:
        raise InputError(f"{where}: cost_units: required for op {op!r}")
    meta = parse_meta(obj["meta"], where, ("meta",))
    try:
        cost = check_units(obj["cost_units"], "cost_units")
        code = obj.get("currency", currency)
        if code is not None:
            currencies.scale(check_code(code))
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    return Event(op, meta, cost if code is None else MonetaryAmount(units=cost, currency=code), line)


def _at(obj: dict, where: str) -> int | None:
    if "at" not in obj:
        return None
    try:
        return check_units(obj["at"], "at")
    except ValueError as exc:
        raise InputError(f"{where}: {exc} (Unix seconds)") from None


def load_events(text: str, name: str, *, currency: str | None = None,
                currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> list[Event]:
    """Parse and validate every line; ``InputError`` names the first bad one.

    ``cost_units`` are in the policy currency, unless the line has a
    ``"currency"`` (or ``currency`` is given for every line): then they are
    that currency's minor units, which must have a scale in ``currencies``.
    """
    events = []
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{name}:{n}"
        events.append(_event(parse_json(raw, where), where, n, currency, currencies))
    return events


def _run_one(guard: Any, ev: Event) -> dict[str, Any]:
    if ev.op == "check":
        return guard.check(ev.meta, ev.cost_units).to_json_dict()
    if ev.op == "authorize":
        auth = guard.authorize(ev.meta, ev.cost_units)
        if auth.allow:
            auth.commit()
        return auth.decision.to_json_dict()
    if ev.op == "record":
        guard.record(ev.meta, ev.cost_units)
        if isinstance(ev.cost_units, MonetaryAmount):
            return {"recorded": ev.cost_units.units, "currency": ev.cost_units.currency}
        return {"recorded": ev.cost_units}
    at = int(time.time()) if ev.at is None else ev.at
    out = {ev.op: guard.remaining(at) if ev.op == "remaining" else guard.total_spent(at)}
    window = guard.window(at)
    if window.window.kind != "all_time":  # say which window; an all-time answer is unchanged
        out["window"] = window.input()
    return out


_MAX_RUN = 1000  # checks decided in one query at most (bounds what a run holds in memory)


def _runs(events: list[Event]) -> Iterator[list[Event]]:
    """The events in order, consecutive ``check`` events together (each other event alone)."""
    run: list[Event] = []
    for ev in events:
        if ev.op == "check":
            run.append(ev)
            if len(run) == _MAX_RUN:
                yield run
                run = []
            continue
        if run:
            yield run
            run = []
        yield [ev]
    if run:
        yield run


def _checks(guard: Any, run: list[Event]) -> list[dict[str, Any]] | None:
    """A run of checks decided in one query (``check_many``); None to run them one by one instead
    (a guard without ``check_many``, or one of them failing: the one-by-one run names its line)."""
    many = getattr(guard, "check_many", None)
    if many is None or len(run) < 2:
        return None
    try:
        return [d.to_json_dict() for d in many([(ev.meta, ev.cost_units) for ev in run])]
    except Exception:  # noqa: BLE001 - checks hold nothing, so running them again one by one is safe
        return None


def run_events(guard: Any, events: list[Event], name: str = "<events>") -> Iterator[dict[str, Any]]:
    """One output object per event (DESIGN.md, CLI); a failing event raises ``ReplayError``.

    Consecutive ``check`` events do not depend on each other (a check holds
    and records nothing), so each such run is decided in one engine query
    (``guard.check_many``), with the same outputs as one by one.

    Any exception from the guard is caught here on purpose: whatever the
    cause, the caller gets the line that failed instead of a traceback.
    """
    for run in _runs(events):
        batched = _checks(guard, run)
        if batched is not None:
            yield from batched
            continue
        for ev in run:
            try:
                out = _run_one(guard, ev)
            except Exception as exc:
                detail = str(exc) if isinstance(exc, ChioBudgetError) else f"{type(exc).__name__}: {exc}"
                raise ReplayError(f"{name}:{ev.line}: {ev.op}: {detail}") from exc
            yield out
