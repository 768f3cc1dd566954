"""Rendering: variables, strictness, operators and precedence, tags, printing."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from kestream.expressions import (
    RenderError,
    TemplateSyntaxError,
    compile_template,
    render,
    render_value,
)

CTX: dict[str, Any] = {
    "inputs": {"name": "World", "n": 3, "f": 1.5, "list": [3, 1, 2], "m": {"a": 1, "b": [1, 2]}},
    "outputs": {"t1": {"value": "x"}, "empty": {}},
    "nothing": None,
    "flag": True,
}


def r(template: str, ctx: dict[str, Any] | None = None) -> str:
    return render(template, CTX if ctx is None else ctx)


# -- variables and access -------------------------------------------------------------------
def test_variables_and_access() -> None:
    assert r("Hello {{ inputs.name }}") == "Hello World"
    assert r("{{ inputs['name'] }}") == "World"
    assert r("{{ inputs.list[0] }}{{ inputs.list[2] }}") == "32"
    assert r("{{ inputs.list['1'] }}") == "1"
    assert r("{{ inputs.m.b[1] }}") == "2"
    assert r("{{ inputs[ 'na' ~ 'me' ] }}") == "World"
    assert r("{{ outputs['t1'].value }}") == "x"
    assert r("{{ nothing }}") == ""


def test_undefined_root_variable() -> None:
    with pytest.raises(RenderError) as info:
        render("{{inputs.invalid}}", {})
    assert str(info.value) == (
        "Unable to find `inputs` used in the expression `{{inputs.invalid}}` at line 1"
    )


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("{{ inputs.invalid }}", "invalid"),
        ("{{ outputs.x.y }}", "x"),
        ("{{ inputs.m.c }}", "c"),
        ("{{ inputs.list[5] }}", "5"),
        ("{{ inputs.list[-1] }}", "-1"),
        ("{{ inputs.name.length }}", "length"),
        ("{{ nothing.x }}", "x"),
        ("{{ inputs['m']['zz'] }}", "zz"),
    ],
)
def test_missing_keys_name_the_key(template: str, name: str) -> None:
    with pytest.raises(RenderError) as info:
        r(template)
    assert (
        str(info.value) == f"Unable to find `{name}` used in the expression `{template}` at line 1"
    )


def test_integer_keys_fall_back_to_string_keys() -> None:
    assert render("{{ m[1] }}", {"m": {"1": "one"}}) == "one"


# -- ?? ??? default defined ------------------------------------------------------------------
def test_null_coalescing() -> None:
    assert r("{{ outputs.not_existing ?? '' }}") == ""
    assert render("{{ outputs.not_existing ?? '' }}", {"outputs": {}}) == ""
    assert render("{{ (inputs.failed ?? 'NONE') == 'FIRST' ? ko : '0' }}", {}) == "0"
    assert render("{{ (inputs.failed ?? 'NONE') == 'NONE' ? 'yes' : ko }}", {}) == "yes"
    assert r("{{ nothing ?? 'null rescued' }}") == "null rescued"
    assert r("{{ a.b.c ?? d.e ?? 'third' }}") == "third"
    assert r("{{ inputs.name ?? 'unused' }}") == "World"


def test_undefined_coalescing_keeps_null() -> None:
    assert r("{{ nothing ??? 'x' }}") == ""
    assert r("{{ missing ??? 'x' }}") == "x"


def test_coalescing_does_not_hide_other_errors() -> None:
    with pytest.raises(RenderError, match="by zero"):
        r("{{ (1 / 0) ?? 'x' }}")


def test_default_filter_rescues() -> None:
    assert r("{{ missing | default('d') }}") == "d"
    assert r("{{ inputs.missing.deeper | default('d') }}") == "d"
    assert r("{{ nothing | default('d') }}") == "d"
    assert r("{{ '  ' | default('d') }}") == "d"
    assert r("{{ [] | default('d') }}") == "d"
    assert r("{{ outputs.empty | default('d') }}") == "d"
    assert r("{{ 0 | default('d') }}") == "0"
    assert r("{{ inputs.name | default('d') }}") == "World"


def test_is_defined() -> None:
    assert r("{{ inputs.name is defined }}") == "true"
    assert r("{{ inputs.crash is defined }}") == "false"
    assert render("{{ inputs.crash is defined }}", {}) == "false"
    assert r("{{ nothing is defined }}") == "false"
    assert r("{{ missing is not defined }}") == "true"


# -- operators ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 1 + 2 * 3 }}", "7"),
        ("{{ (1 + 2) * 3 }}", "9"),
        ("{{ 7 / 2 }}", "3"),
        ("{{ -7 / 2 }}", "-3"),
        ("{{ 7 % 3 }}", "1"),
        ("{{ -7 % 3 }}", "-1"),
        ("{{ 7.0 / 2 }}", "3.5"),
        ("{{ 1.5 * 2 }}", "3.0"),
        ("{{ 1 / 0.0 }}", "Infinity"),
        ("{{ 10 - 2 - 3 }}", "5"),
        ("{{ 9223372036854775807 + 1 }}", "-9223372036854775808"),
        ("{{ - inputs.n }}", "-3"),
        ("{{ +inputs.n }}", "3"),
        ("{{ 'a' ~ 1 ~ null ~ true }}", "a1true"),
        ("{{ 'a' ~ inputs.list ~ inputs.m }}", "a[3, 1, 2]{a=1, b=[1, 2]}"),
        ("{{ 'a' + 1 }}", "a1"),
        ("{{ 'a' + null }}", "anull"),
        ("{{ [1] + 2 }}", "[1,2]"),
        ("{{ [1] + [2, 3] }}", "[1,2,3]"),
        ("{{ [1, 2, 1] - 1 }}", "[2,1]"),
        ("{{ 1 == 1.0 }}", "true"),
        ("{{ true == 1 }}", "false"),
        ("{{ '1' == 1 }}", "false"),
        ("{{ inputs.name == 'World' }}", "true"),
        ("{{ inputs.name equals 'World' }}", "true"),
        ("{{ inputs.name != 'World' }}", "false"),
        ("{{ [1, 2] == [1, 2] }}", "true"),
        ("{{ 2 > 1 }}{{ 2 >= 2 }}{{ 1 < 2 }}{{ 3 <= 2 }}", "truetruetruefalse"),
        ("{{ 'b' > 'a' }}", "true"),
        ("{{ null > 1 }}", "false"),
        ("{{ true and false }}{{ true or false }}{{ not true }}", "falsetruefalse"),
        ("{{ false and missing }}", "false"),
        ("{{ true or missing }}", "true"),
        ("{{ 1 + 1 == 2 and 'a' == 'a' }}", "true"),
        ("{{ inputs.list contains 2 }}{{ inputs.list contains 9 }}", "truefalse"),
        ("{{ inputs.list contains [1, 2] }}", "true"),
        ("{{ inputs.m contains 'a' }}", "true"),
        ("{{ 'hello' contains 'ell' }}", "true"),
        ("{{ 2 in inputs.list }}{{ 9 not in inputs.list }}", "truetrue"),
        ("{{ 1..3 }}", "[1,2,3]"),
        ("{{ 3..1 }}", "[]"),
        ("{{ range(3, 1, -1) }}", "[3,2,1]"),
        ("{{ 1..3 | join('-') }}", "1-2-3"),
        ("{{ 'a' ~ 'b' | upper }}", "AB"),
        ("{{ 1 + 2 | abs }}", "3"),
        ("{{ -2 | abs }}", "2"),
        ("{{ true ? 'y' : 'n' }}", "y"),
        ("{{ 1 > 2 ? 'y' : 'n' }}", "n"),
        ("{{ inputs.n > 2 ? inputs.n * 2 : missing }}", "6"),
        ("{{ missing ?? 'a' ~ 'b' }}", "ab"),
    ],
)
def test_operators(template: str, expected: str) -> None:
    assert r(template) == expected


def test_unary_not_binds_tighter_than_is_like_pebble() -> None:
    # Pebble parses ``not x is defined`` as ``(not x) is defined``.
    assert r("{{ not (missing is defined) }}") == "true"
    assert r("{{ not flag is defined }}") == "true"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'a' * 2 }}", "invalid operands for mathematical operation [MULTIPLICATION]"),
        ("{{ 1 / 0 }}", "/ by zero"),
        ("{{ 1 % 0 }}", "/ by zero"),
        ("{{ 'x' < 1 }}", "Could not perform less than comparison between string and number"),
        ("{{ true + 1 }}", "invalid operands for mathematical operation [ADD]"),
        ("{{ -'a' }}", "invalid operand for unary minus"),
        ("{{ 1 contains 1 }}", "contains cannot be applied to a number"),
    ],
)
def test_operator_errors(template: str, message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        r(template)


# -- tags -----------------------------------------------------------------------------------
def test_if_elseif_else() -> None:
    template = "{% if n > 2 %}big{% elseif n > 1 %}mid{% else %}small{% endif %}"
    assert render(template, {"n": 3}) == "big"
    assert render(template, {"n": 2}) == "mid"
    assert render(template, {"n": 1}) == "small"
    assert render("{% if 'false' %}t{% else %}f{% endif %}", {}) == "f"
    assert render("{% if [] %}t{% else %}f{% endif %}", {}) == "f"
    assert render("{% if x %}t{% endif %}", {"x": None}) == ""


def test_for_loop_variables() -> None:
    template = "{% for x in items %}{{ loop.index }}{{ x }}{{ loop.first }}{{ loop.last }}"
    template += "{{ loop.length }}{{ loop.revindex }};{% endfor %}"
    assert render(template, {"items": ["a", "b"]}) == "0atruefalse21;1bfalsetrue20;"


def test_for_else_and_null() -> None:
    template = "{% for x in items %}{{ x }}{% else %}empty{% endfor %}"
    assert render(template, {"items": []}) == "empty"
    assert render(template, {"items": None}) == ""
    assert render(template, {"items": [1, 2]}) == "12"


def test_for_over_map_entries() -> None:
    template = "{% for entry in json(value) %}{{ entry.key }}={{ entry.value }};{% endfor %}"
    assert render(template, {"value": '{"NEW_MONTH": "2018-01-01", "n": 1}'}) == (
        "NEW_MONTH=2018-01-01;n=1;"
    )
    assert render("{% for e in m %}{{ e }}{% endfor %}", {"m": {"a": 1}}) == "a=1"


def test_for_over_a_string_fails() -> None:
    with pytest.raises(RenderError, match="Not an iterable object: a string"):
        render("{% for c in 'abc' %}{% endfor %}", {})


def test_loop_variable_is_scoped() -> None:
    with pytest.raises(RenderError, match="Unable to find `x`"):
        render("{% for x in [1] %}{% endfor %}{{ x }}", {})
    assert render("{% for x in [1] %}{% endfor %}{{ x }}", {"x": "outer"}) == "outer"


def test_set() -> None:
    assert render("{% set x = 5 %}{{ x * 2 }}", {}) == "10"
    assert render("{% set total = 0 %}{% for i in [1, 2, 3] %}{% set total = total + i %}"
                  "{% endfor %}{{ total }}", {}) == "6"  # fmt: skip
    assert render("{% set inputs = 'shadow' %}{{ inputs }}", {"inputs": {}}) == "shadow"


def test_nested_loops_and_parents() -> None:
    template = (
        "{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ a }}{{ b }} {% endfor %}{% endfor %}"
    )
    assert render(template, {}) == "1x 1y 2x 2y "


# -- printing -----------------------------------------------------------------------------------
def test_printing_values() -> None:
    ctx = {
        "s": "text",
        "i": 1,
        "f": 0.25,
        "whole": 1.0,
        "big": 1e10,
        "t": True,
        "n": None,
        "d": {"value": "flow-with-outputs"},
        "l": ["my-complex"],
        "dt": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "day": date(2024, 1, 2),
        "clock": time(3, 4, 5),
        "delta": timedelta(seconds=1),
    }
    template = "|".join(
        "{{" + name + "}}"
        for name in (
            "s",
            "i",
            "f",
            "whole",
            "big",
            "t",
            "n",
            "d",
            "l",
            "dt",
            "day",
            "clock",
            "delta",
        )
    )
    assert render(template, ctx) == (
        'text|1|0.25|1.0|1.0E10|true||{"value":"flow-with-outputs"}|["my-complex"]'
        "|2024-01-02T03:04:05.678Z|2024-01-02|03:04:05|PT1S"
    )


def test_literals() -> None:
    assert r("{{ [1, 'a', true, null, 1.5] }}") == '[1,"a",true,null,1.5]'
    assert r("{{ {'a': 1, b: 2, 'c': [1]} }}") == '{"a":1,"b":2,"c":[1]}'
    assert render("{{ {key: 1} }}", {"key": "dynamic"}) == '{"dynamic":1}'
    assert r("{{ {} }}{{ [] }}") == "{}[]"
    assert r("{{ TRUE }}{{ FALSE }}{{ none }}{{ NULL }}") == "truefalse"
    assert r("{{ 42L }}") == "42"


def test_decimal_arithmetic() -> None:
    ctx = {"d": Decimal("1.5")}
    assert r("{{ d + 0.25 }}|{{ d * 2 }}|{{ d - 1 }}|{{ d / 2 }}|{{ d % 1 }}", ctx) == (
        "1.75|3.0|0.5|0.75|0.5"
    )
    with pytest.raises(RenderError, match="/ by zero"):
        r("{{ d / 0 }}", ctx)


def test_render_value_recurses() -> None:
    value = {"{{ inputs.name }}": ["{{ inputs.n }}", 1, True, None, {"k": "{{ flag }}"}], "n": 2}
    assert render_value(value, CTX) == {"World": ["3", 1, True, None, {"k": "true"}], "n": 2}
    assert render_value(5, CTX) == 5
    assert render_value(("{{ inputs.n }}",), CTX) == ["3"]


def test_template_objects_render_many_times() -> None:
    template = compile_template("{{ a }}-{{ b }}")
    assert template.render({"a": 1, "b": 2}) == "1-2"
    assert template.render({"a": "x", "b": "y"}) == "x-y"
    assert template.source == "{{ a }}-{{ b }}"


def test_context_keys_starting_with_at_are_invisible() -> None:
    with pytest.raises(RenderError):
        render("{{ m['@hidden'] }}", {"m": {}, "@hidden": 1})
    assert validate_at_sign() is not None


def validate_at_sign() -> object:
    from kestream.expressions import validate_template

    return validate_template("{{ @hidden }}")


def test_limits() -> None:
    with pytest.raises(RenderError, match="cannot produce more than 1000000"):
        render("{{ range(1, 2000000) }}", {})
    with pytest.raises(RenderError, match=r"^render exceeded its size limit of 10000000 char"):
        render("{% set s = 'xx' %}{% for i in range(1, 40) %}{% set s = s ~ s %}{% endfor %}", {})
    with pytest.raises(RenderError, match=r"^render exceeded its size limit of 1000000 list"):
        render("{% set l = [1] %}{% for i in range(1, 40) %}{% set l = l + l %}{% endfor %}", {})


class ExplodingMapping(dict):  # type: ignore[type-arg]
    """A context whose lookups fail in an unexpected way."""

    def __getitem__(self, key: object) -> object:
        raise ValueError("backend down")


def test_unexpected_errors_become_render_errors() -> None:
    with pytest.raises(RenderError, match="ValueError: backend down"):
        render("{{ anything }}", ExplodingMapping())


def test_syntax_errors_at_render_time_are_render_errors() -> None:
    with pytest.raises(RenderError) as info:
        render("{{ a + }}", {})
    assert isinstance(info.value, TemplateSyntaxError)
    assert info.value.line == 1


def test_nested_loops_keep_their_own_loop_variable() -> None:
    template = (
        "{% for a in [1, 2] %}{% for b in [1, 2, 3] %}{% endfor %}"
        "{{ loop.index }}/{{ loop.length }} {% endfor %}"
    )
    assert render(template, {}) == "0/2 1/2 "
