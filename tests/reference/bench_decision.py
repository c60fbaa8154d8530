"""Bare ``eval_document`` cost of three decision.rego versions, side by side in one run.

(a) ``bench/reference/decision_0f1dbcc.rego`` (alone, as at that commit), (b) the
frozen pre-issue-15 copy here, (c) the live file; (b) and (c) with the live
``rates.rego``, as the guard loads them. One data document for all three: a
policy with total, session, agent and tool limits compiles to the same bytes
at 0f1dbcc as today (no windows, thresholds or per-call cap). Interleaved
rounds, medians of wall and process CPU time; prints ratios. A throwaway measurement, not a test (``make
bench`` is the official one):

    .venv/bin/python tests/reference/bench_decision.py [ROUNDS] [CALLS_PER_ROUND]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from opa_bindings import OpaEngine

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugin")]

from chio_budget.compiler import data_document  # noqa: E402
from chio_budget.policy import BudgetPolicy  # noqa: E402

LIVE = ROOT / "rego" / "chio" / "budget"
VERSIONS = {
    "0f1dbcc": [ROOT / "bench" / "reference" / "decision_0f1dbcc.rego"],
    "pre15": [ROOT / "tests" / "reference" / "decision_pre15.rego", LIVE / "rates.rego"],
    "live": [LIVE / "decision.rego", LIVE / "rates.rego"],
    "floor": [],  # FLOOR alone: what any decision costs here (bindings, input, output)
}
FLOOR = """package chio.budget

decision := {"allow": true, "violations": [], "warnings": [], "policy_id": input.policy_id,
\t"policy_revision": data.chio.budget.policies[input.policy_id].revision}
"""
POLICY = BudgetPolicy.model_validate({"id": "default", "currency": "USD", "max_total": 10**15,
                                      "max_per_session": 10**12, "max_per_agent": 10**12,
                                      "max_per_tool": {"s1:expensive": 500}})


def request(tool: int) -> dict:
    return {"policy_id": "default",
            "request": {"receipt_id": "r1", "timestamp": 1000, "session_id": "sess-1", "agent_id": "a1",
                        "tool_server": "s1", "tool_name": "expensive", "tool_key": "s1:expensive"},
            "cost": {"units": 5, "currency": "USD"},
            "totals": {"total": 10, "session": 10, "agent": 10, "tool": tool}}


DOC = "chio.budget.decision"
# Wall time, and the process's CPU time (all its threads: Go's GC included),
# which another process's load on this shared machine disturbs less.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
INPUTS = {"allow": request(10), "deny": request(499)}  # deny: the tool limit (499 + 5 > 500)


def engine(files: list[Path]) -> OpaEngine:
    opa = OpaEngine()
    for f in files:
        opa.add_policy(str(f), f.read_text())
    if not files:
        opa.add_policy("floor.rego", FLOOR)
    opa.add_data(data_document({POLICY.id: POLICY}))
    return opa


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    engines = {name: engine(files) for name, files in VERSIONS.items()}
    for path, inp in INPUTS.items():  # same answers before timing anything
        outs = {name: e.eval_document(DOC, inp) for name, e in engines.items() if name != "floor"}
        assert outs["pre15"] == outs["live"], (path, outs)
        assert outs["0f1dbcc"]["allow"] == outs["live"]["allow"] == (path == "allow")
        assert outs["0f1dbcc"]["violations"] == outs["live"]["violations"]
    samples: dict[tuple[str, str, str], list[float]] = {(n, p, c): [] for n in engines for p in INPUTS
                                                         for c in CLOCKS}
    for r in range(rounds + 2):  # the first two rounds warm up
        order = list(engines.items()) if r % 2 else list(reversed(engines.items()))
        for path, inp in INPUTS.items():
            for name, e in order:
                t = {c: clock() for c, clock in CLOCKS.items()}
                for _ in range(calls):
                    e.eval_document(DOC, inp)
                if r >= 2:
                    for c, clock in CLOCKS.items():
                        samples[(name, path, c)].append((clock() - t[c]) / calls / 1000)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{rounds} rounds x {calls} calls, median us per eval_document")
    print(f"{'path':<12} {'0f1dbcc':>9} {'pre15':>9} {'live':>9} {'floor':>9}  live/0f1dbcc  live/pre15"
          "  pre15/0f1dbcc  floor/0f1dbcc  (live-floor)/(0f1dbcc-floor)")
    for c in CLOCKS:
        for p in INPUTS:
            a, b, v, f = (med[(n, p, c)] for n in ("0f1dbcc", "pre15", "live", "floor"))
            print(f"{p + ' ' + c:<12} {a:9.1f} {b:9.1f} {v:9.1f} {f:9.1f}  {v / a:12.3f}  {v / b:10.3f}"
                  f"  {b / a:13.3f}  {f / a:13.3f}  {(v - f) / (a - f):28.3f}")
    for e in engines.values():
        e.close()


if __name__ == "__main__":
    main()
