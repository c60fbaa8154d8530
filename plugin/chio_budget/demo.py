"""``chio-budget demo``: a scripted agent session through the real guard.

Every call goes reserve -> OPA -> commit/release, as the kernel would drive
it; the table shows what operators see: the decision, the seed-shaped
violation behind a deny, and the budget left.
"""

from __future__ import annotations

from rich.console import Console

from .cost import CostMetadata

# (agent, session, server, tool, cost in minor units, what the step shows)
SCRIPT = [
    ("a1", "sess-1", "s1", "search", 1200, "an ordinary call"),
    ("a1", "sess-1", "s1", "expensive", 400, "a metered tool, within its 500 limit"),
    ("a1", "sess-1", "s1", "expensive", 200, "the tool limit: 400 + 200 > 500"),
    ("a1", "sess-1", "s1", "search", 1300, "agent a1 nears its 3000 limit"),
    ("a1", "sess-2", "s1", "search", 200, "the agent limit: 2900 + 200 > 3000"),
    ("a2", "sess-2", "s1", "search", 2500, "another agent, another session"),
    ("a3", "sess-2", "s1", "search", 2400, "session sess-2 limit: 2500 + 2400 ok"),
    ("a3", "sess-2", "s1", "search", 200, "session sess-2 limit: 4900 + 200 > 5000"),
    ("a4", None, "s1", "search", 2100, "no session: only total, agent, tool apply"),
    ("a5", None, "s1", "search", 100, "the total: 9900 + 100 = 10000 is allowed"),
    ("a5", None, "s1", "search", 1, "the total: 10000 + 1 > 10000"),
    ("a6", None, "s1", "search", 0, "zero cost passes: 10000 + 0 is not > 10000"),
]


def run_demo(guard, console: Console | None = None) -> int:
    console = console or Console()
    p = guard.policy
    console.print(f"[bold]policy[/] {p.id} ({p.currency}): total {p.max_total.units}, "
                  f"session {p.max_per_session.units if p.max_per_session else '-'}, "
                  f"agent {p.max_per_agent.units if p.max_per_agent else '-'}, "
                  f"tools {dict((k, v.units) for k, v in p.max_per_tool.items()) or '-'}; "
                  f"engine {guard.engine.name}", soft_wrap=True)
    denied = 0
    for i, (agent, session, server, tool, cost, note) in enumerate(SCRIPT, start=1):
        meta = CostMetadata(receipt_id=f"demo-{i}", timestamp=1000 + i, session_id=session, agent_id=agent,
                            tool_server=server, tool_name=tool)
        auth = guard.authorize(meta, cost)
        if auth.allow:
            auth.commit()
        else:
            denied += 1
        verdict = "[green]allow[/]" if auth.allow else "[bold red]DENY [/]"
        console.print(f"{i:>2} {verdict} {agent} {session or '-':<7} {server}:{tool:<10} cost {cost:>5}  "
                      f"remaining {guard.remaining():>5}  [dim]{note}[/]", highlight=False, soft_wrap=True)
        if not auth.allow:
            console.print(f"         [red]{auth.decision.reason()}[/]", highlight=False, soft_wrap=True)
            for v in auth.decision.violations:
                console.print(f"         {v.model_dump_json()}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"spent {guard.total_spent()} of {p.max_total.units} {p.currency}; "
                  f"{denied} of {len(SCRIPT)} calls denied; nothing was recorded for a denied call", soft_wrap=True)
    return denied
