"""Typed inputs: each type's parsing and constraints, required/defaults, and flow output typing."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from kestream.models.inputs import (
    ArrayInput,
    BooleanInput,
    FlowOutput,
    InputValidationError,
    OutputValueError,
    StringInput,
    coerce_output,
    input_model_for,
    parse_inputs,
)


def parse_one(definition: dict[str, Any], value: Any) -> Any:
    return parse_inputs([{"id": "x", **definition}], {"x": value})["x"]


def reject_one(definition: dict[str, Any], value: Any) -> str:
    with pytest.raises(InputValidationError) as caught:
        parse_inputs([{"id": "x", **definition}], {"x": value})
    (problem,) = caught.value.problems
    assert problem.input_id == "x"
    assert str(problem).startswith("Invalid input 'x': ")
    return problem.message


GOOD = [
    ({"type": "STRING"}, "text", "text"),
    ({"type": "STRING"}, 12, "12"),
    ({"type": "STRING"}, True, "true"),
    ({"type": "STRING", "validator": "[a-z]+"}, "abc", "abc"),
    ({"type": "INT"}, "42", 42),
    ({"type": "INT"}, "-7", -7),
    ({"type": "INT"}, 5, 5),
    ({"type": "INT", "min": 1, "max": 10}, "10", 10),
    ({"type": "FLOAT"}, "1.5", 1.5),
    ({"type": "FLOAT"}, "1e3", 1000.0),
    ({"type": "FLOAT"}, 2, 2.0),
    ({"type": "FLOAT", "min": 0.5}, 0.5, 0.5),
    ({"type": "BOOLEAN"}, "true", True),
    ({"type": "BOOLEAN"}, "FALSE", False),
    ({"type": "BOOLEAN"}, False, False),
    ({"type": "BOOL"}, "true", True),
    # DATETIME values are kept as Java's Instant text, as Kestra's executions carry them.
    ({"type": "DATETIME"}, "2024-01-31T10:00:00Z", "2024-01-31T10:00:00Z"),
    ({"type": "DATETIME"}, "2024-01-31T12:00:00+02:00", "2024-01-31T10:00:00Z"),
    ({"type": "DATETIME"}, datetime(2024, 2, 29, 12, tzinfo=UTC), "2024-02-29T12:00:00Z"),
    (
        {"type": "DATETIME", "after": "2024-01-01T00:00:00Z"},
        "2024-01-31T10:00:00.5Z",
        "2024-01-31T10:00:00.500Z",
    ),
    ({"type": "DATETIME"}, "2024-01-31T10:00:00.000120Z", "2024-01-31T10:00:00.000120Z"),
    ({"type": "DATETIME"}, "2024-01-31T10:00:00.000Z", "2024-01-31T10:00:00Z"),
    (
        {"type": "DATETIME", "before": "2024-01-31T10:00:00.5Z"},
        "2024-01-31T10:00:00Z",
        "2024-01-31T10:00:00Z",
    ),
    ({"type": "DATE"}, "2024-01-31", date(2024, 1, 31)),
    ({"type": "DATE", "before": "2025-01-01"}, date(2024, 1, 31), date(2024, 1, 31)),
    ({"type": "TIME"}, "10:15:30", time(10, 15, 30)),
    ({"type": "TIME", "after": "08:00"}, "10:15", time(10, 15)),
    ({"type": "DURATION"}, "PT1M30S", timedelta(seconds=90)),
    ({"type": "DURATION", "max": "PT1H"}, "pt1h", timedelta(hours=1)),
    ({"type": "JSON"}, '{"a": [1, 2]}', {"a": [1, 2]}),
    ({"type": "JSON"}, {"already": "parsed"}, {"already": "parsed"}),
    ({"type": "JSON"}, "[]", []),
    ({"type": "YAML"}, "a: 1\nb: [x]\n", {"a": 1, "b": ["x"]}),
    ({"type": "ARRAY", "itemType": "INT"}, "[1, 2, 3]", [1, 2, 3]),
    ({"type": "ARRAY", "itemType": "INT"}, ["1", 2], [1, 2]),
    ({"type": "ARRAY", "itemType": "STRING"}, '["a", "b"]', ["a", "b"]),
    ({"type": "ENUM", "values": ["A", "B"]}, "B", "B"),
    ({"type": "SELECT", "values": ["A", "B"]}, "A", "A"),
    ({"type": "SELECT", "values": ["A"], "allowCustomValue": True}, "Z", "Z"),
    ({"type": "MULTISELECT", "values": ["A", "B"]}, '["A", "B"]', ["A", "B"]),
    ({"type": "MULTISELECT", "options": ["A", "B"]}, ["B"], ["B"]),
    ({"type": "URI"}, "https://kestra.io/docs?x=1", "https://kestra.io/docs?x=1"),
    ({"type": "EMAIL"}, "ops@example.com", "ops@example.com"),
    ({"type": "FILE"}, "kestra:///ns/flow/file.csv", "kestra:///ns/flow/file.csv"),
]


@pytest.mark.parametrize(("definition", "given", "expected"), GOOD)
def test_good_values_parse_to_their_type(
    definition: dict[str, Any], given: Any, expected: Any
) -> None:
    assert parse_one(definition, given) == expected


BAD = [
    ({"type": "STRING"}, ["a"], "expected a STRING, got a list"),
    ({"type": "STRING", "validator": "[a-z]+"}, "ABC", "it must match the pattern `[a-z]+`"),
    ({"type": "SECRET"}, 12, "expected a SECRET, got 12"),
    ({"type": "INT"}, "abc", "expected an INT, got 'abc'"),
    ({"type": "INT"}, "1.5", "expected an INT, got '1.5'"),
    ({"type": "INT"}, True, "expected an INT, got true"),
    ({"type": "INT", "min": 1, "max": 10}, "11", "it must be at most 10"),
    ({"type": "INT", "min": 1}, 0, "it must be at least 1"),
    ({"type": "FLOAT"}, "one", "expected a FLOAT, got 'one'"),
    ({"type": "FLOAT", "max": 1.0}, "1.5", "it must be at most 1.0"),
    ({"type": "BOOLEAN"}, "yes", "expected a BOOLEAN (true or false), got 'yes'"),
    ({"type": "DATETIME"}, "2024-01-31", "expected a DATETIME"),
    ({"type": "DATETIME"}, "2024-01-31T10:00:00", "expected a DATETIME"),
    (
        {"type": "DATETIME", "before": "2024-01-01T00:00:00Z"},
        "2024-06-01T00:00:00Z",
        "it must be before 2024-01-01T00:00:00Z",
    ),
    ({"type": "DATE"}, "31/01/2024", "expected a DATE (such as 2024-01-31), got '31/01/2024'"),
    ({"type": "DATE", "after": "2024-01-01"}, "2023-12-31", "it must be after 2024-01-01"),
    ({"type": "TIME"}, "25:00", "expected a TIME"),
    ({"type": "DURATION"}, "90s", "expected a DURATION (ISO-8601, such as PT30S), got '90s'"),
    ({"type": "DURATION", "min": "PT1M"}, "PT30S", "it must be at least PT1M"),
    ({"type": "JSON"}, "{oops", "expected a JSON text, got '{oops'"),
    ({"type": "YAML"}, "a: [", "expected a YAML text"),
    ({"type": "ARRAY", "itemType": "INT"}, '[1, "x"]', "item 1: expected an INT, got 'x'"),
    ({"type": "ARRAY", "itemType": "INT"}, "1, 2", "expected an ARRAY (a list or a JSON array)"),
    ({"type": "ENUM", "values": ["A", "B"]}, "C", "it must be one of ['A', 'B'], got 'C'"),
    ({"type": "SELECT", "values": ["A"]}, "C", "it must be one of ['A'], got 'C'"),
    ({"type": "MULTISELECT", "values": ["A"]}, ["A", "Z"], "it must be one of ['A'], got 'Z'"),
    ({"type": "URI"}, "not a uri", "expected a URI"),
    ({"type": "EMAIL"}, "nobody", "expected an EMAIL, got 'nobody'"),
    ({"type": "FILE"}, 3, "expected a FILE"),
]


@pytest.mark.parametrize(("definition", "given", "message"), BAD)
def test_bad_values_are_rejected_naming_the_input(
    definition: dict[str, Any], given: Any, message: str
) -> None:
    assert message in reject_one(definition, given)


def test_required_is_the_default_and_defaults_fill_in() -> None:
    inputs = [
        {"id": "needed", "type": "STRING"},
        {"id": "optional", "type": "STRING", "required": False},
        {"id": "delay", "type": "DURATION", "defaults": "PT1S"},
        {"id": "count", "type": "INT", "defaults": 3, "required": False},
    ]
    assert parse_inputs(inputs, {"needed": "x", "count": "7"}) == {
        "needed": "x",
        "delay": timedelta(seconds=1),
        "count": 7,
    }
    with pytest.raises(InputValidationError) as caught:
        parse_inputs(inputs, {"needed": None})
    assert str(caught.value) == "Invalid input 'needed': missing required input"


def test_every_bad_input_is_listed_and_unknown_inputs_are_dropped() -> None:
    inputs = [
        {"id": "a", "type": "INT"},
        {"id": "b", "type": "BOOLEAN"},
        {"id": "c", "type": "STRING"},
    ]
    with pytest.raises(InputValidationError) as caught:
        parse_inputs(inputs, {"a": "x", "b": "maybe", "c": "fine", "undeclared": 1})
    assert [p.input_id for p in caught.value.problems] == ["a", "b"]
    assert parse_inputs(inputs[2:], {"c": "fine", "undeclared": 1}) == {"c": "fine"}


def test_dotted_ids_nest() -> None:
    inputs = [{"id": "user.name", "type": "STRING"}, {"id": "user.age", "type": "INT"}]
    assert parse_inputs(inputs, {"user.name": "ada", "user.age": "36"}) == {
        "user": {"name": "ada", "age": 36}
    }


def test_models_and_mappings_are_both_accepted() -> None:
    model = input_model_for({"id": "flag", "type": "boolean"})
    assert isinstance(model, BooleanInput)
    assert parse_inputs([model], {"flag": "true"}) == {"flag": True}


def test_input_model_for_reads_old_names_and_any_case() -> None:
    model = input_model_for({"name": "legacy", "type": "string", "required": False})
    assert isinstance(model, StringInput)
    assert (model.id, model.type, model.required) == ("legacy", "STRING", False)
    array = input_model_for({"id": "a", "type": "array", "itemType": "int"})
    assert isinstance(array, ArrayInput) and array.itemType == "INT"


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"id": "a", "type": "ARRAY"}, "an ARRAY input needs an 'itemType'"),
        ({"id": "a", "type": "ARRAY", "itemType": "ARRAY"}, "'itemType' cannot be ARRAY"),
        ({"id": "e", "type": "ENUM"}, "values: Field required"),
        ({"id": "e", "type": "ENUM", "values": ["A"], "defaults": "B"}, "invalid default value"),
        ({"id": "i", "type": "INT", "min": 5, "max": 1}, "'max' is below 'min'"),
        ({"id": "s", "type": "STRING", "validator": "("}, "invalid regular expression"),
        ({"id": "d", "type": "DATETIME", "after": "soon"}, "invalid bound"),
        ({"id": "s", "type": "SELECT"}, "needs 'values'"),
        ({"id": "x", "type": "NUMBER"}, "unknown input type 'NUMBER'"),
        ({"id": "x"}, "an input needs a 'type'"),
        ({"id": "x", "type": "STRING", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ("text", "an input must be a mapping"),
    ],
)
def test_bad_definitions(definition: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        input_model_for(definition)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("output_type", "rendered", "expected"),
    [
        ("STRING", "text", "text"),
        ("STRING", {"value": "flow-with-outputs"}, '{"value":"flow-with-outputs"}'),
        ("ARRAY", ["1rstValue", "2ndValue"], ["1rstValue", "2ndValue"]),
        ("ARRAY", '["a"]', ["a"]),
        ("INT", "12", 12),
        ("FLOAT", "1.5", 1.5),
        ("BOOLEAN", "true", True),
        ("JSON", '{"a": 1}', {"a": 1}),
        ("DATETIME", "2024-01-31T12:00:00+02:00", "2024-01-31T10:00:00Z"),
        ("DURATION", "PT90S", "PT1M30S"),
    ],
)
def test_coerce_output(output_type: str, rendered: Any, expected: Any) -> None:
    output = FlowOutput(id="out", type=output_type, value="{{ x }}")
    assert coerce_output(output, rendered) == expected


def test_coerce_output_rejects_naming_the_output() -> None:
    with pytest.raises(
        OutputValueError, match="Invalid output 'count': expected an INT, got 'abc'"
    ):
        coerce_output(FlowOutput(id="count", type="INT", value="{{ x }}"), "abc")
    with pytest.raises(OutputValueError, match="rendered to null"):
        coerce_output(FlowOutput(id="count", type="INT", value="{{ x }}"), None)


def test_output_definition() -> None:
    output = FlowOutput.model_validate({"id": "o", "type": "string", "value": "{{ x }}"})
    assert output.type == "STRING" and output.required
    with pytest.raises(ValueError, match="an output needs a 'value'"):
        FlowOutput.model_validate({"id": "o", "type": "STRING", "value": None})
