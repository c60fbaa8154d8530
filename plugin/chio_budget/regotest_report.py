"""``opa test`` output: the pretty report, ``--format json`` and the coverage JSON.

Follows ``v1/tester/reporter.go`` (``PrettyReporter``, ``JSONReporter``,
``JSONCoverageReporter``) and ``cmd/test.go``:

- pretty: a failing, erroring or skipped test (every test with ``-v``) is
  printed under its ``file:row:`` as ``data.pkg.test_x: FAIL (1.2ms)`` with
  Go's duration format, sub-results indented below it, captured ``print``
  output indented between blank lines, an error on the next line indented by
  two spaces; with ``-v`` a FAILURES section follows; then a rule of 80
  dashes and ``PASS: n/m``, ``FAIL: n/m``, ``SKIPPED: n/m``, ``ERROR: n/m``
  (a partial-object test counts one per leaf sub-result);
- json: the array of results (``location``, ``package``, ``name``,
  ``duration`` in ns, ``fail``/``skip``/``error``/``output``/``sub_results``
  when set);
- coverage: any error or failure ends the run (exit 1, the failures printed
  first); else OPA's coverage report as indented JSON, or exit 2 when it is
  below ``--threshold``.

Not reproduced: the evaluation trace OPA prints under a failure with ``-v``
and puts in ``trace`` of the JSON (the embedded evaluator's trace lacks the
local-variable names OPA prints); here ``-v`` prints each failure's trace as
``file:row  | op expression`` lines from the embedded trace.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

from .regotest import Result, SubResult, go_json

HL = "-" * 80


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``0s``, ``800ns``, ``1.5µs``, ``12.345ms``, ``1m2.5s``."""
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _frac(ns, 3) + "µs"
    if ns < 1_000_000_000:
        return _frac(ns, 6) + "ms"
    secs = _frac(ns % 60_000_000_000, 9) + "s"
    minutes = ns // 60_000_000_000
    if minutes == 0:
        return secs
    hours = minutes // 60
    return (f"{hours}h" if hours else "") + f"{minutes % 60}m" + secs


def _frac(v: int, prec: int) -> str:
    whole, frac = divmod(v, 10**prec)
    digits = f"{frac:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def result_line(r: Result) -> str:
    """``Result.string(false)``."""
    if r.skip:
        return f"{r.test.package}.{r.test.name}: {r.outcome}"
    return f"{r.test.package}.{r.test.name}: {r.outcome} ({go_duration(r.duration_ns)})"


def iter_subs(subs: dict[str, SubResult], prefix: tuple[str, ...] = ()):
    for key in sorted(subs):
        full = prefix + (key,)
        yield full, subs[key]
        yield from iter_subs(subs[key].sub_results, full)


def sub_line(sr: SubResult) -> str:
    return f"{sr.name}: {'FAIL' if sr.fail else 'PASS'}"


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.split("\n"))


def _counts(results: list[Result]) -> tuple[int, int, int, int]:
    passed = failed = skipped = errors = 0
    for r in results:
        if r.skip:
            skipped += 1
        elif r.error is not None:
            errors += 1
        elif r.sub_results:
            for _name, sr in iter_subs(r.sub_results):
                if not sr.sub_results:
                    failed, passed = (failed + 1, passed) if sr.fail else (failed, passed + 1)
        elif r.passed:
            passed += 1
        elif r.fail:
            failed += 1
    return passed, failed, skipped, errors


def pretty(results: list[Result], *, verbose: bool, trace_of: Callable[[Result], list[dict]] | None = None) -> str:
    """``PrettyReporter.Report``."""
    out: list[str] = []
    dirty, last_file = False, ""
    for r in results:
        if verbose or not r.passed:
            if last_file and last_file != r.test.file:
                out.append("")
            out.append(f"{r.test.file}:{r.test.row}:")
            last_file = r.test.file
            dirty = True
            out.append(result_line(r))
            out.extend(_indent("  " * (len(full) - 1) + sub_line(sr))
                       for full, sr in iter_subs(r.sub_results) if sr.fail or verbose)
            if r.output:
                out.extend(["", _indent(r.output.strip()), ""])
        if r.error is not None:
            out.append(f"  {r.error}")
    passed, failed, skipped, errors = _counts(results)
    if failed and verbose:
        out.extend([HL, "FAILURES", HL])
        for r in (r for r in results if r.fail and r.error is None and not r.skip):
            out.append(result_line(r))
            trace = trace_of(r) if trace_of else []
            if trace:
                out.append("")
                out.extend(_indent(line) for line in _trace_lines(trace))
            out.append("")
    if dirty:
        out.append(HL)
    total = passed + failed + skipped + errors
    for label, n in (("PASS", passed), ("FAIL", failed), ("SKIPPED", skipped), ("ERROR", errors)):
        if n:
            out.append(f"{label}: {n}/{total}")
    return "\n".join(out) + ("\n" if out else "")


