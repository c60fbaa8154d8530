"""The server engine as users reach it: from_files, CLI, env, readiness, threads, options."""

from __future__ import annotations

import json
import threading

import pytest
import requests
from typer.testing import CliRunner

from chio_budget import BudgetGuard, EngineError
from chio_budget.cli import app
from chio_budget.compiler import Compiled
from chio_budget.engines import make_engine
from chio_budget.engines.opa_http import make_client
from chio_budget.engines.server import ServerEngine
from support.guards import POLICIES_DIR, REGO_DIR, make_meta
from support.opa import REPO_COMPILED, engine_input

META_JSON = json.dumps({"receipt_id": "r1", "timestamp": 1000, "session_id": "sess-1", "agent_id": "a1",
                        "tool_server": "s1", "tool_name": "t1"})


def test_guard_from_files_decides_through_the_bundle(opa_server):
    guard = BudgetGuard.from_files(POLICIES_DIR, engine="server", opa_url=opa_server.url)
    try:
        assert guard.engine.name == "server"
        ok = guard.authorize(make_meta(receipt="r1"), 2900)
        assert ok.allow and ok.decision.error is None
        ok.commit()
        over = guard.authorize(make_meta(receipt="r2"), 200)  # agent a1: 2900 + 200 > 3000
        assert not over.allow and over.decision.error is None
        assert [v.scope for v in over.decision.violations] == ["agent"]
        assert over.decision.violation.model_dump() == {
            "scope": "agent", "agent_id": "a1", "limit_units": 3000, "current_units": 2900,
            "requested_units": 200, "currency": "USD"}
        assert guard.total_spent() == 2900
        assert over.decision.policy_revision == REPO_COMPILED.revisions["default"]
    finally:
        guard.close()


def test_cli_check_with_engine_server_and_opa_url(opa_server):
    r = CliRunner().invoke(app, ["check", "--meta", META_JSON, "--cost", "200", "--policies", str(POLICIES_DIR),
                                 "--engine", "server", "--opa-url", opa_server.url])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["allow"] is True


def test_cli_reads_the_url_from_chio_opa_url(opa_server):
    r = CliRunner().invoke(app, ["check", "--meta", META_JSON, "--cost", "20000", "--policies", str(POLICIES_DIR),
                                 "--engine", "server"], env={"CHIO_OPA_URL": opa_server.url})
    assert r.exit_code == 1, r.output  # denied: over the total
    assert json.loads(r.stdout.splitlines()[0])["violations"][0]["scope"] == "total"


def test_cli_server_engine_without_url_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("CHIO_OPA_URL", raising=False)
    r = CliRunner().invoke(app, ["check", "--meta", META_JSON, "--cost", "1", "--policies", str(POLICIES_DIR),
                                 "--engine", "server"])
    assert r.exit_code == 2 and "--opa-url" in r.output


def test_cli_reports_an_unreachable_opa_as_a_start_up_error(opa_server):
    opa_server.stop()
    r = CliRunner().invoke(app, ["check", "--meta", META_JSON, "--cost", "1", "--policies", str(POLICIES_DIR),
                                 "--engine", "server", "--opa-url", opa_server.url],
                             env={"CHIO_OPA_READY_TIMEOUT": "0.2"})
    assert r.exit_code == 2 and "did not become healthy within 0.2s" in r.output


def test_start_up_fails_clearly_when_opa_never_becomes_healthy(opa_server):
    opa_server.faults.set(status=500, match="GET /health")
    with pytest.raises(EngineError, match="did not become healthy within 0.3s"):
        make_engine("server", REPO_COMPILED, opa_url=opa_server.url, ready_timeout=0.3, retries=0)


def test_start_up_fails_clearly_when_nothing_listens(opa_server):
    opa_server.stop()
    with pytest.raises(EngineError, match=f"OPA at {opa_server.url} did not become healthy"):
        make_engine("server", REPO_COMPILED, opa_url=opa_server.url, ready_timeout=0.2, retries=0)


def test_start_up_refuses_a_server_without_this_guards_policies(opa_server_blank):
    with pytest.raises(EngineError, match="does not serve this guard's policies.*chio-budget push"):
        make_engine("server", REPO_COMPILED, opa_url=opa_server_blank.url, ready_timeout=0.3)


