"""KV values: Kestra's seven types, typed by ``kvType``, inferred from YAML and from API text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kestream.kv.values import KVType, KVValueError, check_key, infer_value, parse_text, typed_value


@pytest.mark.parametrize(
    ("kv_type", "raw", "stored"),
    [
        (KVType.STRING, "abc", "abc"),
        (KVType.NUMBER, "42", 42),
        (KVType.NUMBER, "4.5", 4.5),
        (KVType.BOOLEAN, "TRUE", True),
        (KVType.DATETIME, "2026-01-02T03:04:05+01:00", "2026-01-02T02:04:05Z"),
        (KVType.DATETIME, datetime(2026, 1, 2, tzinfo=UTC), "2026-01-02T00:00:00Z"),
        (KVType.DATE, "2026-01-02", "2026-01-02"),
        (KVType.DURATION, "P1D", "PT24H"),
        (KVType.DURATION, timedelta(minutes=5), "PT5M"),
        (KVType.JSON, '{"a": [1]}', {"a": [1]}),
        (KVType.JSON, {"a": 1}, {"a": 1}),
    ],
)
def test_typed_values(kv_type: KVType, raw: object, stored: object) -> None:
    assert typed_value(kv_type, raw) == stored


@pytest.mark.parametrize(
    ("kv_type", "raw"),
    [
        (KVType.NUMBER, "ten"),
        (KVType.BOOLEAN, "yes"),
        (KVType.DATETIME, "tomorrow"),
        (KVType.DATE, "2026-13-01"),
        (KVType.DURATION, "1 hour"),
        (KVType.JSON, "{nope"),
    ],
)
def test_text_that_is_not_of_the_type_is_refused(kv_type: KVType, raw: str) -> None:
    with pytest.raises(KVValueError):
        typed_value(kv_type, raw)


def test_inferred_from_yaml_values() -> None:
    assert infer_value({"a": 1}) == (KVType.JSON, {"a": 1})
    assert infer_value(3) == (KVType.NUMBER, 3)
    assert infer_value(True) == (KVType.BOOLEAN, True)
    assert infer_value("3") == (KVType.STRING, "3")  # rendered text stays text


@pytest.mark.parametrize(
    ("body", "typed"),
    [
        ("42", (KVType.NUMBER, 42)),
        ("true", (KVType.BOOLEAN, True)),
        ('{"a": 1}', (KVType.JSON, {"a": 1})),
        ("[1, 2]", (KVType.JSON, [1, 2])),
        ('"2026-01-02"', (KVType.STRING, "2026-01-02")),  # quoted: a string
        ("2026-01-02", (KVType.DATE, "2026-01-02")),
        ("2026-01-02T10:00:00Z", (KVType.DATETIME, "2026-01-02T10:00:00Z")),
        ("PT5M", (KVType.DURATION, "PT5M")),
        ("Paris", (KVType.STRING, "Paris")),
        ("hello world", (KVType.STRING, "hello world")),
    ],
)
def test_api_bodies_are_typed_as_kestra_types_them(body: str, typed: object) -> None:
    assert parse_text(body) == typed


@pytest.mark.parametrize("key", ["a b", "", "-lead", "a/b", "x\n"])
def test_keys_kestra_refuses(key: str) -> None:
    with pytest.raises(KVValueError):
        check_key(key)
