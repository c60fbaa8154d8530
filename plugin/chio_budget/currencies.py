"""Currency codes and their scales (minor units per major unit).

A budget is integers in a currency's minor unit, so every conversion needs
each side's scale, and a wrong scale is a budget off by a factor of 100. The
scale of a code comes from exactly one of three places, checked in this
order:

1. the Chio kernel's pins (chio-link ``minor_units_for_currency``): USD, EUR,
   GBP 100; JPY 1; USDC, USDT 10^6; BTC 10^8; ETH, LINK 10^18;
2. ISO 4217 for every other currency, with the exponent from CLDR through
   Babel (``babel.numbers.get_currency_precision``), never from a table
   typed here; ISO codes that have no minor unit (gold, SDR, test codes:
   ``XAU``, ``XDR``, ``XTS``...) have no scale until declared;
3. units declared by the operator (``currencies:`` in ``rates.yaml``, e.g.
   ``credits: 1``), which may add codes but never change the scale of one
   the kernel or CLDR already gives.

A code none of them knows is an error (``CurrencyError``), never a silent
two-decimal default: CLDR itself answers 2 for any string, so Babel is only
asked about codes it lists. ``XCC`` and ``CHIO`` cannot be declared: the
kernel keeps them unpriced on purpose (its free-tier pool gate relies on
their having no scale).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterator, Mapping

from .errors import AmountError

U64_MAX = 2**64 - 1

KERNEL_SCALES: Mapping[str, int] = {
    "USD": 100, "EUR": 100, "GBP": 100,
    "JPY": 1,
    "USDC": 10**6, "USDT": 10**6,
    "BTC": 10**8,
    "ETH": 10**18, "LINK": 10**18,
}
"""The kernel's pinned scales (chio-link ``minor_units_for_currency``), exactly."""

KERNEL_UNPRICED = frozenset({"XCC", "CHIO"})
"""Codes the kernel leaves without a scale on purpose; declaring one is refused."""

ISO_WITHOUT_MINOR_UNIT = frozenset({
    "XAG", "XAU", "XPD", "XPT",            # precious metals (ISO 4217 lists "N.A.")
    "XBA", "XBB", "XBC", "XBD",            # bond-market units
    "XDR", "XSU", "XUA",                   # SDR, SUCRE, ADB unit of account
    "XTS", "XXX",                          # testing, no currency
    "XFO", "XFU", "XRE",                   # withdrawn units without minor units
})
"""ISO 4217 codes whose minor unit is "N.A."; CLDR reports its default (2) for
them, which would be exactly the silent default this module refuses."""

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


class CurrencyError(AmountError):
    """A currency code that is malformed or has no known scale."""


@functools.lru_cache(maxsize=1)
def _cldr_codes() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


def iso_scale(code: str) -> int | None:
    """``10 ** exponent`` for an ISO 4217 code CLDR lists, else None (never a default)."""
    if code in ISO_WITHOUT_MINOR_UNIT or code not in _cldr_codes():
        return None
    from babel.numbers import get_currency_precision

    return 10 ** get_currency_precision(code)


def builtin_scale(code: str) -> tuple[int, str] | None:
    """``(scale, origin)`` from the kernel's pins or ISO 4217/CLDR; None for anything else."""
    if code in KERNEL_SCALES:
        return KERNEL_SCALES[code], "kernel"
    scale = iso_scale(code)
    return None if scale is None else (scale, "ISO 4217 (CLDR)")


def check_code(value: Any, what: str = "currency") -> str:
    """A currency code as written, checked for shape only (``CurrencyError``).

    Shape: a letter, then up to 31 letters, digits, ``_`` or ``-`` (so
    ``USD``, ``USDC`` and ``credits`` all pass, while a ``/`` or ``:`` that
    would break a pair key does not). A known code written in another case
    (``usd``) is refused with the right spelling, because codes match
    exactly. Whether the code has a scale is the registry's question.
    """
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise CurrencyError(f"{what}: must be a currency code such as 'USD', 'USDC' or a declared unit, got {value!r}")
    upper = value.upper()
    if upper != value and builtin_scale(upper) is not None:
        raise CurrencyError(f"{what}: currency codes are case-sensitive: write {upper!r}, not {value!r}")
    return value


