"""The CLI in any currency: check/replay --currency --rates, rates show, declared units in compile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.guards import ROOT

BIN = ROOT / ".venv" / "bin" / "chio-budget"
T0 = 1_767_225_600
META = {"receipt_id": "r1", "timestamp": T0 + 12, "agent_id": "a1", "tool_server": "s1", "tool_name": "t1"}


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def rates(tmp_path: Path) -> Path:
    p = tmp_path / "rates.yaml"
    p.write_text('margin_bps: 200\ncurrencies:\n  credits: 1\nrates:\n'
                 '  EUR/USD: {rate: "1.0842", updated_at: 1767225600}\n')
    return p


def test_check_converts_a_foreign_cost(policies_dir, rates):
    r = run("check", "--policies", policies_dir, "--meta", json.dumps(META), "--cost", 100, "--currency", "EUR",
            "--rates", rates)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["allow"] is True
    assert f"converted 100 EUR -> 112 USD (EUR/USD 10842/10000 from {rates}:5, margin 200 bps, ok)" in r.stderr


def test_check_denies_a_stale_or_missing_rate_and_refuses_an_unknown_code(policies_dir, rates):
    stale = dict(META, timestamp=T0 + 601)
    r = run("check", "--policies", policies_dir, "--meta", json.dumps(stale), "--cost", 100, "--currency", "EUR",
            "--rates", rates)
    assert r.returncode == 1 and json.loads(r.stdout)["violations"][0]["code"] == "rate_stale"
    r = run("check", "--policies", policies_dir, "--meta", json.dumps(META), "--cost", 100, "--currency", "GBP",
            "--rates", rates)
    assert r.returncode == 1 and json.loads(r.stdout)["violations"][0]["code"] == "rate_unavailable"
    r = run("check", "--policies", policies_dir, "--meta", json.dumps(META), "--cost", 1, "--currency", "XYZ")
    assert r.returncode == 2 and "--currency: unknown currency 'XYZ'" in r.stderr


def test_replay_takes_a_currency_per_line_or_for_all(policies_dir, rates, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        {"op": "authorize", "meta": META, "cost_units": 100, "currency": "EUR"},
        {"op": "authorize", "meta": dict(META, receipt_id="r2"), "cost_units": 100},
        {"op": "total_spent"},
    ]) + "\n")
    r = run("replay", events, "--policies", policies_dir, "--rates", rates)
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[-1] == {"total_spent": 112 + 100}
    r = run("replay", events, "--policies", policies_dir, "--rates", rates, "--currency", "EUR")
    assert [json.loads(x) for x in r.stdout.splitlines()][-1] == {"total_spent": 112 + 112}


def test_replay_validates_currencies_before_running(policies_dir, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"op": "record", "meta": META, "cost_units": 5}) + "\n"
                      + json.dumps({"op": "record", "meta": META, "cost_units": 5, "currency": "credits"}) + "\n")
    r = run("replay", events, "--policies", policies_dir)
    assert r.returncode == 2 and f"{events}:2: unknown currency 'credits'" in r.stderr
    assert r.stdout == ""  # nothing ran


def test_rates_show_prints_pairs_with_their_ages(rates):
    r = run("rates", "show", "--rates", rates, "--at", T0 + 700)
    assert r.returncode == 0, r.stderr
    assert "EUR/USD          1.0842  (10842/10000)  age    700 s  STALE" in r.stdout
    assert "USD/EUR   ~0.9223390518  (10000/10842)  age    700 s  STALE  derived" in r.stdout
    assert "unit credits: 1 minor units per unit" in r.stdout
    doc = json.loads(run("rates", "show", "--rates", rates, "--at", T0, "--json").stdout)
    assert doc["rates"][0] == {"pair": "EUR/USD", "rate": "1.0842", "numerator": 10842, "denominator": 10000,
                               "source": f"{rates}:5", "updated_at": T0, "age_seconds": 0, "stale": False,
                               "derived": False}
    assert run("rates", "show", "--rates", rates, "--at", T0 + 601, "--fail-stale").returncode == 1


def test_rates_show_reports_a_bad_file_located(tmp_path):
    bad = tmp_path / "rates.yaml"
    bad.write_text("rates:\n  EUR/USD: {rate: 1.08, updated_at: 1}\n")
    r = run("rates", "show", "--rates", bad)
    assert r.returncode == 2 and f'{bad}:2: rates."EUR/USD".rate: must be an exact decimal' in r.stderr


def test_compile_knows_declared_units_from_rates(tmp_path, rates):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "credits.yaml").write_text("currency: credits\nmax_total: 500\n")
    r = run("compile", tmp_path / "p", "-o", tmp_path / "data.json")
    assert r.returncode == 2 and "credits.yaml:1: currency: unknown currency 'credits'" in r.stderr
    r = run("compile", tmp_path / "p", "-o", tmp_path / "data.json", "--rates", rates)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "data.json").read_text())["chio"]["budget"]["policies"]["credits"]["currency"] \
        == "credits"
