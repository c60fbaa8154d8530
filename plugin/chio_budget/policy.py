"""Budget policies: YAML files -> validated ``BudgetPolicy`` models.

Every error names the file, the line and the field path
(``policies/team.yaml:7: max_per_tool."s1:x".units: must be >= 0``), and all
errors of a directory are reported together. YAML is composed into nodes
first so that each value keeps the line it came from; PyYAML's plain loader
would silently take the last of two duplicate keys, which we refuse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import yamlsafe
from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry
from .errors import PolicyError
from .limits import InvocationCap, Limit, Thresholds, TimeZone, WindowSpec
from .money import U64_MAX, Currency, MonetaryAmount
from .text import TextError, decode_utf8, lone_surrogate, read_limited, shorten
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

    def currency_errors(self, currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> list[tuple[tuple[str, ...], str]]:
        """A policy currency without a scale, and every limit in another currency."""
        unknown = [] if self.currency in currencies else [(("currency",), currencies.unknown(self.currency))]
        return unknown + [
            (path + ("currency",), f"limit is in {a.currency} but the policy currency is {self.currency}")
            for path, a in self.amounts()
            if a.currency != self.currency
        ]


# --------------------------------------------------------------------------
# YAML with locations and bounds

MAX_POLICY_BYTES = 1 << 20
"""Largest policy file read (1 MiB): a policy is a handful of limits."""

MAX_DEPTH = 64
"""Deepest YAML nesting accepted; the top-level mapping is level 1."""

_PLAIN_DECIMAL = re.compile(r"0|-?[1-9][0-9]*")
_TOO_LARGE = yamlsafe.size_label(MAX_POLICY_BYTES)


def _money_path(path: tuple) -> tuple | None:
    """The reported path of an amount's units if ``path`` holds one, else None.

    ``max_total: 5`` and ``max_total: {units: 5}`` both report ``max_total.units``.
    """
    if path and path[0] in _AMOUNT_FIELDS:
        rest = path[1:]
    elif len(path) >= 2 and path[0] in _AMOUNT_MAPS:
        rest = path[2:]
    else:
        return None
    if rest == ():
        return path + ("units",)
    return path if rest == ("units",) else None


class _Located:
    """A plain Python value plus the line of every field path in it.

    Keys are taken as written (YAML 1.1 would read the key ``0x10`` as 16).
    Amounts are decided on the scalar as written, never on what PyYAML makes
    of it: only a plain decimal integer is money. A refused value's path is
    remembered so the model's own complaint about it is not reported twice.
    """

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[tuple, int] = {}
        self.errors: list[tuple[tuple, int, str]] = []
        self.refused: list[tuple] = []

    def refuse(self, node: yaml.Node, path: tuple, where: tuple, message: str) -> None:
        self.errors.append((where, node.start_mark.line + 1, message))
        self.refused.append(path)

    def is_refused(self, path: tuple) -> bool:
        return any(path[: len(r)] == r for r in self.refused)

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, path + (i,)) for i, v in enumerate(node.value)]
        bad = lone_surrogate(node.value)
        if bad:
            return self.refuse(node, path, path, f"lone surrogate {bad} is not valid Unicode")
        money = _money_path(path)
        if money is not None and node.tag != yamlsafe.NULL_TAG:
            return self._units(node, path, money)
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:  # e.g. an unknown tag, an int past Python's digit limit
            problem = getattr(exc, "problem", None) or str(exc)
            return self.refuse(node, path, path, f"cannot read value: {problem}")

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append((path, line, "a key must be a plain string, not a collection"))
                continue
            key = key_node.value
            bad = lone_surrogate(key)
            if bad:
                self.errors.append((path + (key,), line, f"lone surrogate {bad} is not valid Unicode"))
            elif key in out:
                self.errors.append((path + (key,), line, "duplicate key"))
            else:
                out[key] = self.build(value_node, path + (key,))
        return out

    def _units(self, node: yaml.ScalarNode, path: tuple, where: tuple) -> int | None:
        text = node.value
        if node.tag == yamlsafe.INT_TAG and node.style is None and _PLAIN_DECIMAL.fullmatch(text):
            if len(text.lstrip("-")) <= len(str(U64_MAX)):
                return int(text)
            bound = "must be >= 0" if text.startswith("-") else f"must be <= 2^64-1 ({U64_MAX})"
            return self.refuse(node, path, where, f"{bound}, got {shorten(text)}")
        return self.refuse(node, path, where,
                           f"must be a plain decimal integer of minor units, got {yamlsafe.written(node, self.loader)}")

    def line_of(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def format_path(path: tuple) -> str:
    """``max_per_tool."s1:x".units``: identifiers bare, anything else quoted (JSON-escaped)."""
    parts = []
    for p in path:
        s = str(p)
        if not (isinstance(p, int) or _IDENT.match(s)):
            s = json.dumps(s, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")
        parts.append(s)
    return ".".join(parts)


def _pydantic_path(loc: tuple) -> tuple:
    # Drop pydantic's union/function tags (e.g. 'function-before[...]').
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p and "]" in p)))


def _compose(text: str, source: str) -> tuple[Any, _Located]:
    """YAML text -> (plain value, locations); ``PolicyError`` for what is not a policy document.

    Bounded by ``yamlsafe``: no anchors or aliases (they are how a 371-byte
    file expands into 387 million nodes), at most ``MAX_DEPTH`` levels, at
    most ``MAX_POLICY_BYTES``.
    """
    node, loader = yamlsafe.compose(text, source, what="a budget policy", noun="policy file", error=PolicyError,
                                    max_bytes=MAX_POLICY_BYTES, max_depth=MAX_DEPTH)
    loc = _Located(loader)
    return loc.build(node), loc


def parse_policy(text: str, source: str = "<string>", default_id: str | None = None, *,
                 currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> BudgetPolicy:
    """Parse one policy document; ``PolicyError`` lists every problem located.

    The policy ``currency`` must have a scale in ``currencies`` (the
    kernel's, ISO 4217's, and the units ``rates.yaml`` declares).

    Bounded: at most ``MAX_POLICY_BYTES`` of text, ``MAX_DEPTH`` levels, no
    anchors or aliases, so reading a hostile file costs time and memory in
    proportion to its size.
    """
    data, loc = _compose(text, source)
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
            if loc.is_refused(path):
                continue
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required"
            errors.append(f"{source}:{loc.line_of(path)}: {format_path(path) or '<document>'}: {msg}")
        raise PolicyError(errors) from None
    for path, msg in policy.currency_errors(currencies):
        errors.append(f"{source}:{loc.line_of(path)}: {format_path(path)}: {msg}")
    if errors:
        raise PolicyError(errors)
    return policy


def load_policy_file(path: str | Path, *, currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> BudgetPolicy:
    """One policy file (at most ``MAX_POLICY_BYTES``, UTF-8); its id defaults to the file's stem."""
    path = Path(path)
    try:
        text = decode_utf8(read_limited(path, MAX_POLICY_BYTES, _TOO_LARGE))
    except TextError as exc:
        raise PolicyError(f"{path}:{exc.line}: {exc.message}") from None
    except OSError as exc:
        raise PolicyError(f"{path}:1: cannot read: {exc.strerror or exc}") from None
    return parse_policy(text, source=str(path), default_id=path.stem, currencies=currencies)


def policy_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise PolicyError(f"{directory}:1: no such policy directory")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_policies(directory: str | Path, *,
                  currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> dict[str, BudgetPolicy]:
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
            p = load_policy_file(f, currencies=currencies)
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
