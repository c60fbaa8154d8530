"""Operator YAML composed into located nodes, within bounds.

Configuration files (budget policies, ``rates.yaml``) are composed into
PyYAML nodes, not loaded into Python values, so every value keeps the line
it came from and each file's reader decides what a scalar means from the
text as written. Composition is bounded: anchors and aliases are refused
(they are how a few hundred bytes expand into hundreds of millions of
nodes), nesting is cut at ``max_depth`` (the composer recurses once per
level), and the text is at most ``max_bytes``. Every refusal is a
``file:line: problem`` error of the caller's type.
"""

from __future__ import annotations

from typing import Any, Callable

import yaml

from .text import shorten

INT_TAG = "tag:yaml.org,2002:int"
STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"


class Refused(yaml.YAMLError):
    """Raised while composing: the document uses something the file may not."""

    def __init__(self, mark: yaml.Mark, message: str):
        super().__init__(message)
        self.line = mark.line + 1
        self.message = message


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing with two refusals made before anything is expanded.

    ``what`` names the file kind in the refusal (``"a budget policy"``).
    """

    def __init__(self, text: str, *, what: str = "this file", max_depth: int = 64):
        super().__init__(text)
        self._depth = 0
        self._what = what
        self._max_depth = max_depth

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        no_anchors = f"anchors and aliases are not allowed in {self._what} (write the value out)"
        if isinstance(event, yaml.AliasEvent):
            raise Refused(event.start_mark, f"YAML alias *{event.anchor}: {no_anchors}")
        if event.anchor is not None:
            raise Refused(event.start_mark, f"YAML anchor &{event.anchor}: {no_anchors}")
        if self._depth >= self._max_depth:
            raise Refused(event.start_mark, f"nesting deeper than {self._max_depth} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose(text: str, source: str, *, what: str, noun: str, error: Callable[[str], Exception],
            max_bytes: int, max_depth: int = 64) -> tuple[yaml.Node, BoundedLoader]:
    """The document's root node, and its loader (for ``resolve``/``construct_object``).

    ``what`` names the file kind in a refusal ("a budget policy"), ``noun``
    in "empty policy file". Raises ``error("source:line: problem")`` for text
    over ``max_bytes``, an empty document, a refused construct or invalid YAML.
    """
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise error(f"{source}:1: file is larger than {size_label(max_bytes)} ({max_bytes} bytes)")
    loader = BoundedLoader(text, what=what, max_depth=max_depth)
    try:
        node = loader.get_single_node()
    except Refused as exc:
        raise error(f"{source}:{exc.line}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{source}:{mark.line + 1 if mark else 1}: invalid YAML: {problem}") from None
    if node is None:
        raise error(f"{source}:1: empty {noun}")
    return node, loader


def size_label(max_bytes: int) -> str:
    """``1 MiB`` for ``1 << 20``: how a size bound is named in messages."""
    return f"{max_bytes >> 20} MiB" if max_bytes % (1 << 20) == 0 else f"{max_bytes} bytes"


def line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def written(node: yaml.ScalarNode, loader: yaml.BaseResolver) -> str:
    """The scalar roughly as the operator typed it, for messages: quotes and an explicit tag kept."""
    text = shorten(node.value)
    if node.style in ("'", '"'):
        text = f"{node.style}{text}{node.style}"
    implicit = loader.resolve(yaml.ScalarNode, node.value, (node.style is None, node.style is not None))
    if node.tag != implicit:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
        text = f"{tag} {text}"
    return text
