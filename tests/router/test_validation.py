"""Rules files are validated on load: every error, with file, 1-based line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnichannel.router import RuleError, RulesError, load_rules, parse_rules

VALID = """\
version: 1
opds:
  damkar: Pemadam Kebakaran
  dlhp: Lingkungan Hidup
negations: [bukan]
greetings: [halo]
rules:
  - name: kebakaran
    queue: damkar
    tier: 1
    any: [kebakaran]
  - name: sampah
    queue: dlhp
    any: [sampah]
"""


def where(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in `text`."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def errors(text: str) -> list[RuleError]:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "routing.yaml")
    return info.value.errors


def only_error(text: str) -> RuleError:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


def test_the_valid_file_loads() -> None:
    rules = parse_rules(VALID, "routing.yaml")
    assert set(rules.opds) == {"damkar", "dlhp", "triage"}
    assert rules.route("ada kebakaran").queue == "damkar"


def test_error_format_is_file_line_column_message() -> None:
    error = RuleError("config/routing.yaml", 12, 5, "unknown key 'colour'")
    assert str(error) == "config/routing.yaml:12:5: unknown key 'colour'"


def test_unknown_top_level_key() -> None:
    text = VALID.replace("negations:", "negatoins:")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "negatoins")
    assert error.file == "routing.yaml"
    assert "negatoins" in error.message


def test_unknown_key_in_a_rule() -> None:
    text = VALID.replace("    tier: 1\n", "    tier: 1\n    colour: red\n")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "colour")
    assert "colour" in error.message


def test_unknown_opd_code() -> None:
    text = VALID.replace("queue: dlhp", "queue: dinas-sampah")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "dinas-sampah")
    assert "dinas-sampah" in error.message


def test_bad_regex() -> None:
    text = VALID.replace("    any: [sampah]\n", "    regex: ['sampah (liar']\n")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "'sampah (liar'")
    assert "regular expression" in error.message


def test_duplicate_rule_name() -> None:
    text = VALID.replace("name: sampah", "name: kebakaran")
    error = only_error(text)
    line, column = where(text, "name: kebakaran", nth=2)
    assert (error.line, error.column) == (line, column + len("name: "))
    assert "duplicate" in error.message
    assert f"line {where(text, 'name: kebakaran')[0]}" in error.message


def test_duplicate_opd_code_is_a_yaml_error() -> None:
    text = VALID.replace("  dlhp: Lingkungan Hidup\n", "  dlhp: Lingkungan Hidup\n  dlhp: Lagi\n")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "dlhp: Lagi")
    assert "duplicate" in error.message


def test_yaml_syntax_error() -> None:
    text = VALID.replace("any: [kebakaran]", "any: [kebakaran")
    error = only_error(text)
    assert error.line == where(text, "  - name: sampah")[0]
    assert error.message.startswith("YAML syntax error")


def test_yaml_syntax_error_in_a_mapping() -> None:
    text = VALID.replace("    tier: 1\n", "    tier: 1: 2\n")
    error = only_error(text)
    assert (error.line, error.column) == (where(text, "tier: 1: 2")[0],
                                          where(text, "tier: 1: 2")[1] + len("tier: 1"))


def test_missing_required_fields() -> None:
    text = VALID + "  - any: [banjir]\n  - name: x\n    any: [y]\n"
    found = errors(text)
    assert [(e.line, e.column) for e in found] == [where(text, "any: [banjir]"),
                                                   where(text, "name: x")]
    assert "'name'" in found[0].message and "'queue'" in found[0].message
    assert "'queue'" in found[1].message


def test_missing_top_level_sections() -> None:
    found = errors("version: 1\n")
    assert {e.message.split("'")[1] for e in found} == {"opds", "rules"}
    assert all((e.line, e.column) == (1, 1) for e in found)


@pytest.mark.parametrize(("old", "new", "needle", "word"), [
    ("    tier: 1\n", "    tier: first\n", "first", "tier"),
    ("    tier: 1\n", "    tier: -1\n", "-1", "tier"),
    ("    tier: 1\n", "    weight: heavy\n", "heavy", "weight"),
    ("    tier: 1\n", "    weight: 0\n", "0\n", "weight"),
    ("    any: [sampah]\n", "    any: {sampah: 1}\n", "{sampah", "list"),
    ("    any: [sampah]\n", "    any: [sampah, 112]\n", "112", "text"),
    ("    any: [sampah]\n", "    any: ['sam*pah']\n", "'sam*pah'", "*"),
    ("    any: [sampah]\n", "    any: ['!!!']\n", "'!!!'", "letters"),
    ("    any: [sampah]\n", "    all: [[]]\n", "[]]", "empty"),
    ("    any: [sampah]\n", "    any: [sampah]\n    channel: {wa: 1}\n", "{wa", "list"),
    ("name: sampah", "name: [sampah]", "[sampah]", "name"),
    ("queue: dlhp", "queue: 12", "12", "queue"),
    ("version: 1", "version: 2", "2", "version"),
    ("negations: [bukan]", "negations: [tidak ada]", "tidak ada", "single word"),
    ("negations: [bukan]", "negation_window: many", "many", "negation_window"),
    ("negations: [bukan]", "cause_words: [karena sebab]", "karena sebab", "single word"),
    ("negations: [bukan]", "settled: ['lunas*']", "'lunas*'", "word*"),
    ("    any: [sampah]\n", "    all: [[sampah, '/(x/']]\n", "'/(x/'", "regular expression"),
    ("  dlhp: Lingkungan Hidup", "  Dinas LH: Lingkungan Hidup", "Dinas LH", "code"),
    ("  dlhp: Lingkungan Hidup", "  dlhp: 7", "7", "name"),
])
def test_wrong_types_and_values(old: str, new: str, needle: str, word: str) -> None:
    text = VALID.replace(old, new)
    found = errors(text)
    assert (found[0].line, found[0].column) == where(text, needle), found
    assert word in found[0].message


def test_a_rule_needs_a_condition() -> None:
    text = VALID.replace("    any: [sampah]\n", "")
    error = only_error(text)
    assert (error.line, error.column) == where(text, "name: sampah")
    assert "no condition" in error.message


def test_every_error_is_reported_together_in_file_order() -> None:
    text = VALID.replace("negations:", "negatoins:").replace(
        "    tier: 1\n", "    tier: 1\n    colour: red\n    regex: ['(']\n").replace(
        "queue: dlhp", "queue: nope").replace("name: sampah", "name: kebakaran")
    found = errors(text)
    assert [(e.line, e.column) for e in found] == sorted(
        [where(text, "negatoins"), where(text, "colour"), where(text, "'('"),
         where(text, "nope"), where(text, "kebakaran", nth=3)])
    message = str(RulesError(found))
    assert message.count("routing.yaml:") == 5


def test_load_rules_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(VALID.replace("queue: dlhp", "queue: nope"), encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value.errors[0]).startswith(f"{path}:")
    missing = tmp_path / "absent.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(missing)
    assert info.value.errors[0].file == str(missing)


def test_an_empty_or_non_mapping_file_is_an_error() -> None:
    assert "mapping" in only_error("").message
    assert "mapping" in only_error("- a\n- b\n").message
