"""The chio:guard/guard@0.2.0 adapter: GuardRequest-shaped in, allow / deny(reason) out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from chio_budget.chain import GuardChain
from chio_budget.wasm import Allow, Deny, WasmGuardAdapter, request_to_context
from support.chain import AllowAll, DenyOnTool, Pending, Raising, budget


@dataclass
class GuardRequest:
    """Shaped like chio_guard.GuardRequest (the WIT guard-request record); not that package."""

    tool_name: str
    server_id: str
    agent_id: str
    arguments: str
    scopes: list[str] = field(default_factory=list)
    action_type: str | None = None
    extracted_path: str | None = None
    extracted_target: str | None = None
    filesystem_roots: list[str] = field(default_factory=list)
    matched_grant_index: int | None = None


def test_field_mapping_from_an_object():
    req = GuardRequest("search", "s1", "a1", json.dumps({"q": "x"}), scopes=["tool.read"], matched_grant_index=0)
    c = request_to_context(req)
    assert (c.tool_name, c.server_id, c.agent_id, c.arguments) == ("search", "s1", "a1", {"q": "x"})
    assert c.session_id is None and c.request_id.startswith("wasm-")
    assert c.metadata == {"scopes": ["tool.read"], "filesystem_roots": [], "matched_grant_index": 0}


def test_dict_requests_and_host_extensions_are_accepted():
    c = request_to_context({"tool_name": "t", "server_id": "s", "agent_id": "a", "arguments": "",
                            "request_id": "host-1", "session_id": "sess-9", "cost_estimate": 12})
    assert (c.request_id, c.session_id, c.cost_estimate, c.arguments) == ("host-1", "sess-9", 12, {})


def test_allowed_request_is_allow_and_commits_the_estimate():
    b = budget()
    v = WasmGuardAdapter(b).evaluate(GuardRequest("search", "s1", "a1", "{}"))
    assert v == Allow()
    assert b.guard.total_spent() == 5 and b.open_holds() == 0
    assert b.guard.ledger.open_reservations() == 0


def test_over_budget_request_is_deny_with_the_reason():
    b = budget()
    v = WasmGuardAdapter(b).evaluate({"tool_name": "search", "server_id": "s1", "agent_id": "a1",
                                      "arguments": "{}", "cost_estimate": 10001})
    assert isinstance(v, Deny) and v.tag == "deny"
    assert "total budget exceeded" in v.reason and v.value == v.reason
    assert b.guard.total_spent() == 0


def test_hold_mode_keeps_the_reservation_for_the_host_to_settle():
    b = budget()
    a = WasmGuardAdapter(b, settle="hold")
    assert a.evaluate({"tool_name": "search", "server_id": "s1", "agent_id": "a1", "arguments": "{}",
                       "request_id": "host-7"}) == Allow()
    assert b.open_holds() == 1
    assert b.on_invocation_complete("host-7", 3).committed_units == 3
    assert b.guard.total_spent() == 3


def test_bad_requests_deny_fail_closed():
    b = budget()
    a = WasmGuardAdapter(b)
    bad_json = a.evaluate(GuardRequest("search", "s1", "a1", "{oops"))
    assert isinstance(bad_json, Deny) and "not valid JSON" in bad_json.reason
    missing = a.evaluate({"tool_name": "search", "arguments": "{}"})
    assert isinstance(missing, Deny) and "server_id" in missing.reason
    assert b.guard.total_spent() == 0


def test_guard_errors_and_pending_approval_become_deny():
    assert isinstance(WasmGuardAdapter(Raising()).evaluate(GuardRequest("t", "s", "a", "{}")), Deny)
    v = WasmGuardAdapter(Pending()).evaluate(GuardRequest("t", "s", "a", "{}"))
    assert isinstance(v, Deny) and "human" in v.reason


def test_a_whole_chain_can_back_a_component_with_host_verdict_types():
    b = budget()
    chain = GuardChain([AllowAll(), b, DenyOnTool("s1:rm")])
    a = WasmGuardAdapter(chain, make_allow=lambda: "ALLOW", make_deny=lambda r: ("DENY", r))
    assert a.evaluate(GuardRequest("search", "s1", "a1", "{}")) == "ALLOW"
    verdict, reason = a.evaluate({"tool_name": "rm", "server_id": "s1", "agent_id": "a1", "arguments": "{}",
                                  "cost_estimate": 4})
    assert verdict == "DENY" and "s1:rm is blocked" in reason
    # search committed its 5; rm's hold was cancelled by the chain's later deny
    assert b.guard.total_spent() == 5 and b.open_holds() == 0
