"""guard.reload(): a new policy swapped in whole, under load; a failed reload keeps the old one."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from chio_budget import BudgetGuard, CostMetadata, ReloadError
from support.guards import REGO_DIR

T0 = 1_767_225_600


def meta(receipt: str, agent: str = "a1") -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=T0, session_id=None, agent_id=agent,
                        tool_server="s1", tool_name="t1")


def version_rego(name: str) -> str:
    return f'package chio.budget\n\nwarning contains {{"version": "{name}"}}\n'


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A policies/ and a rego/ (the shipped Rego plus a file naming its version) the test can edit."""
    policies, rego = tmp_path / "policies", tmp_path / "rego"
    policies.mkdir()
    (policies / "default.yaml").write_text("currency: USD\nmax_total: 10000\n")
    shutil.copytree(REGO_DIR, rego)
    (rego / "chio" / "budget" / "version.rego").write_text(version_rego("A"))
    return policies, rego


def version_of(decision) -> str:
    return next(w["version"] for w in decision.warnings if "version" in w)


def test_reload_swaps_limits_and_rego_and_keeps_counters_and_holds(tree):
    policies, rego = tree
    with BudgetGuard.from_files(policies, rego_dir=rego) as g:
        held = g.authorize(meta("r1"), 6000)
        assert held.allow and version_of(held.decision) == "A"
        rev_a, rego_a = g.policy_revision, g.rego_revision
        (policies / "default.yaml").write_text("currency: USD\nmax_total: 20000\n")
        g.reload()
        assert g.policy.max_total.units == 20000 and g.policy_revision != rev_a and g.rego_revision == rego_a
        assert g.total_held() == 6000                       # the hold survived
        d = g.check(meta("r2"), 14000)
        assert d.allow and d.policy_revision == g.policy_revision
        (rego / "chio" / "budget" / "version.rego").write_text(version_rego("B"))
        g.reload()
        assert g.rego_revision != rego_a and version_of(g.check(meta("r2"), 1)) == "B"
        assert held.commit().outcome == "committed"        # settled on the new version
        assert g.total_spent() == 6000 and g.reloads == 2


@pytest.mark.parametrize("break_it, said", [
    (lambda p, r: (p / "default.yaml").write_text("currency: USD\nmax_total: -5\n"),
     "default.yaml:2: max_total.units: must be >= 0"),
    (lambda p, r: (p / "default.yaml").write_text("currency: USD\nmax_total: [1,\n"), "default.yaml:3: invalid YAML"),
    (lambda p, r: (p / "default.yaml").write_text("currency: ZZZ\nmax_total: 5\n"),
     "default.yaml:1: currency: unknown currency 'ZZZ'"),
    (lambda p, r: (p / "default.yaml").rename(p / "other.yaml"), "policy_id: no policy 'default'"),
    (lambda p, r: (r / "chio" / "budget" / "version.rego").write_text("package chio.budget\n\nwarning contains {\n"),
     "version.rego:4: rego_parse_error"),
    (lambda p, r: (r / "chio" / "budget" / "version.rego").write_text(
        "package chio.budget\n\nwarning contains x if { x := undefined_function(1) }\n"),
     "version.rego:3: rego_type_error: undefined function undefined_function"),
])
def test_a_failed_reload_keeps_the_old_policy_and_says_where(tree, break_it, said, caplog):
    policies, rego = tree
    with BudgetGuard.from_files(policies, rego_dir=rego) as g:
        before = (g.policy_revision, g.rego_revision, g.engine)
        failed = []
        g.event_hooks["reload_failed"].append(lambda guard, exc: failed.append(exc))
        break_it(policies, rego)
        with caplog.at_level("ERROR", logger="chio_budget.reload"), pytest.raises(ReloadError) as exc:
            g.reload()
        assert said in str(exc.value) and "previous policy stays in force" in str(exc.value)
        assert said in caplog.text
        assert (g.policy_revision, g.rego_revision, g.engine) == before
        d = g.check(meta("r1"), 10000)
        assert d.allow and version_of(d) == "A"
        assert g.reload_failures == 1 and g.reloads == 0 and len(failed) == 1


def test_verify_tests_refuses_a_version_whose_rego_tests_fail(tree):
    policies, rego = tree
    budget_dir = rego / "chio" / "budget"
    for shipped in budget_dir.glob("*_test.rego"):  # keep the run small: one test of our own instead
        shipped.unlink()
    (budget_dir / "smoke_test.rego").write_text(
        "package chio.budget.smoke_test\n\nimport data.chio.budget\n\n"
        'test_version_is_a if {\n\t{"version": "A"} in budget.warning\n}\n')
    shell = CostMetadata(receipt_id="r1", timestamp=T0, agent_id="a1", tool_server="s1", tool_name="shell")
    with BudgetGuard.from_files(policies, rego_dir=rego, verify_tests=True) as g:
        (budget_dir / "blocked_test.rego").write_text(
            "package chio.budget.blocked_test\n\nimport data.chio.budget\n\n"
            "test_shell_is_blocked if {\n"
            '\tsome v in budget.violation with input as {"request": {"tool_key": "s1:shell"}}\n'
            '\tv.code == "blocked_tool"\n}\n')
        with pytest.raises(ReloadError, match=r"Rego tests failed:\n.*blocked_test.rego: "
                                              r"data.chio.budget.blocked_test.test_shell_is_blocked: FAIL"):
            g.reload()
        assert g.check(shell, 1).allow and g.reloads == 0
        (budget_dir / "blocked.rego").write_text(
            'package chio.budget\n\nviolation contains {"scope": "custom", "code": "blocked_tool"} if {\n'
            '\tinput.request.tool_key == "s1:shell"\n}\n')
        g.reload()
        assert [v.code for v in g.check(shell, 1).violations] == ["blocked_tool"]


