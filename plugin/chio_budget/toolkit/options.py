"""The option objects of ``chio_budget.cli`` the toolkit's commands reuse (``--policies``...).

``cli.register`` hands over the namespace of the module that builds the app
before any command module is imported, so the commands take the very same
``typer.Option`` objects - also when that module runs as ``__main__``
(``python -m chio_budget.cli``), where importing ``chio_budget.cli`` again
would build a second app and register the toolkit into it, half-way.
"""

from __future__ import annotations

from typing import Any, Mapping

NAMES = ("POLICIES", "POLICY_ID", "REGO_DIR", "RATES", "LEDGER")
POLICIES: Any = None
POLICY_ID: Any = None
REGO_DIR: Any = None
RATES: Any = None
LEDGER: Any = None


def use(namespace: Mapping[str, Any]) -> None:
    """Take the option objects from the namespace of the module that defines the app."""
    globals().update({name: namespace[name] for name in NAMES})
