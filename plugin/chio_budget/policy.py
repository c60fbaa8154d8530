"""Budget policies: YAML files -> validated ``BudgetPolicy`` models.

Every error names the file, the line and the field path
(``policies/team.yaml:7: max_per_tool."s1:x".units: must be >= 0``), and all
errors of a directory are reported together. YAML is composed into nodes
first so that each value keeps the line it came from; PyYAML's plain loader
would silently take the last of two duplicate keys, which we refuse.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import PolicyError
from .limits import InvocationCap, Limit, Thresholds, TimeZone, WindowSpec
from .money import Currency, MonetaryAmount
from .windows import ALL_TIME_WINDOW

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_POLICY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_AMOUNT_FIELDS = ("max_total", "max_per_session", "max_per_agent", "max_per_invocation")
_AMOUNT_MAPS = ("max_per_tool", "prices")


def _check_tool_key(key: str) -> str:
    server, sep, tool = key.partition(":")
    if not sep or ":" in tool or not server or not tool:
        raise ValueError(f"tool key {key!r} must be 'server:tool' with exactly one ':'")
    return key


ToolKey = Annotated[str, AfterValidator(_check_tool_key)]


class BudgetPolicy(BaseModel):
    """``chio_metering::budget::BudgetPolicy`` plus an ``id``.

    Amounts may be written as ``{units, currency}`` (the Rust form) or as a
    plain integer in the policy currency. Every limit must be in the policy
    currency: comparing a limit in one currency with spend in another would
    need a rate, and the compiler refuses to guess one.

    Limits may also be written ``{units, window, warn_at}`` (``limits.Limit``);
    ``window``, ``timezone`` and ``warn_at`` at the top are the defaults of
    every limit (all-time, UTC, none: the Rust enforcer's behaviour).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    id: str = Field(pattern=_POLICY_ID.pattern)
    currency: Currency
    max_total: Limit
    max_per_session: Limit | None = None
    max_per_agent: Limit | None = None
    max_per_tool: dict[ToolKey, Limit] = Field(default_factory=dict)
    max_per_invocation: InvocationCap | None = None
    timezone: TimeZone = "UTC"
    window: WindowSpec = ALL_TIME_WINDOW
    warn_at: Thresholds = ()
    prices: dict[ToolKey, MonetaryAmount] = Field(
        default_factory=dict,
        description="per-invocation price estimates keyed 'server:tool' (used by the guard chain)",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_integers_are_policy_currency(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        currency = data.get("currency")
        out = dict(data)

        def lift(v: Any) -> Any:
            # Any scalar is "units in the policy currency": a float or a
            # string then fails on `units` with the money module's message.
            if v is not None and not isinstance(v, (dict, list, MonetaryAmount)):
                return {"units": v, "currency": currency}
            if isinstance(v, dict) and "currency" not in v and currency is not None:
                return {**v, "currency": currency}  # the long form {units, window, warn_at}
            return v

        for name in _AMOUNT_FIELDS:
            if name in out:
                out[name] = lift(out[name])
        for name in _AMOUNT_MAPS:
            if isinstance(out.get(name), dict):
                out[name] = {k: lift(v) for k, v in out[name].items()}
        return out

    def amounts(self) -> list[tuple[tuple[str, ...], MonetaryAmount]]:
        """Every amount with its field path, for checks that span them all."""
        out: list[tuple[tuple[str, ...], MonetaryAmount]] = []
        for name in _AMOUNT_FIELDS:
            amount = getattr(self, name)
            if amount is not None:
                out.append(((name,), amount))
        for name in _AMOUNT_MAPS:
            for key, amount in getattr(self, name).items():
                out.append(((name, key), amount))
        return out

    def currency_errors(self) -> list[tuple[tuple[str, ...], str]]:
        return [
            (path + ("currency",), f"limit is in {a.currency} but the policy currency is {self.currency}")
            for path, a in self.amounts()
            if a.currency != self.currency
        ]

    def to_rust_json(self) -> dict:
        """The Rust ``BudgetPolicy`` serde form (no ``id``; empty map skipped)."""
        out: dict[str, Any] = {"max_total": self.max_total.model_dump()}
        for name in ("max_per_session", "max_per_agent"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).model_dump()
        if self.max_per_tool:
            out["max_per_tool"] = {k: v.model_dump() for k, v in self.max_per_tool.items()}
        out["currency"] = self.currency
        return out


# --------------------------------------------------------------------------
# YAML with locations


class _Located:
    """A plain Python value plus the line of every field path in it."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}
        self.errors: list[tuple[tuple, int, str]] = []

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, path + ("<key>",))
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    self.errors.append((path, key_node.start_mark.line + 1, f"key {key!r} must be a string"))
                    continue
                key = str(key)
                if key in out:
                    self.errors.append((path + (key,), key_node.start_mark.line + 1, "duplicate key"))
                    continue
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, path + (i,)) for i, v in enumerate(node.value)]
        return yaml.SafeLoader.construct_object(_LOADER_FOR_SCALARS, node)  # type: ignore[arg-type]

    def line_of(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


_LOADER_FOR_SCALARS = yaml.SafeLoader("")


def format_path(path: tuple) -> str:
    """``max_per_tool."s1:x".units``: identifiers bare, anything else quoted."""
    parts = []
    for p in path:
        s = str(p)
        parts.append(s if isinstance(p, int) or _IDENT.match(s) else f'"{s}"')
    return ".".join(parts)


def _pydantic_path(loc: tuple) -> tuple:
    # Drop pydantic's union/function tags (e.g. 'function-before[...]').
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p and "]" in p)))


def parse_policy(text: str, source: str = "<string>", default_id: str | None = None) -> BudgetPolicy:
    """Parse one policy document; ``PolicyError`` lists every problem located."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{source}:{line}: invalid YAML: {problem}") from None
    if node is None:
        raise PolicyError(f"{source}:1: empty policy file")
    loc = _Located()
    try:
        data = loc.build(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PolicyError(f"{source}:{mark.line + 1 if mark else 1}: invalid YAML: {exc}") from None
    errors = [f"{source}:{line}: {format_path(path) or '<document>'}: {msg}" for path, line, msg in loc.errors]
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:{loc.line_of(())}: policy must be a mapping, got {type(data).__name__}")
    if "id" not in data and default_id is not None:
        data["id"] = default_id
    try:
        policy = BudgetPolicy.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path = _pydantic_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required"
            errors.append(f"{source}:{loc.line_of(path)}: {format_path(path) or '<document>'}: {msg}")
        raise PolicyError(errors) from None
    for path, msg in policy.currency_errors():
        errors.append(f"{source}:{loc.line_of(path)}: {format_path(path)}: {msg}")
    if errors:
        raise PolicyError(errors)
    return policy


def load_policy_file(path: str | Path) -> BudgetPolicy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}:1: cannot read: {exc}") from None
    return parse_policy(text, source=str(path), default_id=path.stem)


def policy_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise PolicyError(f"{directory}:1: no such policy directory")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_policies(directory: str | Path) -> dict[str, BudgetPolicy]:
    """Every policy under ``directory`` (one per file), keyed by id.

    Errors of all files are collected into one ``PolicyError``; a duplicate
    id names both files.
    """
    errors: list[str] = []
    out: dict[str, BudgetPolicy] = {}
    where: dict[str, Path] = {}
    files = policy_files(directory)
    if not files:
        raise PolicyError(f"{directory}:1: no policy files (*.yaml, *.yml)")
    for f in files:
        try:
            p = load_policy_file(f)
        except PolicyError as exc:
            errors.extend(exc.errors)
            continue
        if p.id in out:
            errors.append(f"{f}:1: id: duplicate policy id {p.id!r} (also in {where[p.id]})")
            continue
        out[p.id] = p
        where[p.id] = f
    if errors:
        raise PolicyError(errors)
    return out
