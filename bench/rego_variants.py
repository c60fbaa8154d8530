"""Candidate versions of decision.rego timed side by side with the live file and the 0f1dbcc reference.

    python bench/rego_variants.py [--rounds N] [--k K] variant.rego ...

Each variant replaces ``rego/chio/budget/decision.rego`` among the live
modules (``perf_common.live_modules``) in an OPA engine of its own, with the
same compiled data; the 0f1dbcc engine gets its own data layout, as in
``perf_rows.decision_group``. Every engine first must decide the allow and
deny inputs of that group exactly as the live file does. Then all of them run
interleaved (``perf_common.interleave``: ``k`` calls each per round, the order
rotating) and each is reported as the median of its per-round ratios to
0f1dbcc and to the live file, allow and deny. Only ratios from one run mean
anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf_common as pc  # noqa: E402
from perf_rows import _inputs, _reference_input  # noqa: E402

DECISION = "decision.rego"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    policy = pc.make_policy()
    g = pc.guard(policy)
    for i in range(200):
        g.record(pc.meta(i), 3)
    allow, deny, _ = _inputs(g)
    g.close()
    data = pc.compile_all({policy.id: policy}).document
    live = pc.live_modules()

    def modules(src: str) -> dict[str, str]:
        return {name: (src if name.endswith(DECISION) else text) for name, text in live.items()}

    engines = {"live": pc.raw_opa(live, data)}
    for path in args.variants:
        engines[path.stem] = pc.raw_opa(modules(path.read_text()), data)
    ref = pc.raw_opa({str(pc.REFERENCE_REGO): pc.REFERENCE_REGO.read_text()}, pc.reference_data(policy))
    trivial = pc.raw_opa({"trivial.rego": "package bench.trivial\n\nx := 1\n"})

    want = {n: json.dumps(engines["live"].eval_document(pc.DOCUMENT, i)) for n, i in (("allow", allow), ("deny", deny))}
    for name, opa in engines.items():
        for n, i in (("allow", allow), ("deny", deny)):
            got = json.dumps(opa.eval_document(pc.DOCUMENT, i))
            if got != want[n] and name.startswith("probe"):  # a probe only says what a part costs
                print(f"({name} decides the {n} input differently)")
            elif got != want[n]:
                sys.exit(f"{name} decides the {n} input differently:\n  {got}\n  live: {want[n]}")

    S = pc.Subject
    r_allow, r_deny = _reference_input(allow), _reference_input(deny)
    subjects = [S("trivial", lambda i: trivial.eval_document("bench.trivial.x", allow), args.k),
                S("0f1dbcc allow", lambda i: ref.eval_document(pc.DOCUMENT, r_allow), args.k),
                S("0f1dbcc deny", lambda i: ref.eval_document(pc.DOCUMENT, r_deny), args.k)]
    for name, opa in engines.items():
        subjects.append(S(f"{name} allow", lambda i, o=opa: o.eval_document(pc.DOCUMENT, allow), args.k))
        subjects.append(S(f"{name} deny", lambda i, o=opa: o.eval_document(pc.DOCUMENT, deny), args.k))
    smp = pc.interleave(subjects, args.rounds)

    us = lambda n: smp[n].med_wall() * 1e6  # noqa: E731
    print(f"rounds {args.rounds} x {args.k} calls; medians: trivial {us('trivial'):.0f} us, "
          f"0f1dbcc allow {us('0f1dbcc allow'):.0f} us, deny {us('0f1dbcc deny'):.0f} us")
    print(f"{'variant':32} {'allow/0f1dbcc':>13} {'deny/0f1dbcc':>13} {'allow/live':>11} {'deny/live':>10}"
          f" {'allow us':>9}")
    for name in engines:
        a = pc.pair(smp[f"{name} allow"], smp["0f1dbcc allow"])[0]
        d = pc.pair(smp[f"{name} deny"], smp["0f1dbcc deny"])[0]
        al = pc.pair(smp[f"{name} allow"], smp["live allow"])[0]
        dl = pc.pair(smp[f"{name} deny"], smp["live deny"])[0]
        print(f"{name:32} {a:13.3f} {d:13.3f} {al:11.3f} {dl:10.3f} {us(f'{name} allow'):9.0f}")
    for o in (*engines.values(), ref, trivial):
        o.close()


if __name__ == "__main__":
    main()
