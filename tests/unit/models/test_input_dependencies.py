"""Inputs resolved one after the other: ``dependsOn`` conditions, templated defaults, SELECT and
MULTISELECT ``expression`` choices with ``autoSelectFirst``, and the checks made with the flow."""

from __future__ import annotations

from typing import Any

import pytest

from kestream.models.flow import check_flow, parse_flow
from kestream.models.input_resolution import fill_defaults, resolve_inputs
from kestream.models.inputs import InputValidationError, parse_inputs
from kestream.testing import Driver

HEAD = "id: f\nnamespace: company.team\ntasks:\n  - id: t\n"
HEAD += "    type: io.kestra.plugin.core.log.Log\n    message: hi\ninputs:\n"

CLOUD = """
  - id: cloud
    type: SELECT
    values: [AWS, GCP]
  - id: region
    type: STRING
    dependsOn:
      inputs: [cloud]
      condition: "{{ inputs.cloud == 'AWS' }}"
  - id: zone
    type: STRING
    dependsOn:
      inputs: [region]
  - id: broken
    type: INT
    required: false
    dependsOn:
      inputs: [cloud]
      condition: "{{ inputs.missing == 1 }}"
"""


def inputs_of(block: str) -> list[Any]:
    return parse_flow(HEAD + block).inputs


def test_an_input_whose_condition_holds_is_required_and_kept() -> None:
    flow_inputs = inputs_of(CLOUD)
    values = parse_inputs(flow_inputs, {"cloud": "AWS", "region": "eu", "zone": "a"})
    assert values == {"cloud": "AWS", "region": "eu", "zone": "a"}
    with pytest.raises(InputValidationError) as caught:
        parse_inputs(flow_inputs, {"cloud": "AWS"})
    assert [p.input_id for p in caught.value.problems] == ["region", "zone"]


def test_a_disabled_input_is_neither_required_nor_validated_and_is_dropped() -> None:
    flow_inputs = inputs_of(CLOUD)
    # region's condition is false, so zone (which depends on region) is disabled too; the
    # values sent for them are dropped, and the unrenderable condition disables `broken`
    # even though its value would not parse as an INT.
    given = {"cloud": "GCP", "region": "eu", "zone": "a", "broken": "not a number"}
    assert parse_inputs(flow_inputs, given) == {"cloud": "GCP"}
    enabled = {r.model.id: r.enabled for r in resolve_inputs(flow_inputs, given)}
    assert enabled == {"cloud": True, "region": False, "zone": False, "broken": False}


def test_a_dependency_declared_later_is_resolved_first() -> None:
    flow_inputs = inputs_of(
        "  - id: second\n    type: STRING\n    dependsOn:\n      inputs: [first]\n"
        '      condition: "{{ inputs.first > 2 }}"\n'
        "  - id: first\n    type: INT\n"
    )
    assert parse_inputs(flow_inputs, {"first": "3", "second": "x"}) == {"first": 3, "second": "x"}
    assert parse_inputs(flow_inputs, {"first": "1", "second": "x"}) == {"first": 1}


def test_a_default_may_be_a_template_over_the_inputs_before_it() -> None:
    flow_inputs = inputs_of(
        "  - id: start\n    type: DATETIME\n"
        "  - id: end\n    type: DATETIME\n"
        "    defaults: \"{{ inputs.start | dateAdd(1, 'DAYS') }}\"\n"
        '  - id: label\n    type: STRING\n    defaults: "from {{ inputs.start }}"\n'
        '  - id: count\n    type: INT\n    defaults: "{{ 2 * 21 }}"\n'
    )
    values = parse_inputs(flow_inputs, {"start": "2024-02-28T12:00:00Z"})
    assert values == {
        "start": "2024-02-28T12:00:00Z",
        "end": "2024-02-29T12:00:00Z",
        "label": "from 2024-02-28T12:00:00Z",
        "count": 42,
    }
    given = parse_inputs(flow_inputs, {"start": "2024-02-28T12:00:00Z", "count": "1"})
    assert given["count"] == 1  # a given value wins over the default


