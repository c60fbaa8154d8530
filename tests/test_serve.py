"""``chio-budget serve`` black-box, as a kernel adapter would use it: one real sidecar process,
two workers on one SQLite ledger, a bearer token, driven over HTTP on a free loopback port.

The server is shared by the whole module (one start, ~3 s); each test uses request ids,
agents and policies of its own, so the tests do not see each other's spend.
"""

from __future__ import annotations

import json
from contextlib import closing
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from support.guards import ROOT
from support.sidecar import CHIO_BUDGET, ctx, start_sidecar, write_policies

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    policies = write_policies(tmp / "policies")
    s = start_sidecar(policies, "--ledger", f"sqlite:///{tmp / 'ledger.db'}", "--decision-log",
                      str(tmp / "decisions.jsonl"), workers=2, tmp=tmp)
    s.policies_dir = policies  # type: ignore[attr-defined]
    s.tmp = tmp  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()[-3000:]
    assert "Traceback" not in s.log(), s.log()[-5000:]  # every refusal and deny was an answer, not a crash


@pytest.fixture(scope="module")
def http(side):
    with side.client() as c:
        yield c


def rid() -> str:
    return f"req-{uuid.uuid4().hex[:12]}"


def agent() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


def held(http: httpx.Client, policy_id: str = "default", **q: str) -> dict[str, dict]:
    r = http.get("/v1/budget", params={"policy_id": policy_id, **q})
    assert r.status_code == 200, r.text
    return {s["scope"]: s for s in r.json()["scopes"]}


def test_the_served_openapi_document_is_the_committed_one(http):
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert http.get("/openapi.json").json() == committed


def test_allow_then_settle_commits_the_actual_cost(http):
    a, r = agent(), rid()
    d = http.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=120)).json()
    assert d["verdict"] == "allow" and d["reason"] is None
    [ev] = d["evidence"]
    assert ev["guard_name"] == "budget" and ev["verdict"] == "allow"
    assert ev["details"]["request_id"] == r and ev["details"]["decision"]["allow"] is True
    assert ev["details"]["estimate"] == {"units": 120, "currency": "USD", "source": "context"}
    assert held(http, agent_id=a)["agent"]["held_units"] == 120
    assert http.post("/v1/revalidate", json={"request_id": r}).json()["live"] is True
    metadata = {"receipt_id": r, "timestamp": 1000, "agent_id": a, "tool_server": "s1", "tool_name": "search",
                "dimensions": [{"dimension": "api_cost", "amount": {"units": 90, "currency": "USD"},
                                "provider": "x"}]}
    s = http.post("/v1/settle", json={"request_id": r, "result": metadata}).json()
    assert s["outcome"] == "committed" and s["committed_units"] == 90
    assert s["decision_id"] == ev["details"]["decision_id"]
    scopes = held(http, agent_id=a)
    assert (scopes["agent"]["spent_units"], scopes["agent"]["held_units"], scopes["agent"]["remaining_units"]) == (
        90, 0, 3000 - 90)
    assert http.post("/v1/revalidate", json={"request_id": r}).json()["state"] == "committed"


def test_a_deny_names_the_violation_and_holds_nothing(http):
    before = held(http, "small")["total"]
    d = http.post("/v1/evaluate", json=ctx(rid(), policy_id="small", cost_estimate=1001)).json()
    assert d["verdict"] == "deny" and "total budget exceeded" in d["reason"]
    [violation] = d["evidence"][0]["details"]["decision"]["violations"]
    assert violation == {"scope": "total", "limit_units": 1000, "current_units": before["spent_units"],
                         "requested_units": 1001, "currency": "USD"}
    assert held(http, "small")["total"] == before


def test_an_unknown_policy_is_a_deny(http):
    d = http.post("/v1/evaluate", json=ctx(rid(), policy_id="no-such-policy", cost_estimate=1)).json()
    assert d["verdict"] == "deny" and "unknown policy 'no-such-policy'" in d["reason"]


def test_no_estimate_is_a_deny(http):
    d = http.post("/v1/evaluate", json=ctx(rid(), tool_name="unpriced")).json()
    assert d["verdict"] == "deny" and "no cost estimate" in d["reason"]


