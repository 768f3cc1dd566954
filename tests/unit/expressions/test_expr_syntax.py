"""Lexing/parsing: delimiters, whitespace control, comments, raw blocks and syntax errors."""

from __future__ import annotations

import pytest

from kestream.expressions import (
    RenderError,
    TemplateSyntaxError,
    compile_template,
    is_template,
    render,
    validate_template,
)

NESTED = (
    "{{parents[0].taskrun.value == 'CUMULATIVE' and {% for entry in json(taskrun.value) %}"
    "{{ entry.key }}{% endfor %}== 'NEW_MONTH'}}"
)


@pytest.mark.parametrize(
    ("template", "line", "message"),
    [
        ("{{ a + }}", 1, "Unexpected end of expression"),
        ("{{ foo bar }}", 1, 'Unexpected token "bar"'),
        ("{{ a", 1, 'Unclosed "{{"'),
        ("x\n\n{{ a", 3, 'Unclosed "{{"'),
        ("{% for x in y %}", 1, "Unclosed tag [for], expected endfor"),
        ("a\n{% if x %}\nb", 2, "Unclosed tag [if], expected endif"),
        ("{% endfor %}", 1, "Unexpected tag [endfor] without its opening tag"),
        (
            "a\nb\n{% for x in y %}\n{% endif %}",
            4,
            "Unexpected tag [endif] without its opening tag",
        ),
        ("{% include 'x' %}", 1, "Unknown tag [include]"),
        ("{% import 'os' %}", 1, "Unknown tag [import]"),
        ("line1\n{{ (a }}", 2, 'Unclosed "("'),
        ("{{ [1, 2 }}", 1, 'Unclosed "["'),
        ("{{ }}", 1, "Empty expression"),
        ("{% if a %}x{% else %}y{% else %}z{% endif %}", 1, "Unexpected tag [else] after else"),
        ("{# open", 1, "Unclosed comment"),
        ("{{ 'abc }}", 1, 'Unclosed "\'"'),
        ("{{ a | }}", 1, "Unexpected end of expression"),
        ("{{ f(x=1, 2) }}", 1, "Positional arguments must come before named arguments"),
        ("{% set true = 1 %}", 1, "Can not assign a value to true"),
        ("{{ a ! b }}", 1, "Unexpected character [!]"),
        ("{{ a } }}", 1, 'Unexpected "}"'),
        ("{{ (a] }}", 1, 'Unclosed "("'),
        ("{% raw %}never closed", 1, "Unclosed tag {% raw %}"),
        ("{{ a.b(x=1) }}", 1, "Can not use named arguments when calling a method"),
        ("{{ (a)(1) }}", 1, "Only named functions can be called"),
        ("{% for 1 in x %}{% endfor %}", 1, 'Unexpected token "1"'),
        ("{% set x 1 %}", 1, 'Unexpected token "1"'),
    ],
)
def test_syntax_errors_are_reported_with_their_line(template: str, line: int, message: str) -> None:
    error = validate_template(template)
    assert isinstance(error, TemplateSyntaxError)
    assert error.message == message
    assert error.line == line
    assert error.template == template
    with pytest.raises(TemplateSyntaxError):
        compile_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "plain text",
        "{task.id}}",
        "{{ {'a': {'b': 1}} }}",
        "{{ x }}}",
        "{% raw %}{{ not rendered }}{% endraw %}",
        "{{ a ?? b ?? 'c' }}",
        "{{ unknownFunction(1) | unknownFilter is unknownTest }}",
        NESTED,
    ],
)
def test_valid_templates(template: str) -> None:
    assert validate_template(template) is None


def test_nested_tags_deploy_but_fail_when_rendered() -> None:
    ctx = {"parents": [{"taskrun": {"value": "CUMULATIVE"}}], "taskrun": {"value": '{"a": 1}'}}
    with pytest.raises(RenderError, match=r"^Tags cannot be nested inside an expression"):
        render(NESTED, ctx)