def _trace_lines(trace: list[dict]) -> list[str]:
    depth: dict[int, int] = {}
    rows = []
    for e in trace:
        qid, parent = e.get("query_id", 0), e.get("parent_id", 0)
        if qid not in depth:
            depth[qid] = depth.get(parent, -1) + 1 if qid else 0
        loc = str(e.get("location") or "")
        loc = loc if ".rego:" in loc else "query:1"
        rows.append((loc, "| " * depth[qid] + f"{e.get('op')} {e.get('node') or e.get('message') or ''}".rstrip()))
    width = max((len(loc) for loc, _ in rows), default=0)
    return [f"{loc:<{width}} {text}" for loc, text in rows]


def _error_json(error: str) -> dict[str, Any]:
    """A ``*topdown.Error`` as JSON, from its ``Error()`` text."""
    head, _, rest = error.partition(": ")
    if ":" in head and head.rsplit(":", 1)[1].isdigit() and ": " in rest:
        file, row = head.rsplit(":", 1)
        code, _, message = rest.partition(": ")
        return {"code": code, "message": message, "location": {"file": file, "row": int(row)}}
    return {"message": error}


def _sub_json(subs: dict[str, SubResult]) -> dict[str, Any]:
    out = {}
    for key, sr in subs.items():
        item: dict[str, Any] = {}
        if sr.sub_results:
            item["sub_results"] = _sub_json(sr.sub_results)
        if sr.name:
            item["name"] = sr.name
        if sr.fail:
            item["fail"] = True
        out[key] = item
    return out


def as_json(results: list[Result]) -> str:
    """``JSONReporter.Report``: ``json.MarshalIndent(results, "", "  ")``."""
    items = []
    for r in results:
        item: dict[str, Any] = {}
        if r.error is not None:
            item["error"] = _error_json(r.error)
        item["location"] = {"file": r.test.file, "row": r.test.row, "col": r.test.col}
        if r.sub_results:
            item["sub_results"] = _sub_json(r.sub_results)
        item["package"] = r.test.package
        item["name"] = r.test.name
        if r.output:
            item["output"] = base64.b64encode(r.output.encode()).decode()
        item["duration"] = r.duration_ns
        if r.fail:
            item["fail"] = True
        if r.skip:
            item["skip"] = True
        items.append(item)
    return go_json(items, indent=2) + "\n"


def coverage_json(report: dict[str, Any]) -> str:
    """The report exactly as OPA's ``json.Encoder`` with two-space indent writes it."""
    return go_json(json.loads(json.dumps(report)), indent=2) + "\n"


def threshold_message(report: dict[str, Any], threshold: float, *, verbose: bool) -> str:
    """``cover.CoverageThresholdError.Error()``."""
    text = f"Code coverage threshold not met: got {report.get('coverage', 0):.2f} instead of {threshold:.2f}"
    files = report.get("files") or {}
    if verbose and files:
        text += "\nLines not covered:"
        for name in sorted(files):
            rows = sorted({row for rng in files[name].get("not_covered") or []
                           for row in range(rng["start"]["row"], rng["end"]["row"] + 1)})
            for start, end in _row_ranges(rows):
                text += f"\n\t{name}:{start}" if start == end else f"\n\t{name}:{start}-{end}"
    return text


def _row_ranges(rows: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for row in rows:
        if out and row == out[-1][1] + 1:
            out[-1] = (out[-1][0], row)
        else:
            out.append((row, row))
    return out
