"""``# METADATA`` blocks checked the way OPA's parser checks them.

``opa test``, ``opa check`` and ``opa run`` parse modules with
``ProcessAnnotation: true``: a METADATA block whose YAML does not parse,
whose fields have the wrong types, whose ``scope`` is unknown or does not
fit the statement below it, or whose ``schemas``/``authors``/
``related_resources`` are malformed is a ``rego_parse_error`` and the module
does not load. The embedded evaluator is more lenient (it drops a block it
cannot read), so this module repeats OPA's checks: ``metadataParser.Parse``,
``parseAnnotations``/``blockBuster`` and ``attachAnnotationsNodes`` with
``validateAnnotationScopeAttachment``/``validateAnnotationEntrypointAttachment``
in ``v1/ast/parser.go`` and ``v1/ast/annotations.go``.

Known difference: YAML is read with PyYAML, so the wording of a YAML syntax
error (after OPA's ``yaml: line N:`` prefix) is PyYAML's, not go-yaml's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

SCOPES = ("rule", "document", "package", "subpackages")
_REF = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[(?:"(?:[^"\\]|\\.)*"|-?\d+|[A-Za-z_]'
                  r'[A-Za-z0-9_]*)\])*$')
_TAGS = {"str": "!!str", "int": "!!int", "float": "!!float", "bool": "!!bool", "null": "!!null",
         "seq": "!!seq", "map": "!!map"}
_YAML_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_YAML_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF"}


@dataclass(frozen=True)
class Comment:
    row: int
    col: int
    text: str  # after the '#'


class _MetadataError(Exception):
    def __init__(self, message: str, comment: Comment | None = None):
        super().__init__(message)
        self.comment = comment


def is_metadata(c: Comment) -> bool:
    return c.col == 1 and c.text.strip().startswith("METADATA")


def _block_buster(curr: Comment, prev: Comment) -> bool:
    return curr.col != 1 or curr.row - 1 != prev.row or is_metadata(curr)


def blocks(comments: list[Comment]) -> list[tuple[Comment, list[Comment]]]:
    """Each ``# METADATA`` comment with the comment lines of its block."""
    out = []
    for i, c in enumerate(comments):
        if is_metadata(c):
            body: list[Comment] = []
            j = i + 1
            while j < len(comments) and not _block_buster(comments[j], comments[j - 1]):
                body.append(comments[j])
                j += 1
            out.append((c, body))
    return out


def _short_tag(node: yaml.Node) -> str:
    return _TAGS.get(node.tag.rsplit(":", 1)[-1], node.tag)


def _unmarshal_error(node: yaml.Node, gotype: str) -> str:
    value = ""
    if isinstance(node, yaml.ScalarNode):
        v = node.value if len(node.value) <= 10 else node.value[:7] + "..."
        value = f" `{v}`"
    return f"line {node.start_mark.line + 1}: cannot unmarshal {_short_tag(node)}{value} into {gotype}"


def _scalar(node: yaml.Node, value: Any, gotype: str, errs: list[str]) -> Any:
    if gotype == "string":
        if isinstance(node, yaml.ScalarNode):
            return "" if value is None else node.value
    elif gotype == "bool":
        if isinstance(value, bool) or value is None:
            return bool(value)
        if isinstance(node, yaml.ScalarNode) and node.value in _YAML_TRUE | _YAML_FALSE:
            return node.value in _YAML_TRUE
    elif gotype.startswith("[]"):
        if isinstance(node, yaml.SequenceNode) or value is None:
            return value or []
    elif isinstance(node, yaml.MappingNode) or value is None:
        return value
    errs.append(_unmarshal_error(node, gotype))
    return None


_FIELDS = {"scope": "string", "title": "string", "description": "string", "entrypoint": "bool",
           "organizations": "[]string", "related_resources": "[]interface {}", "authors": "[]interface {}",
           "schemas": "[]map[string]interface {}", "compile": "map[string]interface {}",
           "custom": "map[string]interface {}", "labels": "map[string]interface {}"}


