"""The OPA stand-in (test support) answers like OPA's REST API where the suite relies on it.

Run against ``opa_server_blank``, so with a real ``opa`` these same checks
show that the stand-in's behaviour is OPA's.
"""

from __future__ import annotations

import requests


POLICY = "package demo\n\nallow if input.user == data.demo_data.admin\n"


def test_policies_put_get_list_delete(opa_server_blank):
    url = opa_server_blank.url
    s = requests.Session()
    assert s.get(f"{url}/health", timeout=5).status_code == 200
    r = s.put(f"{url}/v1/policies/team/demo.rego", data=POLICY, headers={"Content-Type": "text/plain"}, timeout=5)
    assert r.status_code == 200
    got = s.get(f"{url}/v1/policies/team/demo.rego", timeout=5).json()["result"]
    assert got["id"] == "team/demo.rego" and got["raw"] == POLICY
    assert "team/demo.rego" in [p["id"] for p in s.get(f"{url}/v1/policies", timeout=5).json()["result"]]
    assert s.delete(f"{url}/v1/policies/team/demo.rego", timeout=5).status_code == 200
    r = s.get(f"{url}/v1/policies/team/demo.rego", timeout=5)
    assert r.status_code == 404 and r.json()["code"] == "resource_not_found"


def test_bad_rego_is_a_400_with_opa_error_body_and_changes_nothing(opa_server_blank):
    url = opa_server_blank.url
    r = requests.put(f"{url}/v1/policies/bad.rego", data="package bad\n\nallow if {", timeout=5)
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "invalid_parameter" and body["message"]
    assert requests.get(f"{url}/v1/policies/bad.rego", timeout=5).status_code == 404


def test_data_put_patch_get_delete_and_decisions(opa_server_blank):
    url = opa_server_blank.url
    s = requests.Session()
    s.put(f"{url}/v1/policies/demo.rego", data=POLICY, timeout=5).raise_for_status()
    assert s.put(f"{url}/v1/data/demo_data", json={"admin": "ann"}, timeout=5).status_code == 204
    assert s.get(f"{url}/v1/data/demo_data/admin", timeout=5).json() == {"result": "ann"}
    assert s.post(f"{url}/v1/data/demo/allow", json={"input": {"user": "ann"}}, timeout=5).json() == {"result": True}
    # `allow` has no default: for anyone else it is undefined, and OPA answers {}
    assert s.post(f"{url}/v1/data/demo/allow", json={"input": {"user": "bob"}}, timeout=5).json() == {}
    patch = [{"op": "replace", "path": "/admin", "value": "bob"}]
    r = s.patch(f"{url}/v1/data/demo_data", json=patch, headers={"Content-Type": "application/json-patch+json"},
                timeout=5)
    assert r.status_code == 204
    assert s.post(f"{url}/v1/data/demo/allow", json={"input": {"user": "bob"}}, timeout=5).json() == {"result": True}
    assert s.delete(f"{url}/v1/data/demo_data", timeout=5).status_code == 204
    assert s.get(f"{url}/v1/data/demo_data", timeout=5).json() == {}
    assert s.delete(f"{url}/v1/data/demo_data", timeout=5).status_code == 404


def test_big_integers_survive_the_round_trip(opa_server_blank):
    """u64 counters must not be rounded through a float anywhere on the wire."""
    url = opa_server_blank.url
    big = 2**64 - 1
    requests.put(f"{url}/v1/data/nums", json={"max": big}, timeout=5).raise_for_status()
    assert requests.get(f"{url}/v1/data/nums/max", timeout=5).json() == {"result": big}


def test_malformed_json_body_is_a_400(opa_server_blank):
    r = requests.post(f"{opa_server_blank.url}/v1/data/x", data=b"{not json", timeout=5)
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter"
