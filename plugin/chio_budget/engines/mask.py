"""Decision-log masking as OPA does it: a Rego ``mask`` rule names what to erase or overwrite.

OPA evaluates ``data.system.log.mask`` (``decision_logs.mask_decision``)
with the decision-log event as ``input`` and applies the rules it returns
(``v1/plugins/logs/mask.go``, ``plugin.go``):

- a string ``"/input/request/agent_id"`` removes that value; the event's
  ``erased`` lists it;
- an object ``{"op": "upsert", "path": "/input/x", "value": v}`` writes
  ``v`` there (creating objects on the way); ``masked`` lists it
  (``{"op": "remove", "path": ...}`` is the string form);
- a path must start with ``/input``, ``/result`` or ``/nd_builtin_cache``;
  ``/input`` alone removes (or replaces) the whole input; a path that does not
  exist is skipped silently, as OPA skips it;
- the mask sees the event as OPA builds its input (labels, decision_id,
  bundles, path, input, result, timestamp...), not our ``chio`` extension.

Where OPA drops an event whose mask fails to evaluate, ``apply`` raises
``DecisionLogError``: the guard then denies rather than log unmasked data.

Example (an operator keeping agent ids out of the log)::

    package system.log

    mask contains "/input/request/agent_id"

    mask contains sprintf("/result/violations/%d/agent_id", [i]) if input.result.violations[i].agent_id
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from ..errors import DecisionLogError
from ..rego_files import rego_modules

DEFAULT_DECISION = "system/log/mask"
PARTS = ("input", "result", "nd_builtin_cache")
#: EventV1 fields OPA puts into the mask's input (``EventV1.AST``; metrics are added later).
EVENT_FIELDS = ("labels", "decision_id", "revision", "bundles", "path", "query", "input", "result",
                "mapped_result", "nd_builtin_cache", "erased", "masked", "error", "requested_by", "timestamp",
                "req_id")


class MaskRule:
    """One rule of ``newMaskRule``: an op, a path checked and escaped as OPA does, a value."""

    def __init__(self, path: Any, op: Any = "remove", value: Any = None):
        if not isinstance(path, str) or not path:
            raise DecisionLogError("mask must be non-empty")
        if not path.startswith("/"):
            raise DecisionLogError("mask must be slash-prefixed")
        parts = path[1:].split("/")
        if parts[0] not in PARTS:
            raise DecisionLogError(f"mask prefix not allowed: {parts[0]}")
        for part in parts:
            try:
                unquote(part, errors="strict")
            except UnicodeDecodeError as exc:
                raise DecisionLogError(f"invalid URL escape in mask {path!r}: {exc}") from None
        if op not in ("remove", "upsert"):
            raise DecisionLogError(f"mask op is not supported: {op}")
        # Go's url.PathEscape: the parts are used escaped, as OPA uses them.
        self.parts = [quote(p, safe="$&+:=@") for p in parts]
        self.op, self.value = op, value

    def __str__(self) -> str:
        return "/" + "/".join(self.parts)

    def apply(self, event: dict[str, Any]) -> None:
        top = self.parts[0]
        if event.get(top) is None:
            return
        if len(self.parts) == 1:
            if self.op == "remove":
                del event[top]
            else:
                event[top] = copy.deepcopy(self.value)
        elif self.op == "remove":
            if not _remove(event[top], self.parts[1:]):
                return
        elif not (isinstance(event[top], dict) and _upsert(event[top], self.parts[1:], copy.deepcopy(self.value))):
            return
        event.setdefault("erased" if self.op == "remove" else "masked", []).append(str(self))


def _child(node: Any, key: str) -> tuple[bool, Any]:
    if isinstance(node, dict):
        return (key in node, node.get(key))
    if isinstance(node, list) and key.lstrip("-").isdigit() and 0 <= int(key) < len(node):
        return True, node[int(key)]
    return False, None


def _remove(node: Any, path: list[str]) -> bool:
    """``removeValue``: False (nothing done) when any step is missing."""
    for key in path[:-1]:
        ok, node = _child(node, key)
        if not ok:
            return False
    ok, _ = _child(node, path[-1])
    if not ok:
        return False
    if isinstance(node, dict):
        del node[path[-1]]
    else:
        del node[int(path[-1])]
    return True


def _upsert(node: Any, path: list[str], value: Any) -> bool:
    """``mkdirp``: create objects on the way; False where an array index cannot be used."""
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and key.isdigit():
            while len(node) <= int(key):
                node.append(None)
            node = node[int(key)]
        else:
            return False
    if isinstance(node, dict):
        node[path[-1]] = value
        return True
    if isinstance(node, list) and path[-1].isdigit() and int(path[-1]) < len(node):
        node[int(path[-1])] = value
        return True
    return False


def rules_of(value: Any) -> list[MaskRule]:
    """``newMaskRuleSet``: the mask decision's value (a set: a JSON array) as rules."""
    if not isinstance(value, list):
        raise DecisionLogError(f"mask decision: unexpected rule format {value!r}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(MaskRule(item))
        elif isinstance(item, dict):
            op, path = item.get("op", "remove"), item.get("path")
            if "op" in item and not (isinstance(op, str) and op):
                raise DecisionLogError(f'invalid "op" value: {op!r}')
            out.append(MaskRule(path, op, item.get("value")))
        else:
            raise DecisionLogError(f"invalid mask rule format encountered: {type(item).__name__}")
    return out


class LogMask:
    """Rego mask rules (files under ``rego_dir``) applied to every decision-log event."""

    def __init__(self, rego_dir: str | Path, decision: str = DEFAULT_DECISION):
        self.decision = decision.strip("/").replace("/", ".")
        self._opa = OpaEngine()
        self._opa.print_handler = lambda _m, _l: None
        try:
            for name, src in rego_modules(rego_dir, full_paths=True).items():
                self._opa.add_policy(name, src)
            self._opa.eval_query("x := true")
        except (OpaError, Exception) as exc:
            self._opa.close()
            raise DecisionLogError(f"decision-log mask {rego_dir}: {getattr(exc, 'message', exc)}") from None

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with the mask applied (``erased``/``masked`` listing what changed)."""
        view = {k: event[k] for k in EVENT_FIELDS if k in event}
        try:
            value = self._opa.eval_document(self.decision, view)
        except OpaUndefinedError:
            return event
        except OpaError as exc:
            raise DecisionLogError(f"decision-log mask failed: {exc.message}") from None
        masked = copy.deepcopy(event)
        for rule in rules_of(value):
            rule.apply(masked)
        return masked

    def close(self) -> None:
        self._opa.close()
