"""What ``opa run --server`` does, pinned so the stand-in cannot drift from it.

Each test talks plain HTTP to an OPA: a real ``opa`` when one is installed
(``OPA_BIN`` or PATH), else ``tests/opa_standin.py``. The expected answers
are read from OPA's ``v1/server/server.go``, ``types.go`` and ``writer.go``;
a real ``opa`` that answers otherwise fails these tests too, so a stand-in
that passes them is as strict as OPA on each point.
"""

from __future__ import annotations

import pytest
import requests

from chio_budget.bundle import bundle_contents
from chio_budget.engines.opa_http import make_client, push
from support.guards import POLICIES_DIR
from support.opa import start_opa

TIMEOUT = 5
# A bundle plugin that never activates: its service is a closed port.
UNREADY_ARGS = ("--set", "services.s.url=http://127.0.0.1:9", "--set", "bundles.b.service=s",
                "--set", "bundles.b.resource=/b.tar.gz")


def put_policy(url: str, pid: str, src: str) -> requests.Response:
    return requests.put(f"{url}/v1/policies/{pid}", data=src.encode(), headers={"Content-Type": "text/plain"},
                        timeout=TIMEOUT)


def test_the_policy_list_is_v1_policies_without_a_trailing_slash(opa_server_blank):
    url = opa_server_blank.url
    assert put_policy(url, "a.rego", "package a\n\nx := 1\n").status_code == 200
    listed = requests.get(f"{url}/v1/policies", timeout=TIMEOUT)
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()["result"]] == ["a.rego"]
    assert {"id", "raw", "ast"} <= set(listed.json()["result"][0])
    slash = requests.get(f"{url}/v1/policies/", timeout=TIMEOUT)  # a policy whose id is ""
    assert slash.status_code == 404
    assert slash.json()["code"] == "resource_not_found"
    missing = requests.get(f"{url}/v1/policies/nope", timeout=TIMEOUT)
    assert (missing.status_code, missing.json()["code"]) == (404, "resource_not_found")


