"""A ``type:`` key inside a task property is a value, not a task: only the properties the task
classes declare as task lists (``tasks``, ``then``, ``cases``, ``errors``...) hold tasks."""

from __future__ import annotations

from kestream.models.flow import check_flow, parse_flow
from kestream.tasks.base import Task

HEAD = "id: f\nnamespace: acme.team\ntasks:\n"


def errors(source: str) -> list[str]:
    return [f"{p.path}: {p.message}" for p in check_flow(source) if p.severity == "error"]


def test_maps_with_a_type_inside_a_known_tasks_property_are_values() -> None:
    source = HEAD + (
        "  - id: values\n"
        "    type: io.kestra.plugin.core.output.OutputValues\n"
        "    values:\n"
        "      options: {type: basic, user: me}\n"
        "      inputs: [{id: x, type: STRING}, {id: y, type: INT}]\n"
    )
    flow = parse_flow(source)
    assert flow.tasks[0].values["inputs"][1] == {"id": "y", "type": "INT"}  # type: ignore[attr-defined]


def test_an_unknown_types_properties_are_not_taken_for_tasks() -> None:
    source = HEAD + (
        "  - id: plugin\n"
        "    type: acme.tasks.Unheard\n"
        "    inputs: [{id: x, type: STRING}]\n"
        "    options: {type: basic}\n"
    )
    found = errors(source)
    assert len(found) == 1 and found[0].startswith("tasks[0].type: unknown task type 'acme."), found


def test_task_lists_of_an_unknown_type_are_still_checked() -> None:
    source = HEAD + (
        "  - id: wrapper\n"
        "    type: acme.tasks.Unheard\n"
        "    tasks:\n"
        "      - id: inner\n"
        "        type: io.kestra.plugin.core.log.Logg\n"
        "      - id: wrapper\n"
        "        type: io.kestra.plugin.core.log.Log\n"
        "        message: hi\n"
    )
    found = errors(source)
    assert any(p.startswith("tasks[0].tasks[0].type: unknown task type") for p in found), found
    assert any("duplicate task id 'wrapper'" in p for p in found), found


def test_nested_task_lists_of_known_types_are_still_tasks() -> None:
    source = HEAD + (
        "  - id: branch\n"
        "    type: io.kestra.plugin.core.flow.If\n"
        "    condition: 'true'\n"
        "    then:\n"
        "      - id: inner\n"
        "        type: io.kestra.plugin.core.log.Logg\n"
        "    else:\n"
        "      - id: other\n"
        "        type: io.kestra.plugin.core.log.Log\n"
        "        message: hi\n"
        "errors:\n"
        "  - id: handler\n"
        "    type: io.kestra.plugin.core.flow.Switch\n"
        "    value: a\n"
        "    cases:\n"
        "      a:\n"
        "        - id: case_a\n"
        "          type: acme.Unheard\n"
    )
    found = errors(source)
    assert any(p.startswith("tasks[0].then[0].type: unknown task type") for p in found), found
    assert any(p.startswith("errors[0].cases.a[0].type: unknown task type") for p in found), found
    assert len(found) == 2, found


def test_a_known_tasks_list_property_builds_tasks() -> None:
    flow = parse_flow(
        HEAD
        + "  - id: seq\n    type: io.kestra.plugin.core.flow.Sequential\n    tasks:\n"
        + "      - id: a\n        type: io.kestra.plugin.core.log.Log\n        message: hi\n"
    )
    assert isinstance(flow.tasks[0].tasks[0], Task)  # type: ignore[attr-defined]
