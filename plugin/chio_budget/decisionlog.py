"""Decision log: one JSON line per budget decision, shaped like OPA's.

Every event is an object on one line. Decision events carry the fields an
OPA decision-log consumer expects (``decision_id``, ``timestamp``, ``path``,
``input``, ``result``, ``bundles`` with the policy revision, ``labels``,
``metrics.timer_rego_query_eval_ns``) plus a ``chio`` object with what OPA
does not know: the request id, the guard's verdict, the estimate and where it
came from. Settlement events (``type: "settlement"``) and shadow events
(``type: "shadow"``) share the same envelope and point back to the decision
by ``decision_id``.

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
- A sink that fails raises ``DecisionLogError``; the chain guard treats a
  failed decision write as a deny (no decision without a record).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from .compiler import DECISION_PATH
from .decision import BudgetViolation
from .errors import DecisionLogError

BUNDLE_NAME = "chio/budget"


def new_decision_id() -> str:
    return str(uuid.uuid4())


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
    ``labels`` are copied into every event, like OPA's ``labels`` (e.g.
    ``{"id": "kernel-1", "version": "0.1.0"}``).
    """

    def __init__(self, sink: str | Path | TextIO | Sink, *, labels: dict[str, str] | None = None,
                 path: str = DECISION_PATH, max_bytes: int | None = None, backup_count: int = 5):
        self.labels = dict(labels or {})
        self.path = path
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

    def _envelope(self, type_: str, decision_id: str) -> dict[str, Any]:
        return {"type": type_, "decision_id": decision_id, "timestamp": rfc3339_now(),
                "labels": dict(self.labels), "path": self.path}

    def decision_event(self, *, decision_id: str, input: dict[str, Any], result: dict[str, Any],
                       revision: str | None, eval_ns: int | None, chio: dict[str, Any],
                       type_: str = "decision") -> dict[str, Any]:
        ev = self._envelope(type_, decision_id)
        ev["input"] = input
        ev["result"] = result
        ev["bundles"] = {BUNDLE_NAME: {"revision": revision}}
        ev["metrics"] = {"timer_rego_query_eval_ns": eval_ns}
        ev["chio"] = chio
        return ev

    def settlement_event(self, *, decision_id: str | None, request_id: str, policy_id: str, outcome: str,
                         currency: str, estimate_units: int | None, actual_units: int | None,
                         committed_units: int | None, over_estimate: bool, source: str,
                         error: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        ev = self._envelope("settlement", decision_id or "")
        ev["chio"] = {
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

    def warning_event(self, *, decision_id: str | None, request_id: str, policy_id: str, counter: str,
                      threshold_bps: int, warning: dict[str, Any], guard: str) -> dict[str, Any]:
        """A soft-limit crossing (``type: "warning"``): written once per threshold, window and
        counter, when an allowed reservation first reaches it; ``warning`` is the decision's."""
        ev = self._envelope("warning", decision_id or "")
        ev["chio"] = {"guard": guard, "request_id": request_id, "policy_id": policy_id,
                      "scope": warning.get("scope"), "threshold_bps": threshold_bps, "counter": counter,
                      "warning": dict(warning)}
        return ev

    # -- writing ------------------------------------------------------------

    def write(self, event: dict[str, Any]) -> None:
        """Write one event; raises ``DecisionLogError`` if the sink fails."""
        try:
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
    """The decision event with this id and every event (shadow, settlement) pointing at it."""
    return [ev for ev in events if ev.get("decision_id") == decision_id]


def _money(units: Any, currency: Any) -> str:
    return "-" if units is None else f"{units} {currency or ''}".rstrip()


def explain(events: list[dict[str, Any]]) -> str:
    """A readable account of one decision and what followed it."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_type.setdefault(ev.get("type", "decision"), []).append(ev)
    lines: list[str] = []
    for ev in by_type.get("decision", []):
        lines += _explain_decision(ev)
    for ev in by_type.get("shadow", []):
        lines += _explain_shadow(ev)
    for ev in by_type.get("settlement", []):
        lines += _explain_settlement(ev)
    if not by_type.get("decision"):
        lines.insert(0, "(no decision event with this id; related events follow)")
    return "\n".join(lines)


def _explain_decision(ev: dict[str, Any]) -> list[str]:
    inp, res, chio = ev.get("input") or {}, ev.get("result") or {}, ev.get("chio") or {}
    req, cost, totals = inp.get("request") or {}, inp.get("cost") or {}, inp.get("totals")
    rev = (ev.get("bundles") or {}).get(BUNDLE_NAME, {}).get("revision")
    lines = [
        f"decision {ev.get('decision_id')}  at {ev.get('timestamp')}",
        f"  guard     {chio.get('guard', '-')}  verdict {str(chio.get('verdict', '-')).upper()}",
        f"  policy    {inp.get('policy_id', res.get('policy_id', '-'))}  revision {rev or '-'}",
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
    ns = (ev.get("metrics") or {}).get("timer_rego_query_eval_ns")
    lines.append(f"  eval      {'-' if ns is None else f'{ns / 1000:.1f} us'}")
    return lines


def _explain_shadow(ev: dict[str, Any]) -> list[str]:
    res, chio = ev.get("result") or {}, ev.get("chio") or {}
    diff = chio.get("diff") or {}
    lines = [f"  shadow    policy {chio.get('policy_id', '-')}: {'ALLOW' if res.get('allow') else 'DENY'}"
             f" ({'agrees' if diff.get('agree') else 'DISAGREES'} with enforced)"]
    lines += [f"    + shadow-only violation: {scope}" for scope in diff.get("only_shadow", [])]
    lines += [f"    - enforced-only violation: {scope}" for scope in diff.get("only_enforced", [])]
    return lines


def _explain_settlement(ev: dict[str, Any]) -> list[str]:
    c = ev.get("chio") or {}
    cur = c.get("currency")
    lines = [f"  settled   {c.get('outcome')} at {ev.get('timestamp')}: committed {_money(c.get('committed_units'), cur)}"
             f", estimate {_money(c.get('estimate_units'), cur)}, actual {_money(c.get('actual_units'), cur)}"
             f" (from {c.get('actual_source', '-')})"]
    if c.get("over_estimate"):
        lines.append("    ! actual above estimate: committed, kernel marks this settlement failed")
    if c.get("error"):
        lines.append(f"    ! {c['error']}")
    return lines