def _decode(text: str) -> dict[str, Any]:
    """go-yaml's ``yaml.Unmarshal`` into OPA's ``rawAnnotation`` (unknown keys ignored)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise _MetadataError("yaml: unmarshal errors:\n  " + _unmarshal_error(root, "ast.rawAnnotation"))
    errs: list[str] = []
    raw: dict[str, Any] = {}
    for key_node, value_node in root.value:
        gotype = _FIELDS.get(key_node.value)
        if gotype is None:
            continue
        value = yaml.SafeLoader(text).construct_object(value_node, deep=True)
        if gotype == "[]string" and isinstance(value_node, yaml.SequenceNode):
            value = [_scalar(n, v, "string", errs) for n, v in zip(value_node.value, value)]
        elif gotype == "[]map[string]interface {}" and isinstance(value_node, yaml.SequenceNode):
            value = [_scalar(n, v, "map[string]interface {}", errs) for n, v in zip(value_node.value, value)]
        else:
            value = _scalar(value_node, value, gotype, errs)
        raw[key_node.value] = value
    if errs:
        raise _MetadataError("yaml: unmarshal errors:\n  " + "\n  ".join(errs))
    return raw


def _go_s(v: Any) -> str:
    """Go's ``%s`` of a decoded YAML value (as OPA's error messages print it)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return f"%!s(bool={'true' if v else 'false'})"
    if isinstance(v, int):
        return f"%!s(int={v})"
    if isinstance(v, float):
        return f"%!s(float64={v:g})"
    if v is None:
        return "%!s(<nil>)"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{_go_s(k)}:{_go_s(v[k])}" for k in sorted(v, key=str)) + "]"
    return "[" + " ".join(_go_s(x) for x in v) + "]"


def _check_related(v: Any) -> None:
    if isinstance(v, str):
        if not v:
            raise ValueError("ref URL may not be empty string")
        _check_url(v)
    elif isinstance(v, dict):
        ref = v.get("ref")
        if not (isinstance(ref, str) and ref.strip()):
            raise ValueError("'ref' value required in object")
        _check_url(ref.strip())
    else:
        raise ValueError("invalid value type, must be string or map")


