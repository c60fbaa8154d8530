"""``chio-budget``: compile, check, replay, test-rego, demo (and more, by issue).

Exit codes: 0 ok/allowed, 1 denied or tests failed, 2 bad input (located
``file:line: field: problem`` on stderr; nothing was recorded).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from . import cli_rates, cli_serve
from .errors import ChioBudgetError, InputError, PolicyError, WindowError
from .toolkit.cli import register as register_toolkit

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

POLICIES = typer.Option(Path("policies"), "--policies", "-p", help="directory of YAML budget policies")
POLICY_ID = typer.Option("default", "--policy-id", help="policy to enforce")
REGO_DIR = typer.Option(None, "--rego-dir", help="Rego directory (default: the one shipped in the package)")
ENGINE = typer.Option("embedded", "--engine", help="embedded | server")
OPA_URL = typer.Option(None, "--opa-url", envvar="CHIO_OPA_URL", help="OPA server URL (engine=server)")
LEDGER = typer.Option("memory", "--ledger", envvar="CHIO_LEDGER", help="memory | sqlite:///path | redis://host:port/db | postgresql://user@host/db?schema=name")
RATES = typer.Option(None, "--rates", envvar="CHIO_RATES", help="rates.yaml: exchange rates and declared currency units")
CURRENCY = typer.Option(None, "--currency", help="currency of the cost (default: the policy's)")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _rates(rates: Optional[Path]):
    """The ``--rates`` file as an oracle (None without one); a bad file exits 2 with its located errors."""
    from .rates_file import load_rates

    if rates is None:
        return None
    try:
        return load_rates(rates)
    except ChioBudgetError as exc:
        _fail(str(exc))


def _currencies(oracle):
    from .currencies import DEFAULT_CURRENCIES

    return oracle.currencies if oracle is not None else DEFAULT_CURRENCIES


def _guard(policies: Path, policy_id: str, rego_dir: Optional[Path], engine: str, opa_url: Optional[str],
           ledger: str, rates: Any = None):
    from .guard import BudgetGuard

    options: dict[str, Any] = {}
    if engine == "server":
        if not opa_url:
            _fail("--opa-url (or CHIO_OPA_URL) is required with --engine server")
        options["opa_url"] = opa_url
    try:
        return BudgetGuard.from_files(policies, policy_id=policy_id, rego_dir=rego_dir, engine=engine,
                                      ledger=ledger, rates=rates, **options)
    except ChioBudgetError as exc:
        _fail(str(exc))


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@app.command("compile")
def compile_cmd(policies: Path = typer.Argument(Path("policies"), help="policy directory"),
                output: Path = typer.Option(Path("build/data.json"), "-o", "--output"),
                rates: Optional[Path] = RATES) -> None:
    """Validate YAML policies and write the Rego data document."""
    from .compiler import compile_dir

    currencies = _currencies(_rates(rates))
    try:
        data = compile_dir(policies, currencies=currencies)
    except PolicyError as exc:
        _fail(str(exc))
    if output.is_dir():
        _fail(f"{output}: cannot write the data document: is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(data)
    except OSError as exc:
        _fail(f"{output}: cannot write the data document: {exc.strerror or exc}")
    n = len(json.loads(data)["chio"]["budget"]["policies"])
    typer.echo(f"wrote {output} ({n} polic{'y' if n == 1 else 'ies'})", err=True)


@app.command()
def check(meta: str = typer.Option(..., "--meta", help="CostMetadata JSON (Rust form)"),
          cost_units: int = typer.Option(..., "--cost", help="cost in minor units of --currency (default: the policy's)"),
          currency: Optional[str] = CURRENCY, rates: Optional[Path] = RATES,
          policies: Path = POLICIES, policy_id: str = POLICY_ID, rego_dir: Optional[Path] = REGO_DIR,
          engine: str = ENGINE, opa_url: Optional[str] = OPA_URL, ledger: str = LEDGER) -> None:
    """Decide one proposed cost against the ledger's current counters (holds nothing).

    With ``--currency`` the cost is converted into the policy currency with
    the ``--rates`` file (a missing or stale rate is a deny, exit 1).
    """
    from .money import MonetaryAmount
    from .replay import parse_json, parse_meta

    try:
        m = parse_meta(parse_json(meta, "--meta"), "--meta")
    except InputError as exc:
        _fail(str(exc))
    oracle = _rates(rates)
    cost: Any = cost_units
    if currency is not None:
        try:
            _currencies(oracle).scale(currency)
            cost = MonetaryAmount(units=cost_units, currency=currency)
        except ValueError as exc:
            _fail(f"--currency: {str(exc).splitlines()[-1].strip()}")
    guard = _guard(policies, policy_id, rego_dir, engine, opa_url, ledger, oracle)
    try:
        e = guard.evaluate(m, cost)
    except WindowError as exc:
        _fail(f"--meta: timestamp: {exc}")
    except ValueError as exc:
        _fail(f"--cost: {exc}")
    d, c = e.decision, e.conversion
    if c is not None:
        rate = "no rate" if c.rate is None else f"{c.rate.numerator}/{c.rate.denominator} from {c.rate.source}"
        typer.echo(f"converted {cost_units} {currency} -> {c.units} {c.currency} ({c.pair} {rate}, "
                   f"margin {c.margin_bps} bps, {c.status})", err=True)
    typer.echo(_dump(d.to_json_dict()))
    typer.echo(d.reason(), err=True)
    raise typer.Exit(0 if d.allow else 1)


@app.command()
def replay(file: Path = typer.Argument(..., help="JSON lines; '-' for stdin"),
           currency: Optional[str] = CURRENCY, rates: Optional[Path] = RATES, policies: Path = POLICIES, policy_id: str = POLICY_ID, rego_dir: Optional[Path] = REGO_DIR,
           engine: str = ENGINE, opa_url: Optional[str] = OPA_URL, ledger: str = LEDGER) -> None:
    """Run check/record/authorize/remaining/total_spent events, one JSON line out per event.

    Every line is validated before any is run: a bad line is reported as
    ``FILE:LINE: field: problem`` and nothing at all is recorded. A failure
    while running (e.g. the ledger) is ``FILE:LINE: op: cause``, exit 2;
    the lines before it have run. A line's ``"currency"`` (else ``--currency``)
    names the currency of its ``cost_units``; ``--rates`` converts it.
    """
    from .replay import ReplayError, load_events, run_events
    from .text import TextError, decode_utf8

    name = "<stdin>" if str(file) == "-" else str(file)
    oracle = _rates(rates)
    try:
        text = decode_utf8(sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes())
        events = load_events(text, name, currency=currency, currencies=_currencies(oracle))
    except OSError as exc:
        _fail(f"{name}:1: cannot read: {exc.strerror or exc}")
    except TextError as exc:
        _fail(f"{name}:{exc.line}: {exc.message}")
    except InputError as exc:
        _fail(str(exc))
    guard = _guard(policies, policy_id, rego_dir, engine, opa_url, ledger, oracle)
    try:
        for out in run_events(guard, events, name):
            typer.echo(_dump(out))
    except ReplayError as exc:
        _fail(str(exc))
    finally:
        guard.close()


@app.command()
def demo(policies: Path = POLICIES, policy_id: str = POLICY_ID,
         engine: str = ENGINE, opa_url: Optional[str] = OPA_URL, ledger: str = LEDGER) -> None:
    """Drive a scripted agent session through the guard and show each decision."""
    from .demo import run_demo

    guard = _guard(policies, policy_id, None, engine, opa_url, ledger)
    try:
        run_demo(guard, policies_dir=policies)
    finally:
        guard.close()


@app.command()
def push(policies: Path = typer.Argument(Path("policies"), help="policy directory"),
         rego: Optional[Path] = typer.Argument(None, help="Rego directory (default: the one shipped in the package)"),
         opa_url: Optional[str] = OPA_URL,
         token: Optional[str] = typer.Option(None, "--token", envvar="CHIO_OPA_TOKEN", help="bearer token"),
         insecure: bool = typer.Option(False, "--insecure", help="allow credentials over plain http:// (warns)"),
         timeout: float = typer.Option(5.0, "--timeout", help="seconds per request"),
         rates: Optional[Path] = RATES) -> None:
    """PUT the compiled data and the Rego into a running OPA, then confirm the revision it serves.

    Credentials (``--token`` or ``user:pass@`` in the URL) are refused over
    plain ``http://``, where anyone on the path could read them, unless
    ``--insecure`` is given (then a warning is printed).
    """
    from .bundle import bundle_contents
    from .engines.opa_http import cleartext_credentials, make_client, push as push_to, redact
    from .rego_files import default_rego_dir

    if not opa_url:
        _fail("--opa-url (or CHIO_OPA_URL) is required")
    shown = redact(opa_url)
    if cleartext_credentials(opa_url, token):
        if not insecure:
            _fail(f"--opa-url {shown}: credentials over plain http:// would travel unencrypted; "
                  "use https:// or pass --insecure")
        typer.echo(f"warning: sending credentials to {shown} over plain http:// (--insecure)", err=True)
    try:
        contents = bundle_contents(policies, rego, currencies=_currencies(_rates(rates)))
        client = make_client(opa_url, token=token, timeout=timeout)
    except ChioBudgetError as exc:
        _fail(str(exc))  # bad input: exit 2
    try:
        revision = push_to(client, contents.compiled, contents.modules,
                           source_dir=str((rego.parent if rego.is_file() else rego) if rego else default_rego_dir()))
    except ChioBudgetError as exc:
        _fail(f"{shown}: {exc}", 1)  # the server refused or failed
    finally:
        client.close_connection()
    typer.echo(f"pushed to {shown}: revision {revision}")


@app.command()
def explain(decision_id: str = typer.Argument(
                ..., help="decision_id of a decision, or of a settlement or shadow event (followed to its decision)"),
            log: Path = typer.Option(..., "--log", help="decision-log file (JSON lines)")) -> None:
    """Print a past decision readably: request, cost, counters, violations, shadow, settlement."""
    from .decisionlog import DecisionLogError, explain as render_explain, find_decision, read_events

    try:
        events = find_decision(read_events(log), decision_id)
    except DecisionLogError as exc:
        _fail(str(exc))
    if not events:
        _fail(f"{log}: no event with decision_id {decision_id!r}", 1)
    typer.echo(render_explain(events))


from .cli_regotest import register as register_test_rego  # noqa: E402  (test-rego: the `opa test` stand-in)
register_test_rego(app)
from .cli_bundle import register as register_bundle  # noqa: E402  (bundle: build, sign, verify)
register_bundle(app, RATES, lambda rates: _currencies(_rates(rates)))
cli_rates.register(app)
register_toolkit(app, globals())  # report, sample-log, lint, simulate, diff, ledger (issue 12)
cli_serve.register(app, globals())  # serve: the HTTP sidecar (issue 10)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
