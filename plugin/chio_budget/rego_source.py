"""Where things are in a Rego file: statements, rule heads, body literals.

OPA's parser (reached through ``rego.parse_module``) gives the structure of
a module but, in its JSON form, no locations. The test runner needs them:
``opa test`` reports each test at its rule's ``file:row``, renames duplicate
test rules and injects a test-case call into partial-object test rules
(``v1/tester/runner.go``), and we do the last two in the source text. This
module finds rows and columns with a small lexer (comments, strings, raw
strings, brackets) and splits a module into its top-level statements; the
caller checks the result against OPA's own parse (statement count and rule
names) and refuses a file where they disagree, so a layout the lexer does
not understand is an error, never a silently wrong answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<ws>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>\$?"(?:[^"\\\n]|\\.)*")
  | (?P<raw>\$?`[^`]*`)
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>:=|==|!=|<=|>=|[-+*/%&|<>=!:;,.(){}\[\]])
""", re.VERBOSE)

# A line that starts with one of these, or follows a line ending in one of
# the continuation tokens, carries on the statement (or literal) above it.
_NOT_A_START = {"else", "if", "contains", "in", "with", "as", "not", "some", "every", "or", "and"}
_CONTINUES = _NOT_A_START | {":=", "=", ",", "+", "-", "*", "/", "%", "==", "!=", "<", ">", "<=", ">=",
                             "|", "&", ".", ":", "default", "package", "import", "(", "[", "{"}
# Inside a body, a line starting with one of these carries on the literal above.
_CARRIES_ON = _CONTINUES - {"not", "some", "every", "default", "package", "import", "(", "[", "{"}
_OPEN, _CLOSE = "([{", ")]}"

_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEYWORDS = frozenset({"as", "contains", "default", "else", "every", "false", "if", "import", "in", "not",
                      "null", "package", "some", "true", "with"})


class RegoSourceError(ValueError):
    """The lexer's view of a file disagrees with OPA's parse of it."""


@dataclass(frozen=True)
class Token:
    kind: str  # ident | string | raw | num | op
    text: str
    row: int
    col: int
    offset: int
    line_start: bool  # first token on its line

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


@dataclass(frozen=True)
class Statement:
    kind: str  # package | import | rule
    tokens: tuple[Token, ...]

    @property
    def row(self) -> int:
        return self.tokens[0].row

    @property
    def col(self) -> int:
        return self.tokens[0].col

    def head_start(self) -> int:
        """Index of the first token of the rule's head ref (after ``default``)."""
        return 1 if self.tokens[0].text == "default" else 0


def tokenize(src: str) -> list[Token]:
    """Every significant token with its 1-based row and column (comments skipped)."""
    out: list[Token] = []
    row, line_at, pos, fresh = 1, 0, 0, True
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:  # a character OPA's parser would have refused already
            raise RegoSourceError(f"{row}:{pos - line_at + 1}: unexpected character {src[pos]!r}")
        kind, text = m.lastgroup, m.group()
        if kind == "nl":
            row, line_at, fresh = row + 1, m.end(), True
        elif kind not in ("ws", "comment"):
            out.append(Token(kind, text, row, pos - line_at + 1, pos, fresh))
            fresh = False
            newlines = text.count("\n")  # a raw string may span lines
            if newlines:
                row, line_at = row + newlines, pos + text.rindex("\n") + 1
        pos = m.end()
    return out


def _starts_unit(tok: Token, prev: Token | None) -> bool:
    return (tok.line_start and tok.kind == "ident" and tok.text not in _NOT_A_START
            and (prev is None or prev.text not in _CONTINUES))


def statements(tokens: list[Token]) -> list[Statement]:
    """Top-level statements (package, imports, rules) in source order."""
    starts: list[int] = []
    depth = 0
    for i, tok in enumerate(tokens):
        if depth == 0 and _starts_unit(tok, tokens[i - 1] if i else None):
            starts.append(i)
        depth += (tok.text in _OPEN and tok.kind == "op") - (tok.text in _CLOSE and tok.kind == "op")
    if tokens and (not starts or starts[0] != 0):
        raise RegoSourceError(f"{tokens[0].row}:{tokens[0].col}: no statement starts here")
    out = []
    for n, i in enumerate(starts):
        toks = tuple(tokens[i:starts[n + 1] if n + 1 < len(starts) else len(tokens)])
        kind = toks[0].text if toks[0].text in ("package", "import") else "rule"
        out.append(Statement(kind, toks))
    return out


