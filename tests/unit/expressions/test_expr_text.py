"""``to_text`` (what ``{{ }}`` prints), Java number formats, JSON and ``is_truthy``."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from kestream.expressions import is_truthy, to_text
from kestream.expressions.text import java_double, java_text, to_json
from kestream.expressions.values import Entry


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1.0"),
        (0.25, "0.25"),
        (-2.5, "-2.5"),
        (100.0, "100.0"),
        (1234567.0, "1234567.0"),
        (9999999.0, "9999999.0"),
        (1e7, "1.0E7"),
        (1.5e10, "1.5E10"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (1.25e-5, "1.25E-5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (123456.789, "123456.789"),
    ],
)
def test_java_double(value: float, expected: str) -> None:
    assert java_double(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (None, ""),
        (True, "true"),
        (False, "false"),
        (1, "1"),
        (-12, "-12"),
        (1.0, "1.0"),
        ({"value": "flow-with-outputs"}, '{"value":"flow-with-outputs"}'),
        (["my-complex"], '["my-complex"]'),
        ((1, 2), "[1,2]"),
        ({"a": [1, {"b": None}], "c": True, "d": 1.5}, '{"a":[1,{"b":null}],"c":true,"d":1.5}'),
        ({"é": 'ü\n"\\'}, '{"é":"ü\\n\\"\\\\"}'),
        (datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "2024-01-02T03:04:05.678Z"),
        (
            datetime(2024, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))),
            "2024-01-02T03:04:05.000Z",
        ),
        (datetime(2024, 1, 2, 3, 4, 5, 678901), "2024-01-02T03:04:05.678"),
        (date(2024, 1, 2), "2024-01-02"),
        (time(3, 4), "03:04"),
        (time(3, 4, 5, 500000), "03:04:05.500"),
        (timedelta(seconds=1), "PT1S"),
        (timedelta(hours=25, milliseconds=250), "PT25H0.25S"),
        (Decimal("1.50"), "1.50"),
        (Entry("k", [1, 2]), "k=[1, 2]"),
        (
            {"when": datetime(2024, 1, 2, tzinfo=UTC), "d": timedelta(0)},
            ('{"when":"2024-01-02T00:00:00.000Z","d":"PT0S"}'),
        ),
        ([float("nan"), 1e20], '["NaN",1.0E20]'),
        ([Entry("k", 1)], '[{"k":1}]'),
        ({1: "int key"}, '{"1":"int key"}'),
    ],
)
def test_to_text(value: Any, expected: str) -> None:
    assert to_text(value) == expected


def test_java_text_is_to_string() -> None:
    assert java_text(None) == "null"
    assert java_text([1, None, "a"]) == "[1, null, a]"
    assert java_text({"a": {"b": 1.0}}) == "{a={b=1.0}}"
    assert java_text(True) == "true"


def test_to_json_of_scalars() -> None:
    assert to_json("x") == '"x"'
    assert to_json(None) == "null"
    assert to_json(3) == "3"


@pytest.mark.parametrize(
    ("rendered", "expected"),
    [
        ("", False),
        ("0", False),
        ("-0", False),
        ("false", False),
        ("FALSE", False),
        (" False ", False),
        (None, False),
        (False, False),
        ("true", True),
        ("1", True),
        ("anything", True),
        (True, True),
        ("0.0", True),
    ],
)
def test_is_truthy(rendered: object, expected: bool) -> None:
    assert is_truthy(rendered) is expected
