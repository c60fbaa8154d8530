"""Receipt logs: JSON lines of the Rust ``CostMetadata``, streamed and validated.

A log is what the kernel writes: one ``chio_metering::cost::CostMetadata``
per line (``schema``, ``receipt_id``, ``timestamp``, ``session_id``?,
``agent_id``, ``tool_server``, ``tool_name``, ``dimensions`` tagged by
``"dimension"``, ``total_monetary_cost``?). A record is accepted exactly when
serde would accept it: required fields present with the right types, every
number a u64 (no floats, no negatives, nothing past 2^64-1), dimensions of a
known kind, no duplicate keys, no NaN, no lone surrogate, valid UTF-8;
unknown fields are ignored, as serde does. Blank lines are skipped.

Promises: a log is read line by line (``.gz`` decompressed on the fly, ``-``
is stdin), so memory does not grow with its size; a record line is at most
``MAX_LINE_BYTES``; every problem is a ``ReceiptError`` whose message is
``file:line: field: problem``. With a ``BadRecords`` collector the bad
records are counted and skipped instead.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

from ..errors import InputError
from ..money import U64_MAX
from ..policy import format_path
from ..text import lone_surrogate

MAX_LINE_BYTES = 1 << 20
"""A record line longer than this (1 MiB) is refused: no log line can make us buffer more."""

DIMENSIONS = ("compute_time", "data_volume", "api_cost", "warehouse_query", "custom")
PROGRESS_EVERY = 4096


class ReceiptError(InputError):
    """A malformed record; the message is ``file:line: field: problem``."""


class Receipt(NamedTuple):
    """One validated record, reduced to what the toolkit reads.

    ``compute_ms``/``data_bytes`` are ``total_compute_time_ms()`` /
    ``total_data_bytes()`` of the Rust type (saturating sums); ``money`` is
    ``total_monetary_cost`` as written, ``(units, currency)`` or None.
    ``doc`` is the parsed JSON object (for ``--cost-field``), ``where`` is
    ``file:line``.
    """

    receipt_id: str
    timestamp: int
    session_id: str | None
    agent_id: str
    tool_server: str
    tool_name: str
    compute_ms: int
    data_bytes: int
    money: tuple[int, str] | None
    doc: dict
    where: str

    @property
    def tool_key(self) -> str:
        return f"{self.tool_server}:{self.tool_name}"


class _Bad(Exception):
    """A problem inside one record: ``path`` (field path tuple) and message."""

    def __init__(self, path: tuple, problem: str):
        super().__init__(problem)
        self.path = path
        self.problem = problem


@dataclass
class BadRecords:
    """``--skip-bad``: counts bad records and keeps the first ``keep`` messages."""

    keep: int = 5
    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(message)

    def summary(self) -> list[str]:
        if not self.count:
            return []
        head = f"skipped {self.count} bad record{'s' if self.count != 1 else ''}"
        more = f" (first {len(self.first)} below)" if self.count > len(self.first) else ""
        return [head + more + ":"] + [f"  {m}" for m in self.first]


# --------------------------------------------------------------------------
# field checks (serde's rules)


def _u64(value: Any, path: tuple) -> int:
    if type(value) is int and 0 <= value <= U64_MAX:
        return value
    if type(value) is int:
        raise _Bad(path, f"must be an integer 0..2^64-1, got {value}")
    raise _Bad(path, f"must be an integer 0..2^64-1, got {_kind(value)} {_short(value)}")


def _str(value: Any, path: tuple) -> str:
    if type(value) is str:
        return value
    raise _Bad(path, f"must be a string, got {_kind(value)} {_short(value)}")


def _opt_str(value: Any, path: tuple) -> str | None:
    return None if value is None else _str(value, path)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool", float: "float", int: "integer",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _required(doc: dict, key: str, path: tuple) -> Any:
    try:
        return doc[key]
    except KeyError:
        raise _Bad(path + (key,), "required") from None


def _amount(value: Any, path: tuple) -> tuple[int, str]:
    """``MonetaryAmount {units: u64, currency: String}``."""
    if type(value) is not dict:
        raise _Bad(path, f"must be an object {{units, currency}}, got {_kind(value)}")
    return _u64(_required(value, "units", path), path + ("units",)), \
        _str(_required(value, "currency", path), path + ("currency",))


def _dimension(d: Any, path: tuple) -> tuple[int, int]:
    """One ``CostDimension``; returns its (compute ms, data bytes) contribution."""
    if type(d) is not dict:
        raise _Bad(path, f"must be an object tagged by \"dimension\", got {_kind(d)}")
    tag = _required(d, "dimension", path)
    if tag == "compute_time":
        return _u64(_required(d, "duration_ms", path), path + ("duration_ms",)), 0
    if tag == "data_volume":
        r = _u64(_required(d, "bytes_read", path), path + ("bytes_read",))
        w = _u64(_required(d, "bytes_written", path), path + ("bytes_written",))
        return 0, min(r + w, U64_MAX)
    if tag == "api_cost":
        _amount(_required(d, "amount", path), path + ("amount",))
        _str(_required(d, "provider", path), path + ("provider",))
    elif tag == "warehouse_query":
        _u64(_required(d, "bytes_scanned", path), path + ("bytes_scanned",))
        _str(_required(d, "estimated_cost_usd", path), path + ("estimated_cost_usd",))
    elif tag == "custom":
        _str(_required(d, "name", path), path + ("name",))
        _u64(_required(d, "value", path), path + ("value",))
        _opt_str(d.get("unit"), path + ("unit",))
    else:
        raise _Bad(path + ("dimension",), f"unknown dimension {_short(tag)} (expected one of {', '.join(DIMENSIONS)})")
    return 0, 0


def _receipt(doc: Any, where: str) -> Receipt:
    if type(doc) is not dict:
        raise _Bad((), f"a record must be a JSON object (CostMetadata), got {_kind(doc)}")
    _str(_required(doc, "schema", ()), ("schema",))
    receipt_id = _str(_required(doc, "receipt_id", ()), ("receipt_id",))
    timestamp = _u64(_required(doc, "timestamp", ()), ("timestamp",))
    session_id = _opt_str(doc.get("session_id"), ("session_id",))
    agent_id = _str(_required(doc, "agent_id", ()), ("agent_id",))
    tool_server = _str(_required(doc, "tool_server", ()), ("tool_server",))
    tool_name = _str(_required(doc, "tool_name", ()), ("tool_name",))
    dims = _required(doc, "dimensions", ())
    if type(dims) is not list:
        raise _Bad(("dimensions",), f"must be an array, got {_kind(dims)}")
    compute = data = 0
    for i, d in enumerate(dims):
        c, b = _dimension(d, ("dimensions", i))
        if c:
            compute = min(compute + c, U64_MAX)
        if b:
            data = min(data + b, U64_MAX)
    total = doc.get("total_monetary_cost")
    money = None if total is None else _amount(total, ("total_monetary_cost",))
    return Receipt(receipt_id, timestamp, session_id, agent_id, tool_server, tool_name, compute, data, money,
                   doc, where)


def field_name(path: tuple) -> str:
    """``dimensions.0.amount.units``; ``<json>``/``<line>`` stand for the line itself, ``<record>`` for the object."""
    if len(path) == 1 and str(path[0]).startswith("<"):
        return str(path[0])
    return format_path(path) or "<record>"


# --------------------------------------------------------------------------
# JSON: strict like serde_json


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Bad(("<json>",), f"duplicate key {_short(k)}")
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise _Bad(("<json>",), f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant)


def _surrogate(value: Any, path: tuple = ()) -> tuple[tuple, str] | None:
    """The path of the first string (key or value) holding a lone surrogate, and that code point."""
    if type(value) is str:
        bad = lone_surrogate(value)
        return None if bad is None else (path, bad)
    items = value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
    for k, v in items:
        found = (_surrogate(k, path + (k,)) if type(k) is str else None) or _surrogate(v, path + (k,))
        if found is not None:
            return found
    return None


def parse_line(raw: bytes, where: str) -> Receipt:
    """One log line -> ``Receipt``; ``ReceiptError`` (located) when serde would refuse it."""
    try:
        try:
            text = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(("<line>",), f"invalid UTF-8 at byte {exc.start + 1}") from None
        try:
            doc = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise _Bad(("<json>",), f"{exc.msg} (column {exc.colno})") from None
        if "\\ud" in text or "\\uD" in text:
            found = _surrogate(doc)
            if found is not None:
                raise _Bad(found[0], f"lone surrogate {found[1]} is not valid Unicode")
        return _receipt(doc, where)
    except _Bad as exc:
        raise ReceiptError(f"{where}: {field_name(exc.path)}: {exc.problem}") from None


# --------------------------------------------------------------------------
# streaming


def open_log(path: str | Path) -> IO[bytes]:
    """A binary stream of the log: ``-`` is stdin, ``*.gz`` is decompressed on the fly."""
    name = str(path)
    if name == "-":
        return sys.stdin.buffer
    try:
        if name.endswith(".gz"):
            return gzip.open(name, "rb")
        return open(name, "rb")
    except OSError as exc:
        raise ReceiptError(f"{name}:1: <file>: cannot read: {exc.strerror or exc}") from None


def log_bytes(paths: Iterable[str | Path]) -> int | None:
    """The on-disk size of all logs (compressed size for ``.gz``), None if any is stdin."""
    total = 0
    for p in paths:
        if str(p) == "-":
            return None
        try:
            total += os.path.getsize(p)
        except OSError:
            return None
    return total


def _position(stream: IO[bytes]) -> int:
    raw = getattr(stream, "fileobj", None) or stream  # gzip: the compressed file's position
    try:
        return raw.tell()
    except (OSError, ValueError):
        return 0


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes, IO[bytes]]]:
    """``(line number, raw line, stream)`` for each non-blank line; lines over ``MAX_LINE_BYTES`` refused."""
    name = str(path)
    stream = open_log(path)
    try:
        n = 0
        while True:
            try:
                raw = stream.readline(MAX_LINE_BYTES + 1)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise ReceiptError(f"{name}:{n + 1}: <file>: cannot read: {exc}") from None
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise ReceiptError(f"{name}:{n}: <line>: longer than {MAX_LINE_BYTES} bytes")
            if raw.isspace():
                continue
            yield n, raw, stream
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def iter_receipts(paths: Iterable[str | Path], *, bad: BadRecords | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Iterator[Receipt]:
    """Every valid record of every log, in file then line order.

    A bad record raises ``ReceiptError`` unless ``bad`` is given (then it is
    counted there and skipped). ``progress(records, bytes_done)`` is called
    every ``PROGRESS_EVERY`` records and once at the end.
    """
    count = 0
    done_before = 0
    pos = 0
    for path in paths:
        name = "<stdin>" if str(path) == "-" else str(path)
        stream = None
        for n, raw, stream in iter_lines(path):
            try:
                yield parse_line(raw, f"{name}:{n}")
            except ReceiptError as exc:
                if bad is None:
                    raise
                bad.add(str(exc))
            count += 1
            if progress is not None and count % PROGRESS_EVERY == 0:
                pos = _position(stream)
                progress(count, done_before + pos)
        if stream is not None and str(path) != "-":
            done_before += os.path.getsize(path) if os.path.exists(path) else pos
    if progress is not None:
        progress(count, done_before)
