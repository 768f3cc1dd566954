"""Data is data: what a user puts in a value comes back unchanged from every record, and what no
record can carry is refused where it comes in, with the path of the bad part."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson
import pytest

from kestream.executor import events as ev
from kestream.executor.codec import CodecError, decode_value, encode_value
from kestream.models.flow import parse_flow
from kestream.models.inputs import InputValidationError, parse_inputs
from kestream.models.state import StateType
from kestream.models.values import (
    INT_MAX,
    MAX_DEPTH,
    UnportableValue,
    check_portable,
    find_unportable,
    loads_json,
    safe_text,
)
from kestream.models.yaml_source import YamlSyntaxError, load_yaml
from kestream.runtime import records

#: User maps shaped like the codec's own tags, and the escape itself.
LOOKALIKES: list[Any] = [
    {"$td": 1e300},
    {"$td": "not a number"},
    {"$dt": "2024-01-01T00:00:00+00:00"},
    {"$d": [1, 2]},
    {"$t": None},
    {"$esc": 1},
    {"$esc": {"$td": 5}},
    {"$anything": {"$dt": "x"}},
    {"a": {"$td": 1}, "b": [{"$d": "2024-01-01"}]},
    [{"$td": 1}, {"$esc": {"$esc": {}}}],
]


def _wire(value: Any) -> Any:
    """``value`` as it travels: encoded, JSON bytes, decoded."""
    return decode_value(orjson.loads(orjson.dumps(encode_value(value))))


@pytest.mark.parametrize("value", LOOKALIKES)
def test_user_maps_that_look_like_tags_round_trip_unchanged(value: Any) -> None:
    assert _wire(value) == value


def test_typed_values_still_round_trip_with_their_types() -> None:
    value = {
        "when": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        "day": date(2024, 5, 6),
        "at": time(7, 8, 9),
        "took": timedelta(seconds=90.5),
        "nested": [{"took": timedelta(days=2)}],
    }
    assert _wire(value) == value


def test_a_malformed_tag_from_the_wire_is_a_codec_error_not_a_crash() -> None:
    for raw in ({"$td": 1e300}, {"$dt": 5}, {"$d": "2024-13-45"}, {"$esc": [1]}):
        with pytest.raises(CodecError):
            decode_value(raw)


def test_every_event_with_hostile_values_round_trips_through_its_record() -> None:
    for value in LOOKALIKES:
        created = ev.ExecutionCreated(
            "x1",
            "a.b",
            "f",
            1,
            inputs={"v": value},
            trigger={"id": "w", "type": "t", "variables": {"body": value}},
        )
        back = records.decode_event(records.encode_event(created))
        assert isinstance(back, ev.ExecutionCreated)
        assert back.inputs == {"v": value} and back.trigger == {
            "id": "w",
            "type": "t",
            "variables": {"body": value},
        }
        result = ev.WorkerResult("x1", "r1", 1, StateType.SUCCESS, {"v": value}, None, [])
        back_result = records.decode_event(records.encode_event(result))
        assert isinstance(back_result, ev.WorkerResult) and back_result.outputs == {"v": value}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "created", "id": "x", "namespace": "a", "flowId": "f",'
        b' "inputs": {"$td": 1e300}}',
        b'{"type": "result", "id": "x", "run": "r", "attempt": 1e400, "state": "SUCCESS"}',
        b'{"type": "result", "id": "x", "run": "r", "attempt": "1", "state": "NOPE"}',
        b'{"type": "created", "id": 5}',
        b'{"type": "created", "id": "x", "namespace": "a", "flowId": "f", "labels": [1]}',
        b'{"type": "resume", "id": "x", "inputs": {"$dt": []}}',
        b"[1, 2]",
        b"\xff\xfe",
    ],
)
def test_a_malformed_event_record_is_a_record_error(raw: bytes) -> None:
    with pytest.raises(records.RecordError):
        records.decode_event(raw)


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [
        ({"a": [1, 2**64]}, "does not fit in 64 bits", "a[1]"),
        ({"a": -(2**63) - 1}, "does not fit in 64 bits", "a"),
        ({"a": {"b": float("inf")}}, "not finite", "a.b"),
        ({"a": float("nan")}, "not finite", "a"),
        ({"a": "ok\ud800"}, "unpaired surrogate", "a"),
        ({"k\udc80": 1}, "unpaired surrogate", ""),
        ({"a": b"bytes"}, "type bytes", "a"),
        ({"a": {1, 2}}, "type set", "a"),
        ({"a": object()}, "type object", "a"),
    ],
)
def test_unportable_values_are_found_with_their_path(value: Any, reason: str, path: str) -> None:
    problem = find_unportable(value)
    assert problem is not None
    assert reason in problem.reason and problem.path == path


def test_nesting_is_capped_without_recursion() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    check_portable(deep)  # exactly the cap: fine
    for _ in range(50_000):  # far deeper than Python's stack would allow a recursive walk
        deep = {"a": deep}
    problem = find_unportable(deep, "body")
    assert problem is not None and "nested deeper" in problem.reason
    assert problem.path.startswith("body.a.a")


def test_portable_values_pass_and_the_int_range_is_javas_long() -> None:
    check_portable(
        {"i": INT_MAX, "n": -(2**63), "f": 1.5, "s": "é€😀", "b": True, "z": None, "l": (1, 2)}
    )


def test_loads_json_is_exact_or_refuses() -> None:
    assert loads_json('{"a": 9223372036854775807}') == {"a": INT_MAX}
    with pytest.raises(UnportableValue) as big:
        loads_json('{"a": [0, 123456789012345678901234567890]}', "body")
    assert big.value.path == "body.a[1]"
    with pytest.raises(UnportableValue):
        loads_json('{"a": 1e400}')
    with pytest.raises(UnportableValue):
        loads_json('["\\ud800"]')
    with pytest.raises(UnportableValue):
        loads_json("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="NaN is not a JSON number"):
        loads_json('{"a": NaN}')
    with pytest.raises(ValueError):
        loads_json("{not json")


def test_safe_text_escapes_only_unpaired_surrogates() -> None:
    assert safe_text("plain") == "plain"
    assert safe_text("é😀") == "é😀"
    escaped = safe_text("a\ud800b")
    assert escaped == "a\\ud800b"
    escaped.encode()  # writable


def test_inputs_refuse_what_records_cannot_carry_naming_input_and_path() -> None:
    declared = [{"id": "doc", "type": "JSON"}, {"id": "n", "type": "INT"}]
    with pytest.raises(InputValidationError) as exc:
        parse_inputs(declared, {"doc": '{"a": {"b": 123456789012345678901234567890}}', "n": "1"})
    assert "doc" in str(exc.value) and "doc.a.b" in str(exc.value)
    with pytest.raises(InputValidationError, match="64 bits"):
        parse_inputs(declared, {"doc": "{}", "n": str(2**70)})
    parsed = parse_inputs(declared, {"doc": '{"$td": 1e300}', "n": "3"})
    assert parsed == {"doc": {"$td": 1e300}, "n": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: " + "[" * 300 + "]" * 300, "nested deeper than 100 levels"),
        ("a: 123456789012345678901234567890", "does not fit in 64 bits"),
        ("a: !!binary aGVsbG8=", "type bytes"),
    ],
)
def test_flow_yaml_refuses_what_records_cannot_carry_with_the_line(text: str, message: str) -> None:
    with pytest.raises(YamlSyntaxError, match=message) as exc:
        load_yaml("id: x\n" + text)
    assert exc.value.line == 2


def test_an_invalid_flow_names_the_line_of_the_bad_value() -> None:
    flow = """
