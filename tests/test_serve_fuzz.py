"""Property-based fuzzing of every endpoint from the committed OpenAPI document (schemathesis).

Bodies and queries that fit the schema and ones that do not (schemathesis' positive and
negative modes), a fixed number of examples per endpoint, against one real sidecar on
a memory ledger. For every request: no 5xx (``/health`` excepted only if the engine or
ledger really failed: it never does here), the response matches the document, and a
request the sidecar refused (a 4xx, a deny verdict) reserved and spent nothing.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from support.guards import ROOT
from support.sidecar import start_sidecar, write_policies

pytestmark = pytest.mark.slow

EXAMPLES = 60
"""Per endpoint and generation mode: bounded, so the run adds seconds, not minutes."""

schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.json"))
schema.config.generation.update(max_examples=EXAMPLES)
COUNTS: Counter[tuple[str, str, int]] = Counter()


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    s = start_sidecar(write_policies(tmp / "policies"), tmp=tmp)
    try:
        yield s
    finally:
        assert s.stop() == 0
        print("\nschemathesis:", sum(COUNTS.values()), "requests;",
              ", ".join(f"{m} {p} {st}: {n}" for (m, p, st), n in sorted(COUNTS.items())))
    assert "Traceback" not in s.log(), s.log()[-5000:]


def _money(http, policy_id: str) -> tuple[int, int]:
    total = http.get("/v1/budget", params={"policy_id": policy_id}).json()["scopes"][0]
    return total["spent_units"], total["held_units"]


def _refused(case, response) -> bool:
    if response.status_code >= 400:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("verdict") in ("deny", "Deny")


@pytest.fixture(scope="module")
def http(side):
    with side.client() as c:
        yield c


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint(case, side, http):
    before = {p: _money(http, p) for p in ("default", "small", "eur")}
    response = case.call(base_url=side.url, headers=side.headers())
    COUNTS[(case.method, case.path, response.status_code)] += 1
    assert response.status_code < 500, response.text
    if _refused(case, response):
        assert {p: _money(http, p) for p in before} == before, (case.path, response.text)
    case.validate_response(response, headers=side.headers(),
                           excluded_checks=[schemathesis.checks.ignored_auth,
                                            schemathesis.checks.positive_data_acceptance])
