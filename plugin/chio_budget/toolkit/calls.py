"""Receipts -> the calls a simulation replays: who, which tool, what it cost, in which currency.

The cost of a record is its ``total_monetary_cost`` (no monetary cost: 0 in
the policy currency), or with ``--cost-field a.b`` the value at that path of
the record - an integer of policy-currency minor units or a
``{units, currency}`` object (a record without it is malformed). A cost in
another currency is handed to the guard as it is: the guard converts it
with the ``--rates`` oracle exactly as in production (rounding against the
spender), and a missing or stale rate is the Rego's ``rate_unavailable`` /
``rate_stale`` deny, not an error here.

Every record is also checked against what the guard accepts
(``CostMetadata``: non-empty receipt id, no ``:`` in ``tool_server``...; a
well-formed currency code) here, in the first pass, so a simulation never
stops half-way on one.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator

from pydantic import ValidationError

from ..cost import CostMetadata
from ..money import U64_MAX, MonetaryAmount
from .ordering import Call
from .receipts import BadRecords, Receipt, ReceiptError


class CostReader:
    """A record's cost as ``(units, currency)`` (see the module docstring).

    Counts as it goes: ``no_cost`` records without a monetary cost,
    ``foreign[CUR]`` costs in a currency other than the policy's.
    """

    def __init__(self, currency: str, field: str | None = None):
        self.currency = currency
        self.field = field
        self.path = tuple(field.split(".")) if field else None
        self.no_cost = 0
        self.foreign: dict[str, int] = {}

    def __call__(self, r: Receipt) -> tuple[int, str]:
        if self.path is None:
            if r.money is None:
                self.no_cost += 1
                return 0, self.currency
            units, currency = r.money
        else:
            units, currency = self._field(r)
        if currency != self.currency:
            try:
                MonetaryAmount(units=units, currency=currency)
            except ValidationError as exc:
                raise ReceiptError(f"{r.where}: {self.field or 'total_monetary_cost'}.currency: "
                                   f"{_message(exc).split(': ', 1)[-1]}") from None
            self.foreign[currency] = self.foreign.get(currency, 0) + 1
        return units, currency

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
            units, currency = cost(r)
        except ReceiptError as exc:
            if bad is None:
                raise
            bad.add(str(exc))
            continue
        yield Call(r.timestamp, seq, r.receipt_id, None if r.session_id is None else intern(r.session_id),
                   intern(r.agent_id), intern(r.tool_server), intern(r.tool_name), units, intern(currency),
                   r.where)


def cost_of(call: Call, policy_currency: str) -> int | MonetaryAmount:
    """What the guard is asked to authorize: plain units, or a foreign amount for it to convert."""
    if call.currency == policy_currency:
        return call.cost
    return MonetaryAmount.model_construct(units=call.cost, currency=call.currency)


def meta_of(call: Call) -> CostMetadata:
    """The guard's request for a call (already validated in the first pass, so not again)."""
    return CostMetadata.model_construct(receipt_id=call.receipt_id, timestamp=call.timestamp,
                                        session_id=call.session_id, agent_id=call.agent_id,
                                        tool_server=call.tool_server, tool_name=call.tool_name)
