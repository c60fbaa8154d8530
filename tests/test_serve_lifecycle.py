"""The sidecar's life as an operator sees it, black-box over real sockets: holds that expire,
SIGTERM with requests in flight, OPA going away and coming back, TLS with client
certificates, a Unix socket. Each test starts (and stops) a real server of its own."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import time

import httpx
import pytest

from support.guards import POLICIES_DIR
from support.sidecar import CHIO_BUDGET, ctx, start_sidecar, write_policies

pytestmark = pytest.mark.slow


def test_revalidate_after_the_hold_expired_and_an_internal_failure_is_a_deny_with_its_cause(tmp_path):
    logs = tmp_path / "logs"
    side = start_sidecar(write_policies(tmp_path / "p"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}",
                         "--reservation-ttl", "0.5", "--decision-log", str(logs / "decisions.jsonl"), tmp=tmp_path)
    try:
        with side.client() as http:
            assert http.post("/v1/evaluate", json=ctx("r1", cost_estimate=50)).json()["verdict"] == "allow"
            assert http.post("/v1/revalidate", json={"request_id": "r1"}).json()["live"] is True
            deadline = time.monotonic() + 30
            while (v := http.post("/v1/revalidate", json={"request_id": "r1"}).json())["live"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert v["state"] == "expired" and v["decision_id"]
            # the call ran anyway: its spend is posted once, late
            assert http.post("/v1/settle", json={"request_id": "r1"}).json()["outcome"] == "committed_late"
            total = http.get("/v1/budget").json()["scopes"][0]
            assert (total["spent_units"], total["held_units"]) == (50, 0)
            shutil.rmtree(logs)  # the decision log cannot be written any more: no record, no allow
            d = http.post("/v1/evaluate", json=ctx("r2", cost_estimate=5))
            assert d.status_code == 200 and d.json()["verdict"] == "deny"
            assert "decision log error (fail-closed)" in d.json()["reason"]
            assert http.get("/v1/budget").json()["scopes"][0]["held_units"] == 0
    finally:
        assert side.stop() == 0


def test_a_ledger_that_cannot_be_reached_is_a_deny_and_a_503_health(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    side = start_sidecar(write_policies(tmp_path / "p"), "--ledger", f"redis://127.0.0.1:{port}/0", tmp=tmp_path,
                         healthy=False)
    try:
        with side.client() as http:
            d = http.post("/v1/evaluate", json=ctx("r1", cost_estimate=5))
            assert d.status_code == 200 and d.json()["verdict"] == "deny" and "ledger error" in d.json()["reason"]
            h = http.get("/health")
            assert h.status_code == 503 and h.json()["engine"]["ok"] is True
            assert h.json()["ledger"]["ok"] is False and "ledger error" in h.json()["ledger"]["cause"]
            assert http.post("/v1/settle", json={"request_id": "r1"}).json()["outcome"] == "error"
    finally:
        assert side.stop() == 0


def _post_head(url: str, body: bytes, token: str) -> socket.socket:
    """A raw ``POST /v1/evaluate`` whose headers and first half of the body are sent; the rest is not."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:20])
    return s


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_requests_in_flight_and_refuses_new_ones(tmp_path, workers):
    side = start_sidecar(write_policies(tmp_path / "p"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}",
                         workers=workers, tmp=tmp_path)
    body = json.dumps(ctx("in-flight", cost_estimate=25)).encode()
    try:
        in_flight = _post_head(side.url, body, side.token)
        time.sleep(0.3)  # the server has the headers: the request is in flight
        side.signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not _refused(side.url):
            assert time.monotonic() < deadline, "new connections are still accepted after SIGTERM"
            time.sleep(0.05)
        assert side.proc.poll() is None  # still finishing the request in flight
        in_flight.sendall(body[20:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = in_flight.recv(65536)
            if not chunk:
                break
            answer += chunk
        in_flight.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        assert json.loads(payload)["verdict"] == "allow"
        assert side.proc.wait(60) == 0, side.log()[-3000:]
    finally:
        side.stop()


def test_opa_down_is_a_deny_with_the_cause_and_a_503_health(tmp_path, opa_server):
    side = start_sidecar(POLICIES_DIR, "--engine", "server", "--opa-url", opa_server.url, tmp=tmp_path)
    try:
        with side.client() as http:
            assert http.post("/v1/evaluate", json=ctx("up", cost_estimate=5)).json()["verdict"] == "allow"
            opa_server.stop()
            d = http.post("/v1/evaluate", json=ctx("down", cost_estimate=5))
            assert d.status_code == 200 and d.json()["verdict"] == "deny"
            assert "engine error" in d.json()["reason"] or "OPA" in d.json()["reason"], d.json()
            assert http.get("/v1/budget").json()["scopes"][0]["held_units"] == 5  # only the first call holds
            h = http.get("/health")
            assert h.status_code == 503
            assert h.json()["status"] == "unavailable" and h.json()["ledger"]["ok"] is True
            assert h.json()["engine"]["ok"] is False and h.json()["engine"]["cause"]
            opa_server.start()
            assert http.get("/health").status_code == 200
            assert http.post("/v1/evaluate", json=ctx("back", cost_estimate=5)).json()["verdict"] == "allow"
    finally:
        assert side.stop() == 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def test_tls_with_client_certificates(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("TLS TEST SKIPPED: no openssl binary to make test certificates")
    _certificates(tmp_path)
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    trust.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    side = start_sidecar(write_policies(tmp_path / "p"), "--tls-cert", str(tmp_path / "server.pem"),
                         "--tls-key", str(tmp_path / "server.key"), "--tls-client-ca", str(tmp_path / "ca.pem"),
                         tmp=tmp_path, scheme="https", client_kw={"verify": trust})
    try:
        assert side.url.startswith("https://127.0.0.1:")
        with side.client(verify=trust) as http:
            assert http.post("/v1/evaluate", json=ctx("tls", cost_estimate=1)).json()["verdict"] == "allow"
        anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake is refused
            httpx.get(side.url + "/health", headers=side.headers(), verify=anonymous, timeout=10)
    finally:
        assert side.stop() == 0


def test_a_unix_socket(tmp_path):
    path = tmp_path / "budget.sock"
    proc = subprocess.Popen([str(CHIO_BUDGET), "serve", "--policies", str(write_policies(tmp_path / "p")),
                             "--uds", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        transport = httpx.HTTPTransport(uds=str(path))
        deadline = time.monotonic() + 90
        while True:
            try:
                with httpx.Client(transport=transport, base_url="http://sidecar", timeout=10) as c:
                    if c.get("/health").status_code == 200:
                        assert c.post("/v1/evaluate", json=ctx("uds", cost_estimate=1)).json()["verdict"] == "allow"
                        break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not path.exists()  # removed on the way out
