"""Decision log: one JSON line per budget decision, each one OPA's ``EventV1``.

Every event has the fields of OPA's decision-log event (``v1/plugins/logs/plugin.go``)
and validates against ``chio_budget/schemas/decision-event-v1.schema.json``
(docs/chain.md, "Decision log"): its own ``decision_id`` (a settlement, shadow
or warning event links to its decision with ``chio.parent_decision_id``);
``labels`` with ``id`` (given or a UUID) and ``version`` (ours, as OPA sets
its own); ``bundles`` keyed by bundle name with the ``.manifest`` revision;
an integer ``metrics.timer_rego_query_eval_ns`` on every evaluation (OPA's
own on the server engine, the call's wall time on the embedded one, 0 when
OPA was not asked; ``chio.client_wall_ns`` the call's wall time); ``chio``
with what OPA does not know (``event``: decision | settlement | shadow |
warning | audit, request id, verdict, estimate). What might name an agent is under
``input``/``result``, where a ``mask`` (``engines.mask.LogMask``:
``data.system.log.mask`` rules) erases or overwrites it before writing.

Promises:

- Money fields are never dropped, masked or rounded: amounts are JSON
  integers written exactly (Python's ``json`` writes 2^64-1 as is), and a
  settlement event always has ``estimate_units``, ``actual_units`` and
  ``committed_units`` (``null`` only when the amount does not exist, e.g.
  ``actual_units`` of a release).
- One event is one ``write`` of one line under a lock, so lines from
  concurrent requests never interleave. Lines are ASCII (``ensure_ascii``):
  U+2028, U+2029 and U+0085 inside a string are written as JSON escapes (``\\u2028``),
  so no line-splitting reader (``str.splitlines``, JavaScript) cuts an event.
- A file sink follows log rotation: before each write the path is checked
  and reopened if it was renamed or deleted (``WatchedFileHandler``
  semantics), and with ``max_bytes`` it rotates itself by size.
- A sink (or mask) that fails raises ``DecisionLogError``; the chain guard
  treats a failed decision write as a deny (no decision without a record).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from .compiler import DECISION_PATH
from .decision import BudgetViolation
from .errors import DecisionLogError

BUNDLE_NAME = "chio/budget"
PARENT = "parent_decision_id"


def new_decision_id() -> str:
    return str(uuid.uuid4())


def chio_budget_version() -> str:
    try:
        return version("chio-budget-guard")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def event_kind(ev: dict[str, Any]) -> str:
    """``decision`` | ``settlement`` | ``shadow`` | ``warning`` | ``audit`` (also of older logs' ``type``)."""
    return str((ev.get("chio") or {}).get("event") or ev.get("type") or "decision")


def parent_of(ev: dict[str, Any]) -> str | None:
    return (ev.get("chio") or {}).get(PARENT)


def rfc3339_now() -> str:
    """UTC with microseconds, ``Z`` suffix (OPA writes RFC 3339 timestamps).

    Built from ``time.time_ns`` by hand: ``datetime.strftime`` with ``%f``
    was a fifth of the decision log's cost per event.
    """
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


Sink = Callable[[dict[str, Any]], None]


class LogFile:
    """An append-only log file that follows logrotate and can rotate itself by size.

    Before each write the path is stat'ed, as ``logging.handlers.WatchedFileHandler``
    does: when the file is gone or is another file now (device or inode
    changed: logrotate renamed it), the old handle is closed and the path
    reopened, created if need be. With ``max_bytes``, a write that would take
    a non-empty file past ``max_bytes`` first shifts ``path.1`` ->
    ``path.2`` ... (dropping ``path.<backup_count>``) and renames the file to
    ``path.1``, as ``logging.handlers.RotatingFileHandler`` does. Size
    rotation assumes one writing process per file; with several, let
    logrotate rotate and every process follows the rename.

    Not thread-safe by itself: ``DecisionLog`` calls it under its lock.
    """

    def __init__(self, path: str | Path, *, max_bytes: int | None = None, backup_count: int = 5):
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise ValueError(f"max_bytes must be an int > 0, got {max_bytes!r}")
        if isinstance(backup_count, bool) or not isinstance(backup_count, int) or backup_count < 1:
            raise ValueError(f"backup_count must be an int >= 1, got {backup_count!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream: TextIO | None = None
        self._closed = False
        self._open()

    def _open(self) -> None:
        stream = open(self.path, "a", encoding="utf-8")
        st = os.fstat(stream.fileno())
        self._stream, self._id, self._size = stream, (st.st_dev, st.st_ino), st.st_size

    def _follow(self) -> None:
        """Reopen when the path no longer names the open file; refresh its size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._id:
            self._close_stream()
            self._open()
        else:
            self._size = st.st_size

    def _rotate(self) -> None:
        self._close_stream()
        for n in range(self.backup_count - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, line: str) -> None:
        """Append one line (ASCII: its length is its size in bytes) and flush it."""
        if self._closed:
            raise ValueError("log file is closed")
        self._follow()
        if self.max_bytes is not None and self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        assert self._stream is not None
        self._stream.write(line)
        self._stream.flush()

    def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    def close(self) -> None:
        self._closed = True
        self._close_stream()


class DecisionLog:
    """Writes decision, shadow and settlement events to a file or a callable.

    ``sink`` is a path (a ``LogFile``: opened for append, created with its
    parent directories, reopened after a logrotate rename, rotated by size
    with ``max_bytes`` / ``backup_count``), an open text stream, or a
    callable that receives each event as a ``dict`` (already JSON-safe).
    ``labels`` are copied into every event, like OPA's ``labels``, with
    ``id`` (given or a UUID) and ``version`` (chio-budget's) set as OPA sets
    them. ``bundle_name`` keys ``bundles``; ``mask`` rewrites each event
    before it is written (see the module docstring).
    """

    def __init__(self, sink: str | Path | TextIO | Sink, *, labels: dict[str, str] | None = None,
                 path: str = DECISION_PATH, bundle_name: str = BUNDLE_NAME, mask: Any = None,
                 max_bytes: int | None = None, backup_count: int = 5):
        self.labels = dict(labels or {})
        self.labels["id"] = self.labels.get("id") or new_decision_id()
        self.labels["version"] = chio_budget_version()
        self.path, self.bundle_name, self.mask = path, bundle_name, mask
        self._lock = threading.Lock()
        self._file: LogFile | None = None
        self._stream: TextIO | None = None
        self._callable: Sink | None = None
        if isinstance(sink, (str, Path)):
            self._file = LogFile(sink, max_bytes=max_bytes, backup_count=backup_count)
            return
        if max_bytes is not None:
            raise ValueError("max_bytes needs a file path sink (a stream or callable cannot be rotated)")
        if callable(sink):
            self._callable = sink
        elif hasattr(sink, "write"):
            self._stream = sink
        else:
            raise TypeError("sink must be a path, a text stream or a callable")

    # -- building events ----------------------------------------------------

    def _envelope(self, decision_id: str | None) -> dict[str, Any]:
        return {"decision_id": decision_id or new_decision_id(), "timestamp": rfc3339_now(),
                "labels": dict(self.labels), "path": self.path}

    def decision_event(self, *, input: dict[str, Any], result: dict[str, Any], revision: str | None,
                       eval_ns: int | None, chio: dict[str, Any], decision_id: str | None = None,
                       client_wall_ns: int | None = None, event: str = "decision",
                       parent_decision_id: str | None = None) -> dict[str, Any]:
        """An evaluation (``decision`` or ``shadow``): ``revision`` is the bundle's, ``eval_ns`` the
        evaluation time (None: OPA was not asked, written 0), ``client_wall_ns`` the call's wall time."""
        ev = self._envelope(decision_id)
        ev["input"] = input
        ev["result"] = result
        ev["bundles"] = {self.bundle_name: {"revision": revision or ""}}
        ev["metrics"] = {"timer_rego_query_eval_ns": int(eval_ns or 0)}
        ev["chio"] = {"event": event, **({PARENT: parent_decision_id} if parent_decision_id else {}),
                      **chio, "client_wall_ns": int(client_wall_ns or 0)}
        return ev

    def settlement_event(self, *, parent_decision_id: str | None, request_id: str, policy_id: str, outcome: str,
                         currency: str, estimate_units: int | None, actual_units: int | None,
                         committed_units: int | None, over_estimate: bool, source: str,
                         error: str | None = None, request: dict[str, Any] | None = None,
                         extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What followed the decision ``parent_decision_id``; ``input`` holds the call's request."""
        ev = self._envelope(None)
        ev["input"] = {"policy_id": policy_id, "request": request}
        ev["chio"] = {
            "event": "settlement", **({PARENT: parent_decision_id} if parent_decision_id else {}),
            "request_id": request_id, "policy_id": policy_id, "outcome": outcome, "currency": currency,
            "estimate_units": estimate_units, "actual_units": actual_units,
            "committed_units": committed_units, "over_estimate": over_estimate,
            # The Chio kernel marks a settlement whose actual cost exceeds the
            # estimate as failed; we commit it anyway (spend happened) and say so.
            "kernel_settlement": "failed" if over_estimate else ("ok" if error is None else "error"),
            "actual_source": source, "error": error,
        }
        if extra:
            ev["chio"].update(extra)
        return ev

    def warning_event(self, *, parent_decision_id: str | None, request_id: str, policy_id: str, counter: str,
                      threshold_bps: int, warning: dict[str, Any], guard: str) -> dict[str, Any]:
        """A soft-limit crossing, written once per threshold, window and counter when an allowed
        reservation first reaches it. ``input.counter`` is the ledger key and ``result.warnings``
        the decision's warning, where the decision event has them (one mask rule covers both)."""
        ev = self._envelope(None)
        ev["input"] = {"policy_id": policy_id, "counter": counter}
        ev["result"] = {"warnings": [dict(warning)]}
        ev["chio"] = {"event": "warning", **({PARENT: parent_decision_id} if parent_decision_id else {}),
                      "guard": guard, "request_id": request_id, "policy_id": policy_id,
                      "scope": warning.get("scope"), "threshold_bps": threshold_bps}
        return ev

    def audit_event(self, *, action: str, who: str, why: str | None, ledger: str, **details: Any) -> dict[str, Any]:
        """An operator's change by hand (``chio-budget ledger``): ``input`` holds what it touched."""
        chio = {"event": "audit", "action": action, "who": who, "why": why, "ledger": ledger}
        return {"decision_id": new_decision_id(), "timestamp": rfc3339_now(), "labels": dict(self.labels),
                "input": details, "chio": chio}

    # -- writing ------------------------------------------------------------

    def write(self, event: dict[str, Any]) -> None:
        """Write one event (masked first, when a mask is set); raises ``DecisionLogError`` if that fails."""
        try:
            if self.mask is not None:
                event = self.mask.apply(event)
            if self._callable is not None:
                with self._lock:  # one event at a time: the callable need not be thread-safe
                    self._callable(event)
                return
            line = json.dumps(event, separators=(",", ":"), ensure_ascii=True) + "\n"
            with self._lock:
                if self._file is not None:
                    self._file.write(line)
                else:
                    assert self._stream is not None
                    self._stream.write(line)
                    self._stream.flush()
        except Exception as exc:
            raise DecisionLogError(f"decision log write failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close a file this log opened (a stream or callable given to it is the caller's)."""
        with self._lock:
            if self._file is not None:
                self._file.close()


# --------------------------------------------------------------------------
# Reading and explaining


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events of a decision-log file, with ``DecisionLogError`` naming ``file:line`` on bad JSON."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise DecisionLogError(f"{path}:1: cannot read: {exc.strerror}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DecisionLogError(f"{path}:{n}: not a JSON event: {exc.msg}") from None
            if isinstance(ev, dict):
                yield ev


def find_decision(events: Iterable[dict[str, Any]], decision_id: str) -> list[dict[str, Any]]:
    """The decision with this id and every event (shadow, warning, settlement) whose parent it is.

    The id of one of those events finds its decision the same way.
    Logs written before ``chio.parent_decision_id`` (every event of a decision
    sharing its id) are found too."""
    evs = list(events)
    root = next((parent_of(ev) for ev in evs if ev.get("decision_id") == decision_id and parent_of(ev)), None)
    root = root or decision_id
    return [ev for ev in evs if ev.get("decision_id") == root or parent_of(ev) == root]


def _money(units: Any, currency: Any) -> str:
    return "-" if units is None else f"{units} {currency or ''}".rstrip()


def explain(events: list[dict[str, Any]]) -> str:
    """A readable account of one decision and what followed it."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_type.setdefault(event_kind(ev), []).append(ev)
    lines: list[str] = []
    for ev in by_type.get("decision", []):
        lines += _explain_decision(ev)
    for ev in by_type.get("shadow", []):
        lines += _explain_shadow(ev)
    for ev in by_type.get("warning", []):
        c, w = ev.get("chio") or {}, ((ev.get("result") or {}).get("warnings") or [{}])[0]
        lines.append(f"  warning   {c.get('scope', '-')} crossed {(c.get('threshold_bps') or 0) / 100:g}%"
                     f" of its limit ({(ev.get('input') or {}).get('counter', '-')}): {json.dumps(w)}")
    for ev in by_type.get("settlement", []):
        lines += _explain_settlement(ev)
    if not by_type.get("decision"):
        lines.insert(0, "(no decision event with this id; related events follow)")
    return "\n".join(lines)


def _explain_decision(ev: dict[str, Any]) -> list[str]:
    inp, res, chio = ev.get("input") or {}, ev.get("result") or {}, ev.get("chio") or {}
    req, cost, totals = inp.get("request") or {}, inp.get("cost") or {}, inp.get("totals")
    rev = next(iter(b.get("revision") for b in (ev.get("bundles") or {}).values() if isinstance(b, dict)), None)
    lines = [
        f"decision {ev.get('decision_id')}  at {ev.get('timestamp')}",
        f"  guard     {chio.get('guard', '-')}  verdict {str(chio.get('verdict', '-')).upper()}",
        f"  policy    {inp.get('policy_id', res.get('policy_id', '-'))}  revision {res.get('policy_revision') or '-'}"
        f"  (bundle {rev or '-'})",
        f"  request   {chio.get('request_id', req.get('receipt_id', '-'))}: agent {req.get('agent_id', '-')}"
        f", session {req.get('session_id') or '-'}, tool {req.get('tool_key', '-')}",
        f"  cost      {_money(cost.get('units'), cost.get('currency'))}"
        f"  (estimate from {chio.get('estimate_source', '-')})",
    ]
    if totals:
        lines.append("  before    " + ", ".join(f"{k} {v if v is not None else '-'}" for k, v in totals.items()))
    lines.append(f"  result    {'ALLOW' if res.get('allow') else 'DENY'}")
    for v in res.get("violations") or []:
        try:
            text = BudgetViolation.parse(v).describe()
        except Exception:
            text = json.dumps(v)
        lines.append(f"    - {text}")
    lines += [f"    ! warning: {json.dumps(w, separators=(',', ':'))}" for w in res.get("warnings") or []]
    if res.get("error"):
        lines.append(f"    ! error: {res['error']}")
    ns, wall = (ev.get("metrics") or {}).get("timer_rego_query_eval_ns"), chio.get("client_wall_ns")
    lines.append(f"  eval      {'-' if ns is None else f'{ns / 1000:.1f} us'}"
                 + ("" if wall is None else f"  (call {wall / 1000:.1f} us)"))
    return lines


def _explain_shadow(ev: dict[str, Any]) -> list[str]:
    res, chio = ev.get("result") or {}, ev.get("chio") or {}
    diff = chio.get("diff") or {}
    lines = [f"  shadow    policy {chio.get('policy_id', '-')}: {'ALLOW' if res.get('allow') else 'DENY'}"
             f" ({'agrees' if diff.get('agree') else 'DISAGREES'} with enforced)  [{ev.get('decision_id')}]"]
    lines += [f"    + shadow-only violation: {scope}" for scope in diff.get("only_shadow", [])]
    lines += [f"    - enforced-only violation: {scope}" for scope in diff.get("only_enforced", [])]
    return lines


def _explain_settlement(ev: dict[str, Any]) -> list[str]:
    c = ev.get("chio") or {}
    cur = c.get("currency")
    lines = [f"  settled   {c.get('outcome')} at {ev.get('timestamp')}: committed {_money(c.get('committed_units'), cur)}"
             f", estimate {_money(c.get('estimate_units'), cur)}, actual {_money(c.get('actual_units'), cur)}"
             f" (from {c.get('actual_source', '-')})  [{ev.get('decision_id')}]"]
    if c.get("over_estimate"):
        lines.append("    ! actual above estimate: committed, kernel marks this settlement failed")
    if c.get("error"):
        lines.append(f"    ! {c['error']}")
    return lines
