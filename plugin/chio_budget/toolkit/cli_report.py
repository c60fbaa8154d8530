"""``chio-budget report`` and ``chio-budget sample-log``.

Exit codes: 0 the report was written; 2 bad input (a malformed record as
``file:line: field: problem``, an unreadable file, a bad option), and then
nothing is reported.
"""

from __future__ import annotations

import gzip
import io
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator, Optional

import typer

from ..errors import ChioBudgetError
from .costquery import GROUP_BY, CostAggregator, CostQuery, to_json
from .progress import LogProgress
from .receipts import BadRecords, iter_receipts, log_bytes

RECEIPTS = typer.Argument(..., help="receipt logs: JSON lines of CostMetadata ('-' stdin, *.gz decompressed)")
SKIP_BAD = typer.Option(False, "--skip-bad", help="count, report and skip malformed records instead of stopping")

EXIT_CODES = "Exit codes: 0 ok; 2 bad input (malformed record located file:line: field: problem, bad option)."


def fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def parse_time(text: str | None, option: str) -> int | None:
    """Unix seconds, or an ISO 8601 date/date-time (UTC unless it carries an offset)."""
    if text is None:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option}: expected Unix seconds or an ISO 8601 date such as 2026-01-31, got {text!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    seconds = int(dt.timestamp())
    if seconds < 0:
        fail(f"{option}: before 1970-01-01 (timestamps are unsigned Unix seconds): {text!r}")
    return seconds


def print_bad(bad: BadRecords) -> None:
    for line in bad.summary():
        typer.echo(line, err=True)


def report(receipts: list[str] = RECEIPTS,
           session_id: Optional[str] = typer.Option(None, "--session-id"),
           agent_id: Optional[str] = typer.Option(None, "--agent-id"),
           tool_server: Optional[str] = typer.Option(None, "--tool-server"),
           tool_name: Optional[str] = typer.Option(None, "--tool-name"),
           since: Optional[str] = typer.Option(None, "--since", help="inclusive; Unix seconds or ISO 8601"),
           until: Optional[str] = typer.Option(None, "--until", help="exclusive; Unix seconds or ISO 8601"),
           currency: Optional[str] = typer.Option(None, "--currency", help="only records whose total is in it"),
           limit: Optional[int] = typer.Option(None, "--limit", min=0,
                                               help="aggregate the first N matching records (max 500 unless --all)"),
           all_records: bool = typer.Option(False, "--all", help="lift the 500-record cap (still streamed)"),
           group_by: str = typer.Option("none", "--group-by", help="none | session | agent | tool"),
           json_out: bool = typer.Option(False, "--json", help="the Rust CostQueryResult JSON"),
           policies: Optional[Path] = typer.Option(None, "--policies", "-p",
                                                   help="(table) show each group's spend against this policy's limits"),
           policy_id: str = typer.Option("default", "--policy-id", help="policy whose limits are shown"),
           skip_bad: bool = SKIP_BAD) -> None:
    """Cumulative cost over receipt logs: `chio receipts cost`, the same answers on the same receipts.

    Filters are ANDed; --since is inclusive and --until exclusive; at most
    min(--limit, 500) matching records are aggregated (the kernel's answer)
    and `truncated` says whether more matched; --all lifts the cap.
    """
    if group_by not in GROUP_BY:
        fail(f"--group-by: must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    query = CostQuery(session_id=session_id, agent_id=agent_id, tool_server=tool_server, tool_name=tool_name,
                      since=parse_time(since, "--since"), until=parse_time(until, "--until"), currency=currency,
                      limit=limit, group_by=group_by)  # type: ignore[arg-type]
    policy = _policy(policies, policy_id) if policies is not None and not json_out else None
    agg = CostAggregator(query, cap=not all_records)
    bad = BadRecords() if skip_bad else None
    try:
        with LogProgress(log_bytes(receipts), label="report") as progress:
            for r in iter_receipts(receipts, bad=bad, progress=progress):
                agg.add(r)
    except ChioBudgetError as exc:
        fail(str(exc))
    result = agg.result()
    if json_out:
        typer.echo(to_json(result))
    else:
        from .views import console, report_view

        console().print(report_view(result, group_by, policy))
    if bad is not None:
        print_bad(bad)


def _policy(policies: Path, policy_id: str):
    from ..policy import load_policies

    try:
        loaded = load_policies(policies)
    except ChioBudgetError as exc:
        fail(str(exc))
    if policy_id not in loaded:
        fail(f"--policy-id: no policy {policy_id!r} in {policies} (have: {', '.join(sorted(loaded))})")
    return loaded[policy_id]


def sample_log(agents: int = typer.Option(20, "--agents", min=1, max=10_000),
               days: int = typer.Option(30, "--days", min=1, max=3660),
               seed: int = typer.Option(1, "--seed"),
               calls_per_day: float = typer.Option(30.0, "--calls-per-day", min=0.0, max=100_000.0,
                                                   help="an ordinary agent's mean calls per weekday"),
               start: str = typer.Option("2026-01-01", "--start", help="first day (ISO date or Unix seconds)"),
               output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                     help="file to write ('.gz' compresses); default stdout")) -> None:
    """Write a realistic, deterministic receipt log (same arguments, same bytes)."""
    from .samplelog import write_sample

    kwargs = dict(agents=agents, days=days, seed=seed, calls_per_day=calls_per_day,
                  start=parse_time(start, "--start"))
    if output is None:
        n = write_sample(sys.stdout, **kwargs)
    else:
        try:
            with _text_out(output) as out:
                n = write_sample(out, **kwargs)
        except OSError as exc:
            fail(f"{output}: cannot write: {exc.strerror or exc}")
        typer.echo(f"wrote {output} ({n:,} records)", err=True)


@contextmanager
def _text_out(path: Path) -> Iterator[IO[str]]:
    """A text stream to ``path``; ``.gz`` is gzip with a zero mtime, so the bytes stay deterministic."""
    with open(path, "wb") as raw:
        if path.suffix != ".gz":
            with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as text:
                yield text
            return
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as text:
            yield text


def register(app: typer.Typer) -> None:
    app.command("report", epilog=EXIT_CODES)(report)
    app.command("sample-log", epilog="Exit codes: 0 written; 2 bad option or unwritable file.")(sample_log)