def test_text_is_returned_unchanged() -> None:
    assert render("{task.id}}", {}) == "{task.id}}"
    assert render("plain } and { text", {}) == "plain } and { text"
    text = "no delimiters here"
    assert render(text, {}) is text


def test_is_template() -> None:
    assert is_template("{{ a }}")
    assert is_template("{% if a %}{% endif %}")
    assert is_template("{# c #}")
    assert not is_template("{a} {b}")
    assert not is_template("plain")


def test_whitespace_control() -> None:
    assert render("a {{- ' b ' -}} c", {}) == "a b c"
    assert render("a  \n {{- 1 }} \n b", {}) == "a1 \n b"
    assert render("a {{ 1 -}} \n\n b", {}) == "a 1b"
    assert render("[ {%- if true -%} \n x \n {%- endif -%} ]", {}) == "[x]"
    assert render("x {#- c -#}   y", {}) == "xy"


def test_comments_are_removed() -> None:
    assert render("x {# comment {{ nope }} #} y", {}) == "x  y"


def test_raw_and_verbatim_blocks() -> None:
    assert render("{% raw %}{{ a }}{% endraw %}", {}) == "{{ a }}"
    assert render("{%- raw -%}  {{ a }}  {%- endraw -%}", {}) == "{{ a }}"
    assert render("{% verbatim %}{% if %}{% endverbatim %}", {}) == "{% if %}"
    assert render("x\n{% raw %}\n{{ a }}\n{% endraw %}\n{{ b }}", {"b": 2}) == "x\n\n{{ a }}\n\n2"


def test_newlines_after_tags_are_kept() -> None:
    # Kestra turns Pebble's newLineTrimming off.
    assert render("{% if true %}\nx\n{% endif %}\n", {}) == "\nx\n\n"


def test_error_lines_for_render_errors() -> None:
    with pytest.raises(RenderError) as info:
        render("a\nb\n  {{ nope }}", {})
    assert info.value.line == 3
    assert (
        str(info.value)
        == "Unable to find `nope` used in the expression `a\nb\n  {{ nope }}` at line 3"
    )


def test_compile_is_cached() -> None:
    assert compile_template("{{ cached }}") is compile_template("{{ cached }}")


def test_string_escapes_follow_pebble() -> None:
    assert render(r"{{ 'it\'s' }}", {}) == "it's"
    assert render(r'{{ "say \"hi\"" }}', {}) == 'say "hi"'
    assert render(r"{{ 'a\\b' }}", {}) == "a\\b"
    assert render(r"{{ 'a\nb' }}", {}) == "a\\nb"  # Pebble keeps unknown escapes


def test_delimiters_inside_strings_do_not_close_expressions() -> None:
    assert render("{{ '{{' }} {{ \"}}\" }} {{ '{%' ~ '%}' }}", {}) == "{{ }} {%%}"
    assert validate_template("{{ '{{ nested }}' }}") is None
    assert render("{{ '{{ x }}' }}", {"x": 1}) == "{{ x }}"  # no recursive rendering


def test_bash_style_braces_follow_pebble() -> None:
    # ``{#`` opens a comment in Pebble, so shell's ``${#ARR[@]}`` needs a raw block.
    assert isinstance(validate_template("echo ${#ARR[@]}"), TemplateSyntaxError)
    assert render("{% raw %}echo ${#ARR[@]}{% endraw %}", {}) == "echo ${#ARR[@]}"
    assert render("echo ${HOME} $((1 + 2))", {}) == "echo ${HOME} $((1 + 2))"


def test_string_interpolation() -> None:
    assert render('{{ "hi #{name}!" }}', {"name": "Bob"}) == "hi Bob!"
    assert render('{{ "#{1 + 1}#{2}" }}', {}) == "22"
    assert render("{{ 'no #{interpolation}' }}", {}) == "no #{interpolation}"


def test_deeply_nested_expression_is_a_syntax_error() -> None:
    error = validate_template("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert isinstance(error, TemplateSyntaxError)