def test_start_up_refuses_other_revisions_unless_told_not_to_verify(opa_server_blank):
    make_engine("server", REPO_COMPILED, opa_url=opa_server_blank.url, push=True, rego_dir=REGO_DIR).close()
    other = json.loads(json.dumps(REPO_COMPILED.budget))
    other["policies"]["default"]["revision"] = "sha256:other"
    other = Compiled.from_budget(other)
    with pytest.raises(EngineError, match="policy 'default' is at revision sha256:.* on the server, sha256:other here"):
        make_engine("server", other, opa_url=opa_server_blank.url, ready_timeout=0.3)
    unchecked = make_engine("server", other, opa_url=opa_server_blank.url, verify_revision=False)
    try:
        inp = engine_input(100)
        assert unchecked.decide(inp).allow
    finally:
        unchecked.close()


def test_push_at_start_up_serves_a_bare_opa(opa_server_blank):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server_blank.url, push=True, rego_dir=REGO_DIR)
    try:
        assert engine.decide(engine_input(100)).allow
        assert not engine.decide(engine_input(10**5)).allow
    finally:
        engine.close()


def test_one_engine_shared_by_threads_gives_every_thread_its_own_answer(opa_server):
    """Many threads, one client: each gets the decision for its own input, over reused connections."""
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url, pool_size=8)
    connections_before = opa_server.front.connections
    wrong: list[str] = []

    def worker(n: int) -> None:
        for i in range(40):
            units = 2990 + (n + i) % 20  # agent limit 3000: allowed iff units <= 3000
            d = engine.decide(engine_input(units, agent=f"a{n}"))
            if d.error or d.allow != (units <= 3000) or (not d.allow and d.violation.agent_id != f"a{n}"):
                wrong.append(f"thread {n} units {units}: {d.to_json_dict()}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert wrong == []
    assert opa_server.front.connections - connections_before <= 8  # 320 decisions, pooled connections


def test_bearer_token_is_sent(opa_server):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url, token="s3cret")
    try:
        engine.decide(engine_input(1))
        assert opa_server.front.last_headers.get("Authorization") == "Bearer s3cret"
    finally:
        engine.close()


@pytest.mark.parametrize("url, problem", [
    ("127.0.0.1:8181", "expected http://host:port"),
    ("ftp://127.0.0.1:8181", "expected http://host:port"),
    ("http://127.0.0.1:8181/opa", "remove the path"),
    ("http://127.0.0.1:notaport", "bad port"),
])
def test_bad_urls_are_refused_before_any_request(url, problem):
    with pytest.raises(EngineError, match=problem):
        make_engine("server", REPO_COMPILED, opa_url=url)


def test_https_url_and_options_reach_the_client():
    client = make_client("https://opa.internal:8443", token="t", cert=("c.pem", "k.pem"), ca_bundle="ca.pem",
                         timeout=0.7, retries=1)
    try:
        assert client.root_url == "https://opa.internal:8443/v1"
        assert client._session.verify == "ca.pem" and client._session.cert == ("c.pem", "k.pem")
        assert client.timeout == 0.7 and client._session.headers["Authorization"] == "Bearer t"
    finally:
        client.close_connection()


def test_unknown_engine_options_are_errors_not_silently_ignored():
    with pytest.raises(EngineError, match="unknown option.*tiemout"):
        make_engine("server", REPO_COMPILED, opa_url="http://127.0.0.1:1", tiemout=3)


def test_missing_url_names_every_way_to_give_one(monkeypatch):
    monkeypatch.delenv("CHIO_OPA_URL", raising=False)
    with pytest.raises(EngineError, match="CHIO_OPA_URL"):
        make_engine("server", REPO_COMPILED)


def test_opa_url_from_env_for_the_python_api(opa_server, monkeypatch):
    monkeypatch.setenv("CHIO_OPA_URL", opa_server.url)
    engine = make_engine("server", REPO_COMPILED)
    try:
        assert engine.decide(engine_input(5)).allow
    finally:
        engine.close()


def test_decide_never_raises_on_garbage_input(opa_server):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url)
    try:
        d = engine.decide({"policy_id": "default", "cost": {"units": float("nan")}})  # not JSON-encodable
        assert not d.allow and d.error
    finally:
        engine.close()


