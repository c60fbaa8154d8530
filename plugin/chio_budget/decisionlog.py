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
  concurrent requests never interleave.
- A sink that fails raises ``DecisionLogError``; the chain guard treats a
  failed decision write as a deny (no decision without a record).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from .errors import DecisionLogError

DECISION_PATH = "chio/budget/decision"
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


class DecisionLog:
    """Writes decision, shadow and settlement events to a file or a callable.

    ``sink`` is a path (opened for append, created with its parent
    directories), an open text stream, or a callable that receives each event
    as a ``dict`` (already JSON-safe). ``labels`` are copied into every event,
    like OPA's ``labels`` (e.g. ``{"id": "kernel-1", "version": "0.1.0"}``).
    """

    def __init__(self, sink: str | Path | TextIO | Sink, *, labels: dict[str, str] | None = None,
                 path: str = DECISION_PATH):
        self.labels = dict(labels or {})
        self.path = path
        self._lock = threading.Lock()
        self._owned: TextIO | None = None
        self._stream: TextIO | None = None
        self._callable: Sink | None = None
        if isinstance(sink, (str, Path)):
            p = Path(sink)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._owned = self._stream = open(p, "a", encoding="utf-8")
        elif callable(sink):
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

    # -- writing ------------------------------------------------------------

    def write(self, event: dict[str, Any]) -> None:
        """Write one event; raises ``DecisionLogError`` if the sink fails."""
        try:
            if self._callable is not None:
                with self._lock:  # one event at a time: the callable need not be thread-safe
                    self._callable(event)
                return
            line = json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
            with self._lock:
                assert self._stream is not None
                self._stream.write(line)
                self._stream.flush()
        except Exception as exc:
            raise DecisionLogError(f"decision log write failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._owned is not None:
                self._owned.close()
                self._owned = None


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
    from .decision import BudgetViolation

    lines: list[str] = []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_type.setdefault(ev.get("type", "decision"), []).append(ev)
    for ev in by_type.get("decision", []):
        inp, res, chio = ev.get("input") or {}, ev.get("result") or {}, ev.get("chio") or {}
        req = inp.get("request") or {}
        cost = inp.get("cost") or {}
        totals = inp.get("totals")
        rev = (ev.get("bundles") or {}).get(BUNDLE_NAME, {}).get("revision")
        lines.append(f"decision {ev.get('decision_id')}  at {ev.get('timestamp')}")
        lines.append(f"  guard     {chio.get('guard', '-')}  verdict {str(chio.get('verdict', '-')).upper()}")
        lines.append(f"  policy    {inp.get('policy_id', res.get('policy_id', '-'))}  revision {rev or '-'}")
        lines.append(f"  request   {chio.get('request_id', req.get('receipt_id', '-'))}: agent {req.get('agent_id', '-')}"
                     f", session {req.get('session_id') or '-'}, tool {req.get('tool_key', '-')}")
        lines.append(f"  cost      {_money(cost.get('units'), cost.get('currency'))}"
                     f"  (estimate from {chio.get('estimate_source', '-')})")
        if totals:
            lines.append("  before    " + ", ".join(f"{k} {v if v is not None else '-'}" for k, v in totals.items()))
        allow = res.get("allow")
        lines.append(f"  result    {'ALLOW' if allow else 'DENY'}")
        for v in res.get("violations") or []:
            try:
                text = BudgetViolation.parse(v).describe()
            except Exception:
                text = json.dumps(v)
            lines.append(f"    - {text}")
        for w in res.get("warnings") or []:
            lines.append(f"    ! warning: {json.dumps(w, separators=(',', ':'))}")
        if res.get("error"):
            lines.append(f"    ! error: {res['error']}")
        ns = (ev.get("metrics") or {}).get("timer_rego_query_eval_ns")
        lines.append(f"  eval      {'-' if ns is None else f'{ns / 1000:.1f} us'}")
    for ev in by_type.get("shadow", []):
        res, chio = ev.get("result") or {}, ev.get("chio") or {}
        diff = chio.get("diff") or {}
        lines.append(f"  shadow    policy {chio.get('policy_id', '-')}: {'ALLOW' if res.get('allow') else 'DENY'}"
                     f" ({'agrees' if diff.get('agree') else 'DISAGREES'} with enforced)")
        for scope in diff.get("only_shadow", []):
            lines.append(f"    + shadow-only violation: {scope}")
        for scope in diff.get("only_enforced", []):
            lines.append(f"    - enforced-only violation: {scope}")
    for ev in by_type.get("settlement", []):
        c = ev.get("chio") or {}
        cur = c.get("currency")
        line = (f"  settled   {c.get('outcome')} at {ev.get('timestamp')}: committed {_money(c.get('committed_units'), cur)}"
                f", estimate {_money(c.get('estimate_units'), cur)}, actual {_money(c.get('actual_units'), cur)}"
                f" (from {c.get('actual_source', '-')})")
        lines.append(line)
        if c.get("over_estimate"):
            lines.append("    ! actual above estimate: committed, kernel marks this settlement failed")
        if c.get("error"):
            lines.append(f"    ! {c['error']}")
    if not by_type.get("decision"):
        lines.insert(0, "(no decision event with this id; related events follow)")
    return "\n".join(lines)
