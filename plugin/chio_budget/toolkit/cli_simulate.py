"""``chio-budget simulate`` and ``chio-budget diff``: a budget change against real traffic.

Exit codes - simulate: 0 simulated (denies are results, not failures), 2 bad
input (a malformed or unpriceable record as ``file:line: field: problem``,
a bad policy/Rego/option, a ledger that is not new). diff: 0 the two
configurations decide every call the same, 1 they differ, 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import POLICIES, POLICY_ID, RATES, REGO_DIR
from ..errors import ChioBudgetError
from .cli_report import RECEIPTS, SKIP_BAD, fail, print_bad
from .ordering import DEFAULT_RUN_SIZE

ASSUME_SORTED = typer.Option(False, "--assume-sorted",
                             help="stream the log as it is; stop at the first record out of timestamp order")
COST_FIELD = typer.Option(None, "--cost-field",
                          help="dotted path of the cost in each record (default: total_monetary_cost)")
SORT_RUN = typer.Option(DEFAULT_RUN_SIZE, "--sort-run", min=1, help="calls sorted in memory at once; "
                        "larger logs are sorted externally (env CHIO_SORT_DIR: where the runs go)")
SIM_LEDGER = typer.Option("memory", "--ledger", help="memory, or sqlite:///new.db (a new, empty file; "
                          "never a live ledger)")


def simulate(receipts: list[str] = RECEIPTS, policies: Path = POLICIES, policy_id: str = POLICY_ID,
             rego_dir: Optional[Path] = REGO_DIR, ledger: str = SIM_LEDGER, assume_sorted: bool = ASSUME_SORTED,
             cost_field: Optional[str] = COST_FIELD, rates: Optional[Path] = RATES, skip_bad: bool = SKIP_BAD,
             json_out: bool = typer.Option(False, "--json", help="the result as one JSON object"),
             chart: Optional[Path] = typer.Option(None, "--chart", help="write a PNG: cumulative spend per scope, "
                                                  "limits, denies ([charts] extra)"),
             html_out: Optional[Path] = typer.Option(None, "--html", help="write a one-page HTML report "
                                                     "with the chart"),
             sort_run: int = SORT_RUN) -> None:
    """Replay receipt logs through the guard (embedded OPA, fresh ledger), in timestamp order:
    each record is authorize + commit of its cost. Reports calls allowed/denied by scope, spend per
    agent/session/tool against the limits, the first denial per scope, and the warnings.
    """
    from .simrun import SimSpec, env_progress, simulate_spec

    if chart is not None or html_out is not None:
        _require_matplotlib()
    spec = SimSpec(tuple(receipts), str(policies), policy_id, None if rego_dir is None else str(rego_dir), ledger,
                   assume_sorted, cost_field, None if rates is None else str(rates), skip_bad, sort_run,
                   env_progress())
    try:
        sim, inputs = simulate_spec(spec)
    except ChioBudgetError as exc:
        fail(str(exc))
    result, inp = sim.result(), inputs.to_json()
    png = _chart(sim, chart) if chart is not None or html_out is not None else None
    if html_out is not None:
        from .simviews import html_page

        _write(html_out, html_page(result, inp, png).encode("utf-8"))
    if json_out:
        typer.echo(json.dumps({**result, "input": inp}, separators=(",", ":")))
    else:
        from .simviews import rich_view
        from .views import console

        console().print(rich_view(result, inp))
        for path in (chart, html_out):
            if path is not None:
                typer.echo(f"wrote {path}", err=True)
    print_bad(inputs.bad)


def _require_matplotlib() -> None:
    from .charts import _matplotlib

    try:
        _matplotlib()
    except ChioBudgetError as exc:
        fail(str(exc))


def _chart(sim, path: Optional[Path]) -> bytes:
    from .charts import draw

    png = draw(sim)
    if path is not None:
        _write(path, png)
    return png


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"{path}: cannot write: {exc.strerror or exc}")


def diff(receipts: list[str] = RECEIPTS,
         policies_a: Optional[Path] = typer.Option(None, "--policies-a", help="policies of side a"),
         policies_b: Optional[Path] = typer.Option(None, "--policies-b", help="policies of side b"),
         rego_dir_a: Optional[Path] = typer.Option(None, "--rego-dir-a", help="Rego of side a"),
         rego_dir_b: Optional[Path] = typer.Option(None, "--rego-dir-b", help="Rego of side b"),
         policies: Path = POLICIES, policy_id: str = POLICY_ID, rego_dir: Optional[Path] = REGO_DIR,
         assume_sorted: bool = ASSUME_SORTED, cost_field: Optional[str] = COST_FIELD, rates: Optional[Path] = RATES,
         skip_bad: bool = SKIP_BAD, sort_run: int = SORT_RUN,
         json_out: bool = typer.Option(False, "--json", help="JSON lines: one per differing call, then the summary"),
         jobs: int = typer.Option(2, "--jobs", min=1, max=2, help="2: the two simulations in two processes"),
         show: int = typer.Option(50, "--show", min=0, help="differing calls listed in the table")) -> None:
    """The same log through two configurations (--policies-a/-b and/or --rego-dir-a/-b): every call
    decided differently, with both decisions, and a summary by scope.
    """
    from .diff import diff as run_diff
    from .simrun import SimSpec, env_progress

    if policies_a is None and policies_b is None and rego_dir_a is None and rego_dir_b is None:
        fail("diff: give --policies-a/--policies-b and/or --rego-dir-a/--rego-dir-b")

    def side(pol: Optional[Path], rego: Optional[Path]) -> SimSpec:
        rego = rego if rego is not None else rego_dir
        return SimSpec(tuple(receipts), str(pol if pol is not None else policies), policy_id,
                       None if rego is None else str(rego), "memory", assume_sorted, cost_field,
                       None if rates is None else str(rates),
                       skip_bad, sort_run)

    try:
        summary, differences = run_diff(side(policies_a, rego_dir_a), side(policies_b, rego_dir_b), jobs=jobs,
                                        show_progress=env_progress())
    except ChioBudgetError as exc:
        fail(str(exc))
    if json_out:
        for d in differences:
            typer.echo(json.dumps(d, separators=(",", ":")))
        typer.echo(json.dumps({"summary": summary.to_json()}, separators=(",", ":")))
    else:
        from .simviews import diff_view
        from .views import console

        listed = [d for _, d in zip(range(show), differences)]
        for _ in differences:  # the rest: counted, not listed
            pass
        console().print(diff_view(summary.to_json(), listed))
    raise typer.Exit(1 if summary.differ else 0)


def register(app: typer.Typer) -> None:
    app.command("simulate", epilog="Exit codes: 0 simulated (denies are results); 2 bad input "
                                   "(file:line: field: problem), bad policy/Rego/option, or a ledger that is "
                                   "not new.")(simulate)
    app.command("diff", epilog="Exit codes: 0 every call decided the same; 1 some differ; 2 bad input.")(diff)
