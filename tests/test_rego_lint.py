"""Every .rego file under rego/ passes the Regal rules that apply to it (tests/regal_rules.py).

Later Rego work must keep passing this: a new module is linted as soon as
it is added. Each rule is also shown to catch what it is meant to catch.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import regal_rules
from support.guards import REGO_DIR, ROOT


def lint_source(tmp_path: Path, *sources: str, config: str = "") -> list[str]:
    paths = []
    for i, src in enumerate(sources):
        path = tmp_path / f"m{i}.rego"
        path.write_text(textwrap.dedent(src).lstrip("\n"))
        paths.append(path)
    if config:
        (tmp_path / ".regal").mkdir(exist_ok=True)
        (tmp_path / ".regal" / "config.yaml").write_text(textwrap.dedent(config))
    return regal_rules.lint(paths, tmp_path)


def test_every_rego_file_is_regal_clean():
    files = sorted(REGO_DIR.rglob("*.rego"))
    assert files, REGO_DIR
    assert regal_rules.lint(files, ROOT) == []


def test_external_reference_catches_input_data_and_rule_references_in_functions(tmp_path):
    bad = lint_source(tmp_path, """
        package p

        limit := 10

        over(x) if x > limit

        too_big(x) if x > input.max

        ok(x, y) := z if {
        	some k in y
        	z := count([x, k]) + abs(x)
        	not _other(z)
        }

        _other(v) if v == 1
    """)
    assert bad == ["m0.rego:5: external-reference: limit in function over",
                   "m0.rego:7: external-reference: input in function too_big"]


def test_ambiguous_scope_wants_an_explicit_scope_on_incremental_rules(tmp_path):
    bad = lint_source(tmp_path, """
        package p

        # METADATA
        # title: Deny
        deny contains 1 if input.a

        deny contains 2 if input.b

        # METADATA
        # title: Warn
        # scope: document
        warn contains 1 if input.a

        warn contains 2 if input.b
    """)
    assert bad == ["m0.rego:3: ambiguous-scope: METADATA of incremental rule deny has no explicit scope"]


def test_line_length_allows_120_characters(tmp_path):
    bad = lint_source(tmp_path, "package p\n\n# " + "x" * 118 + "\nok := 1\n\n# " + "y" * 119 + "\n")
    assert bad == ["m0.rego:6: line-length: 121 characters (max 120)"]


def test_with_is_only_for_tests(tmp_path):
    bad = lint_source(tmp_path, """
        package p_test

        _decide(x) := y if y := x with input as {}

        test_ok if 1 == 1 with input as {}

        todo_test_later if 1 == 1 with input as {}
    """)
    assert bad[-1] == "m0.rego:3: with-outside-test-context: `with` in rule _decide"
    assert not any("test_ok" in v or "todo_test" in v for v in bad)


def test_regal_ignore_directive_silences_only_the_rule_it_names_on_its_line(tmp_path):
    bad = lint_source(tmp_path, """
        package p

        a := y if y := 1 with input as {} # regal ignore:with-outside-test-context

        # regal ignore:with-outside-test-context
        b := y if y := 1 with input as {}

        c := y if y := 1 with input as {} # regal ignore:line-length

        # a comment, then the rule
        d := y if y := 1 with input as {}
    """)
    assert bad == ["m0.rego:8: with-outside-test-context: `with` in rule c",
                   "m0.rego:11: with-outside-test-context: `with` in rule d"]


def test_unresolved_reference_reaches_rules_packages_or_declared_data(tmp_path):
    sources = ("""
        package lib

        known := 1
    """, """
        package app

        import data.lib

        a if lib.known == 1

        b if data.lib.known == 1

        c if data.lib.missing == 1

        d if lib.gone == 1

        e if data.config.limits.max > 1
    """)
    bad = lint_source(tmp_path, *sources)
    assert [v.split(": ")[2].split(" is ")[0] for v in bad] == ["data.lib.missing", "data.lib.gone",
                                                                "data.config.limits.max"]
    clean = lint_source(tmp_path, *sources, config="""
        rules:
          imports:
            unresolved-reference:
              level: error
              except-paths:
                - data.lib.missing
                - data.lib.gone
                - data.config.**
    """)
    assert clean == []


@pytest.mark.parametrize("rule", ["external_reference", "ambiguous_scope", "line_length",
                                  "with_outside_test_context", "unresolved_reference"])
def test_each_rule_is_checked_for_every_file(rule):
    assert callable(getattr(regal_rules, rule))
