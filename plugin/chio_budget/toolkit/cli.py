"""Adds the toolkit's commands to the ``chio-budget`` app (one call from ``chio_budget.cli``).

The command modules are imported here, when ``register`` runs at the end of
``chio_budget.cli``, so they can reuse its option objects; import them only
through ``chio_budget.cli`` (importing one first would be a cycle).
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from . import cli_ledger, cli_lint, cli_report, cli_simulate

    cli_report.register(app)
    cli_lint.register(app)
    cli_simulate.register(app)
    cli_ledger.register(app)
