"""Bundles and push: what OPA loads is exactly what the guard compiled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import requests
from typer.testing import CliRunner

from chio_budget import EngineError
from chio_budget.bundle import bundle_contents, write_bundle
from chio_budget.cli import app
from chio_budget.compiler import compile_all, compile_policies, data_revision
from chio_budget.engines import make_engine
from chio_budget.engines.opa_http import PUSH_PREFIX, make_client, policy_ids, push
from chio_budget.policy import load_policies
from support.guards import POLICIES_DIR, REGO_DIR
from support.opa import start_opa


@pytest.fixture
def rego_dir(tmp_path):
    """This repository's Rego plus a test module and a security team's extension."""
    d = tmp_path / "rego"
    shutil.copytree(REGO_DIR, d)
    (d / "chio/budget/decision_test.rego").write_text("package chio.budget_test\n\ntest_x if true\n")
    (d / "chio/budget/team.rego").write_text(
        'package chio.budget\n\nviolation contains {"scope": "custom", "code": "night"} if input.request.agent_id == "owl"\n')
    return d


def _members(path):
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


def test_bundle_layout_is_what_opa_run_bundle_expects(tmp_path, rego_dir):
    out = tmp_path / "build/bundle.tar.gz"
    write_bundle(POLICIES_DIR, rego_dir, out)
    members = _members(out)
    names = sorted(members)
    assert names == ["/.manifest", "/chio/budget/batch.rego", "/chio/budget/data.json", "/chio/budget/decision.rego",
                     "/chio/budget/rates.rego",
                     "/chio/budget/team.rego"]
    policies = load_policies(POLICIES_DIR)
    manifest = json.loads(members["/.manifest"][1])
    assert manifest == {"revision": data_revision(policies), "rego_version": 1, "roots": ["chio/budget"]}
    assert json.loads(members["/chio/budget/data.json"][1]) == compile_policies(policies)
    assert members["/chio/budget/decision.rego"][1] == (REGO_DIR / "chio/budget/decision.rego").read_bytes()
    for member, _ in members.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (0, 0, 0, "", 0o644)


def test_bundle_bytes_are_reproducible_and_follow_the_limits(tmp_path, rego_dir):
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_bundle(POLICIES_DIR, rego_dir, a)
    write_bundle(POLICIES_DIR, rego_dir, b)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header MTIME: none
    changed = tmp_path / "policies"
    shutil.copytree(POLICIES_DIR, changed)
    (changed / "default.yaml").write_text((changed / "default.yaml").read_text().replace("10000", "10001", 1))
    c = write_bundle(changed, rego_dir, tmp_path / "c.tar.gz")
    assert c.revision != bundle_contents(POLICIES_DIR, rego_dir).revision


def test_a_module_outside_the_bundle_root_is_refused_with_its_location(tmp_path, rego_dir):
    (rego_dir / "other.rego").write_text("# owned by someone else\npackage authz\n\nallow := true\n")
    with pytest.raises(EngineError, match=r"other.rego:2: package: authz is outside the bundle root 'chio/budget'"):
        write_bundle(POLICIES_DIR, rego_dir, tmp_path / "x.tar.gz")


def test_opa_loads_the_bundle_and_decides_with_the_teams_extension(tmp_path, rego_dir):
    out = tmp_path / "bundle.tar.gz"
    write_bundle(POLICIES_DIR, rego_dir, out)
    compiled = compile_all(load_policies(POLICIES_DIR))
    opa = start_opa(out)
    try:
        if opa.kind == "standin":
            assert opa.front.bundle_revision == data_revision(load_policies(POLICIES_DIR))
        engine = make_engine("server", compiled, opa_url=opa.url)
        try:
            inp = {"policy_id": "default",
                   "request": {"receipt_id": "r", "timestamp": 1, "agent_id": "owl", "session_id": None,
                               "tool_server": "s1", "tool_name": "t1", "tool_key": "s1:t1"},
                   "cost": {"units": 1, "currency": "USD"},
                   "totals": {"total": 0, "session": None, "agent": 0, "tool": 0}}
            d = engine.decide(inp)
            assert not d.allow and d.error is None
            assert [v.model_dump() for v in d.violations] == [{"scope": "custom", "code": "night"}]
        finally:
            engine.close()
        # a bundle owns its root: OPA refuses writes under it
        r = requests.put(f"{opa.url}/v1/data/chio/budget/policies", json={}, timeout=5)
        assert r.status_code == 400 and "owned by bundle" in r.json()["message"]
    finally:
        opa.close()


def test_cli_bundle_writes_the_file(tmp_path):
    out = tmp_path / "build/bundle.tar.gz"
    r = CliRunner().invoke(app, ["bundle", str(POLICIES_DIR), str(REGO_DIR), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert data_revision(load_policies(POLICIES_DIR)) in r.output
    assert out.read_bytes() == _bytes_of(tmp_path)


def _bytes_of(tmp_path):
    again = tmp_path / "again.tar.gz"
    write_bundle(POLICIES_DIR, REGO_DIR, again)
    return again.read_bytes()


def test_cli_bundle_reports_bad_policies_with_location(tmp_path):
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "p.yaml").write_text("currency: USD\nmax_total: -5\n")
    r = CliRunner().invoke(app, ["bundle", str(bad), "-o", str(tmp_path / "b.tar.gz")])
    assert r.exit_code == 2 and "p.yaml:2" in r.output
    assert not (tmp_path / "b.tar.gz").exists()


def test_push_then_decide_and_push_again_is_idempotent(opa_server_blank, rego_dir):
    contents = bundle_contents(POLICIES_DIR, rego_dir)
    client = make_client(opa_server_blank.url)
    try:
        assert push(client, contents.compiled, contents.modules) == contents.revision
        first = sorted(policy_ids(client))
        assert push(client, contents.compiled, contents.modules) == contents.revision
        assert sorted(policy_ids(client)) == first
        assert first == sorted(PUSH_PREFIX + p for p in contents.modules)
        # a module removed from rego/ disappears from OPA on the next push
        (rego_dir / "chio/budget/team.rego").unlink()
        smaller = bundle_contents(POLICIES_DIR, rego_dir)
        push(client, smaller.compiled, smaller.modules)
        assert PUSH_PREFIX + "chio/budget/team.rego" not in policy_ids(client)
    finally:
        client.close_connection()
    engine = make_engine("server", compile_all(load_policies(POLICIES_DIR)), opa_url=opa_server_blank.url)
    engine.close()  # construction verified the pushed revision


def test_push_names_the_failing_step(opa_server_blank):
    contents = bundle_contents(POLICIES_DIR, REGO_DIR)
    client = make_client(opa_server_blank.url, retries=0)
    try:
        opa_server_blank.faults.set(status=500, match="PUT /v1/data/")
        with pytest.raises(EngineError, match=r"push failed at PUT /v1/data/chio/budget"):
            push(client, contents.compiled, contents.modules)
        opa_server_blank.faults.clear()
        opa_server_blank.stop()
        with pytest.raises(EngineError, match="push failed at list policies: connection refused"):
            push(client, contents.compiled, contents.modules)
    finally:
        client.close_connection()


def test_cli_push_confirms_the_revision(opa_server_blank):
    r = CliRunner().invoke(app, ["push", str(POLICIES_DIR), str(REGO_DIR), "--opa-url", opa_server_blank.url])
    assert r.exit_code == 0, r.output
    assert data_revision(load_policies(POLICIES_DIR)) in r.stdout


def test_cli_push_to_a_bundle_owned_server_fails(tmp_path):
    out = tmp_path / "b.tar.gz"
    write_bundle(POLICIES_DIR, REGO_DIR, out)
    opa = start_opa(out)
    try:
        r = CliRunner().invoke(app, ["push", str(POLICIES_DIR), str(REGO_DIR), "--opa-url", opa.url])
    finally:
        opa.close()
    assert r.exit_code == 1 and "owned by bundle" in r.output


def test_cli_push_without_url_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("CHIO_OPA_URL", raising=False)
    r = CliRunner().invoke(app, ["push", str(POLICIES_DIR)])
    assert r.exit_code == 2 and "--opa-url" in r.output


# -- issue 9 item 11: credentials over plain http, and in messages ------------------------------------------------

def test_cli_push_refuses_a_token_over_plain_http_unless_insecure(opa_server_blank):
    args = ["push", str(POLICIES_DIR), str(REGO_DIR), "--opa-url", opa_server_blank.url, "--token", "t0ken"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--insecure" in r.stderr and "http://" in r.stderr
    assert opa_server_blank.front.requests == 0  # refused before anything was sent
    r = CliRunner().invoke(app, [*args, "--insecure"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "plain http://" in r.stderr
    assert opa_server_blank.front.last_headers.get("Authorization") == "Bearer t0ken"


def test_cli_push_refuses_a_token_from_the_environment_over_plain_http(opa_server_blank):
    r = CliRunner().invoke(app, ["push", str(POLICIES_DIR), "--opa-url", opa_server_blank.url],
                           env={"CHIO_OPA_TOKEN": "t0ken"})
    assert r.exit_code == 2 and "--insecure" in r.stderr


def test_cli_push_redacts_credentials_in_the_url_from_its_errors(opa_server_blank):
    url = opa_server_blank.url.replace("http://", "http://alice:s3cret@", 1)
    opa_server_blank.stop()
    r = CliRunner().invoke(app, ["push", str(POLICIES_DIR), "--opa-url", url, "--insecure"])
    assert r.exit_code == 1 and "push failed at list policies: connection refused" in r.output
    assert "s3cret" not in r.output and "http://***@127.0.0.1" in r.output


def test_the_bundle_writer_needs_no_engine_and_no_network():
    """bundle.py builds files only: importing it loads neither the server engine nor an HTTP client."""
    code = ("import sys, chio_budget.bundle; print(sorted(m for m in sys.modules if m.startswith(("
            "'chio_budget.engines.server', 'chio_budget.engines.opa_http', 'requests', 'opa_client'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
