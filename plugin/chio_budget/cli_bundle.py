"""``chio-budget bundle``: build an OPA bundle, sign it as ``opa sign`` does, or verify one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .errors import ChioBudgetError

HELP = """Write an OPA bundle (policies compiled to data + the Rego) for `opa run --server --bundle`.

With --signing-key the bundle carries .signatures.json exactly as `opa sign`
writes it (the key: a PEM private key or a file holding one for RS*/PS*/ES*,
the secret or a file holding it for HS*). With --verify the bundle at -o is
checked instead, as `opa run --verification-key` does: exit 0 verified, 1 it
does not verify, 2 bad input (a key that cannot be read, no bundle).
"""


def run(policies: Path, rego: Optional[Path], output: Path, signing_key: Optional[str], signing_alg: str,
        verify: bool, verification_key: Optional[str], currencies: Callable[[], Any]) -> None:
    """Build (and sign) the bundle, or verify the one at ``output``."""
    from .bundle import read_bundle_files, write_bundle
    from .bundle_sign import ALGORITHMS, BundleSignatureError, verify as verify_bundle

    if signing_alg not in ALGORITHMS:
        _fail(f"--signing-alg {signing_alg}: unknown signature algorithm (one of {', '.join(ALGORITHMS)})")
    if verify:
        if not verification_key:
            _fail("--verify needs --verification-key")
        try:
            files = read_bundle_files(output)
        except ChioBudgetError as exc:
            _fail(str(exc))
        try:
            signed = verify_bundle(files, verification_key, signing_alg)
        except BundleSignatureError as exc:
            _fail(f"{output}: {exc}", 1)
        typer.echo(f"verified {output}: {len(signed)} file(s) signed with {signing_alg}")
        return
    try:
        contents = write_bundle(policies, rego, output, signing_key=signing_key, signing_alg=signing_alg,
                                currencies=currencies())
    except ChioBudgetError as exc:
        _fail(str(exc))
    signed = f", signed with {signing_alg}" if signing_key else ""
    typer.echo(f"wrote {output} (revision {contents.revision}, {len(contents.modules)} Rego module(s){signed})",
               err=True)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def register(app: typer.Typer, rates_option: Any, currencies_of: Callable[[Optional[Path]], Any]) -> None:
    """Add ``bundle`` to ``app`` with ``cli``'s ``--rates`` option and its way to read currencies from it."""

    @app.command("bundle", help=HELP)
    def bundle(policies: Path = typer.Argument(Path("policies"), help="policy directory"),
               rego: Optional[Path] = typer.Argument(None, help="Rego directory (default: the one shipped)"),
               output: Path = typer.Option(Path("build/bundle.tar.gz"), "-o", "--output"),
               signing_key: Optional[str] = typer.Option(None, "--signing-key", help="sign with this key (opa sign)"),
               signing_alg: str = typer.Option("RS256", "--signing-alg", help="RS256 | HS256 | ES256 | ..."),
               verify: bool = typer.Option(False, "--verify", help="verify the bundle at -o instead of building"),
               verification_key: Optional[str] = typer.Option(None, "--verification-key",
                                                              help="public key, certificate or HMAC secret"),
               rates: Optional[Path] = rates_option) -> None:
        run(policies, rego, output, signing_key, signing_alg, verify, verification_key, lambda: currencies_of(rates))