def test_a_templated_default_that_does_not_fit_its_type_is_refused_when_used() -> None:
    flow_inputs = inputs_of(
        "  - id: n\n    type: INT\n    defaults: \"{{ 'many' }}\"\n"
        '  - id: m\n    type: INT\n    defaults: "{{ nowhere.x }}"\n'
    )
    with pytest.raises(InputValidationError) as caught:
        parse_inputs(flow_inputs, {})
    messages = {p.input_id: p.message for p in caught.value.problems}
    assert "expected an INT, got 'many'" in messages["n"]
    assert "unable to render its defaults" in messages["m"] and "nowhere" in messages["m"]


SELECTS = """
  - id: env
    type: SELECT
    values: [dev, prod]
  - id: service
    type: SELECT
    dependsOn:
      inputs: [env]
    expression: "{{ {'dev': ['api-dev', 'web-dev'], 'prod': ['api']}[inputs.env] }}"
  - id: picked
    type: SELECT
    required: false
    autoSelectFirst: true
    expression: "{{ ['first', 'second'] }}"
  - id: many
    type: MULTISELECT
    autoSelectFirst: true
    expression: "[\\"{{ inputs.env }}-a\\", \\"{{ inputs.env }}-b\\"]"
"""


def test_a_select_expression_gives_the_choices_a_value_must_be_one_of() -> None:
    flow_inputs = inputs_of(SELECTS)
    values = parse_inputs(flow_inputs, {"env": "dev", "service": "web-dev"})
    assert values == {"env": "dev", "service": "web-dev", "picked": "first", "many": ["dev-a"]}
    with pytest.raises(InputValidationError, match=r"'service'.*one of \['api'\]"):
        parse_inputs(flow_inputs, {"env": "prod", "service": "web-dev"})
    chosen = parse_inputs(flow_inputs, {"env": "prod", "service": "api", "many": '["prod-b"]'})
    assert chosen["many"] == ["prod-b"]
    with pytest.raises(InputValidationError, match="'many'"):
        parse_inputs(flow_inputs, {"env": "prod", "service": "api", "many": '["dev-a"]'})


def test_auto_select_first_takes_the_first_static_value_and_yields_to_a_default() -> None:
    flow_inputs = inputs_of(
        "  - id: a\n    type: SELECT\n    values: [x, y]\n    autoSelectFirst: true\n"
        "  - id: b\n    type: SELECT\n    values: [x, y]\n    autoSelectFirst: true\n"
        "    defaults: y\n"
        "  - id: c\n    type: SELECT\n    values: [x, y]\n    required: false\n"
    )
    assert parse_inputs(flow_inputs, {}) == {"a": "x", "b": "y"}


def test_an_expression_that_is_not_a_list_is_named() -> None:
    flow_inputs = inputs_of("  - id: s\n    type: SELECT\n    expression: \"{{ 'one' }}\"\n")
    with pytest.raises(InputValidationError, match="must render a list of values, got 'one'"):
        parse_inputs(flow_inputs, {"s": "one"})


def test_a_value_sent_is_data_never_a_template() -> None:
    flow_inputs = inputs_of(
        '  - id: a\n    type: STRING\n  - id: b\n    type: STRING\n    defaults: "{{ inputs.a }}"\n'
    )
    values = parse_inputs(flow_inputs, {"a": "{{ 7 * 6 }}"})
    assert values == {"a": "{{ 7 * 6 }}", "b": "{{ 7 * 6 }}"}


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        (
            "  - id: a\n    type: STRING\n    dependsOn:\n      inputs: [ghost]\n",
            "input 'a' depends on unknown input 'ghost'",
        ),
        (
            "  - id: a\n    type: STRING\n    dependsOn:\n      inputs: [a]\n",
            "input 'a' depends on itself",
        ),
        (
            "  - id: a\n    type: STRING\n    dependsOn:\n      inputs: [c]\n"
            "  - id: b\n    type: STRING\n    dependsOn:\n      inputs: [a]\n"
            "  - id: c\n    type: STRING\n    dependsOn:\n      inputs: [b]\n",
            "inputs depend on each other in a cycle: a -> c -> b -> a",
        ),
    ],
)
def test_unresolvable_dependencies_are_refused_with_the_flow(block: str, needle: str) -> None:
    problems = check_flow(HEAD + block)
    assert any(needle in str(p) and "dependsOn" in str(p) for p in problems), problems


