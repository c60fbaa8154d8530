"""``chio-budget rates show``: the loaded rates, their ages and the declared units.

Exit codes: 0 shown (1 with ``--fail-stale`` when a rate is stale), 2 a bad
rates file (located ``file:line: field: problem`` on stderr).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .errors import RatesError

rates_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect exchange rates (rates.yaml).")

RATES = typer.Option(Path("rates.yaml"), "--rates", help="rates file (rates.yaml)")


def rate_rows(oracle, at: int) -> list[dict]:
    """One row per pair: rate as decimal and fraction, source, update time, age and staleness at ``at``."""
    rows = []
    for base, quote, r, derived in oracle.pairs():
        age = r.age_seconds(at)
        rows.append({"pair": f"{base}/{quote}", "rate": r.decimal(), "numerator": r.numerator,
                     "denominator": r.denominator, "source": r.source, "updated_at": r.updated_at,
                     "age_seconds": age, "stale": age > oracle.max_age_seconds, "derived": derived})
    return rows


@rates_app.command("show")
def show(rates: Path = RATES,
         at: Optional[int] = typer.Option(None, "--at", help="judge ages at this Unix time (default: now)"),
         as_json: bool = typer.Option(False, "--json", help="one JSON object instead of a table"),
         fail_stale: bool = typer.Option(False, "--fail-stale", help="exit 1 when any rate is stale")) -> None:
    """Print every rate (given and derived inverses) with its age, and the declared currency units."""
    from .rates_file import load_rates

    try:
        oracle = load_rates(rates)
    except RatesError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    now = int(time.time()) if at is None else at
    rows = rate_rows(oracle, now)
    units = {code: {"scale": oracle.currencies.scale(code), "declared_at": oracle.currencies.origin(code)}
             for code in oracle.currencies}
    if as_json:
        typer.echo(json.dumps({"file": str(rates), "at": now, "max_age_seconds": oracle.max_age_seconds,
                               "margin_bps": oracle.margin_bps, "currencies": units, "rates": rows}))
    else:
        typer.echo(f"{rates}: max_age_seconds {oracle.max_age_seconds}, margin_bps {oracle.margin_bps}, "
                   f"ages at {now}")
        for code, u in units.items():
            typer.echo(f"  unit {code}: {u['scale']} minor units per unit ({u['declared_at']})")
        width = max([len(r["pair"]) for r in rows] + [4])
        for r in rows:
            flag = "STALE" if r["stale"] else "fresh"
            how = "derived: " if r["derived"] else ""
            typer.echo(f"  {r['pair']:<{width}}  {r['rate']:>14}  ({r['numerator']}/{r['denominator']})  "
                       f"age {r['age_seconds']:>6} s  {flag}  {how}{r['source']}")
        if not rows:
            typer.echo("  (no rates)")
    raise typer.Exit(1 if fail_stale and any(r["stale"] for r in rows) else 0)


def register(app: typer.Typer) -> None:
    """Add the ``rates`` command group to the ``chio-budget`` app."""
    app.add_typer(rates_app, name="rates")