def test_a_guard_without_files_cannot_reload(tree):
    from chio_budget.engines.embedded import EmbeddedEngine
    from chio_budget.compiler import data_document
    from chio_budget.policy import load_policies

    policies, rego = tree
    engine = EmbeddedEngine(data_document(load_policies(policies)), rego)
    with BudgetGuard.from_files(policies, engine=engine) as g:
        with pytest.raises(ReloadError, match="not built from files"):
            g.reload()


RELOADS = 24
THREADS = 8


def test_reload_under_concurrent_authorize_loses_and_doubles_nothing(tree):
    """8 threads authorize and commit while the policy and Rego flip between two versions.

    Every decision must be wholly one version (its data revision and its Rego
    warning agree), no reservation may be lost or counted twice, and every
    retired engine must be closed once its decisions are done.
    """
    policies, rego = tree
    yaml_of = {"A": "currency: USD\nmax_total: 1000000000\n", "B": "currency: USD\nmax_total: 1000000001\n"}
    (policies / "default.yaml").write_text(yaml_of["A"])
    with BudgetGuard.from_files(policies, rego_dir=rego) as g:
        revision_of = {"A": g.policy_revision}
        versions = [g._loaded]
        g.event_hooks["reloaded"].append(lambda guard: versions.append(guard._loaded))
        stop = threading.Event()
        progress = threading.Condition()
        progress.done = 0
        errors: list[str] = []
        counts = [dict(allowed=0, committed_units=0, released=0, seen={"A": 0, "B": 0}) for _ in range(THREADS)]

        def worker(i: int) -> None:
            c = counts[i]
            n = 0
            while not stop.is_set() and n < 5000:
                n += 1
                auth = g.authorize(meta(f"t{i}-{n}", agent=f"a{i}"), 1 + n % 7)
                d = auth.decision
                if not d.allow:
                    errors.append(f"t{i}-{n} denied: {d.reason()}")
                    continue
                v = version_of(d)
                c["seen"][v] += 1
                if revision_of.get(v) not in (None, d.policy_revision):
                    errors.append(f"t{i}-{n}: Rego of {v} with data revision {d.policy_revision}")
                c["allowed"] += 1
                with progress:
                    progress.done += 1
                    progress.notify_all()
                if n % 3:
                    assert auth.commit().outcome == "committed"
                    c["committed_units"] += auth.estimate_units
                else:
                    assert auth.release().outcome == "released"
                    c["released"] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for k in range(RELOADS):
            name = "B" if k % 2 == 0 else "A"
            (policies / "default.yaml").write_text(yaml_of[name])
            (rego / "chio" / "budget" / "version.rego").write_text(version_rego(name))
            g.reload()
            revision_of.setdefault(name, g.policy_revision)
            assert revision_of[name] == g.policy_revision
            with progress:  # let every thread decide a few times on this version before the next swap
                target = progress.done + 4 * THREADS
                progress.wait_for(lambda: progress.done >= target, timeout=10)
        stop.set()
        for t in threads:
            t.join()

        assert errors == []
        committed = sum(c["committed_units"] for c in counts)
        assert g.total_spent() == committed and g.total_held() == 0
        assert g.ledger.open_reservations() == 0
        assert g.reloads == RELOADS and len(versions) == RELOADS + 1
        assert all(v._closed for v in versions[:-1]) and not versions[-1]._closed
        seen = {k: sum(c["seen"][k] for c in counts) for k in ("A", "B")}
        assert seen["A"] > 0 and seen["B"] > 0
        print(f"\nreload under load: {THREADS} threads, {RELOADS} reloads, "
              f"{sum(c['allowed'] for c in counts)} authorizations (A {seen['A']}, B {seen['B']}), "
              f"{sum(c['released'] for c in counts)} released, {committed} units committed = spent {g.total_spent()}, "
              f"held {g.total_held()}, open {g.ledger.open_reservations()}, mixed-version decisions {len(errors)}")


def test_the_watcher_picks_up_an_edit(tree):
    policies, rego = tree
    reloaded = threading.Event()
    with BudgetGuard.from_files(policies, rego_dir=rego, watch=True) as g:
        g.event_hooks["reloaded"].append(lambda guard: reloaded.set())
        (policies / "default.yaml").write_text("currency: USD\nmax_total: 777\n")
        assert reloaded.wait(15)
        assert g.policy.max_total.units == 777
        assert not g.check(meta("r1"), 778).allow
    assert g._watcher is not None and not g._watcher._thread.is_alive()
