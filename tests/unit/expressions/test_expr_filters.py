"""Every filter, with the values Pebble/Kestra produce."""

from __future__ import annotations

from typing import Any

import pytest

from kestream.expressions import RenderError, render

CTX: dict[str, Any] = {
    "list": [3, 1, 2],
    "words": ["b", "a", "c"],
    "m": {"a": 1, "b": 2},
    "nested": {"x": "a'b", "y": ["c'd", 5]},
    "nothing": None,
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # strings
        ("{{ 'Hello' | lower }}", "hello"),
        ("{{ 'Hello' | upper }}", "HELLO"),
        ("{{ 'hello wORLD' | capitalize }}", "Hello wORLD"),
        ("{{ 'hello big   world' | title }}", "Hello Big   World"),
        ("{{ '  pad \n' | trim }}", "pad"),
        ("{{ 'this is long' | abbreviate(7) }}", "this..."),
        ("{{ 'short' | abbreviate(10) }}", "short"),
        ("{{ 'abc' | replace({'a': 'X', 'c': 'Z'}) }}", "XbZ"),
        ("{{ 'a.b' | replace({'.': '-'}) }}", "a-b"),
        ("{{ 'a1b22' | replace({'\\\\d+': '#'}, regexp=true) }}", "a#b#"),
        ("{{ 'abc' | replace('b', 'B') }}", "aBc"),
        ("{{ 'a1b22' | replace('(\\\\d)', '<$1>', regexp=true) }}", "a<1>b<2><2>"),
        ("{{ 'a1b22' | replace('\\\\d', 'x', true) }}", "axbxx"),
        ("{{ nested | replace({\"'\": '_'}) }}", '{"x":"a_b","y":["c_d","5"]}'),
        ("{{ 'a,b,,c,,' | split(',') }}", '["a","b","","c"]'),
        ("{{ 'a,b,c' | split(',', 2) }}", '["a","b,c"]'),
        ("{{ 'a1b2c' | split('\\\\d') }}", '["a","b","c"]'),
        ("{{ 'a.b' | split('.') }}", "[]"),  # a Java regex: '.' matches everything
        ("{{ 'a.b' | split('\\\\.') }}", '["a","b"]'),
        ("{{ 'a|b' | split('\\\\|') }}", '["a","b"]'),
        ("{{ '' | split(',') }}", '[""]'),
        ("{{ 'abc' | split('') }}", '["a","b","c"]'),
        ("{{ 'hello' | startsWith('he') }}{{ 'hello' | endsWith('lo') }}", "truetrue"),
        ("{{ 'hello' | startsWith('lo') }}", "false"),
        ("{{ 'a.b.c' | substringBefore('.') }}", "a"),
        ("{{ 'a.b.c' | substringBeforeLast('.') }}", "a.b"),
        ("{{ 'a.b.c' | substringAfter('.') }}", "b.c"),
        ("{{ 'a.b.c' | substringAfterLast('.') }}", "c"),
        ("{{ 'abc' | substringBefore('x') }}|{{ 'abc' | substringAfter('x') }}", "abc|"),
        ("{{ 'abc' | substringBeforeLast('x') }}|{{ 'abc' | substringAfterLast('x') }}", "abc|"),
        ("{{ 'Héllo Wörld & more!' | slugify }}", "hello-world-more"),
        ("{{ 'a b&c*~' | urlencode }}", "a+b%26c*%7E"),
        ("{{ 'a+b%26c' | urldecode }}", "a b&c"),
        ("{{ 'hi' | base64encode }}", "aGk="),
        ("{{ 'aGk=' | base64decode }}", "hi"),
        ("{{ 'abc' | md5 }}", "900150983cd24fb0d6963f7d28e17f72"),
        ("{{ 'abc' | sha1 }}", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (
            "{{ 'abc' | sha256 }}",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        ("{{ 'abc' | sha512 | length }}", "128"),
        ("{{ \"it's\" | escapeChar('single') }}", "it\\'s"),
        ("{{ 'say \"x\"' | escapeChar('double') }}", 'say \\"x\\"'),
        ("{{ \"it's\" | escapeChar('shell') }}", "it'\\''s"),
        ("{{ nested | escapeChar('single') }}", '{"x":"a\\\\\'b","y":["c\\\\\'d","5"]}'),
        ("{{ 'a\nb' | indent(2) }}", "a\n  b"),
        ("{{ 'a\nb' | nindent(2) }}", "\n  a\n  b"),
        ("{{ 'a\nb' | indent(1, '-') }}", "a\n-b"),
        ("{{ 'x' | raw }}", "x"),
        ("{{ m | string }}{{ 1 | toString }}", '{"a":1,"b":2}1'),
        # collections
        ("{{ list | length }}{{ 'abc' | length }}{{ m | length }}{{ nothing | length }}", "3320"),
        ("{{ list | first }}{{ list | last }}", "32"),
        ("{{ 'abc' | first }}{{ 'abc' | last }}", "ac"),
        ("{{ m | first }}{{ m | last }}", "12"),
        ("{{ [] | first }}", ""),
        ("{{ list | reverse }}{{ 'abc' | reverse }}", "[2,1,3]cba"),
        ("{{ list | sort }}{{ words | sort }}", '[1,2,3]["a","b","c"]'),
        ("{{ list | rsort }}", "[3,2,1]"),
        ("{{ list | join }}{{ list | join(', ') }}", "3123, 1, 2"),
        ("{{ ['a', null, 1.0] | join('-') }}", "a-null-1.0"),
        ("{{ m | keys }}{{ m | values }}", '["a","b"][1,2]'),
        ("{{ m | merge({'b': 3, 'c': 4}) }}", '{"a":1,"b":3,"c":4}'),
        ("{{ [1] | merge([2, 3]) }}", "[1,2,3]"),
        ("{{ [1, 2, 3, 4, 5] | chunk(2) }}", "[[1,2],[3,4],[5]]"),
        ("{{ [1, 2, 1, '1', 2.0] | distinct }}", '[1,2,"1"]'),
        ("{{ [1, 1] | unique }}", "[1]"),
        ("{{ [[1, 2], 3, [4, [5]]] | flatten }}", "[1,2,3,4,[5]]"),
        ("{{ 'abcdef' | slice(1, 3) }}{{ 'abcdef' | slice(4) }}", "bcef"),
        ("{{ [1, 2, 3, 4] | slice(1, 3) }}", "[2,3]"),
        ("{{ -5 | abs }}{{ 2.5 | abs }}", "52.5"),
        ("{{ '42' | number + 1 }}", "43"),
        ("{{ '4.5' | number }}", "4.5"),
        ("{{ '0x1F' | number }}", "31"),
        ("{{ '12' | number('DOUBLE') }}", "12.0"),
        ("{{ '12' | number(type='INT') }}", "12"),
        ("{{ '1.50' | number('BIGDECIMAL') }}", "1.50"),
        ("{{ 1234567.891 | numberformat('#,##0.00') }}", "1,234,567.89"),
        ("{{ 3.14159 | numberformat('0.##') }}", "3.14"),
        ("{{ 3 | numberformat('0.00') }}", "3.00"),
        ("{{ 0.256 | numberformat('#%') }}", "26%"),
        ("{{ 0.5 | numberformat('#.#') }}", ".5"),
        # serialisation
        ("{{ m | toJson }}{{ 'x' | json }}{{ nothing | jsonEncode }}", '{"a":1,"b":2}"x"null'),
        ("{{ m | toYaml }}", "a: 1\nb: 2\n"),
        ("{{ [1, 'a'] | yaml }}", "- 1\n- a\n"),
        # null passes through
        ("{{ nothing | upper }}{{ nothing | replace({'a': 'b'}) }}{{ nothing | split(',') }}", ""),
        ("{{ nothing | date }}{{ nothing | jq('.') }}{{ nothing | sort }}", ""),
    ],
)
def test_filter(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'x' | nope }}", "Filter [nope] does not exist"),
        ("{{ 'x' | slice(2, 1) }}", "Filter [slice]: toIndex must be greater than fromIndex"),
        ("{{ 'x' | slice(0, 5) }}", "Filter [slice]: toIndex must be smaller than input size: 1"),
        ("{{ 1 | number }}", "Filter [number]: can only be applied to String"),
        ("{{ 'abc' | number }}", "Filter [number]: 'abc' is not a valid number"),
        (
            "{{ 'x' | escapeChar('weird') }}",
            "Filter [escapeChar]: expects the value of 'type' to be",
        ),
        ("{{ 'x' | abbreviate }}", "Filter [abbreviate] expects an argument 'length'"),
        ("{{ 'x' | upper(1) }}", "Filter [upper] expects at most 0 argument(s), got 1"),
        ("{{ 'x' | split(delim=',') }}", "Filter [split] has no argument named 'delim'"),
        ("{{ 'x' | split(',', delimiter=',') }}", "Filter [split] got argument 'delimiter' twice"),
        (
            "{{ 'a' | replace('(', 'b', regexp=true) }}",
            "Filter [replace]: Invalid regular expression '('",
        ),
        ("{{ 'x' | chunk(0) }}", "Filter [chunk]: expects a positive integer"),
        ("{{ 'x' | sort }}", "Filter [sort]: 'sort' expects a list, got a string"),
        ("{{ [1, 'a'] | sort }}", "Filter [sort]: Could not perform less than comparison"),
        ("{{ '!!' | base64decode }}", "Filter [base64decode]: invalid base64 input"),
        ("{{ 'x' | abs }}", "Filter [abs]: expects a number, got a string"),
        ("{{ 'a' | className }}", "Filter [className] does not exist"),
    ],
)
def test_filter_errors(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render(template, CTX)
    assert str(info.value).startswith(message)