def test_a_retried_evaluate_on_another_worker_returns_the_first_answer_and_holds_once(side):
    (_, w1), (_, w2) = side.pinned_clients(2)
    a, r = agent(), rid()
    with closing(w1), closing(w2):
        first = w1.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=70))
        again = w2.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=70))
        assert first.headers["chio-worker"] != again.headers["chio-worker"]
        assert first.json()["verdict"] == "allow" and again.json() == first.json()
        assert held(w1, agent_id=a)["agent"]["held_units"] == 70
        # a retry without a timestamp is placed at the first request's time (same windows, same answer)
        r2 = rid()
        first = w1.post("/v1/evaluate", json=ctx(r2, agent_id=a, policy_id="eur", cost_estimate=10)).json()
        assert w2.post("/v1/evaluate", json=ctx(r2, agent_id=a, policy_id="eur", cost_estimate=10)).json() == first


def test_a_retried_deny_is_the_first_deny(http):
    r = rid()
    first = http.post("/v1/evaluate", json=ctx(r, policy_id="small", cost_estimate=5000)).json()
    assert first["verdict"] == "deny"
    assert http.post("/v1/evaluate", json=ctx(r, policy_id="small", cost_estimate=5000)).json() == first


def test_a_request_id_reused_for_another_call_is_denied(http):
    r, a = rid(), agent()
    assert http.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=5)).json()["verdict"] == "allow"
    other = http.post("/v1/evaluate", json=ctx(r, agent_id=agent(), cost_estimate=5)).json()
    assert other["verdict"] == "deny" and "different request" in other["reason"]
    assert held(http, agent_id=a)["agent"]["held_units"] == 5


def test_settling_twice_counts_once(http):
    a, r = agent(), rid()
    http.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=40))
    # the kernel's ToolInvocationCost, as a tool server reports it
    first = http.post("/v1/settle", json={"request_id": r, "result": {"units": 30, "currency": "USD",
                                                                       "breakdown": {"tokens": 1200}}}).json()
    second = http.post("/v1/settle", json={"request_id": r, "result": 35}).json()
    assert (first["outcome"], first["committed_units"], first["source"]) == ("committed", 30, "tool_invocation_cost")
    assert (second["outcome"], second["committed_units"], second["source"]) == (
        "already_settled", 30, "no-op (was committed)")
    assert held(http, agent_id=a)["agent"]["spent_units"] == 30


def test_a_call_settles_on_another_worker_than_the_one_that_evaluated_it(side):
    (p1, w1), (p2, w2) = side.pinned_clients(2)
    a, r, failed = agent(), rid(), rid()
    with closing(w1), closing(w2):
        assert w1.post("/v1/evaluate", json=ctx(r, agent_id=a, cost_estimate=60)).json()["verdict"] == "allow"
        assert w1.post("/v1/evaluate", json=ctx(failed, agent_id=a, cost_estimate=25)).json()["verdict"] == "allow"
        s = w2.post("/v1/settle", json={"request_id": r})
        assert int(s.headers["chio-worker"]) == p2 != p1
        assert s.json()["outcome"] == "committed" and s.json()["committed_units"] == 60
        assert w2.post("/v1/settle", json={"request_id": failed, "status": "failed"}).json()["outcome"] == "released"
        scopes = held(w1, agent_id=a)
        assert (scopes["agent"]["spent_units"], scopes["agent"]["held_units"]) == (60, 0)


def test_settle_and_revalidate_of_an_unknown_call(http):
    assert http.post("/v1/settle", json={"request_id": rid()}).json()["outcome"] == "unknown"
    v = http.post("/v1/revalidate", json={"request_id": rid()}).json()
    assert (v["live"], v["state"]) == (False, "unknown")


