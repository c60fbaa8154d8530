"""The simulation for people: the same sections as a terminal table or a one-page HTML report.

``sections(result)`` turns the JSON result into titled tables of strings
(money via ``views.money``, exact); ``rich_view`` and ``html_page`` only lay
them out, so the terminal and the page always say the same thing. The page
is self-contained: the chart is embedded as a ``data:`` PNG, every string
from the log is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .views import money

TOP = 10
Section = tuple[str, list[str], list[list[str]]]


def when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _used(spent: int, limit: int | None) -> str:
    if limit is None:
        return ""
    pct = spent * 100 // limit if limit else (0 if spent == 0 else 10**9)
    return f"{pct}%" + (" OVER" if spent > limit else "")


def _limit(r: dict[str, Any], currency: str) -> str:
    if r["limit"] is None:
        return "-"
    return money(r["limit"], currency) + (f" per {r['window']}" if r.get("window") else "")


def _rows(rows: list[dict[str, Any]], currency: str) -> list[list[str]]:
    """A windowed limit caps each window: shown with its window, no share of the run's spend."""
    return [[r["key"], f"{r['calls']:,}", f"{r['allowed']:,}", f"{r['denied']:,}", money(r["spent"], currency),
             _limit(r, currency), "" if r.get("window") else _used(r["spent"], r["limit"])] for r in rows]


