"""Parity: every shared decision case gives the same decision JSON on both engines.

Each case's data document is written into one OPA server (the Rego pushed
once), then the case's input is decided by the embedded engine and by the
server engine; the two JSONs must be identical and match the expected one.
"""

from __future__ import annotations

import pytest
import requests

from chio_budget.compiler import Compiled
from chio_budget.engines.embedded import EmbeddedEngine
from chio_budget.engines.opa_http import make_client, push
from chio_budget.engines.server import ServerEngine
from chio_budget.rego_files import rego_modules
from decision_cases import CASES
from support.guards import REGO_DIR
from support.opa import start_opa


@pytest.fixture(scope="module")
def parity_server():
    server = start_opa(None)
    client = make_client(server.url)
    push(client, Compiled.from_budget({"policies": {}}), rego_modules(REGO_DIR))
    client.close_connection()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_server_and_embedded_engines_agree(parity_server, case):
    compiled = Compiled.from_document(case.data)
    r = requests.put(f"{parity_server.url}/v1/data/chio/budget", json=compiled.budget, timeout=5)
    assert r.status_code == 204, r.text
    embedded = EmbeddedEngine(compiled, REGO_DIR)
    server = ServerEngine(make_client(parity_server.url), compiled, ready_timeout=5)
    try:
        e, s = embedded.decide(case.input), server.decide(case.input)
    finally:
        embedded.close()
        server.close()
    assert s.to_json_dict() == e.to_json_dict()
    if case.expected is None:
        assert not s.allow and s.error.startswith("engine error:")
    else:
        assert s.to_json_dict() == case.expected


def test_parity_covers_allow_deny_and_engine_errors():
    """The case list exercises every outcome, or parity would prove little."""
    kinds = {("error" if c.expected is None else "allow" if c.expected["allow"] else "deny") for c in CASES}
    assert kinds == {"allow", "deny", "error"}
