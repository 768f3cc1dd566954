"""The safe jq subset behind the ``jq`` filter (Kestra returns the list of all results)."""

from __future__ import annotations

from typing import Any

import pytest

from kestream.expressions import RenderError, render
from kestream.expressions.jq import jq_values

DOC = {
    "key": "my-complex",
    "value": {"sub": 1, "bool": True},
    "items": [
        {"name": "a", "n": 1, "tags": ["x"]},
        {"name": "b", "n": 5, "tags": []},
        {"name": "c", "n": 3, "tags": ["x", "y"]},
    ],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        (".", [DOC]),
        (".key", ["my-complex"]),
        (".value.sub", [1]),
        ('.["key"]', ["my-complex"]),
        ('."key"', ["my-complex"]),
        (".items[0].name", ["a"]),
        (".items[-1].name", ["c"]),
        (".items[5]", [None]),
        (".missing", [None]),
        (".missing.deeper", [None]),
        (".items[].name", ["a", "b", "c"]),
        (".items[1:]|length", [2]),
        (".key[0:2]", ["my"]),
        (".items | length", [3]),
        (".key | length", [10]),
        (".value | keys", [["bool", "sub"]]),
        (".value | keys_unsorted", [["sub", "bool"]]),
        (".items | map(.n)", [[1, 5, 3]]),
        (".items | map(select(.n > 2)) | map(.name)", [["b", "c"]]),
        ('.items[] | select(.name == "b") | .n', [5]),
        (".items[] | select(.n >= 3 and .n != 5) | .name", ["c"]),
        ('.items[] | select(.n < 2 or .name == "c") | .name', ["a", "c"]),
        (".items[] | select(.tags | length > 0 | not) | .name", ["b"]),
        (".key, .value.sub", ["my-complex", 1]),
        ("[.items[].n] | add", [9]),
        ("[.items[].n] | sort | first, last", [1, 5]),
        ("first(.items[].name)", ["a"]),
        ("last(.items[].name)", ["c"]),
        ("{name: .key, n: .value.sub}", [{"name": "my-complex", "n": 1}]),
        ('{"k": 1, (.key): 2}', [{"k": 1, "my-complex": 2}]),
        ("{key}", [{"key": "my-complex"}]),
        (".value | to_entries", [[{"key": "sub", "value": 1}, {"key": "bool", "value": True}]]),
        (".value | to_entries | from_entries", [{"sub": 1, "bool": True}]),
        ('.value | with_entries(select(.key == "sub"))', [{"sub": 1}]),
        (".value.sub | tostring", ["1"]),
        (".value | tostring", ['{"sub":1,"bool":true}']),
        ('"42" | tonumber', [42]),
        (".items | map(.n) | max, min", [5, 1]),
        (".items | max_by(.n) | .name", ["b"]),
        (".items | sort_by(.n) | map(.name)", [["a", "c", "b"]]),
        (".items | group_by(.tags | length) | length", [3]),
        ("[1, 1, 2] | unique", [[1, 2]]),
        ("[[1, [2]], 3] | flatten", [[1, 2, 3]]),
        ('["a", "b"] | join("-")', ["a-b"]),
        ('"a,b" | split(",")', [["a", "b"]]),
        ('"Hello" | ascii_downcase, ascii_upcase', ["hello", "HELLO"]),
        ('"hello" | startswith("he"), endswith("lo"), test("l+")', [True, True, True]),
        ('"hello" | ltrimstr("he"), rtrimstr("lo")', ["llo", "hel"]),
        ('"a-b-c" | sub("-"; "+"), gsub("-"; "+")', ["a+b-c", "a+b+c"]),
        ('.value | has("sub")', [True]),
        ("[1, 2] | contains([1])", [True]),
        ('.nothing // "default"', ["default"]),
        ('.key // "default"', ["my-complex"]),
        ('if .value.sub == 1 then "one" elif .value.sub == 2 then "two" else "many" end', ["one"]),
        ("if .value.bool then 1 else 2 end", [1]),
        ("1 + 2 * 3, 7 / 2, 7 % 3, -1", [7, 3.5, 1, -1]),
        (
            '"a" + "b", [1] + [2], {"a": 1} + {"b": 2}, null + 1',
            ["ab", [1, 2], {"a": 1, "b": 2}, 1],
        ),
        ("[3, 1] - [1]", [[3]]),
        ("4 / 2", [2]),
        ("[range(3)], [range(1; 3)]", [[0, 1, 2], [1, 2]]),
        ("[limit(2; .items[])] | length", [2]),
        (".items | any(.n > 4), all(.n > 0)", [True, True]),
        ("[.items[] | .name?]", [["a", "b", "c"]]),
        (".key[]?", []),
        ('try error("boom") catch .', ["boom"]),
        ("(.key | type), (.items | type), (.nothing | type)", ["string", "array", "null"]),
        ("[..] | length", [22]),
        ("empty", []),
        ("null, true, false", [None, True, False]),
        (".value | tojson | fromjson", [{"sub": 1, "bool": True}]),
        ("[.items[] | .n] | map(. * 10)", [[10, 50, 30]]),
        (".value | map_values(. )", [{"sub": 1, "bool": True}]),
        ("3.7 | floor, ceil", [3, 4]),
        ('"abc" | index("b"), rindex("c")', [1, 2]),
    ],
)
def test_jq_programs(program: str, expected: list[Any]) -> None:
    assert jq_values(DOC, program) == expected


