"""YAML policies: what operators write, and the located errors they get back."""

from __future__ import annotations

import pytest

from chio_budget.errors import PolicyError
from chio_budget.money import MonetaryAmount
from chio_budget.policy import load_policies, parse_policy


def write(d, name, text):
    (d / name).write_text(text)
    return d / name


def errors_of(text, source="policies/team.yaml"):
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source, default_id="team")
    return exc.value.errors


def test_amounts_as_integers_or_rust_objects():
    p = parse_policy(
        "currency: USD\nmax_total: {units: 10000, currency: USD}\nmax_per_agent: 3000\n"
        "max_per_tool:\n  \"s1:expensive\": 500\n  \"s1:x\": {units: 7, currency: USD}\n",
        default_id="default")
    assert p.id == "default"
    assert (p.max_total.units, p.max_total.currency) == (10000, "USD")
    assert p.max_per_agent.units == 3000 and p.max_per_session is None
    assert {k: v.units for k, v in p.max_per_tool.items()} == {"s1:expensive": 500, "s1:x": 7}


def test_id_defaults_to_file_stem_and_explicit_id_wins(tmp_path):
    write(tmp_path, "team-a.yaml", "currency: EUR\nmax_total: 5\n")
    write(tmp_path, "b.yml", "id: beta\ncurrency: JPY\nmax_total: 5\n")
    assert sorted(load_policies(tmp_path)) == ["beta", "team-a"]


def test_error_names_file_line_and_field_path():
    errs = errors_of("currency: USD\nmax_total: 100\nmax_per_tool:\n  \"s1:x\": -5\n")
    assert errs == ['policies/team.yaml:4: max_per_tool."s1:x".units: must be >= 0, got -5']


def test_negative_limit_in_object_form_points_at_units_line():
    errs = errors_of("currency: USD\nmax_total:\n  currency: USD\n  units: -1\n")
    assert errs == ["policies/team.yaml:4: max_total.units: must be >= 0, got -1"]


@pytest.mark.parametrize("value, message", [
    ("1.5", "must be an integer number of minor units, got float 1.5"),
    ("true", "must be an integer number of minor units, got bool True"),
    ("'100'", "must be an integer number of minor units, got str '100'"),
    ("18446744073709551616", "must be <= 2^64-1"),
])
def test_amounts_are_strict_integers(value, message):
    [err] = errors_of(f"currency: USD\nmax_total: {value}\n")
    assert err.startswith("policies/team.yaml:2: max_total.units: ")
    assert message in err


def test_u64_max_is_a_valid_limit():
    p = parse_policy("currency: USD\nmax_total: 18446744073709551615\n", default_id="x")
    assert p.max_total.units == 2**64 - 1


def test_unknown_key_is_an_error():
    assert errors_of("currency: USD\nmax_total: 1\nmax_per_sesion: 5\n") == [
        "policies/team.yaml:3: max_per_sesion: unknown key"]


def test_duplicate_key_is_an_error():
    assert errors_of("currency: USD\nmax_total: 1\nmax_total: 2\n") == [
        "policies/team.yaml:3: max_total: duplicate key"]


def test_limit_in_another_currency_is_an_error():
    errs = errors_of("currency: USD\nmax_total: 100\nmax_per_agent:\n  units: 5\n  currency: EUR\n")
    assert errs == ["policies/team.yaml:5: max_per_agent.currency: limit is in EUR but the policy currency is USD"]


@pytest.mark.parametrize("key", ["nocolon", "a:b:c", ":tool", "server:"])
def test_tool_key_needs_exactly_one_colon(key):
    [err] = errors_of(f"currency: USD\nmax_total: 100\nmax_per_tool:\n  \"{key}\": 5\n")
    shown = key if key == "nocolon" else f'"{key}"'  # identifiers bare, others quoted
    assert err.startswith(f"policies/team.yaml:4: max_per_tool.{shown}: ")
    assert "exactly one ':'" in err


def test_missing_required_fields_and_bad_currency():
    errs = errors_of("currency: usd\n")
    assert "policies/team.yaml:1: currency: must be a three-letter ISO 4217 code such as 'USD', got 'usd'" in errs
    assert "policies/team.yaml:1: max_total: required" in errs


def test_invalid_yaml_is_located():
    [err] = errors_of("currency: USD\nmax_total: [1,\n")
    assert err.startswith("policies/team.yaml:3: invalid YAML")


def test_duplicate_policy_ids_name_both_files(tmp_path):
    write(tmp_path, "a.yaml", "id: same\ncurrency: USD\nmax_total: 1\n")
    write(tmp_path, "b.yaml", "id: same\ncurrency: USD\nmax_total: 2\n")
    with pytest.raises(PolicyError) as exc:
        load_policies(tmp_path)
    assert str(exc.value) == f"{tmp_path}/b.yaml:1: id: duplicate policy id 'same' (also in {tmp_path}/a.yaml)"


def test_all_files_errors_reported_together(tmp_path):
    write(tmp_path, "a.yaml", "currency: USD\nmax_total: -1\n")
    write(tmp_path, "b.yaml", "currency: USD\nmax_total: 1\nextra: 1\n")
    with pytest.raises(PolicyError) as exc:
        load_policies(tmp_path)
    assert len(exc.value.errors) == 2


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="no policy files"):
        load_policies(tmp_path)


def test_shipped_example_policies_load():
    from conftest import ROOT

    policies = load_policies(ROOT / "policies")
    assert "default" in policies
    assert policies["default"].max_per_tool["s1:expensive"].units == 500
