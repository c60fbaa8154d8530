"""YAML policies: what operators write, and the located errors they get back."""

from __future__ import annotations

import pytest

from chio_budget.errors import PolicyError
from chio_budget.money import MonetaryAmount
from chio_budget.policy import load_policies, parse_policy
from support.guards import POLICIES_DIR


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
    ("1.5", "must be a plain decimal integer of minor units, got 1.5"),
    ("true", "must be a plain decimal integer of minor units, got true"),
    ("'100'", "must be a plain decimal integer of minor units, got '100'"),
    ('"100"', 'must be a plain decimal integer of minor units, got "100"'),
    ("!!str 100", "must be a plain decimal integer of minor units, got !!str 100"),
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
    assert "policies/team.yaml:1: currency: currency codes are case-sensitive: write 'USD', not 'usd'" in errs
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
    policies = load_policies(POLICIES_DIR)
    assert "default" in policies
    assert policies["default"].max_per_tool["s1:expensive"].units == 500


# --------------------------------------------------------------------------
# Money is written as a plain decimal integer (issue 9 item 3): YAML 1.1 reads
# 0100 as 64, 1:30 as 90, 0x10 as 16; a budget must never mean something else
# than what the operator typed, so anything but plain decimal is refused.

NOT_PLAIN_DECIMAL = ["0100", "1:30", "0x10", "0o10", "1_000", "+5", "1e3", ".5", "true", "00", "-0"]

MONEY_FORMS = {  # template, line of the value, path reported
    "short": ("currency: USD\nmax_total: {v}\n", 2, "max_total.units"),
    "long": ("currency: USD\nmax_total:\n  units: {v}\n  currency: USD\n", 3, "max_total.units"),
    "long_flow": ("currency: USD\nmax_total: 1\nmax_per_agent: {{units: {v} , currency: USD}}\n", 3,
                  "max_per_agent.units"),
    "tool_map": ("currency: USD\nmax_total: 1\nmax_per_tool:\n  \"s1:x\": {v}\n", 4, 'max_per_tool."s1:x".units'),
    "prices_long": ("currency: USD\nmax_total: 1\nprices:\n  \"s1:x\":\n    units: {v}\n    currency: USD\n", 5,
                    'prices."s1:x".units'),
}


@pytest.mark.parametrize("form", sorted(MONEY_FORMS))
@pytest.mark.parametrize("written", NOT_PLAIN_DECIMAL)
def test_money_must_be_written_as_plain_decimal(form, written):
    template, line, path = MONEY_FORMS[form]
    errs = errors_of(template.format(v=written))
    assert errs == [f"policies/team.yaml:{line}: {path}: must be a plain decimal integer of minor units, "
                    f"got {written}"]


@pytest.mark.parametrize("form", sorted(MONEY_FORMS))
def test_plain_decimal_money_is_read_as_written(form):
    template, _, _ = MONEY_FORMS[form]
    p = parse_policy(template.format(v="100"), default_id="x")
    assert [a.units for _, a in p.amounts()].count(100) == 1


def test_explicit_int_tag_on_plain_decimal_is_money():
    assert parse_policy("currency: USD\nmax_total: !!int 100\n", default_id="x").max_total.units == 100


def test_keys_are_taken_as_written():
    # YAML 1.1 would read the key 0x10 as 16; a key is the text the operator typed.
    [err] = errors_of("currency: USD\nmax_total: 1\nmax_per_tool:\n  0x10: 5\n")
    assert err.startswith("policies/team.yaml:4: max_per_tool.\"0x10\": tool key '0x10' must be")


# --------------------------------------------------------------------------
# Bounds (issue 9 item 2): no anchors/aliases, a size cap, a depth cap.