id: big
namespace: a.b
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      n: 123456789012345678901234567890
"""
    with pytest.raises(ValueError, match=r"line 8.*64 bits"):
        parse_flow(flow)


@pytest.mark.parametrize(
    ("declared", "value"),
    [
        ("INT", "1" * 5000),
        ("DURATION", "PT" + "9" * 30 + "S"),
        ("DATETIME", "9999-12-31T23:59:59-23:59"),
        ("FLOAT", "1e400"),
    ],
)
def test_inputs_past_a_parsers_own_limits_are_invalid_inputs(declared: str, value: str) -> None:
    with pytest.raises(InputValidationError) as exc:
        parse_inputs([{"id": "x", "type": declared}], {"x": value})
    assert "Invalid input 'x'" in str(exc.value)
    assert not str(exc.value).rstrip().endswith(".")  # a path, when given, is whole


def test_deep_records_are_record_errors_not_recursion() -> None:
    deep = b"[" * 900 + b"]" * 900
    body = b'{"type": "created", "id": "x", "namespace": "a", "flowId": "f", "inputs": {"a": '
    with pytest.raises(records.RecordError, match="nested"):
        records.decode_event(body + deep + b"}}")


@pytest.mark.parametrize(
    "trigger",
    [
        {"variables": {"a": 1}},
        {"id": "a", "type": "b", "variables": [1]},
        {"id": 1, "type": "b"},
        [1, 2],
    ],
)
def test_a_trigger_in_no_records_shape_is_a_record_error(trigger: Any) -> None:
    body = {"type": "created", "id": "x", "namespace": "a", "flowId": "f", "trigger": trigger}
    with pytest.raises(records.RecordError, match="trigger"):
        records.decode_event(orjson.dumps(body))
