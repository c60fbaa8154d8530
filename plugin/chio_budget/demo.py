"""``chio-budget demo``: a scripted agent session through the real guard.

Every call goes reserve -> OPA -> commit/release, as the kernel would drive
it; the table shows what operators see: the decision, the seed-shaped
violation behind a deny, and the budget left. When the policy directory has
``team-monthly`` (a windowed policy), a second scene shows its soft-limit
warnings, a daily cap, the reset at Berlin midnight and the per-call cap.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

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


def _call(guard, meta: CostMetadata, cost: int):
    """Reserve, decide, and commit when allowed (the call ran and cost its estimate)."""
    auth = guard.authorize(meta, cost)
    if auth.allow:
        auth.commit()
    return auth


def _verdict(auth) -> str:
    return "[green]allow[/]" if auth.allow else "[bold red]DENY [/]"


def _show_deny(console: Console, auth) -> None:
    """A deny's reason and the violations' JSON (the Rust serde form), under its row."""
    if auth.allow:
        return
    console.print(f"         [red]{auth.decision.reason()}[/]", highlight=False, soft_wrap=True)
    for v in auth.decision.violations:
        console.print(f"         {v.model_dump_json()}", highlight=False, markup=False, soft_wrap=True)


def run_demo(guard, console: Console | None = None, policies_dir: Path | None = None) -> int:
    """The scripted session on ``guard``, then the windows scene when ``policies_dir`` has it."""
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
        auth = _call(guard, meta, cost)
        denied += not auth.allow
        console.print(f"{i:>2} {_verdict(auth)} {agent} {session or '-':<7} {server}:{tool:<10} cost {cost:>5}  "
                      f"remaining {guard.remaining():>5}  [dim]{note}[/]", highlight=False, soft_wrap=True)
        _show_deny(console, auth)
    console.print(f"spent {guard.total_spent()} of {p.max_total.units} {p.currency}; "
                  f"{denied} of {len(SCRIPT)} calls denied; nothing was recorded for a denied call", soft_wrap=True)
    windowed = windows_guard(guard, policies_dir)
    if windowed is not None:
        denied += run_windows_demo(windowed, console)
    return denied


WINDOWS_POLICY = "team-monthly"
_MIDNIGHT = 1773010800  # 2026-03-09 00:00 in Europe/Berlin
# (seconds before/after Berlin midnight, agent, cost, what the step shows)
WINDOWS_SCRIPT = [
    (-3000, "a1", 500, "a day's cap is 3000 per agent"),
    (-2400, "a1", 500, ""),
    (-1800, "a1", 500, ""),
    (-1200, "a1", 500, ""),
    (-600, "a1", 500, "2500 reaches 80% of 3000: a warning, still allowed"),
    (-300, "a1", 500, "3000 reaches 95% (and 100%): allowed, the cap is reached"),
    (-1, "a1", 1, "one second before midnight: the daily cap denies"),
    (0, "a1", 400, "midnight in Berlin: a new day, a new counter (no job ran)"),
    (60, "a1", 600, "above the 500 per-call cap, whatever is left"),
]


def run_windows_demo(guard, console: Console) -> int:
    """The windows scene on ``guard`` (policy ``team-monthly``); returns how many calls were denied."""
    p, zone = guard.policy, ZoneInfo(guard.policy.timezone)
    console.print(f"\n[bold]policy[/] {p.id} ({p.currency}, {p.timezone}): {p.max_total.units} a month, "
                  f"{p.max_per_agent.units} a day per agent, {p.max_per_invocation.units} per call, "
                  f"warnings at 80% and 95%", soft_wrap=True)
    denied = 0
    for i, (offset, agent, cost, note) in enumerate(WINDOWS_SCRIPT, start=1):
        t = _MIDNIGHT + offset
        meta = CostMetadata(receipt_id=f"demo-w{i}", timestamp=t, agent_id=agent, tool_server="llm",
                            tool_name="complete")
        auth = _call(guard, meta, cost)
        denied += not auth.allow
        local = datetime.fromtimestamp(t, zone).strftime("%m-%d %H:%M:%S")
        console.print(f"{i:>2} {_verdict(auth)} {local} {agent} cost {cost:>4}  month left {guard.remaining(t):>6}  "
                      f"[dim]{note}[/]", highlight=False, soft_wrap=True)
        for w in auth.decision.warnings if auth.allow else ():  # a deny's warnings are not news
            console.print(f"         [yellow]warning: {w['scope']} at {w['threshold']:.0%} of "
                          f"{w['limit_units']} ({w['current_units']} + {w['requested_units']})[/]",
                          highlight=False, soft_wrap=True)
        _show_deny(console, auth)
    console.print(f"window now: {guard.window(_MIDNIGHT).describe()}", soft_wrap=True)
    return denied


def windows_guard(guard, policies_dir: Path | None):
    """A guard for ``team-monthly`` sharing ``guard``'s engine and ledger, or None without that policy."""
    from .guard import BudgetGuard
    from .policy import load_policies

    if policies_dir is None:
        return None
    policies = load_policies(policies_dir)
    if WINDOWS_POLICY not in policies or WINDOWS_POLICY == guard.policy.id:
        return None
    return BudgetGuard(policies[WINDOWS_POLICY], guard.engine, guard.ledger)
