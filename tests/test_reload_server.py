"""Reload on the server engine: push (or wait for the server's new revision), verify, then switch."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from chio_budget import BudgetGuard, CostMetadata, ReloadError
from chio_budget.bundle import bundle_contents
from chio_budget.engines.opa_http import make_client, push
from support.guards import REGO_DIR

T0 = 1_767_225_600


def meta(receipt: str) -> CostMetadata:
    return CostMetadata(receipt_id=receipt, timestamp=T0, agent_id="a1", tool_server="s1", tool_name="t1")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    policies, rego = tmp_path / "policies", tmp_path / "rego"
    policies.mkdir()
    (policies / "default.yaml").write_text("currency: USD\nmax_total: 10000\n")
    shutil.copytree(REGO_DIR, rego, ignore=shutil.ignore_patterns("*_test.rego"))
    return policies, rego


def test_reload_pushes_verifies_and_switches_with_no_decision_failing_meanwhile(opa_server_blank, tree):
    policies, rego = tree
    with BudgetGuard.from_files(policies, rego_dir=rego, engine="server", opa_url=opa_server_blank.url,
                                push=True, timeout=5) as g:
        first = g.policy_revision
        assert g.check(meta("r0"), 10000).policy_revision == first
        stop, errors, seen = threading.Event(), [], set()

        def decide(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                d = g.check(meta(f"t{i}-{n}"), 1)
                seen.add(d.policy_revision)
                if d.error or not d.allow:
                    errors.append(d.reason())

        threads = [threading.Thread(target=decide, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for k in range(6):
            (policies / "default.yaml").write_text(f"currency: USD\nmax_total: {20000 + k}\n")
            g.reload()
            assert g.policy.max_total.units == 20000 + k
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        d = g.check(meta("r1"), 20006)
        assert not d.allow and d.violations[0].limit_units == 20005 and d.policy_revision == g.policy_revision
        assert first in seen and len(seen) >= 2


def test_a_rego_error_the_server_refuses_keeps_the_old_version(opa_server_blank, tree):
    policies, rego = tree
    with BudgetGuard.from_files(policies, rego_dir=rego, engine="server", opa_url=opa_server_blank.url,
                                push=True, timeout=5) as g:
        (rego / "chio" / "budget" / "bad.rego").write_text("package chio.budget\n\nviolation contains {\n")
        (policies / "default.yaml").write_text("currency: USD\nmax_total: 5\n")
        with pytest.raises(ReloadError, match="bad.rego"):
            g.reload()
        d = g.check(meta("r1"), 10000)
        assert d.allow and d.error is None and g.policy.max_total.units == 10000


def test_without_push_reload_waits_for_the_server_to_serve_the_new_revision(opa_server_blank, tree):
    """OPA pulling bundles itself: the new version appears on the server from outside (here: another pusher)."""
    policies, rego = tree
    client = make_client(opa_server_blank.url)
    try:
        contents = bundle_contents(policies, rego)
        push(client, contents.compiled, contents.modules)
        with BudgetGuard.from_files(policies, rego_dir=rego, engine="server", opa_url=opa_server_blank.url,
                                    timeout=5, ready_timeout=0.5) as g:
            (policies / "default.yaml").write_text("currency: USD\nmax_total: 30000\n")
            with pytest.raises(ReloadError, match="revision"):
                g.reload()  # nobody updated the server: never verified, the old version stays
            d = g.check(meta("r1"), 10000)
            assert d.allow and d.error is None
            newer = bundle_contents(policies, rego)
            push(client, newer.compiled, newer.modules)   # the bundle the server pulls changes
            g.reload()
            assert g.policy.max_total.units == 30000 and g.check(meta("r2"), 30000).allow
    finally:
        client.close_connection()