def test_jq_filter_in_templates() -> None:
    assert render("{{ v | jq('.key') }}", {"v": '{"key":"my-complex"}'}) == '["my-complex"]'
    assert render("{{ v | jq('.value') }}", {"v": '{"key":"k","value":{"sub":1,"bool":true}}'}) == (
        '[{"sub":1,"bool":true}]'
    )
    assert render("{{ v | jq('.a') | first }}", {"v": {"a": [1, 2]}}) == "[1,2]"
    assert render("{{ v | jq('.[]') }}", {"v": [1, "x"]}) == '[1,"x"]'


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("env", "jq 'env' is not supported"),
        ("$ENV.HOME", "jq variables are not supported: $ENV"),
        ("input", "jq 'input' is not supported"),
        ("inputs", "jq 'inputs' is not supported"),
        ('import "a" as a; .', "jq 'import' is not supported"),
        ('include "a"; .', "jq 'include' is not supported"),
        ("def f: 1; f", "jq 'def' is not supported"),
        ("reduce .[] as $x (0; . + $x)", "jq variables are not supported: $x"),
        ("reduce .[]", "jq 'reduce' is not supported"),
        (". as $x | $x", "jq variables are not supported: $x"),
        ("label", "jq 'label' is not supported"),
        ("@base64", "jq format strings are not supported: @base64"),
        ('"\\(.key)"', "jq string interpolation"),
        (".a = 1", "jq assignment operators are not supported: ="),
        ("nosuchfunction", "jq function nosuchfunction/0 is not supported"),
        (".key.sub", "Cannot index string with string"),
        (".[", "jq syntax error"),
        ("range(2000000)", "range larger than"),
        ('"x" * 20000000', "string repetition too large"),
        ("1 / 0", "divisor is zero"),
    ],
)
def test_jq_rejections(program: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render("{{ v | jq(p) }}", {"v": DOC, "p": program})
    assert message in str(info.value)


def test_jq_invalid_json_input() -> None:
    with pytest.raises(RenderError, match="Unable to parse jq value 'not json'"):
        render("{{ 'not json' | jq('.') }}", {})


def test_compiling_a_program_sent_as_data_spends_the_render_budget() -> None:
    """A jq program handed to the filter at run time (an input, a webhook body) is parsed within
    the render's budget, as template text given to ``render()`` is."""
    from kestream.expressions import render_timeout_ms, set_render_timeout_ms
    from kestream.expressions.errors import RenderLimitError

    program = "[" + ",".join(["1"] * 50_000) + "] | length"
    before = render_timeout_ms()
    set_render_timeout_ms(1)
    try:
        with pytest.raises(RenderLimitError, match="CPU-time budget of 1 ms"):
            render("{{ 1 | jq(inputs.program) }}", {"inputs": {"program": program}})
    finally:
        set_render_timeout_ms(before)
    small = "[" + ",".join(["1"] * 500) + "] | length"  # within the default budget
    assert render("{{ 1 | jq(inputs.program) | first }}", {"inputs": {"program": small}}) == "500"