def _top(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``TOP`` biggest spenders, then up to ``TOP`` more of those that were denied."""
    by_spend = sorted(rows, key=lambda r: (-r["spent"], r["key"]))
    return by_spend[:TOP] + [r for r in by_spend[TOP:] if r["denied"]][:TOP]


def sections(result: dict[str, Any], inputs: dict[str, Any]) -> list[Section]:
    cur = result["currency"]
    c = result["calls"]
    summary = [["policy", f"{result['policy_id']} ({cur}) {(result['policy_revision'] or '')[:19]}"],
               ["calls", f"{c['total']:,}: {c['allowed']:,} allowed, {c['denied']:,} denied"
                         + (f" ({c['errors']:,} errors)" if c["errors"] else "")],
               ["period", f"{when(result['time']['first'])} .. {when(result['time']['last'])} UTC"],
               ["records", f"{inputs['records']:,} simulated, {inputs['skipped_bad']:,} bad skipped, "
                           f"{inputs['without_cost']:,} without cost"
                           + "".join(f", {n:,} in {k}" for k, n in inputs["foreign_currency"].items())]]
    out: list[Section] = [("simulation", ["", ""], summary)]
    denials = [[scope, f"{n:,}", when(result["first_denial"][scope]["timestamp"]),
                result["first_denial"][scope]["receipt_id"], result["first_denial"][scope]["where"],
                _who(result["first_denial"][scope])]
               for scope, n in result["denied_by_scope"].items()]
    out.append(("denied by scope (first denial)", ["scope", "denied", "first", "receipt", "where", "who"], denials))
    head = ["key", "calls", "allowed", "denied", "spent", "limit", "used"]
    total = dict(result["spend"]["total"], key="total")
    out.append(("spend: total", head, _rows([total], cur)))
    for scope in ("agent", "session", "tool"):
        rows = result["spend"][scope]
        shown = _top(rows)
        more = f" ({len(shown)} of {len(rows):,}: the {TOP} biggest, then denied ones)" \
            if len(shown) < len(rows) else ""
        out.append((f"spend by {scope}{more}", head, _rows(shown, cur)))
    if result["warnings"]:
        out.append(("warnings", ["count", "warning", "first"],
                    [[f"{w['count']:,}", json.dumps(w["warning"], sort_keys=True), w["first"]["where"]]
                     for w in result["warnings"]]))
    return out


def _who(d: dict[str, Any]) -> str:
    return f"{d['agent_id']} {d['session_id'] or '-'} {d['tool_key']} cost {d['cost_units']}"


def rich_view(result: dict[str, Any], inputs: dict[str, Any]) -> Group:
    parts = []
    for title, head, rows in sections(result, inputs):
        t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_header=any(head))
        for h in head:
            t.add_column(h, justify="right" if h in ("calls", "allowed", "denied", "spent", "limit", "used",
                                                     "count") else "left", no_wrap=True)
        for row in rows:
            t.add_row(*(Text(cell, style="bold red" if cell.endswith("OVER") else "") for cell in row))
        if not rows:
            t.add_row(*(["(none)"] + [""] * (len(head) - 1)))
        parts.append(t)
    return Group(*parts)


_CSS = ("body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;"
        "text-align:left}td.n{text-align:right}.over{color:#c00;font-weight:bold}img{max-width:100%}")


def html_page(result: dict[str, Any], inputs: dict[str, Any], png: bytes | None) -> str:
    """One self-contained page: the sections and the chart (if any), nothing fetched from anywhere."""
    e = html.escape
    body = [f"<h1>Budget simulation: policy {e(result['policy_id'])}</h1>"]
    if png is not None:
        body.append(f'<img alt="cumulative spend per scope" src="data:image/png;base64,'
                    f'{base64.b64encode(png).decode()}">')
    for title, head, rows in sections(result, inputs):
        body.append(f"<h2>{e(title)}</h2><table>")
        if any(head):
            body.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        for row in rows or [["(none)"]]:
            cells = []
            for h, cell in zip(head or [""] * len(row), row):
                cls = ' class="n"' if h in ("calls", "allowed", "denied", "spent", "limit", "used", "count") else ""
                cls = ' class="n over"' if cell.endswith("OVER") else cls
                cells.append(f"<td{cls}>{e(cell)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        body.append("</table>")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Budget simulation</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _decision_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "(skipped)"
    if d["allow"]:
        return "allow"
    if d.get("error"):
        return f"DENY error: {d['error']}"
    return "DENY " + ", ".join(v["scope"] for v in d["violations"])


def diff_view(summary: dict[str, Any], listed: list[dict[str, Any]]) -> Group:
    """The diff summary, counts by scope, and the first differing calls."""
    head = Table(box=box.SIMPLE, show_header=False, title="diff", title_justify="left")
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    for side in ("a", "b"):
        s = summary[side]
        head.add_row(f"{side}: {s['policies']} {s['rego_dir'] or '(shipped Rego)'} policy {s['policy_id']}",
                     f"{s['calls']['allowed']:,} allowed, {s['calls']['denied']:,} denied, spent "
                     f"{money(s['spent'], s['currency'])} ({(s['policy_revision'] or '')[:19]})")
    head.add_row("calls", f"{summary['calls']:,}, {summary['differ']:,} decided differently")
    head.add_row("denied by both", f"{summary['denied_in_both_differently']:,} for different scopes")
    skipped = summary["decided_only_in_a"] + summary["decided_only_in_b"]
    if skipped:
        head.add_row("skipped by one side", f"{summary['decided_only_in_b']:,} only in b, "
                                            f"{summary['decided_only_in_a']:,} only in a (--skip-bad)")
    scopes = Table(box=box.SIMPLE_HEAD, title="differences by scope", title_justify="left")
    for col in ("scope", "denied only in a", "denied only in b"):
        scopes.add_column(col, justify="left" if col == "scope" else "right")
    only_a, only_b = summary["denied_only_in_a"], summary["denied_only_in_b"]
    for scope in sorted(set(only_a) | set(only_b)):
        scopes.add_row(scope, f"{only_a.get(scope, 0):,}", f"{only_b.get(scope, 0):,}")
    calls = Table(box=box.SIMPLE_HEAD, title=f"differing calls (first {len(listed)} of {summary['differ']:,}; "
                  "--json lists all)", title_justify="left")
    for col in ("when", "receipt", "agent", "session", "tool", "cost", "a", "b"):
        calls.add_column(col, no_wrap=col in ("when", "receipt"))
    for d in listed:
        calls.add_row(when(d["timestamp"]), d["receipt_id"], d["agent_id"], d["session_id"] or "-", d["tool_key"],
                      f"{d['cost_units']:,}", _decision_cell(d["a"]), _decision_cell(d["b"]))
    return Group(head, scopes, calls)
