"""The simulation as a picture: cumulative spend per scope, the limits, and each deny.

Four panels over time: the total against ``max_total``; the five agents,
sessions and tools that spent most against their limits (one dashed line
per distinct limit); a red ``x`` at every deny of that scope, drawn at the
counter's value when the call was refused. Needs matplotlib, the
``[charts]`` extra; without it ``ChartError`` names the install command.
Rendering uses the Agg canvas directly (no global pyplot state, no display).
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

from ..errors import ChioBudgetError
from ..currencies import builtin_scale
from .simulate import Simulation
from .views import money

TOP = 5


class ChartError(ChioBudgetError):
    """The chart could not be drawn (matplotlib missing, or the file not written)."""


def _matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartError("charts need matplotlib: pip install 'chio-budget-guard[charts]'") from None
    return Figure


def _when(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _panel(ax: Any, title: str, lines: dict[str, list[tuple[int, int]]], limits: dict[str, int],
           marks: list[Any], denied: int, currency: str) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import FuncFormatter

    for label, points in lines.items():
        if points:
            ax.step([_when(t) for t, _ in points], [v for _, v in points], where="post", label=label, linewidth=1.4)
    for label, limit in limits.items():
        ax.axhline(limit, linestyle="--", color="black", linewidth=0.9, alpha=0.7)
        ax.annotate(label, xy=(0.995, limit), xycoords=("axes fraction", "data"), fontsize=7,
                    ha="right", va="bottom", alpha=0.8)
    if marks:
        ax.scatter([_when(m.timestamp) for m in marks], [m.value for m in marks], marker="x", color="#d62728",
                   s=14, linewidths=0.8, label=f"deny ({denied:,})", zorder=3)
    found = builtin_scale(currency)
    scale = found[0] if found else 1  # display only: axis ticks in major units
    digits = min(len(str(scale)) - 1, 2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / scale:,.{digits}f}"))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel(currency, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", frameon=False)


def _top(sim: Simulation, scope: str) -> dict[str, list[tuple[int, int]]]:
    series = sim.timeline.keys[scope]
    biggest = sorted(series, key=lambda k: (-series[k].last, k))[:TOP]
    return {k: series[k].points for k in biggest}


def _per(window: str | None) -> str:
    return f" (limit per {window} window: not drawn on the run's cumulative spend)" if window else ""


def _lines(sim: Simulation, scope: str, keys: list[str | None]) -> dict[str, int]:
    """The all-time limits to draw as dashed lines, labelled; a windowed limit caps each window
    and would be a false line on a curve that never resets, so it is named in the title instead."""
    cur = sim.policy.currency
    out = {}
    for key in keys:
        limit, window = sim.limit(scope, key), sim.window(scope, key)
        if limit is not None and window is None:
            name = key if scope == "tool" else ("max_total" if scope == "total" else f"max_per_{scope}")
            out[f"{name} {money(limit, cur)}"] = limit
    return out


def draw(sim: Simulation, *, title: str | None = None) -> bytes:
    """The PNG bytes of the four-panel chart."""
    Figure = _matplotlib()
    cur = sim.policy.currency
    fig = Figure(figsize=(12, 8), dpi=110, layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    _panel(axes[0][0], "total" + _per(sim.window("total")), {"total": sim.timeline.total.points},
           _lines(sim, "total", [None]), sim.timeline.marks.get("total", []), sim.denied_by_scope.get("total", 0), cur)
    for ax, scope in ((axes[0][1], "agent"), (axes[1][0], "session"), (axes[1][1], "tool")):
        lines = _top(sim, scope)
        windowed = {w for key in (lines if scope == "tool" else [None]) if (w := sim.window(scope, key))}
        _panel(ax, f"top {TOP} {scope}s by spend" + _per(", ".join(sorted(windowed))), lines,
               _lines(sim, scope, list(lines) if scope == "tool" else [None]), sim.timeline.marks.get(scope, []),
               sim.denied_by_scope.get(scope, 0), cur)
    c = sim.total
    fig.suptitle(title or f"policy {sim.policy.id}: {c.allowed:,} allowed, {c.denied:,} denied of {c.calls:,} calls",
                 fontsize=12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_chart(sim: Simulation, path: Any) -> int:
    """Write the PNG; returns its size in bytes."""
    data = draw(sim)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise ChartError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return len(data)
