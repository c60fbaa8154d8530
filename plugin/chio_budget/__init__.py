"""chio-budget-guard: an OPA-backed budget guard for the Chio kernel."""

from .cost import CostMetadata
from .decision import (AgentViolation, BudgetViolation, CustomViolation, Decision, SessionViolation,
                       ToolViolation, TotalViolation)
from .errors import (AmountError, ChioBudgetError, DecisionLogError, EngineError, InputError, LedgerError,
                     PolicyError, RatesError)
from .guard import Authorization, BudgetGuard
from .money import U64_MAX, MonetaryAmount
from .policy import BudgetPolicy
from .rates import FeedRates, Rate, RateOracle, StaticRates
from .rates_file import load_rates
from .reload import ReloadError

__all__ = [
    "AgentViolation", "AmountError", "Authorization", "BudgetGuard", "BudgetPolicy", "BudgetViolation", "ChioBudgetError",
    "CostMetadata", "CustomViolation", "Decision", "DecisionLogError", "EngineError", "InputError", "LedgerError",
    "MonetaryAmount", "PolicyError", "SessionViolation", "ToolViolation", "TotalViolation", "U64_MAX",
    "FeedRates", "Rate", "RateOracle", "RatesError", "ReloadError", "StaticRates", "load_rates",
]
