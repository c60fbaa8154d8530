"""``chio-budget test-rego``: ``opa test`` through the embedded OPA (test support)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from .rego_source import RegoSourceError

HELP = """Run Rego tests like `opa test` (through the embedded OPA; test support).

Loads every .rego/.json/.yaml file under PATHS, runs each rule whose name
starts with test_ (todo_test_ rules are SKIPPED) and reports in `opa test`'s
format. Exit codes are `opa test`'s, which take precedence here over the rest
of the CLI's convention (2 = bad input): 0 all passed, or no tests at all;
2 a test failed, errored or was skipped (skipped: 0 with -z), or coverage is
below --threshold; 1 a file did not load or compile (invalid METADATA
included), --coverage with a failing test, or --fail-on-empty with no tests.
"""


def test_rego(paths: Optional[list[Path]] = typer.Argument(None, help="files or directories (default: rego)"),
              verbose: bool = typer.Option(False, "-v", "--verbose", help="report every test, not only failures"),
              exit_zero_on_skipped: bool = typer.Option(False, "-z", "--exit-zero-on-skipped",
                                                        help="skipped tests return status 0"),
              coverage: bool = typer.Option(False, "-c", "--coverage", help="print OPA's JSON coverage report"),
              threshold: float = typer.Option(0.0, "--threshold",
                                              help="exit 2 if coverage is below this percentage (implies -c)"),
              fmt: str = typer.Option("pretty", "-f", "--format", help="pretty | json"),
              run_filter: Optional[str] = typer.Option(None, "-r", "--run",
                                                       help="run only tests whose data.<pkg>.<name> matches"),
              fail_on_empty: bool = typer.Option(False, "--fail-on-empty", help="exit 1 when no test ran")) -> None:
    from .regotest import LoadError, coverage_report, failure_trace, load, plan, run_tests
    from .regotest_report import as_json, coverage_json, pretty, threshold_message

    if not 0 <= threshold <= 100:
        _exit("Code coverage threshold must be between 0 and 100", 1)
    if fmt not in ("pretty", "json"):
        _exit(f'invalid argument "{fmt}" for "-f, --format" flag: must be one of {{pretty,json}}', 1)
    try:
        loaded = load([str(p) for p in paths or [Path("rego")]])
        tests, sources = plan(loaded, run_filter)
        results, opa = run_tests(loaded, tests, sources)
    except (LoadError, RegoSourceError, re.error) as exc:
        _exit(str(exc), 1)
    try:
        if coverage or threshold > 0:
            code = _coverage_mode(results, lambda: coverage_report(opa, tests), threshold, verbose,
                                  pretty, coverage_json, threshold_message)
        else:
            trace_of = (lambda r: failure_trace(opa, r.test)) if verbose else None
            typer.echo(as_json(results) if fmt == "json" else pretty(results, verbose=verbose, trace_of=trace_of),
                       nl=False)
            code = 2 if any(not r.passed and not (r.skip and exit_zero_on_skipped) for r in results) else 0
    finally:
        opa.close()
    if code == 0 and not results and fail_on_empty:
        _exit("no tests were run", 1)
    raise typer.Exit(code)


def _coverage_mode(results, report_of, threshold, verbose, pretty, coverage_json, threshold_message) -> int:
    """``JSONCoverageReporter``: an error or failure ends the run (1); else the report, or 2 below threshold."""
    from .regotest_report import result_line

    for r in results:
        if r.error is not None:
            _exit(r.error, 1)
    failures = [r for r in results if r.fail]
    if failures:
        typer.echo(pretty(failures, verbose=verbose), nl=False)
        first = failures[0]
        subs = "".join(line + "\n" for line in sub_lines(first))
        _exit(result_line(first) + "\n" + subs, 1)
    report = report_of()
    if report.get("coverage", 0) < threshold:
        _exit(threshold_message(report, threshold, verbose=verbose), 2)
    typer.echo(coverage_json(report), nl=False)
    return 0


def sub_lines(r) -> list[str]:
    from .regotest_report import iter_subs, sub_line

    return ["  " * (len(full) - 1) + sub_line(sr) for full, sr in iter_subs(r.sub_results)]


def _exit(message: str, code: int) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("test-rego", help=HELP)(test_rego)