def test_engine_is_reachable_as_serverengine_from_options(opa_server):
    e = ServerEngine.from_options(REPO_COMPILED, rego_dir=None, opa_url=opa_server.url)
    try:
        assert requests.get(opa_server.url + "/health", timeout=2).status_code == 200
        assert e.decide(engine_input(1)).allow
    finally:
        e.close()


def test_decide_never_raises_whatever_the_input(opa_server):
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server.url)
    try:
        for bad in [{"policy_id": {"not": "a string"}}, {"policy_id": ["x"]}, {}, {"policy_id": None}]:
            d = engine.decide(bad)
            assert not d.allow and d.error.startswith("engine error:"), bad
    finally:
        engine.close()


def test_a_decision_for_a_policy_this_guard_did_not_compile_is_refused(opa_server_blank):
    """OPA may know more policies than the guard; their decisions are not vouched for."""
    both = json.loads(json.dumps(REPO_COMPILED.budget))
    both["policies"]["other"] = dict(both["policies"]["default"])
    both = Compiled.from_budget(both)
    make_engine("server", both, opa_url=opa_server_blank.url, push=True, rego_dir=REGO_DIR).close()
    engine = make_engine("server", REPO_COMPILED, opa_url=opa_server_blank.url)
    try:
        d = engine.decide({**engine_input(1), "policy_id": "other"})
        assert not d.allow and "which this guard did not compile" in d.error
        assert engine.decide(engine_input(1)).allow
    finally:
        engine.close()


def test_no_overspend_when_threads_authorize_through_the_server_engine(opa_server):
    """Reserve -> OPA -> release/commit stays atomic with OPA behind HTTP: the total limit binds exactly."""
    guard = BudgetGuard.from_files(POLICIES_DIR, engine="server", opa_url=opa_server.url, timeout=5)
    allowed: list[int] = []
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(20):  # 8 agents x 20 x 100 = 16000 asked; each agent stays under its 3000
            a = guard.authorize(make_meta(agent=f"a{n}", receipt=f"r{n}-{i}", session=None), 100)
            if a.decision.error:
                errors.append(a.decision.error)
            if a.allow:
                a.commit()
                allowed.append(100)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sum(allowed) == guard.total_spent() == 10000  # max_total, not a unit more or less
        assert guard.remaining() == 0
    finally:
        guard.close()


# -- issue 9 item 11: credentials in the URL never reach a message ----------------------------------------------

def _with_credentials(url: str) -> str:
    return url.replace("http://", "http://alice:s3cret@", 1)


def test_credentials_in_the_url_are_redacted_from_start_up_errors(opa_server):
    url = _with_credentials(opa_server.url)
    opa_server.stop()
    with pytest.raises(EngineError) as caught:
        make_engine("server", REPO_COMPILED, opa_url=url, ready_timeout=0.2, retries=0)
    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)
    assert "http://***@127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("url", ["http://alice:s3cret@127.0.0.1:notaport", "ftp://alice:s3cret@127.0.0.1:1",
                                 "http://alice:s3cret@127.0.0.1:1/opa"])
def test_credentials_in_a_bad_url_are_redacted_from_the_refusal(url):
    with pytest.raises(EngineError) as caught:
        make_engine("server", REPO_COMPILED, opa_url=url)
    assert "s3cret" not in str(caught.value) and "***@" in str(caught.value)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_redacted_from_cli_errors(opa_server):
    url = _with_credentials(opa_server.url)
    engine = make_engine("server", REPO_COMPILED, opa_url=url)
    try:
        assert engine.decide(engine_input(1)).allow
        assert opa_server.front.last_headers.get("Authorization") == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
        assert "s3cret" not in engine.url
    finally:
        engine.close()
    opa_server.stop()
    r = CliRunner().invoke(app, ["check", "--meta", META_JSON, "--cost", "1", "--policies", str(POLICIES_DIR),
                                 "--engine", "server", "--opa-url", url], env={"CHIO_OPA_READY_TIMEOUT": "0.2"})
    assert r.exit_code == 2 and "did not become healthy" in r.output
    assert "s3cret" not in r.output
