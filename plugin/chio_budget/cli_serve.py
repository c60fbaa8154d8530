"""``chio-budget serve``: the HTTP sidecar the Chio kernel calls (``chio_budget.serve``).

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 2 when it cannot
start as told (a located policy error, an option that cannot work, an
address it cannot listen on, a missing ``[serve]`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import typer

from .errors import ChioBudgetError

HELP = (
    "Serve every policy in --policies over HTTP for the Chio kernel (docs/kernel.md).\n\n"
    "Binds 127.0.0.1:8787 unless told otherwise (--host/--port, or --uds PATH). SIGTERM finishes the requests "
    "in flight and refuses new ones; SIGHUP reloads every policy in every worker. --workers N needs a shared "
    "ledger (sqlite, redis, postgresql). --openapi prints the OpenAPI document (docs/openapi.json) and exits.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"chio-budget serve: {message}", err=True)
    raise typer.Exit(code)


def run(options: dict[str, Any], token_file: Optional[Path], print_openapi: bool) -> None:
    """Check the options, then serve until stopped (or print the OpenAPI document)."""
    try:
        from .serve.app import create_app, openapi_json
        from .serve.options import ServeError, ServeOptions, read_token
        from .serve.runner import serve
    except ModuleNotFoundError as exc:
        _fail(f"needs {exc.name!r}: pip install 'chio-budget-guard[serve]'")
    if print_openapi:
        typer.echo(openapi_json(create_app(None)), nl=False)
        return
    warnings: list[str] = []
    try:
        if token_file is not None:
            options["token"], warnings = read_token(token_file)
        opts = ServeOptions(**options)
        warnings += opts.check()
    except ServeError as exc:
        _fail(str(exc))
    for w in warnings:
        typer.echo(f"chio-budget serve: warning: {w}", err=True)
    try:
        code = serve(opts)
    except ChioBudgetError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


def register(app: typer.Typer, names: Mapping[str, Any]) -> None:
    """Add ``serve`` to ``app`` with ``cli``'s option objects (``names``: its globals)."""

    @app.command("serve", help=HELP)
    def serve_cmd(policies: Path = names["POLICIES"], policy_id: str = names["POLICY_ID"],
                  rego_dir: Optional[Path] = names["REGO_DIR"], engine: str = names["ENGINE"],
                  opa_url: Optional[str] = names["OPA_URL"], ledger: str = names["LEDGER"],
                  rates: Optional[Path] = names["RATES"],
                  host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
                  port: int = typer.Option(8787, "--port", help="TCP port (0: any free one, printed)"),
                  uds: Optional[Path] = typer.Option(None, "--uds", help="listen on this Unix socket instead"),
                  workers: int = typer.Option(1, "--workers", help="worker processes (N > 1: a shared ledger)"),
                  token_file: Optional[Path] = typer.Option(None, "--token-file",
                                                            help="require 'Authorization: Bearer <its token>'"),
                  tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS certificate chain (PEM)"),
                  tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS private key (PEM)"),
                  tls_client_ca: Optional[Path] = typer.Option(
                      None, "--tls-client-ca", help="require client certificates signed by these CAs (PEM)"),
                  max_body_bytes: int = typer.Option(1_048_576, "--max-body-bytes", help="larger bodies get 413"),
                  decision_log: Optional[Path] = typer.Option(None, "--decision-log",
                                                              help="append decision-log JSON lines here"),
                  reservation_ttl: Optional[float] = typer.Option(
                      None, "--reservation-ttl", help="seconds a hold lasts unsettled (default: the ledger's, 600)"),
                  graceful_timeout: int = typer.Option(30, "--graceful-timeout",
                                                       help="seconds in-flight requests get after SIGTERM"),
                  access_log: bool = typer.Option(False, "--access-log", help="log every request"),
                  print_openapi: bool = typer.Option(False, "--openapi", help="print the OpenAPI document and exit"),
                  ) -> None:
        run({"policies": policies, "policy_id": policy_id, "rego_dir": rego_dir, "engine": engine,
             "opa_url": opa_url, "ledger": ledger, "rates": rates, "host": host, "port": port, "uds": uds,
             "workers": workers, "tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca,
             "max_body_bytes": max_body_bytes, "decision_log": decision_log, "reservation_ttl": reservation_ttl,
             "graceful_timeout": graceful_timeout, "access_log": access_log}, token_file, print_openapi)
