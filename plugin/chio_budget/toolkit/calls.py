"""Receipts -> the calls a simulation replays: who, which tool, what it cost in the policy currency.

The cost of a record is its ``total_monetary_cost`` (no monetary cost: 0),
or with ``--cost-field a.b`` the value at that path of the record - an
integer of policy-currency minor units or a ``{units, currency}`` object (a
record without it is malformed). A cost in another currency needs a rate
(``--rate EUR=1.08``: policy-currency major units per one major unit of
EUR); it is converted exactly and rounded up, so a simulation never
under-counts spend. A cost without a rate is a malformed record (exit 2,
or skipped and counted with ``--skip-bad``): dropping it silently would
under-count.

Every record is also checked against what the guard accepts
(``CostMetadata``: non-empty receipt id, no ``:`` in ``tool_server``...)
here, in the first pass, so a simulation never stops half-way on one.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from typing import Any, Iterable, Iterator, Mapping

from pydantic import ValidationError

from ..actual_cost import CostError, to_units
from ..cost import CostMetadata
from ..money import U64_MAX, MonetaryAmount
from .ordering import Call
from .receipts import BadRecords, Receipt, ReceiptError


def parse_rates(specs: Iterable[str]) -> dict[str, Fraction]:
    """``["EUR=1.08", ...]`` -> exact rates; ``ValueError`` naming the bad one."""
    from ..actual_cost import check_rates

    raw: dict[str, str] = {}
    for spec in specs:
        code, sep, rate = spec.partition("=")
        if not sep:
            raise ValueError(f"--rate: expected CUR=RATE such as EUR=1.08, got {spec!r}")
        raw[code.strip()] = rate.strip()
    try:
        return check_rates(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--rate: {exc}") from None


class CostReader:
    """A record's cost in ``currency`` minor units (see the module docstring).

    Counts as it goes: ``no_cost`` records without a monetary cost,
    ``converted[CUR]`` costs converted from ``CUR``.
    """

    def __init__(self, currency: str, rates: Mapping[str, Fraction] | None = None, field: str | None = None):
        self.currency = currency
        self.rates = dict(rates or {})
        self.field = field
        self.path = tuple(field.split(".")) if field else None
        self.no_cost = 0
        self.converted: dict[str, int] = {}

    def __call__(self, r: Receipt) -> int:
        if self.path is None:
            if r.money is None:
                self.no_cost += 1
                return 0
            units, currency = r.money
        else:
            units, currency = self._field(r)
        if currency == self.currency:
            return units
        try:
            converted = to_units(MonetaryAmount(units=units, currency=currency), self.currency, self.rates)
            self.converted[currency] = self.converted.get(currency, 0) + 1
            return converted
        except (CostError, ValidationError, ValueError) as exc:
            where = self.field or "total_monetary_cost"
            hint = f" (add --rate {currency}=<{self.currency} per {currency}>)" if currency not in self.rates else ""
            raise ReceiptError(f"{r.where}: {where}: {_message(exc)}{hint}") from None

    def _field(self, r: Receipt) -> tuple[int, str]:
        value: Any = r.doc
        for part in self.path or ():
            if not isinstance(value, dict) or part not in value:
                raise ReceiptError(f"{r.where}: {self.field}: required (--cost-field)")
            value = value[part]
        if type(value) is int and 0 <= value <= U64_MAX:
            return value, self.currency
        if isinstance(value, dict) and set(value) == {"units", "currency"}:
            units, currency = value["units"], value["currency"]
            if type(units) is int and 0 <= units <= U64_MAX and isinstance(currency, str):
                return units, currency
        raise ReceiptError(f"{r.where}: {self.field}: must be integer minor units (0..2^64-1) or "
                           f"{{units, currency}}, got {str(value)[:40]}")


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
    return str(exc)


def _checked(r: Receipt) -> None:
    """What the guard would refuse (``CostMetadata``), refused now with the record's location."""
    try:
        CostMetadata(receipt_id=r.receipt_id, timestamp=r.timestamp, session_id=r.session_id, agent_id=r.agent_id,
                     tool_server=r.tool_server, tool_name=r.tool_name)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ReceiptError(f"{r.where}: {'.'.join(map(str, e['loc']))}: "
                           f"{e['msg'].removeprefix('Value error, ')}") from None


def to_calls(receipts: Iterable[Receipt], cost: CostReader, bad: BadRecords | None = None) -> Iterator[Call]:
    """One ``Call`` per valid record, ``seq`` numbering them in input order."""
    intern = sys.intern
    for seq, r in enumerate(receipts):
        try:
            _checked(r)
            units = cost(r)
        except ReceiptError as exc:
            if bad is None:
                raise
            bad.add(str(exc))
            continue
        yield Call(r.timestamp, seq, r.receipt_id, None if r.session_id is None else intern(r.session_id),
                   intern(r.agent_id), intern(r.tool_server), intern(r.tool_name), units, r.where)


def meta_of(call: Call) -> CostMetadata:
    """The guard's request for a call (already validated in the first pass, so not again)."""
    return CostMetadata.model_construct(receipt_id=call.receipt_id, timestamp=call.timestamp,
                                        session_id=call.session_id, agent_id=call.agent_id,
                                        tool_server=call.tool_server, tool_name=call.tool_name)
