"""What a run of ``bench/perf.py`` leaves behind: the table, ``results.json``, the figure, the doc's section."""

from __future__ import annotations

import math
import os
import platform
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

DOC_BEGIN = "<!-- perf:results:begin (written by bench/perf.py --write-doc; do not edit by hand) -->"
DOC_END = "<!-- perf:results:end -->"


# -- the machine ------------------------------------------------------------------------------------


def machine(redis_url: str, pg_url: str) -> dict[str, Any]:
    return {"cpu": _lscpu(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "opa": _opa_version(), "sqlite": sqlite3.sqlite_version,
            "redis": _redis_version(redis_url), "postgres": _pg_version(pg_url),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _lscpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    f = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    f = {k.strip(): v.strip() for k, v in f.items()}
    return (f"{f.get('Model name', '?')}, {f.get('CPU(s)', '?')} CPU(s) ({f.get('Core(s) per socket', '?')} "
            f"core(s)/socket, {f.get('Thread(s) per core', '?')} thread(s)/core), {f.get('Architecture', '?')}"
            + (f", {f['Hypervisor vendor']} guest" if "Hypervisor vendor" in f else ""))


def _opa_version() -> str:
    """The OPA module the bindings' Go library was built with (read from its build info)."""
    import opa_bindings

    try:
        from importlib.metadata import version
        bindings = version("opa-golib-python-bindings")
    except Exception:  # noqa: BLE001
        bindings = "?"
    for lib in Path(opa_bindings.__file__).parent.glob("*.so"):
        m = re.search(rb"dep\tgithub.com/open-policy-agent/opa\t(v[0-9][^\t\s]*)", lib.read_bytes())
        if m:
            return f"OPA {m.group(1).decode()} (embedded, opa-golib-python-bindings {bindings})"
    return f"OPA ? (embedded, opa-golib-python-bindings {bindings})"


def _redis_version(url: str) -> str | None:
    try:
        import redis

        return redis.Redis.from_url(url, socket_timeout=2).info("server")["redis_version"]
    except Exception:  # noqa: BLE001
        return None


def _pg_version(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001
        return None


# -- the table -----------------------------------------------------------------------------------------


def _side(d: dict | None) -> str:
    if not d:
        return "-"
    if "dps" in d:
        return f"{d['dps']:,.0f}/s"
    return f"{d['wall_us']:,.1f} us" if d["wall_us"] >= 10 else f"{d['wall_us']:.2f} us"


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown: ratio (wall), ratio (CPU), the two sides, target, status, note."""
    out = ["| row | ratio (wall) | ratio (CPU) | numerator | denominator | target | status | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = (r["note"] or "").replace("|", "/")
        out.append(f"| {r['label']} | {_fmt(r['ratio'])} | {_fmt(r['cpu_ratio'])} | {_side(r['num'])} | "
                   f"{_side(r['den'])} | {r['target'] or '-'} | {r['status']} | {note} |")
    return "\n".join(out)


def header(result: dict) -> str:
    m = result["machine"]
    f = result["features"]
    feats = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in f.items())
    return "\n".join([
        f"Run of {result['finished_at']} (`{' '.join(result['argv'])}`): **{result['runtime_s']:.0f} s** wall"
        f"{' (quick mode: tiny sizes, numbers meaningless)' if result['quick'] else ''}; commit "
        f"`{result['commit']}`; features on this branch: {feats}.",
        "",
        f"- machine: {m['cpu']}; {m['platform']}; load average at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end', '?')}",
        f"- Python {m['python']}; {m['opa']}; SQLite {m['sqlite']}; Redis {m['redis'] or 'not reachable'}; "
        f"PostgreSQL {m['postgres'] or 'not reachable'}",
    ])


# -- the doc -------------------------------------------------------------------------------------------


def write_doc(doc: Path, result: dict, figure: Path | None) -> None:
    """Replace the marked section of ``doc`` with this run's header and table."""
    text = doc.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{doc}: no {DOC_BEGIN!r} ... {DOC_END!r} section to rewrite")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    body = f"{header(result)}\n\n{table(result['rows'])}\n"
    doc.write_text(f"{head}{DOC_BEGIN}\n{body}{DOC_END}{tail}")


# -- the figure ----------------------------------------------------------------------------------------


def figure(result: dict, path: Path) -> None:
    """Left: per-decision cost by path and backend (wall and CPU). Right: throughput vs workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    costs = s.get("cost", []) + s.get("ledger_cost", [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.4, 1]})
    y = range(len(costs))
    left.barh([i + 0.2 for i in y], [c["wall_us"] for c in costs], height=0.4, label="wall", color="#4C72B0")
    left.barh([i - 0.2 for i in y], [c["cpu_us"] for c in costs], height=0.4, label="process CPU", color="#DD8452")
    left.set_yticks(list(y), [c["name"] for c in costs], fontsize=8)
    left.invert_yaxis()
    if costs:  # a run of some groups only (--only batch) may have no per-decision costs to draw
        left.set_xscale("log")
    left.set_xlabel("microseconds per decision (median of interleaved rounds, log scale)")
    left.set_title("Per-decision cost by path and backend")
    if costs:
        left.legend(loc="lower right", fontsize=8)
    labels = {"threads_one_guard": "threads, one guard (memory)", "threads_guard_each": "threads, a guard each (memory)",
              "redis_processes": "processes sharing Redis", "sqlite_processes": "processes sharing SQLite"}
    for key, label in labels.items():
        pts = s.get(key)
        if pts:
            right.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    right.set_xticks([1, 2, 4])
    right.set_xlabel("workers")
    right.set_ylabel("authorize+commit per second")
    right.set_ylim(bottom=0)
    right.set_title(f"Throughput vs workers ({result['machine']['cores']} cores)")
    if any(s.get(key) for key in labels):
        right.legend(fontsize=8)
    fig.suptitle(f"chio-budget-guard make bench, {result['finished_at']}" + (" (quick)" if result["quick"] else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def commit() -> str:
    """HEAD, short, with ``+changes`` when the working tree differs from it (outside what this writes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD") or "?"
        ours = ("bench/results.json", "docs/performance.md", "docs/performance.png")
        changed = [x for x in git("status", "--porcelain", "--untracked-files=no").splitlines()
                   if not x.endswith(ours)]
        return head + ("+changes" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "?"