def _check_url(v: str) -> None:
    """The few inputs Go's ``url.Parse`` refuses (it accepts nearly anything)."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in v):
        raise ValueError(f'parse "{v}": net/url: invalid control character in URL')
    if v.startswith(":"):
        raise ValueError(f'parse "{v}": missing protocol scheme')
    bad = re.search(r"%(?![0-9A-Fa-f]{2})[^%]{0,2}", v)
    if bad:
        raise ValueError(f'parse "{v}": invalid URL escape "{bad.group()}"')


def _check_author(v: Any) -> None:
    if isinstance(v, str):
        if not v.split():
            raise ValueError("author is an empty string")
    elif isinstance(v, dict):
        name, email = v.get("name"), v.get("email")
        if not any(isinstance(x, str) and x.strip() for x in (name, email)):
            raise ValueError("'name' and/or 'email' values required in object")
    else:
        raise ValueError("invalid value type, must be string or map")


def _check_fields(raw: dict[str, Any]) -> None:
    for v in raw.get("related_resources") or []:
        try:
            _check_related(v)
        except ValueError as exc:
            raise _MetadataError(f"invalid related-resource definition {_go_s(v)}: {exc}") from None
    _check_compile(raw.get("compile") or {})
    for pair in raw.get("schemas") or []:
        path, schema = next(iter((pair or {}).items()), ("", None))
        if not _REF.match(str(path)):
            raise _MetadataError("invalid document reference")
        if isinstance(schema, str):
            if not re.match(r"^schema(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]+\])*$", schema):
                raise _MetadataError("invalid schema reference")
        elif not isinstance(schema, dict):
            raise _MetadataError(f'invalid schema declaration for path "{path}"')
    for v in raw.get("authors") or []:
        try:
            _check_author(v)
        except ValueError as exc:
            raise _MetadataError(f"invalid author definition {_go_s(v)}: {exc}") from None


def _check_compile(compile_: dict[str, Any]) -> None:
    unknowns = compile_.get("unknowns")
    for unknown in unknowns if isinstance(unknowns, list) else []:
        if isinstance(unknown, str) and not _REF.match(unknown):
            raise _MetadataError(f'invalid unknowns element "{unknown}": failed to parse ref')
    mask = compile_.get("mask_rule")
    if isinstance(mask, str) and not (_REF.match(mask) or re.match(r'^"(?:[^"\\]|\\.)*"$', mask)):
        raise _MetadataError(f'invalid mask_rule annotation "{mask}"')


def parse_block(head: Comment, body: list[Comment]) -> dict[str, Any]:
    """One METADATA block as OPA's ``rawAnnotation``, or ``_MetadataError``."""
    text = "".join((c.text[1:] if c.text.startswith(" ") else c.text) + "\n" for c in body)
    if not text.strip():
        raise _MetadataError("expected METADATA block, found whitespace", head)
    try:
        raw = _decode(text)
    except yaml.MarkedYAMLError as exc:
        line = (exc.problem_mark or exc.context_mark).line + 1
        where = body[min(line, len(body) - 1)] if body else head
        raise _MetadataError(f"yaml: line {line}: {exc.problem or exc.context}", where) from None
    except _MetadataError as exc:
        m = re.match(r"^yaml:(?: unmarshal errors:[\n\s]*)? line (\d+):", str(exc))
        where = body[min(int(m.group(1)), len(body) - 1)] if m and body else head
        raise _MetadataError(str(exc), where) from None
    _check_fields(raw)
    return raw


def _detail(src_lines: list[str], c: Comment) -> str:
    line = src_lines[c.row - 1] if 0 < c.row <= len(src_lines) else ""
    stripped = line.lstrip("\t")
    indent = max(c.col - 1 - (len(line) - len(stripped)), 0)
    return f"\n\t{stripped}\n\t{' ' * indent}^"


def check(filename: str, src: str, comments: list[Comment], stmts: list[tuple[str, int]]) -> list[str]:
    """Every annotation error OPA's parser reports for this module, formatted
    as ``ast.Error.Error()`` (``file:row: rego_parse_error: message``)."""
    lines = src.split("\n")
    errors: list[str] = []
    parsed: list[tuple[Comment, dict[str, Any]]] = []
    for head, body in blocks(comments):
        try:
            parsed.append((head, parse_block(head, body)))
        except _MetadataError as exc:
            c = exc.comment or head
            errors.append(f"{filename}:{c.row}: rego_parse_error: {exc}{_detail(lines, c)}")
    if errors:
        return errors
    for head, raw in parsed:
        node = next((kind for kind, row in stmts if row > head.row), None)
        scope = raw.get("scope") or {"rule": "document" if raw.get("entrypoint") else "rule",
                                     "package": "package", "import": "import"}.get(node or "", "")
        for error in _attachment_errors(scope, node, bool(raw.get("entrypoint"))):
            errors.append(f"{filename}:{head.row}: rego_parse_error: {error}")
    return errors


def _attachment_errors(scope: str, node: str | None, entrypoint: bool) -> list[str]:
    have = f" (have {node})" if node else ""
    out = []
    if scope in ("rule", "document"):
        if node != "rule":
            out.append(f"annotation scope '{scope}' must be applied to rule{have}")
    elif scope in ("package", "subpackages"):
        if node != "package":
            out.append(f"annotation scope '{scope}' must be applied to package{have}")
    else:
        out.append(f"invalid annotation scope '{scope}'. Use one of 'rule', 'document', 'package', "
                   "or 'subpackages'")
    if entrypoint and scope not in ("document", "package"):
        out.append(f"annotation entrypoint applied to non-document or package scope '{scope}'")
    return out