def test_patch_on_a_missing_path_is_404_and_existing_paths_patch(opa_server_blank):
    url = opa_server_blank.url
    r = requests.patch(f"{url}/v1/data/nowhere/deep", json=[{"op": "add", "path": "/x", "value": 1}],
                       timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["code"] == "resource_not_found"
    assert requests.put(f"{url}/v1/data/cfg", json={"a": 1}, timeout=TIMEOUT).status_code == 204
    r = requests.patch(f"{url}/v1/data/cfg", json=[{"op": "replace", "path": "/b", "value": 2}], timeout=TIMEOUT)
    assert r.status_code == 404  # replace needs the target
    r = requests.patch(f"{url}/v1/data/cfg", json=[{"op": "add", "path": "/b", "value": 2}], timeout=TIMEOUT)
    assert r.status_code == 204
    assert requests.get(f"{url}/v1/data/cfg", timeout=TIMEOUT).json()["result"] == {"a": 1, "b": 2}
    r = requests.patch(f"{url}/v1/data/cfg", json=[{"op": "move", "path": "/b"}], timeout=TIMEOUT)
    assert (r.status_code, r.json()["message"]) == (400, "bad patch operation: move")
    assert requests.delete(f"{url}/v1/data/cfg/zzz", timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize("src,code,row,col", [
    ("package bad\n\nx := \n", "rego_parse_error", 4, 0),
    ("package bad\n\nallow if {\n\tz == 1\n}\n", "rego_unsafe_var_error", 4, 2),
    ("package bad\n\nn := count(1)\n", "rego_type_error", 3, 6),
])
def test_policy_errors_carry_code_message_and_location(opa_server_blank, src, code, row, col):
    r = put_policy(opa_server_blank.url, "bad/x.rego", src)
    assert r.status_code == 400
    body = r.json()
    assert (body["code"], body["message"]) == ("invalid_parameter", "error(s) occurred while compiling module(s)")
    first = body["errors"][0]
    assert first["code"] == code and first["message"]
    assert first["location"] == {"file": "bad/x.rego", "row": row, "col": col}


def test_a_parse_error_has_opas_details(opa_server_blank):
    r = put_policy(opa_server_blank.url, "p.rego", "package p\n\nallow if {\n\tinput.x ==\n}\n")
    detail = r.json()["errors"][0]
    assert detail["location"]["row"] == 5
    assert detail["details"]["line"] == "}" and detail["details"]["idx"] == 0


def test_evaluation_errors_are_500_with_the_topdown_error(opa_server_blank):
    url = opa_server_blank.url
    assert put_policy(url, "e.rego", "package e\n\nx := y if {\n\ty := 1 / input.d\n}\n\nc := 1 if input.a\n\n"
                                     "c := 2 if input.b\n").status_code == 200
    r = requests.post(f"{url}/v1/data/e/x", json={"input": {"d": 0}}, timeout=TIMEOUT)
    assert r.status_code == 500
    body = r.json()
    assert (body["code"], body["message"]) == ("internal_error", "error(s) occurred while evaluating query")
    assert body["errors"] == [{"code": "eval_builtin_error", "message": "div: divide by zero",
                               "location": {"file": "e.rego", "row": 4, "col": 7}}]
    r = requests.post(f"{url}/v1/data/e/c", json={"input": {"a": True, "b": True}}, timeout=TIMEOUT)
    assert r.status_code == 500
    assert r.json()["errors"][0]["code"] == "eval_conflict_error"


def test_health_of_bundles_and_plugins_is_500_until_ready():
    server = start_opa(None, args=UNREADY_ARGS, ready=False)
    try:
        assert requests.get(f"{server.url}/health", timeout=TIMEOUT).json() == {}
        for query, error in (("bundles", "one or more bundles are not activated"),
                             ("plugins", "one or more plugins are not up")):
            r = requests.get(f"{server.url}/health?{query}", timeout=TIMEOUT)
            assert (r.status_code, r.json()) == (500, {"error": error})
    finally:
        server.close()


def test_health_with_bundles_is_200_once_activated(opa_server):
    for query in ("", "?bundles", "?plugins", "?bundles&plugins"):
        r = requests.get(f"{opa_server.url}/health{query}", timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (200, {})


def test_undefined_decisions_without_decision_logs_are_empty(opa_server_blank):
    r = requests.post(f"{opa_server_blank.url}/v1/data/chio/budget/none", json={"input": {}}, timeout=TIMEOUT)
    assert (r.status_code, r.json()) == (200, {})
    r = requests.post(f"{opa_server_blank.url}/v1/data/chio/budget/none", json={}, timeout=TIMEOUT)
    assert r.json() == {"warning": {"code": "api_usage_warning", "message": "'input' key missing from the request"}}


def test_decision_ids_come_with_decision_logging():
    server = start_opa(None, args=("--set", "decision_logs.console=true"), decision_logs=True)
    try:
        undefined = requests.post(f"{server.url}/v1/data/x/y", json={"input": {}}, timeout=TIMEOUT).json()
        assert set(undefined) == {"decision_id"}
        defined = requests.post(f"{server.url}/v1/data", json={"input": {}}, timeout=TIMEOUT).json()
        assert defined["decision_id"] != undefined["decision_id"] and "result" in defined
    finally:
        server.close()


def test_metrics_and_provenance_on_request(opa_server):
    body = {"input": {"policy_id": "nope"}}
    plain = requests.post(f"{opa_server.url}/v1/data/chio/budget/decision", json=body, timeout=TIMEOUT).json()
    assert "metrics" not in plain and "provenance" not in plain
    r = requests.post(f"{opa_server.url}/v1/data/chio/budget/decision?metrics&provenance", json=body,
                      timeout=TIMEOUT).json()
    assert isinstance(r["metrics"]["timer_rego_query_eval_ns"], int)
    assert isinstance(r["metrics"]["timer_server_handler_ns"], int)
    assert r["provenance"]["version"]
    (bundle,) = r["provenance"]["bundles"].values()
    assert bundle["revision"].startswith("sha256:")


def test_unknown_routes_and_methods(opa_server_blank):
    url = opa_server_blank.url
    assert requests.get(f"{url}/v1/nothing", timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{url}/v1/policies", timeout=TIMEOUT).status_code == 405
    assert requests.patch(f"{url}/v1/policies/a", timeout=TIMEOUT).status_code == 405


def test_push_reports_a_bad_module_at_its_file_row_and_column(opa_server_blank, tmp_path):
    rego = tmp_path / "rego"
    (rego / "chio/budget").mkdir(parents=True)
    (rego / "chio/budget/extra.rego").write_text("package chio.budget\n\nviolation contains 1 if {\n\tinput.x ==\n}\n")
    contents = bundle_contents(POLICIES_DIR, rego)
    client = make_client(opa_server_blank.url)
    try:
        with pytest.raises(Exception) as info:
            push(client, contents.compiled, contents.modules, source_dir=str(rego))
    finally:
        client.close_connection()
    message = str(info.value)
    assert message.startswith("push failed at PUT /v1/policies/chio-budget/chio/budget/extra.rego:\n")
    assert f"\n{rego}/chio/budget/extra.rego:5:1: rego_parse_error: " in message


def test_queries_in_flight_finish_on_their_snapshot_while_policies_change(opa_server_blank):
    """OPA's store is MVCC: a policy PUT never breaks a query already evaluating (no 500)."""
    import threading

    url = opa_server_blank.url
    assert put_policy(url, "slow.rego", "package slow\n\nn := count([x | some x in numbers.range(1, 20000)])\n"
                      ).status_code == 200
    stop, statuses = threading.Event(), []

    def ask() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/v1/data/slow/n", json={"input": {}}, timeout=TIMEOUT)
                statuses.append((r.status_code, r.json().get("result")))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            assert put_policy(url, f"p{i % 3}.rego", f"package p{i % 3}\n\nv := {i}\n").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {(200, 20000)}
