"""Functions and ``is`` tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from kestream.expressions import RenderError, render


def clock() -> datetime:
    return datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


CTX: dict[str, Any] = {
    "outputs": {
        "1-1-1_output": {"v1": {"v21": {"v31": {"value": "deep"}}}},
        "2-1_output": {"s1": {"value": "one"}, "s2": {"value": "two"}},
    },
    "@each_path": ["v1", "v21", "v31"],
    "@error_logs": [
        {"taskId": "failed", "message": "Task failure", "level": "ERROR"},
        {"taskId": "other", "message": "Boom", "level": "ERROR"},
    ],
    "@now": clock,
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ range(1, 3) }}", "[1,2,3]"),
        ("{{ range(1, 160) | length }}", "160"),
        ("{{ range(0, 10, 5) }}", "[0,5,10]"),
        ("{{ range(5, 1, -2) }}", "[5,3,1]"),
        ("{{ range(3, 1) }}", "[]"),
        ("{{ range('a', 'c') }}", '["a","b","c"]'),
        ("{{ range(0, 1, 0.5) }}", "[0.0,0.5,1.0]"),
        ("{{ max(1, 5, 3) }}{{ min(4, 2, 8) }}", "52"),
        ("{{ max([1, 9]) }}{{ min(['b', 'a']) }}", "9a"),
        ("{{ json('{\"k\": [1, 2.5, true, null]}') }}", '{"k":[1,2.5,true,null]}'),
        ("{{ fromJson('[1]')[0] }}{{ jsonDecode('\"s\"') }}", "1s"),
        ("{{ json(null) }}", ""),
        ("{{ yaml('a: 1\nb: [x]') }}", '{"a":1,"b":["x"]}'),
        ("{{ fromYaml('- 1') }}", "[1]"),
        ("{{ currentEachOutput(outputs['1-1-1_output']).value }}", "deep"),
        ("{{ now() }}", "2024-05-06T07:08:09.123456Z"),
        ("{{ now(format='yyyy-MM-dd') }}", "2024-05-06"),
        ("{{ now(timeZone='Europe/Paris', format='HH:mm') }}", "09:08"),
        ("{{ errorLogs() | length }}", "2"),
        ("{{ errorLogs()[0].taskId }}", "failed"),
    ],
)
def test_function(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_current_each_output_stops_where_keys_end() -> None:
    ctx = {"outputs": {"o": {"s1": {"value": "one"}}}, "@each_path": ["s1", "deeper"]}
    assert render("{{ currentEachOutput(outputs.o).value }}", ctx) == "one"
    assert render("{{ currentEachOutput(outputs.o) }}", {**ctx, "@each_path": []}) == (
        '{"s1":{"value":"one"}}'
    )


def test_error_logs_template_from_the_corpus() -> None:
    template = (
        "{%- for log in errorLogs() -%}\n"
        "- task: {{ log.taskId }}, message: {{ log.message }}\n"
        "{%- endfor -%}\n"
    )
    ctx = {"@error_logs": [{"taskId": "failed", "message": "Task failure"}]}
    assert render(template, ctx) == "- task: failed, message: Task failure"
    assert render(template, {}) == ""


def test_now_without_a_clock_uses_real_time() -> None:
    rendered = render("{{ now() }}", {})
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", rendered)
    moment = datetime.fromisoformat(rendered)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 10


def test_uuid_and_random_int() -> None:
    assert re.fullmatch(r"[0-9a-f-]{36}", render("{{ uuid() }}", {}))
    assert render("{{ randomInt(1, 2) }}", {}) == "1"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ read('/etc/passwd') }}", "Function [read]: stored files cannot be read here"),
        ("{{ secret('KEY') }}", "Function [secret]: secret() is only resolved on a worker"),
        ("{{ kv('key') }}", "Function [kv]: the KV store cannot be read here"),
        ("{{ fileURI('f') }}", "Function [fileURI]: stored files cannot be read here"),
        ("{{ printContext() }}", "Function or Macro [printContext] does not exist"),
        ("{{ range(1, 2000000) }}", "Function [range]: The range function cannot produce"),
        ("{{ range(1, 2, 0) }}", "Function [range]: The increment of the range function"),
        ("{{ json('{bad') }}", "Function [json]: invalid JSON"),
        ("{{ json(1) }}", "Function [json]: expects a JSON string, got a number"),
        ("{{ yaml('a: &x 1\nb: *x') }}", "Function [yaml]: YAML aliases are not allowed"),
        ("{{ currentEachOutput('x') }}", "Function [currentEachOutput]: expects an argument"),
        ("{{ currentEachOutput() }}", "Function [currentEachOutput] expects an argument 'outputs'"),
    ],
)
def test_function_errors(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render(template, CTX)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ x is defined }}{{ missing is defined }}{{ n is defined }}", "truefalsefalse"),
        ("{{ missing.deep.key is not defined }}", "true"),
        ("{{ n is null }}{{ x is null }}{{ x is not null }}", "truefalsetrue"),
        (
            "{{ '' is empty }}{{ '  ' is empty }}{{ [] is empty }}{{ {} is empty }}",
            "truetruetruetrue",
        ),
        ("{{ n is empty }}{{ 'a' is empty }}{{ 0 is empty }}", "truefalsefalse"),
        ("{{ 2 is even }}{{ 3 is even }}{{ 3 is odd }}{{ 4.0 is odd }}", "truefalsetruefalse"),
        ("{{ [1] is iterable }}{{ {} is iterable }}{{ 'a' is iterable }}", "truetruefalse"),
        ("{{ {} is map }}{{ [] is map }}", "truefalse"),
        ("{{ '{\"key\": 1}' is json }}{{ '[1]' is json }}{{ '1' is json }}", "truetruetrue"),
        (
            "{{ 'value 1' is json }}{{ '' is json }}{{ n is json }}{{ 1 is json }}",
            "falsefalsefalsefalse",
        ),
        ("{{ {'a': 1} is json }}", "true"),
        ("{{ (x | length) is even }}", "false"),
    ],
)
def test_is_tests(template: str, expected: str) -> None:
    assert render(template, {"x": "y", "n": None}) == expected


def test_test_errors() -> None:
    with pytest.raises(RenderError, match=r"Test \[nope\] does not exist"):
        render("{{ 1 is nope }}", {})
    with pytest.raises(RenderError, match=r"Test \[even\] expects an integer"):
        render("{{ 'a' is even }}", {})
    with pytest.raises(RenderError, match="Unable to find `missing`"):
        render("{{ missing is null }}", {})


def test_safe_methods() -> None:
    ctx = {"s": " Abc ", "l": [1, 2], "m": {"k": "v"}}
    template = (
        "{{ s.trim() }}|{{ s.length() }}|{{ s.toUpperCase() }}|{{ s.contains('b') }}|"
        "{{ l.size() }}|{{ l.contains(2) }}|{{ l.get(0) }}|{{ m.containsKey('k') }}|"
        "{{ m.get('k') }}|{{ m.keySet() }}|{{ s.trim().substring(1, 2) }}|{{ l.isEmpty() }}"
    )
    assert render(template, ctx) == 'Abc|5| ABC |true|2|true|1|true|v|["k"]|b|false'
    with pytest.raises(RenderError, match=r"Method \[getClass\] cannot be called on a string"):
        render("{{ s.getClass() }}", ctx)
    with pytest.raises(RenderError, match=r"Method \[substring\] was called with wrong arguments"):
        render("{{ s.substring() }}", ctx)
