"""Fail closed: every way OPA can fail is a deny that names the cause, reserves nothing,
and stops mattering once OPA is back."""

from __future__ import annotations

import pytest
import requests

from chio_budget import BudgetGuard
from chio_budget.compiler import compile_all
from chio_budget.policy import load_policies
from support.guards import POLICIES_DIR, REGO_DIR, make_meta
from support.opa import OpaServer

_POLICIES = compile_all(load_policies(POLICIES_DIR)).budget["policies"]


def _set_policies(server: OpaServer, policies: dict) -> None:
    r = requests.put(f"{server.url}/v1/data/chio/budget/policies", json=policies, timeout=5)
    assert r.status_code == 204, r.text


# (id, break OPA, mend it, what the deny must say)
FAULTS = [
    ("connection_refused", lambda s: s.stop(), lambda s: s.start(), "connection refused"),
    ("timeout", lambda s: s.faults.set(delay=5), lambda s: s.faults.clear(), "timeout"),
    ("http_500", lambda s: s.faults.set(status=500), lambda s: s.faults.clear(), "HTTP 500"),
    ("http_503", lambda s: s.faults.set(status=503), lambda s: s.faults.clear(), "HTTP 503"),
    ("http_400", lambda s: s.faults.set(status=400), lambda s: s.faults.clear(), "HTTP 400"),
    ("http_404", lambda s: s.faults.set(status=404), lambda s: s.faults.clear(), "HTTP 404"),
    ("connection_closed", lambda s: s.faults.set(close=True), lambda s: s.faults.clear(), "connection closed"),
    ("undefined", lambda s: s.faults.set(body=b"{}"), lambda s: s.faults.clear(), "decision undefined"),
    ("not_json", lambda s: s.faults.set(body=b"<html>proxy error</html>"), lambda s: s.faults.clear(), "not JSON"),
    ("result_not_object", lambda s: s.faults.set(body=b'{"result": true}'), lambda s: s.faults.clear(),
     "malformed decision: expected an object"),
    ("allow_not_boolean", lambda s: s.faults.set(body=b'{"result": {"allow": "yes", "violations": []}}'),
     lambda s: s.faults.clear(), "malformed decision: allow is not a boolean"),
    ("bad_violation", lambda s: s.faults.set(body=b'{"result": {"allow": false, "violations": [7]}}'),
     lambda s: s.faults.clear(), "malformed decision"),
    ("allow_with_violations",
     lambda s: s.faults.set(body=b'{"result": {"allow": true, "violations": [{"scope": "custom"}]}}'),
     lambda s: s.faults.clear(), "allow with violations"),
    ("policy_missing_on_server", lambda s: _set_policies(s, {}), lambda s: _set_policies(s, _POLICIES),
     "the OPA server has no policy 'default'"),
    ("other_revision_on_server",
     lambda s: _set_policies(s, {"default": {**_POLICIES["default"], "max_total": 99999, "revision": "sha256:x"}}),
     lambda s: _set_policies(s, _POLICIES), "revision mismatch"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f[0] for f in FAULTS])
def test_opa_failure_denies_reserves_nothing_and_recovers(opa_server_blank, fault):
    _, break_opa, mend_opa, cause = fault
    server = opa_server_blank
    guard = BudgetGuard.from_files(POLICIES_DIR, engine="server", opa_url=server.url, rego_dir=REGO_DIR,
                                   push=True, timeout=1.0, retries=0)
    try:
        guard.record(make_meta(receipt="before"), 1000)
        assert guard.total_spent() == 1000

        break_opa(server)
        auth = guard.authorize(make_meta(receipt="during"), 100)
        assert not auth.allow
        assert auth.decision.error and auth.decision.error.startswith("engine error:")
        assert cause in auth.decision.error
        assert guard.total_spent() == 1000  # nothing reserved, nothing recorded
        auth.commit()  # a denied authorization holds nothing to commit
        assert guard.total_spent() == 1000
        checked = guard.check(make_meta(receipt="during-check"), 100)
        assert not checked.allow and cause in checked.error

        mend_opa(server)
        auth = guard.authorize(make_meta(receipt="after"), 100)
        assert auth.allow, auth.decision.reason()
        auth.commit()
        assert guard.total_spent() == 1100
    finally:
        server.faults.clear()
        guard.close()


def test_refused_even_for_a_request_that_would_be_denied_anyway(opa_server_blank):
    """The cause stays the engine error, not a budget violation made up without OPA."""
    guard = BudgetGuard.from_files(POLICIES_DIR, engine="server", opa_url=opa_server_blank.url, rego_dir=REGO_DIR,
                                   push=True, timeout=1.0, retries=0)
    try:
        opa_server_blank.stop()
        d = guard.check(make_meta(), 10**6)
        assert not d.allow and d.violations == [] and "connection refused" in d.error
    finally:
        guard.close()
