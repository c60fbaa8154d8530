"""Operator-supplied text (policy files, replay lines, ``--meta``): bounded and valid.

What reaches the guard from a file or the command line is checked here for
the failures that would otherwise surface late, as tracebacks: a file too
large to hold, bytes that are not UTF-8, and strings that are not Unicode at
all (a lone surrogate such as ``"\\ud800"`` is legal in JSON and YAML escapes
but cannot be encoded, so a ledger key or an OPA input built from it fails
half-way through a run). Each failure names the line it is on.
"""

from __future__ import annotations

import os


class TextError(ValueError):
    """Unreadable text at ``line`` (1-based); ``message`` says what is wrong."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def read_limited(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The file's bytes, refusing (``TextError`` at line 1) one longer than ``limit``.

    Reads at most ``limit + 1`` bytes, so a huge file costs nothing. ``OSError``
    passes through for the caller to locate.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TextError(1, f"file is larger than {what} ({limit} bytes)")
    return data


def decode_utf8(data: bytes) -> str:
    """``data`` as UTF-8; ``TextError`` names the line and byte column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise TextError(line, f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start - line_start + 1})") from None


def lone_surrogate(s: str) -> str | None:
    """The first code point of ``s`` that UTF-8 cannot encode, escaped (``\\ud800``), or None."""
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(s[exc.start]):04x}"
    return None


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message (the input may be huge)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