def test_the_external_guard_endpoint_commits_the_price_at_once(http):
    a = agent()
    body = {"tool_name": "search", "agent_id": a, "server_id": "s1", "arguments_json": '{"q": "x"}'}
    first = http.post("/v1/external-guard", json=body).json()
    assert first["verdict"] == "Allow" and first["reason"] is None and first["request_id"].startswith("ext-")
    second = http.post("/v1/external-guard", json=body).json()  # a retry: counted again (documented)
    assert second["verdict"] == "Allow" and second["request_id"] != first["request_id"]
    scopes = held(http, agent_id=a)
    assert (scopes["agent"]["spent_units"], scopes["agent"]["held_units"]) == (10, 0)  # price 5, twice, committed
    unpriced = http.post("/v1/external-guard", json={**body, "tool_name": "unpriced"}).json()
    assert unpriced["verdict"] == "Deny" and "no cost estimate" in unpriced["reason"]
    bad = http.post("/v1/external-guard", json={**body, "arguments_json": "{not json"}).json()
    assert bad["verdict"] == "Deny" and "not valid JSON" in bad["reason"]
    other = http.post("/v1/external-guard", json={**body, "policy_id": "nope"}).json()
    assert other["verdict"] == "Deny" and "unknown policy" in other["reason"]
    assert held(http, agent_id=a)["agent"]["spent_units"] == 10


BAD_BODIES = [
    ("/v1/evaluate", {"tool_name": "search", "server_id": "s1", "agent_id": "a1"}, ["body", "request_id"]),
    ("/v1/evaluate", {**ctx("r"), "cost_estimate": -5}, ["body", "cost_estimate"]),
    ("/v1/evaluate", {**ctx("r"), "cost_estimate": 2 ** 64}, ["body", "cost_estimate"]),
    ("/v1/evaluate", {**ctx("r"), "cost_estimate": 1.5}, ["body", "cost_estimate"]),
    ("/v1/evaluate", {**ctx("r"), "timestamp": "yesterday"}, ["body", "timestamp"]),
    ("/v1/evaluate", {**ctx("r"), "max_cost": 5}, ["body", "max_cost"]),
    ("/v1/evaluate", {**ctx("r"), "request_id": ""}, ["body", "request_id"]),
    ("/v1/settle", {"request_id": "r", "status": "done"}, ["body", "status"]),
    ("/v1/settle", {"request_id": "r", "result": -1}, ["body", "result"]),
    ("/v1/revalidate", {}, ["body", "request_id"]),
    ("/v1/external-guard", {"tool_name": "search", "agent_id": "a1"}, ["body", "server_id"]),
]


@pytest.mark.parametrize("path,body,loc", BAD_BODIES, ids=[f"{p}:{'.'.join(map(str, l))}" for p, _, l in BAD_BODIES])
def test_a_malformed_body_is_a_422_naming_the_field_and_reserves_nothing(http, path, body, loc):
    before = held(http)["total"]
    r = http.post(path, json=body)
    assert r.status_code == 422, r.text
    assert any(e["loc"][:len(loc)] == loc for e in r.json()["detail"]), r.json()
    assert held(http)["total"] == before


@pytest.mark.parametrize("raw", [b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"request_id": ' + b"9" * 5000 + b"}",
                                 b'"just a string"', b""])
def test_an_unreadable_body_is_a_422_and_reserves_nothing(http, raw):
    before = held(http)["total"]
    r = http.post("/v1/evaluate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"
    assert held(http)["total"] == before


def test_a_lone_surrogate_is_a_deny_not_a_crash(http):
    d = http.post("/v1/evaluate", content=json.dumps(ctx(rid(), agent_id="a\ud800", cost_estimate=1)),
                  headers={"content-type": "application/json"})
    assert d.status_code == 200 and d.json()["verdict"] == "deny" and "surrogate" in d.json()["reason"]


def test_a_body_over_the_bound_is_413(http):
    r = http.post("/v1/evaluate", json=ctx(rid(), arguments={"blob": "x" * 1_100_000}))
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["detail"]

    def chunks():  # streamed, no Content-Length
        for _ in range(20):
            yield b"x" * 100_000

    r = http.post("/v1/evaluate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("method,path", [("POST", "/v1/evaluate"), ("POST", "/v1/settle"), ("POST", "/v1/revalidate"),
                                         ("POST", "/v1/external-guard"), ("GET", "/v1/budget"), ("GET", "/health"),
                                         ("GET", "/metrics"), ("GET", "/openapi.json")])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", "Basic dXNlcjpwYXNz"])
