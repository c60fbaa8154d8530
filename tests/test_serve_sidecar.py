"""One worker's guards (``serve.sidecar.Sidecar``), in process: every policy over ONE engine,
reloaded together or not at all, the engine closed once when the last version using it is done.
(The HTTP behaviour is tested black-box in ``test_serve*.py``.)"""

from __future__ import annotations

import pytest

from chio_budget.loaded import SharedClose
from chio_budget.reload import ReloadError
from chio_budget.serve.options import ServeError, ServeOptions
from chio_budget.serve.sidecar import Sidecar
from support.sidecar import ctx, write_policies


class _Engine:
    name = "counting"

    def __init__(self):
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_shared_engine_is_closed_once_by_its_last_user():
    engine = _Engine()
    close = SharedClose(engine, 3)
    close()
    close()
    assert engine.closed == 0
    close()
    assert engine.closed == 1


def test_every_policy_shares_one_engine_and_a_reload_swaps_them_all(tmp_path):
    policies = write_policies(tmp_path / "p")
    side = Sidecar(ServeOptions(policies))
    try:
        engines = {id(g.engine) for g in side.guards.values()}
        assert len(engines) == 1 and sorted(side.guards) == ["default", "eur", "small"]
        old = next(iter(side.guards.values()))._loaded
        assert side.evaluate(ctx("r1", cost_estimate=5)).allowed
        (policies / "small.yaml").write_text("currency: USD\nmax_total: 3\n")
        (policies / "added.yaml").write_text("currency: USD\nmax_total: 50\n")
        assert side.reload() == ["added", "default", "eur", "small"]
        assert len({id(g.engine) for g in side.guards.values()}) == 1
        assert {id(g.engine) for g in side.guards.values()} != engines
        assert old._closed  # the old engine, once no decision used it any more
        assert "total budget exceeded" in side.evaluate(ctx("r2", cost_estimate=5), "small").reason
        assert side.guards["default"].total_held() == 5  # holds live in the ledger, across the reload
        (policies / "eur.yaml").unlink()
        with pytest.raises(ReloadError, match="'eur' in force would be removed"):
            side.reload()
        assert "eur" in side.guards and side.evaluate(ctx("r3", cost_estimate=1), "eur").allowed
    finally:
        side.close()
        side.close()  # idempotent


def test_a_request_for_an_unknown_policy_is_a_deny_and_settles_nothing(tmp_path):
    side = Sidecar(ServeOptions(write_policies(tmp_path / "p")))
    try:
        d = side.evaluate(ctx("r1", cost_estimate=5), "nope")
        assert d.verdict == "deny" and "unknown policy 'nope'" in d.reason
        assert side.settle("r1", policy_id="nope").outcome == "unknown"
        assert side.revalidate("r1", "nope").state == "unknown"
    finally:
        side.close()


@pytest.mark.parametrize("options,message", [
    ({"workers": 0}, "--workers: must be at least 1"),
    ({"workers": 3, "ledger": "memory://?ttl=5"}, "--workers 3 needs a ledger the workers share"),
    ({"engine": "server"}, "--opa-url (or CHIO_OPA_URL) is required"),
    ({"max_body_bytes": 10}, "--max-body-bytes: must be at least 1024"),
    ({"tls_client_ca": "ca.pem"}, "--tls-client-ca needs --tls-cert"),
])
def test_options_that_cannot_work_are_refused_naming_the_option(tmp_path, options, message):
    with pytest.raises(ServeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServeOptions(tmp_path, **options).check()


def test_listening_beyond_loopback_without_a_token_or_tls_is_warned_about(tmp_path):
    warnings = ServeOptions(tmp_path, host="0.0.0.0").check()
    assert any("without --token-file" in w for w in warnings) and any("without TLS" in w for w in warnings)
    assert ServeOptions(tmp_path, host="::1").check() == []