BOMB = "".join(
    ['currency: USD\nmax_total: 100\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")])


def test_billion_laughs_is_refused_at_its_first_anchor(tmp_path):
    """The 371-byte, 9-level bomb: refused at line 3 by the real CLI, without expanding anything.

    Bounded (a timeout and an address-space limit on the child) so that a
    regression fails instead of eating the machine; no timing is asserted.
    """
    import resource
    import subprocess
    import sys
    from pathlib import Path

    assert len(BOMB.encode()) == 371
    d = tmp_path / "policies"
    d.mkdir()
    (d / "bomb.yaml").write_text(BOMB)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    r = subprocess.run([str(Path(sys.executable).parent / "chio-budget"), "compile", str(d),
                        "-o", str(tmp_path / "out.json")],
                       capture_output=True, text=True, timeout=60, preexec_fn=cap_memory)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.strip() == (f"{d}/bomb.yaml:3: YAML anchor &a: anchors and aliases are not allowed "
                                "in a budget policy (write the value out)")
    assert not (tmp_path / "out.json").exists()


def test_alias_is_refused_where_it_is_used():
    # An alias without its anchor in this file: named at its own line.
    assert errors_of("currency: USD\nmax_total: 1\nmax_per_agent: *limit\n") == [
        "policies/team.yaml:3: YAML alias *limit: anchors and aliases are not allowed in a budget policy "
        "(write the value out)"]


def test_anchor_on_an_unused_value_is_refused():
    assert errors_of("currency: USD\nmax_total: &t 1\n") == [
        "policies/team.yaml:2: YAML anchor &t: anchors and aliases are not allowed in a budget policy "
        "(write the value out)"]


def nested(depth: int) -> str:
    """A document whose deepest node sits ``depth`` levels down (the top mapping is level 1)."""
    return "currency: USD\nmax_total: 1\nx: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"


def test_nesting_at_the_bound_is_read():
    from chio_budget.policy import MAX_DEPTH

    assert MAX_DEPTH == 64
    assert errors_of(nested(MAX_DEPTH)) == ["policies/team.yaml:3: x: unknown key"]


@pytest.mark.parametrize("depth", [65, 500, 100_000])
def test_nesting_past_the_bound_is_a_located_error(depth):
    # 500 levels used to be a RecursionError traceback out of PyYAML's composer.
    assert errors_of(nested(depth)) == ["policies/team.yaml:3: nesting deeper than 64 levels"]


def test_deep_block_nesting_is_a_located_error():
    text = "currency: USD\nmax_total: 1\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(70)) + "  " * 70 + "1\n"
    assert errors_of(text) == ["policies/team.yaml:66: nesting deeper than 64 levels"]


def test_file_at_the_size_bound_is_read_and_one_byte_more_is_refused(tmp_path):
    from chio_budget.policy import MAX_POLICY_BYTES, load_policy_file

    assert MAX_POLICY_BYTES == 1 << 20
    body = "currency: USD\nmax_total: 1\n"
    pad = MAX_POLICY_BYTES - len(body) - 2
    f = write(tmp_path, "big.yaml", body + "#" + "x" * pad + "\n")
    assert f.stat().st_size == MAX_POLICY_BYTES
    assert load_policy_file(f).max_total.units == 1
    f.write_text(body + "#" + "x" * (pad + 1) + "\n")
    with pytest.raises(PolicyError) as exc:
        load_policy_file(f)
    assert exc.value.errors == [f"{f}:1: file is larger than 1 MiB ({MAX_POLICY_BYTES} bytes)"]
    assert errors_of(f.read_text()) == ["policies/team.yaml:1: file is larger than 1 MiB (1048576 bytes)"]


def test_invalid_utf8_is_located(tmp_path):
    from chio_budget.policy import load_policy_file

    f = tmp_path / "bad.yaml"
    f.write_bytes(b"currency: USD\nmax_total: 1\nid: caf\xe9\n")
    with pytest.raises(PolicyError) as exc:
        load_policy_file(f)
    assert exc.value.errors == [f"{f}:3: invalid UTF-8 (byte 0xe9 at column 8)"]


def test_lone_surrogate_in_a_scalar_is_a_located_error():
    # "\ud800" is a legal YAML escape but not Unicode: compiling it would crash when encoding the JSON.
    assert errors_of('currency: USD\nmax_total: 1\nmax_per_tool:\n  "s1:\\ud800": 5\n') == [
        'policies/team.yaml:4: max_per_tool."s1:\\ud800": lone surrogate \\ud800 is not valid Unicode']

