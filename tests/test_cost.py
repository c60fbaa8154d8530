"""CostMetadata: the request side, refused at the edge when it would mislead a counter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chio_budget import CostMetadata
from support.guards import make_meta


def test_colon_in_tool_server_is_refused():
    # ("s1:x", "y") and ("s1", "x:y") would both be the tool key "s1:x:y": one counter for two tools.
    with pytest.raises(ValidationError) as exc:
        make_meta(server="s1:x", tool="y")
    [err] = exc.value.errors()
    assert err["loc"] == ("tool_server",)
    assert "must not contain ':'" in err["msg"]


@pytest.mark.parametrize("field", ["receipt_id", "session_id", "agent_id", "tool_server", "tool_name"])
def test_lone_surrogate_in_any_field_is_refused(field):
    # It used to pass and then fail later, encoding a ledger key (a traceback mid-replay).
    fields = dict(receipt_id="r1", timestamp=1, session_id="s", agent_id="a1", tool_server="s1", tool_name="t1")
    with pytest.raises(ValidationError) as exc:
        CostMetadata(**{**fields, field: "x\ud800"})
    [err] = exc.value.errors()
    assert err["loc"] == (field,)
    assert "unicode" in err["msg"].lower()  # ours, or pydantic's own for the length-checked receipt_id
