"""Tables for people: money, bytes and durations written the way an operator reads them.

Money is shown in major units with the currency's exponent (``16293 USD`` ->
``162.93 USD``), computed with integers (no float ever touches an amount).
The JSON outputs stay exact; these views only render them.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..currencies import builtin_scale
from ..policy import BudgetPolicy
from .simulate import policy_limit


def console() -> Console:
    """stdout for tables: a terminal's own width, 200 columns into a pipe or file (no mid-cell wrapping)."""
    out = Console(soft_wrap=True)
    return out if out.is_terminal else Console(soft_wrap=True, width=200)


def money(units: int, currency: str) -> str:
    """``162.93 USD``: exact, from integer minor units and the currency's scale (kernel pins,
    then ISO 4217/CLDR); a code without a known decimal scale is shown as ``N minor units``."""
    found = builtin_scale(currency)
    scale = found[0] if found else None
    if scale == 1:
        return f"{units:,} {currency}"
    exp = len(str(scale)) - 1 if scale else 0
    if scale is None or scale != 10**exp:
        return f"{units:,} minor units {currency}"
    major, minor = divmod(units, scale)
    return f"{major:,}.{minor:0{exp}d} {currency}"


def amount(m: dict[str, Any] | None, missing: str = "-") -> str:
    return missing if m is None else money(m["units"], m["currency"])


def nbytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # display only
    return str(n)


def duration_ms(ms: int) -> str:
    s = ms // 1000
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def usage(spent: dict[str, Any] | None, limit_units: int | None, currency: str,
          window: str | None = None) -> tuple[str, str]:
    """``(limit, used)`` cells: the limit and the share used, or why it cannot be compared
    (a windowed limit caps each window, not the whole log)."""
    if limit_units is None:
        return "-", ""
    limit = money(limit_units, currency)
    if window is not None:
        return f"{limit} per {window}", "n/a (windowed)"
    if spent is None:
        return limit, "n/a (mixed)"
    if spent["currency"] != currency:
        return limit, f"n/a ({spent['currency']})"
    pct = spent["units"] * 100 // limit_units if limit_units else (0 if spent["units"] == 0 else 10**9)
    over = spent["units"] > limit_units
    return limit, f"[red]{pct}% over[/red]" if over else f"{pct}%"


def report_view(result: dict[str, Any], group_by: str, policy: BudgetPolicy | None = None,
                scope_note: str = "") -> Group:
    """The summary and (when grouped) one row per group, with limits when a policy is given."""
    s = result["summary"]
    head = Table(box=box.SIMPLE, show_header=False, title="receipts cost" + scope_note, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    count = f"{s['receipt_count']:,}"
    if result["truncated"]:
        count += " (truncated: more records matched; --all to count them all)"
    head.add_row("receipts", count)
    head.add_row("agents / tools", f"{s['distinct_agents']:,} / {s['distinct_tools']:,}")
    head.add_row("compute time", duration_ms(s["total_compute_time_ms"]))
    head.add_row("data", nbytes(s["total_data_bytes"]))
    head.add_row("spend", amount(s.get("total_monetary_cost"), "- (no cost, or mixed currencies)"))
    if policy is not None:
        units, window = policy_limit(policy, "total")
        limit, used = usage(s.get("total_monetary_cost"), units, policy.currency, window)
        head.add_row(f"policy {policy.id} max_total", f"{limit}  {used}".rstrip())
    parts: list[Any] = [head]
    groups = result.get("groups", [])
    if groups:
        table = Table(box=box.SIMPLE_HEAD, title=f"by {group_by}", title_justify="left",
                      caption="spend '-': no monetary cost, or costs in more than one currency",
                      caption_justify="left")
        table.add_column(group_by)
        for name in ("receipts", "compute", "data", "spend"):
            table.add_column(name, justify="right")
        if policy is not None:
            table.add_column("limit", justify="right")
            table.add_column("used", justify="right")
        for g in groups:
            row = [Text(g["key"]), f"{g['receipt_count']:,}", duration_ms(g["total_compute_time_ms"]),
                   nbytes(g["total_data_bytes"]), amount(g.get("total_monetary_cost"))]
            if policy is not None:
                units, window = policy_limit(policy, group_by, g["key"])
                row += list(usage(g.get("total_monetary_cost"), units, policy.currency, window))
            table.add_row(*row)
        parts.append(table)
    return Group(*parts)


def ledger_view(rows: list[dict[str, Any]]) -> Table:
    """``ledger show``: one row per counter (units as stored: the ledger does not know currencies)."""
    table = Table(box=box.SIMPLE_HEAD, title=f"{len(rows)} counter(s)", title_justify="left")
    for col in ("policy", "window", "scope", "id", "spent", "held", "total"):
        table.add_column(col, justify="right" if col in ("spent", "held", "total") else "left", no_wrap=True)
    for r in rows:
        table.add_row(r["policy_id"], r["window"] or "-", r["scope"], Text(r["id"] or "-"), f"{r['spent']:,}",
                      f"{r['held']:,}", f"{r['total']:,}")
    return table
