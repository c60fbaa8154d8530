"""``chio-budget ledger show|adjust|reset|export|import``: counters by hand, each command audited.

Exit codes: 0 done; 1 the ledger refused or failed (an import over counters
without --merge, a backend error); 2 bad input (a bad option or import line,
located ``file:line: field: problem``; a change without --log or --reason).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from .options import LEDGER
from ..errors import ChioBudgetError, InputError
from .cli_report import fail

ledger_app = typer.Typer(no_args_is_help=True, help="Counters by hand: show, adjust, reset, export, import "
                                                    "(each writes an audit event to the decision log).")
POLICY = typer.Option(None, "--policy-id", help="the policy whose counters (default: every policy)")
SCOPE = typer.Option(None, "--scope", help="total | session | agent | tool")
IDENT = typer.Option(None, "--id", help="the session, agent or tool key (server:tool)")
WINDOW = typer.Option(None, "--window", help="a budget window (e.g. 2026-11); '' for all-time counters")
LOG = typer.Option(None, "--log", envvar="CHIO_DECISION_LOG", help="decision log to write the audit event to")
REASON = typer.Option(None, "--reason", help="why (kept in the audit event)")
WHO = typer.Option(None, "--who", help="who (default: user@host)")
JSON = typer.Option(False, "--json", help="JSON lines")


def _open(ledger: str) -> Any:
    from ..ledger import open_ledger

    try:
        return open_ledger(ledger)
    except ChioBudgetError as exc:
        fail(f"--ledger: {exc}")


def _audit(log: Optional[Path], who: Optional[str], reason: Optional[str], ledger: str, *, change: bool) -> Any:
    from .ledgertool import Audit, who as default_who

    if change and log is None:
        fail("--log: required: a change to the counters is written to the decision log (or set CHIO_DECISION_LOG)")
    if change and not (reason or "").strip():
        fail("--reason: required: say why (it is kept in the audit event)")
    try:
        return Audit(log, who=who or default_who(), why=reason, ledger_uri=ledger)
    except (OSError, ChioBudgetError) as exc:
        fail(f"--log: {log}: cannot write: {exc}")


@contextmanager
def _using(ledger: str, audit: Any, *, refused: str = "") -> Iterator[Any]:
    """The open ledger; a ledger failure exits 1 (after closing the ledger and the log)."""
    led = _open(ledger)
    try:
        yield led
    except ChioBudgetError as exc:
        fail(f"{refused}{exc}", 1)
    finally:
        led.close()
        audit.close()


@ledger_app.command("show")
def show(ledger: str = LEDGER, policy_id: Optional[str] = POLICY, scope: Optional[str] = SCOPE,
         ident: Optional[str] = IDENT, window: Optional[str] = WINDOW, log: Optional[Path] = LOG,
         reason: Optional[str] = REASON, who: Optional[str] = WHO, json_out: bool = JSON) -> None:
    """Spent and held per counter, filtered by policy, scope, id and window."""
    from .ledgertool import counter_json, select
    from .views import console, ledger_view

    audit = _audit(log, who, reason, ledger, change=False)
    with _using(ledger, audit) as led:
        rows = [counter_json(k, b) for k, b in select(led, policy_id, scope, ident, window)]
        audit.write("show", filter={"policy_id": policy_id, "scope": scope, "id": ident, "window": window},
                    counters=len(rows))
    if json_out:
        import json

        for row in rows:
            typer.echo(json.dumps(row, separators=(",", ":")))
    else:
        console().print(ledger_view(rows))


@ledger_app.command("adjust")
def adjust(units: int = typer.Option(..., "--units", help="signed: -500 refunds 500 units (never below 0)"),
           scope: str = typer.Option(..., "--scope", help="total | session | agent | tool"),
           ident: Optional[str] = IDENT, policy_id: str = typer.Option("default", "--policy-id"),
           window: str = typer.Option("", "--window", help="the budget window ('' : all-time)"),
           ledger: str = LEDGER, log: Optional[Path] = LOG, reason: Optional[str] = REASON,
           who: Optional[str] = WHO) -> None:
    """A refund or a correction: spent += UNITS on one counter, atomically, clamped to [0, 2^64-1]."""
    from .ledgertool import balance_json, the_key

    try:
        key = the_key(policy_id, scope, ident, window)
    except InputError as exc:
        fail(str(exc))
    audit = _audit(log, who, reason, ledger, change=True)
    with _using(ledger, audit) as led:
        before, after = led.adjust(key, units)
        audit.write("adjust", key=key, delta=units, before=balance_json(before), after=balance_json(after))
    typer.echo(f"{key}: spent {before.spent} -> {after.spent} (held {after.held})")


@ledger_app.command("reset")
def reset(policy_id: str = typer.Option(..., "--policy-id"), scope: Optional[str] = SCOPE,
          ident: Optional[str] = IDENT, window: Optional[str] = WINDOW, ledger: str = LEDGER,
          log: Optional[Path] = LOG, reason: Optional[str] = REASON, who: Optional[str] = WHO) -> None:
    """End a budget period early: spent = 0 on every matching counter (held reservations stay)."""
    from .ledgertool import changes, select

    audit = _audit(log, who, reason, ledger, change=True)
    with _using(ledger, audit) as led:
        keys = [k for k, _ in select(led, policy_id, scope, ident, window)]
        before = led.reset(keys)
        after = led.balances(keys) if keys else []
        audit.write("reset", filter={"policy_id": policy_id, "scope": scope, "id": ident, "window": window},
                    **changes(keys, before, after))
    typer.echo(f"reset {len(keys)} counter(s) of policy {policy_id}: spent {sum(b.spent for b in before)} -> 0")


@ledger_app.command("export")
def export(ledger: str = LEDGER, output: Optional[Path] = typer.Option(None, "-o", "--output"),
           log: Optional[Path] = LOG, reason: Optional[str] = REASON, who: Optional[str] = WHO) -> None:
    """Every counter with spent > 0 as JSON lines {"key", "spent"} (live holds are not exported)."""
    from .ledgertool import export_lines

    audit = _audit(log, who, reason, ledger, change=False)
    n = 0
    with _using(ledger, audit) as led:
        try:
            out = sys.stdout if output is None else open(output, "w", encoding="utf-8")
            try:
                for line in export_lines(led.export()):
                    out.write(line)
                    n += 1
            finally:
                if out is not sys.stdout:
                    out.close()
        except OSError as exc:
            fail(f"{output}: cannot write: {exc.strerror or exc}")
        audit.write("export", counters=n, output=str(output) if output else "<stdout>")
    typer.echo(f"exported {n} counter(s)", err=True)


@ledger_app.command("import")
def import_(file: str = typer.Argument(..., help="JSON lines from `ledger export` ('-' stdin)"),
            merge: bool = typer.Option(False, "--merge", help="add to the counters already there"),
            ledger: str = LEDGER, log: Optional[Path] = LOG, reason: Optional[str] = REASON,
            who: Optional[str] = WHO) -> None:
    """Load counters: refused into a ledger that holds counters, unless --merge (then added)."""
    from .ledgertool import changes, read_import

    try:
        if file == "-":
            records = read_import(sys.stdin.buffer, "<stdin>")
        else:
            with open(file, "rb") as f:
                records = read_import(f, file)
    except OSError as exc:
        fail(f"{file}:1: cannot read: {exc.strerror or exc}")
    except InputError as exc:
        fail(str(exc))
    audit = _audit(log, who, reason, ledger, change=True)
    keys = [r["key"] for r in records]
    with _using(ledger, audit, refused="--ledger: ") as led:
        before = led.balances(keys) if keys else []
        n = led.import_(records, merge=merge)
        after = led.balances(keys) if keys else []
        audit.write("import", merge=merge, source=file, **changes(keys, before, after))
    typer.echo(f"imported {n} counter(s){' (merged)' if merge else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger", epilog="Exit codes: 0 done; 1 the ledger refused or failed; "
                                                   "2 bad input, or a change without --log/--reason.")
