"""Adds the toolkit's commands to the ``chio-budget`` app (one call from ``chio_budget.cli``).

The command modules are imported here, when ``register`` runs at the end of
``chio_budget.cli``, so they can reuse its option objects.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from . import cli_lint, cli_report

    cli_report.register(app)
    cli_lint.register(app)
