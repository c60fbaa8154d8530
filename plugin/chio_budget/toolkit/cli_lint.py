"""``chio-budget lint POLICIES REGO``: one command before a budget or Rego change ships."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .options import RATES
from .cli_report import fail

_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow"}


def lint(policies: Path = typer.Argument(Path("policies"), help="directory of YAML budget policies"),
         rego: Path = typer.Argument(Path("rego"), help="Rego directory (policy and *_test.rego)"),
         rates: Optional[Path] = RATES) -> None:
    """Validate the rates file (--rates) and the YAML, compile it, load the Rego into OPA, run the Rego
    tests, and with a real `opa` (OPA_BIN or PATH) also `opa check --strict` and `opa fmt --list`; one summary.
    """
    from .lint import lint as run_lint, opa_binary

    for path in (policies, rego, *([rates] if rates is not None else [])):
        if not path.exists():
            fail(f"{path}:1: no such file or directory")
    checks = run_lint(policies, rego, opa=opa_binary(), rates=rates)
    console = Console(soft_wrap=True, highlight=False)
    console.print(f"lint {escape(str(policies))} {escape(str(rego))}")
    for c in checks:
        console.print(f"  [{_STYLE[c.status]}]{c.status:<8}[/] {c.name:<19} {escape(c.summary)}")
        for d in c.details:
            console.print(f"           {escape(d)}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "failed", "skipped")}
    console.print(f"lint: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped")
    raise typer.Exit(1 if counts["failed"] else 0)


def register(app: typer.Typer) -> None:
    app.command("lint", epilog="Exit codes: 0 every check passed (or was skipped); 1 a check failed; "
                               "2 a path does not exist.")(lint)
