"""One exception type per kind of failure a caller can act on."""

from __future__ import annotations


class ChioBudgetError(Exception):
    """Base of every error this package raises on purpose."""


class PolicyError(ChioBudgetError):
    """A budget policy (YAML) is invalid. The message is ``file:line: field.path: problem``.

    ``errors`` holds every problem found, each already formatted that way, so a
    user fixes them all in one pass rather than one per run.
    """

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class RatesError(PolicyError):
    """A rates file (``rates.yaml``) is invalid; located like a ``PolicyError``."""


class EngineError(ChioBudgetError):
    """OPA could not be set up (bad Rego, unreachable server at start-up).

    At decision time engines never raise: they return a deny carrying the
    cause in ``Decision.error`` (fail closed).
    """


class LedgerError(ChioBudgetError):
    """The counter store failed or was asked something impossible."""


class InputError(ChioBudgetError):
    """A request (replay line, CLI argument) is malformed; nothing was recorded."""


class AmountError(ChioBudgetError, ValueError):
    """An amount is not a u64 of minor units (negative, float, bool, too large) or
    cannot be turned into one (no rate, unreadable cost).

    Still a ``ValueError``, so callers that caught the old ``ValueError`` keep
    working; raised before anything is recorded.
    """


class DecisionLogError(ChioBudgetError):
    """The decision log could not be written (or read, for ``explain``)."""


class WindowError(ChioBudgetError, ValueError):
    """A request's timestamp cannot be placed in its limit's window (a calendar
    window past the year 9999, often a timestamp in milliseconds).

    A ``ValueError`` like ``AmountError``: bad input, raised before anything
    is reserved or recorded.
    """