def test_fill_defaults_adds_only_the_enabled_missing_defaults() -> None:
    flow_inputs = inputs_of(
        "  - id: mode\n    type: STRING\n"
        '  - id: extra\n    type: STRING\n    defaults: "{{ inputs.mode }}-x"\n'
        "    dependsOn:\n      inputs: [mode]\n      condition: \"{{ inputs.mode == 'full' }}\"\n"
        "  - id: user.name\n    type: STRING\n    defaults: ada\n"
    )
    assert fill_defaults(flow_inputs, {"mode": "full"}) == {
        "mode": "full",
        "extra": "full-x",
        "user": {"name": "ada"},
    }
    typed = {"mode": "lite", "user": {"name": "bob"}}
    assert fill_defaults(flow_inputs, typed) is typed  # nothing missing: kept as given


def test_fill_defaults_merges_nested_ids_at_every_level() -> None:
    flow_inputs = inputs_of(
        "  - id: a.b.given\n    type: STRING\n"
        "  - id: a.b.added\n    type: STRING\n    defaults: new\n"
        "  - id: a.top\n    type: INT\n    defaults: 1\n"
    )
    given = {"a": {"b": {"given": "kept"}}}
    assert fill_defaults(flow_inputs, given) == {
        "a": {"b": {"given": "kept", "added": "new"}, "top": 1}
    }


DEPENDENT_FLOW = """
id: dependent
namespace: company.team
inputs:
  - id: kind
    type: SELECT
    values: [small, big]
  - id: size
    type: INT
    defaults: "{{ inputs.kind == 'big' ? 100 : 1 }}"
  - id: note
    type: STRING
    dependsOn:
      inputs: [kind]
      condition: "{{ inputs.kind == 'big' }}"
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.kind }} {{ inputs.size }} {{ inputs.note ?? 'none' }}"
"""


@pytest.mark.parametrize(
    ("given", "validate", "expected"),
    [
        ({"kind": "small", "note": "dropped"}, True, "small 1 none"),
        ({"kind": "big", "note": "hi"}, True, "big 100 hi"),
        ({"kind": "big", "note": "hi"}, False, "big 100 hi"),  # defaults filled by the executor
        ({"kind": "small"}, False, "small 1 none"),
    ],
)
def test_dependent_inputs_through_the_driver(
    given: dict[str, Any], validate: bool, expected: str
) -> None:
    with Driver() as driver:
        flow = driver.deploy(DEPENDENT_FLOW)
        execution = driver.start(flow.namespace, flow.id, given, validate_inputs=validate)
        done = driver.get(execution.id)
    assert done.state.current.value == "SUCCESS"
    assert done.taskRunList[0].outputs == {"value": expected}


DATETIME_FLOW = """
id: when
namespace: company.team
inputs:
  - id: at
    type: DATETIME
outputs:
  - id: again
    type: DATETIME
    value: "{{ inputs.at }}"
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.at }} {{ inputs.at | date('yyyy-MM-dd') }}"
"""


@pytest.mark.parametrize(
    ("given", "text"),
    [
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"),
        ("2024-02-29T13:00:00+01:00", "2024-02-29T12:00:00Z"),
        ("2024-02-29T12:00:00.250Z", "2024-02-29T12:00:00.250Z"),
        ("2024-02-29T12:00:00.000001Z", "2024-02-29T12:00:00.000001Z"),
    ],
)
def test_a_datetime_input_renders_as_java_instant_text(given: str, text: str) -> None:
    with Driver() as driver:
        flow = driver.deploy(DATETIME_FLOW)
        done = driver.get(driver.start(flow.namespace, flow.id, {"at": given}).id)
    assert done.taskRunList[0].outputs == {"value": f"{text} 2024-02-29"}
    assert done.outputs == {"again": text}