def head_terms(stmt: Statement) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` of each term of a rule's head ref.

    The first term is a var; each further one is ``.name`` or ``[term]``.
    """
    toks, i = stmt.tokens, stmt.head_start()
    spans = [(i, i + 1)]
    i += 1
    while i < len(toks):
        if toks[i].text == "." and i + 1 < len(toks) and toks[i + 1].kind == "ident":
            spans.append((i + 1, i + 2))
            i += 2
        elif toks[i].text == "[":
            close = _matching(toks, i)
            spans.append((i + 1, close))
            i = close + 1
        else:
            break
    return spans


def _matching(toks: tuple[Token, ...], i: int) -> int:
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "op" and toks[j].text in _OPEN:
            depth += 1
        elif toks[j].kind == "op" and toks[j].text in _CLOSE:
            depth -= 1
            if depth == 0:
                return j
    raise RegoSourceError(f"{toks[i].row}:{toks[i].col}: unbalanced {toks[i].text!r}")


def span_text(src: str, toks: tuple[Token, ...], span: tuple[int, int]) -> str:
    """The source text of a head term span; a ``.name`` term becomes ``"name"``."""
    start, end = span
    if end - start == 1 and start > 0 and toks[start - 1].text == "." and toks[start].kind == "ident":
        return json.dumps(toks[start].text)
    return src[toks[start].offset:toks[end - 1].end]


def body_literals(stmt: Statement) -> list[Token] | None:
    """The first token of each literal of the rule's (first) body, or None.

    None when the rule has no ``if`` at its top level. A body in braces is
    split where a literal ends: at ``;`` or at a line that does not carry on
    the line above. ``if literal`` without braces is one literal.
    """
    toks = stmt.tokens
    depth, at = 0, None
    for i, tok in enumerate(toks):
        if depth == 0 and tok.kind == "ident" and tok.text == "if":
            at = i
            break
        depth += (tok.kind == "op" and tok.text in _OPEN) - (tok.kind == "op" and tok.text in _CLOSE)
    if at is None or at + 1 >= len(toks):
        return None
    if toks[at + 1].text != "{":
        return [toks[at + 1]]
    close = _matching(toks, at + 1)
    firsts: list[Token] = []
    depth = 0
    for i in range(at + 2, close):
        tok, prev = toks[i], toks[i - 1]
        starts = i == at + 2 or prev.text == ";" or (
            tok.line_start and prev.text not in _CONTINUES and tok.text not in _CARRIES_ON)
        if depth == 0 and starts and tok.text != ";":
            firsts.append(tok)
        depth += (tok.kind == "op" and tok.text in _OPEN) - (tok.kind == "op" and tok.text in _CLOSE)
    return firsts


def ref_string(terms: list[tuple[str, Any]]) -> str:
    """OPA's ``Ref.String()``: ``data.pkg.rule``, ``x["a b"]``, ``x[1]``.

    ``terms`` are ``("var", name)``, ``("string", s)`` or ``("value", json)``.
    """
    buf: list[str] = []
    rest = terms
    if terms and terms[0][0] == "var":
        buf.append(terms[0][1])
        rest = terms[1:]
    for kind, value in rest:
        if kind == "string" and _VAR.match(value) and buf and value not in KEYWORDS:
            buf.append("." + value)
        elif kind == "string":
            buf.append("[" + go_quote(value) + "]")
        elif kind == "var":
            buf.append("[" + value + "]")
        else:
            buf.append("[" + json.dumps(value, separators=(",", ":")) + "]")
    return "".join(buf)


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` for the strings a rule name can hold."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def ast_term(term: dict) -> tuple[str, Any]:
    """A head-ref term of OPA's JSON AST as a ``ref_string`` term."""
    if term["type"] in ("var", "string"):
        return term["type"], term["value"]
    return "value", term.get("value")
