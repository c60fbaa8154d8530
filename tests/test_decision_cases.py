"""The shared decision cases on the embedded engine (the server suite runs them too)."""

from __future__ import annotations

import pytest

from chio_budget.engines.embedded import EmbeddedEngine
from support.guards import REGO_DIR
from decision_cases import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_embedded_engine_decides_every_case(case):
    engine = EmbeddedEngine(case.data, REGO_DIR)
    try:
        d = engine.decide(case.input)
    finally:
        engine.close()
    if case.expected is None:
        assert not d.allow and d.error and d.error.startswith("engine error:")
    else:
        assert d.to_json_dict() == case.expected