class CurrencyRegistry:
    """Every code with a scale: the kernel's, ISO 4217's and the declared ones.

    Immutable; ``with_units`` returns a new registry. ``declared`` maps each
    declared code to its scale, ``origins`` to where it was declared (for
    messages such as ``rates.yaml:4``).
    """

    def __init__(self, declared: Mapping[str, int] | None = None, origins: Mapping[str, str] | None = None):
        declared = dict(declared or {})
        problems = [f"{code}: {p}" for code, scale in declared.items() if (p := declaration_problem(code, scale))]
        if problems:
            raise CurrencyError("; ".join(problems))
        self.declared: Mapping[str, int] = declared
        self.origins: Mapping[str, str] = dict(origins or {})

    def with_units(self, units: Mapping[str, int], origins: Mapping[str, str] | None = None) -> "CurrencyRegistry":
        return CurrencyRegistry({**self.declared, **units}, {**self.origins, **(origins or {})})

    def get(self, code: str) -> int | None:
        """The scale of ``code``, or None when nothing gives it one."""
        found = builtin_scale(code)
        if found is not None:
            return found[0]
        return self.declared.get(code)

    def scale(self, code: str) -> int:
        """The scale of ``code``; ``CurrencyError`` naming what is wrong when there is none."""
        scale = self.get(code)
        if scale is None:
            raise CurrencyError(self.unknown(code))
        return scale

    def origin(self, code: str) -> str | None:
        found = builtin_scale(code)
        if found is not None:
            return found[1]
        return self.origins.get(code, "declared") if code in self.declared else None

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self.get(code) is not None

    def __iter__(self) -> Iterator[str]:
        """The declared codes (the built-in ones are too many to list usefully)."""
        return iter(self.declared)

    def unknown(self, code: str) -> str:
        """Why ``code`` has no scale, as one sentence."""
        if code in KERNEL_UNPRICED:
            return f"currency {code!r} is deliberately unpriced by the kernel and cannot be converted"
        if code in ISO_WITHOUT_MINOR_UNIT:
            return (f"currency {code!r} has no minor unit in ISO 4217; declare its scale under "
                    "'currencies:' in rates.yaml to use it")
        upper = code.upper()
        if upper != code and builtin_scale(upper) is not None:
            return f"unknown currency {code!r} (codes are case-sensitive: did you mean {upper!r}?)"
        return (f"unknown currency {code!r}: not a kernel currency, not ISO 4217, "
                "and not declared under 'currencies:' in rates.yaml")


def declaration_problem(code: Any, scale: Any) -> str | None:
    """What is wrong with declaring ``code`` at ``scale``, or None when it may be declared.

    A declaration may restate a built-in scale but never contradict it.
    """
    try:
        check_code(code, "code")
    except CurrencyError as exc:
        return str(exc).removeprefix("code: ")
    if code.upper() in KERNEL_UNPRICED:
        return f"{code!r} is deliberately unpriced by the kernel; it cannot be given a scale"
    if isinstance(scale, bool) or not isinstance(scale, int):
        return f"scale must be a whole number of minor units per major unit, got {scale!r}"
    if not 1 <= scale <= U64_MAX:
        return f"scale must be between 1 and 2^64-1, got {scale}"
    found = builtin_scale(code)
    if found is not None and found[0] != scale:
        return f"contradicts the {found[1]} scale of {code} ({found[0]} minor units per unit), got {scale}"
    return None


DEFAULT_CURRENCIES = CurrencyRegistry()
"""The kernel's and ISO 4217's codes, nothing declared."""