def test_without_the_token_every_endpoint_is_refused_and_nothing_is_reserved(side, http, method, path, auth):
    before = held(http)["total"]
    headers = {"authorization": auth} if auth else {}
    body = ctx(rid(), cost_estimate=1) if method == "POST" else None
    r = httpx.request(method, side.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert held(http)["total"] == before


def test_health_and_metrics(http):
    h = http.get("/health")
    assert h.status_code == 200
    assert h.json()["status"] == "ok" and h.json()["policies"] == ["default", "eur", "small"]
    m = http.get("/metrics")
    assert m.status_code == 200 and "chio_budget_decisions_total" in m.text
    assert 'chio_budget_policy_revision_info{policy_id="small"' in m.text


def test_budget_reports_windows_and_refuses_what_it_cannot_answer(http):
    scopes = held(http, "eur", agent_id="a1", at="1772964000")
    assert scopes["total"]["window"]["key"] == "m:2026-03@Europe/Berlin"
    assert scopes["agent"]["window"] == {"window": "daily", "key": "d:2026-03-08@Europe/Berlin",
                                         "start": 1772924400, "resets_at": 1773010800}
    assert http.get("/v1/budget", params={"policy_id": "nope"}).status_code == 404
    r = http.get("/v1/budget", params={"policy_id": "eur", "at": str(2 ** 63)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "at"]


def test_every_decision_is_in_the_decision_log(side, http):
    r = rid()
    d = http.post("/v1/evaluate", json=ctx(r, cost_estimate=3)).json()
    decision_id = d["evidence"][0]["details"]["decision_id"]
    out = subprocess.run([str(CHIO_BUDGET), "explain", decision_id, "--log", str(side.tmp / "decisions.jsonl")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and r in out.stdout


def test_sighup_reloads_every_policy_in_every_worker(side):
    """Last in this module: it adds a policy (the others keep their numbers)."""
    policies: Path = side.policies_dir
    (policies / "added.yaml").write_text("currency: USD\nmax_total: 50\nprices:\n  \"s1:search\": 1\n")
    side.signal(signal.SIGHUP)
    clients = side.pinned_clients(2)
    try:
        for _, c in clients:
            deadline = time.monotonic() + 60
            while "added" not in c.get("/health").json()["policies"]:
                assert time.monotonic() < deadline, side.log()[-3000:]
                time.sleep(0.1)
            d = c.post("/v1/evaluate", json=ctx(rid(), policy_id="added")).json()
            assert d["verdict"] == "allow"
        # a broken file refuses the reload: every worker keeps serving what it had
        (policies / "broken.yaml").write_text("currency: USD\nmax_total: -1\n")
        side.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while side.log().count("reload refused") + side.log().count("reload failed") < 2:
            assert time.monotonic() < deadline, side.log()[-3000:]
            time.sleep(0.1)
        assert "broken.yaml" in side.log()
        for _, c in clients:
            assert c.get("/health").json()["policies"] == ["added", "default", "eur", "small"]
    finally:
        (policies / "broken.yaml").unlink(missing_ok=True)
        for _, c in clients:
            c.close()


def test_a_memory_ledger_refuses_more_than_one_worker(tmp_path):
    out = subprocess.run([str(CHIO_BUDGET), "serve", "--policies", str(write_policies(tmp_path / "p")),
                          "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--workers 2 needs a ledger the workers share" in out.stderr


def test_a_bad_policy_directory_is_a_located_error(tmp_path):
    policies = write_policies(tmp_path / "p", {"default.yaml": "currency: USD\nmax_total: 10\nmax_per_sesion: 5\n"})
    out = subprocess.run([str(CHIO_BUDGET), "serve", "--policies", str(policies), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "default.yaml:3: max_per_sesion: unknown key" in out.stderr


def test_without_the_serve_extra_the_command_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['fastapi'] = None; from chio_budget.cli import main; "
              f"sys.argv = ['chio-budget', 'serve', '--policies', {str(write_policies(tmp_path / 'p'))!r}]; main()")
    out = subprocess.run([str(CHIO_BUDGET.parent / "python"), "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "pip install 'chio-budget-guard[serve]'" in out.stderr


def test_the_committed_openapi_document_is_what_the_app_generates():
    from chio_budget.serve.app import create_app, openapi_json

    assert openapi_json(create_app(None)) == (ROOT / "docs" / "openapi.json").read_text(), (
        "regenerate it: .venv/bin/chio-budget serve --openapi > docs/openapi.json")
