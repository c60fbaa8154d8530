"""Adds the toolkit's commands to the ``chio-budget`` app (one call from ``chio_budget.cli``).

The command modules are imported here, when ``register`` runs at the end of
``chio_budget.cli``, after ``options`` holds that module's option objects,
so the commands reuse them (import the command modules only through
``chio_budget.cli``).
"""

from __future__ import annotations

from typing import Any, Mapping

import typer


def register(app: typer.Typer, namespace: Mapping[str, Any]) -> None:
    """Add the commands to ``app``; ``namespace`` is the globals of the module defining it."""
    from . import options

    options.use(namespace)
    from . import cli_ledger, cli_lint, cli_report, cli_simulate

    cli_report.register(app)
    cli_lint.register(app)
    cli_simulate.register(app)
    cli_ledger.register(app)
