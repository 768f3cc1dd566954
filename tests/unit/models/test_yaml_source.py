"""YAML loading: Kestra's (Jackson's) scalar semantics, lines for every path, located errors."""

from __future__ import annotations

import math

import pytest

from kestream.models.yaml_source import YamlSyntaxError, load_yaml


def test_scalars_follow_yaml_1_2_as_kestra_reads_them() -> None:
    doc = load_yaml(
        "a: yes\n"
        "b: 12:30\n"
        "c: 2024-01-01\n"
        "d: 010\n"
        "e: 0x1f\n"
        "f: 1.5e3\n"
        "g: ~\n"
        "h:\n"
        "i: 'quoted'\n"
        "k: True\n"
        "cron: '0 * * * *'\n"
        "n: -.inf\n"
        "o: !!str 12\n"
    )
    assert doc.data == {
        "a": "yes",
        "b": "12:30",
        "c": "2024-01-01",
        "d": 10,
        "e": 31,
        "f": 1500.0,
        "g": None,
        "h": None,
        "i": "quoted",
        "k": True,
        "cron": "0 * * * *",
        "n": -math.inf,
        "o": "12",
    }


def test_mapping_keys_are_text_as_jackson_gives_them() -> None:
    doc = load_yaml("cases:\n  1: [a]\n  true: [b]\n  NO: [c]\n")
    assert doc.data == {"cases": {"1": ["a"], "true": ["b"], "NO": ["c"]}}


def test_block_scalars_keep_their_lines() -> None:
    doc = load_yaml("message: |\n  first\n  second\nfolded: >\n  a\n  b\n")
    assert doc.data == {"message": "first\nsecond\n", "folded": "a b\n"}
    assert doc.source_map.line(("message",)) == 1
    assert doc.source_map.content_line(("message",)) == 2


def test_lines_of_nested_paths() -> None:
    text = (
        "id: x\n"  # 1
        "tasks:\n"  # 2
        "  - id: a\n"  # 3
        "    type: t\n"  # 4
        "    tasks:\n"  # 5
        "      - id: b\n"  # 6
        "        format: hello\n"  # 7
    )
    source = load_yaml(text).source_map
    assert source.line(("tasks", 0)) == 3
    assert source.line(("tasks", 0, "tasks", 0, "format")) == 7
    # a missing property is reported at the mapping that should hold it
    assert source.line(("tasks", 0, "tasks", 0, "message")) == 6
    assert source.exact_line(("tasks", 0, "tasks", 0, "message")) is None


def test_anchors_aliases_and_merges() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nref: *b\n")
    assert doc.data["other"] == {"x": 1, "y": 3}
    assert doc.data["ref"] == {"x": 1, "y": 2}


def test_duplicate_keys_are_reported_with_both_lines() -> None:
    doc = load_yaml("a: 1\nb: 2\na: 3\n")
    assert doc.data == {"a": 3, "b": 2}
    (duplicate,) = doc.duplicate_keys
    assert (duplicate.path, duplicate.line, duplicate.first_line) == (("a",), 3, 1)


def test_empty_document_is_null() -> None:
    assert load_yaml("").data is None
    assert load_yaml("# only a comment\n").data is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: [1,\n", 2),
        ("a: 1\nb: *missing\n", 2),
        ("a: !custom 1\n", 1),
        ("- a\n- b: c\nd\n", 4),
        ("a: 1\n---\nb: 2\n", 2),
        ("a: &x [*x]\n", 1),
        ("? [1, 2]\n: x\n", 1),
    ],
)
def test_syntax_errors_are_located(text: str, line: int) -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        load_yaml(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")


def test_nested_aliases_cannot_expand_without_bound() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = "\n".join(lines) + "\n"  # about 600 bytes, 9**9 values once expanded
    with pytest.raises(YamlSyntaxError, match="expands to more than"):
        load_yaml(bomb)
