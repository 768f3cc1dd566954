"""Flow validation: every problem is found, with its line, path and enclosing task."""

from __future__ import annotations

import pytest

from kestream.models.flow import FlowProblem, FlowValidationError, check_flow, parse_flow

HEAD = "id: checked\nnamespace: company.team\n"  # lines 1-2


def problems(text: str, **options: bool) -> list[FlowProblem]:
    return check_flow(text, source_name="test.yaml", **options)


def only(text: str) -> FlowProblem:
    (problem,) = problems(text)
    return problem


def test_problem_reads_with_flow_task_line_and_path() -> None:
    problem = only(
        HEAD
        + "tasks:\n"  # 3
        + "  - id: bar\n"  # 4
        + "    type: io.kestra.plugin.core.debug.Return\n"  # 5
        + "    format: [not, text]\n"  # 6
    )
    assert (problem.flow, problem.task_id, problem.line) == ("company.team.checked", "bar", 6)
    assert problem.path == "tasks[0].format"
    assert str(problem) == (
        "flow company.team.checked, task 'bar' (line 6, tasks[0].format): "
        "'format' should be a valid string, got a list"
    )


def test_unknown_task_type_suggests_the_closest_names() -> None:
    problem = only(
        HEAD
        + "tasks:\n"
        + "  - id: log\n"  # 4
        + "    type: io.kestra.plugin.core.log.Logg\n"  # 5
        + "    message: hi\n"
    )
    assert (problem.task_id, problem.line, problem.path) == ("log", 5, "tasks[0].type")
    assert "unknown task type 'io.kestra.plugin.core.log.Logg'" in problem.message
    assert "did you mean 'io.kestra.plugin.core.log.Log'" in problem.message


def test_unknown_plugin_type_lists_what_kestream_runs() -> None:
    problem = only(HEAD + "tasks:\n  - id: sh\n    type: acme.tasks.Unheard\n")
    assert "kestream's own task types are" in problem.message
    assert "ForEach" in problem.message
    assert "plugin modules loaded" in problem.message  # which ones, or how to load them


def test_duplicate_task_ids_name_both_lines() -> None:
    text = (
        HEAD
        + "tasks:\n"  # 3
        + "  - id: twice\n"  # 4
        + "    type: io.kestra.plugin.core.flow.Sequential\n"
        + "    tasks:\n"
        + "      - id: twice\n"  # 7
        + "        type: io.kestra.plugin.core.log.Log\n"
        + "        message: inner\n"
        + "errors:\n"  # 10
        + "  - id: twice\n"  # 11
        + "    type: io.kestra.plugin.core.log.Log\n"
        + "    message: error branch\n"
    )
    found = problems(text)
    assert [(p.line, p.task_id) for p in found] == [(7, "twice"), (11, "twice")]
    assert all("already used at line 4 (tasks[0])" in p.message for p in found)


def test_missing_wrong_and_unknown_properties() -> None:
    found = problems(
        HEAD
        + "tasks:\n"
        + "  - id: log\n"  # 4
        + "    type: io.kestra.plugin.core.log.Log\n"
        + "    level: LOUD\n"  # 6
        + "    colour: red\n"  # 7
        + "  - id: par\n"  # 8
        + "    type: io.kestra.plugin.core.flow.Parallel\n"
        + "    concurrent: many\n"  # 10
        + "    tasks:\n"
        + "      - id: ok\n"
        + "        type: io.kestra.plugin.core.log.Log\n"
        + "        message: fine\n"
    )
    assert [(p.line, p.task_id, p.path) for p in found] == [
        (4, "log", "tasks[0].message"),
        (6, "log", "tasks[0].level"),
        (7, "log", "tasks[0].colour"),
        (10, "par", "tasks[1].concurrent"),
    ]
    messages = [p.message for p in found]
    assert messages[0] == "missing required property 'message'"
    assert messages[1].startswith("'level' should be 'TRACE', 'DEBUG', 'INFO', 'WARN' or 'ERROR'")
    assert messages[2] == "unknown property 'colour'"
    assert "'concurrent' should be a valid integer" in messages[3]


def test_unknown_property_suggests_a_close_name() -> None:
    problem = only(
        HEAD + "tasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    formatt: x\n"
    )
    assert problem.message == "unknown property 'formatt'; did you mean 'format'?"


def test_union_alternatives_read_as_one_message() -> None:
    problem = only(
        HEAD + "tasks:\n  - id: l\n    type: io.kestra.plugin.core.log.Log\n    message: {a: 1}\n"
    )
    assert problem.message == "'message' should be a valid string or a valid list, got a mapping"


def test_child_and_parent_errors_are_all_reported_once() -> None:
    found = problems(
        HEAD
        + "tasks:\n"
        + "  - id: outer\n"  # 4
        + "    type: io.kestra.plugin.core.flow.If\n"
        + "    unknown: 1\n"  # 6  (the parent's own error, and no condition)
        + "    then:\n"
        + "      - id: inner\n"  # 8
        + "        type: io.kestra.plugin.core.debug.Return\n"
        + "        format: [3]\n"  # 10
        + "    else:\n"
        + "      - id: deeper\n"  # 12
        + "        type: io.kestra.plugin.core.flow.Sequential\n"
        + "        tasks:\n"
        + "          - id: leaf\n"  # 15
        + "            type: io.kestra.plugin.core.log.Log\n"
    )
    assert [(p.line, p.task_id, p.path) for p in found] == [
        (4, "outer", "tasks[0].condition"),
        (6, "outer", "tasks[0].unknown"),
        (10, "inner", "tasks[0].then[0].format"),
        (15, "leaf", "tasks[0].else[0].tasks[0].message"),
    ]


def test_tasks_under_an_unknown_type_are_still_checked() -> None:
    found = problems(
        HEAD
        + "tasks:\n"
        + "  - id: group\n"
        + "    type: acme.flow.UnknownGroup\n"
        + "    tasks:\n"
        + "      - id: inside\n"  # 7
        + "        type: io.kestra.plugin.core.log.Log\n"
    )
    assert [(p.line, p.task_id) for p in found] == [(5, "group"), (7, "inside")]


def test_switch_cases_are_checked_with_their_lines() -> None:
    problem = only(
        HEAD
        + "tasks:\n"
        + "  - id: sw\n"
        + "    type: io.kestra.plugin.core.flow.Switch\n"
        + "    value: x\n"
        + "    cases:\n"
        + "      1:\n"
        + "        - id: one\n"  # 9
        + "          type: io.kestra.plugin.core.log.Log\n"
    )
    assert (problem.line, problem.task_id, problem.path) == (
        9,
        "one",
        "tasks[0].cases.1[0].message",
    )


def test_a_task_that_is_not_a_mapping() -> None:
    problem = only(HEAD + "tasks:\n  - just text\n")
    assert (problem.line, problem.path, problem.task_id) == (4, "tasks[0]", None)


MULTI_LINE_TEMPLATE = (
    HEAD
    + "tasks:\n"
    + "  - id: log\n"  # 4
    + "    type: io.kestra.plugin.core.log.Log\n"
    + "    message: |\n"  # 6
    + "      first line\n"  # 7
    + "      {{ broken( }}\n"  # 8
)


def test_expression_syntax_is_an_error_at_the_template_line() -> None:
    problem = only(MULTI_LINE_TEMPLATE)
    assert (problem.severity, problem.line, problem.task_id) == ("error", 8, "log")
    assert problem.path == "tasks[0].message"
    assert problem.message.startswith("invalid expression: ")
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(MULTI_LINE_TEMPLATE)
    assert "task 'log' (line 8, tasks[0].message): invalid expression" in str(caught.value)


def test_lenient_expressions_make_syntax_a_warning_as_in_kestra() -> None:
    (problem,) = problems(MULTI_LINE_TEMPLATE, strict_expressions=False)
    assert (problem.severity, problem.line) == ("warning", 8)
    assert str(problem).startswith("warning: flow company.team.checked, task 'log' (line 8")
    flow = parse_flow(MULTI_LINE_TEMPLATE, strict_expressions=False)
    assert [w.line for w in flow.warnings] == [8]


def test_expressions_in_outputs_trigger_inputs_and_runif_are_checked() -> None:
    found = problems(
        HEAD
        + "tasks:\n"
        + "  - id: log\n"
        + "    type: io.kestra.plugin.core.log.Log\n"
        + "    message: ok\n"
        + "    runIf: '{{ a == }}'\n"  # 7
        + "outputs:\n"
        + "  - id: out\n"
        + "    type: STRING\n"
        + "    value: '{{ x | }}'\n"  # 11
        + "triggers:\n"
        + "  - id: up\n"
        + "    type: io.kestra.plugin.core.trigger.Flow\n"
        + "    inputs:\n"
        + "      a: '{% if %}'\n"  # 16
    )
    assert [(p.line, p.path, p.severity) for p in found] == [
        (7, "tasks[0].runIf", "error"),
        (11, "outputs[0].value", "error"),
        (16, "triggers[0].inputs.a", "error"),
    ]


def test_bad_input_definitions() -> None:
    found = problems(
        HEAD
        + "inputs:\n"  # 3
        + "  - id: count\n"
        + "    type: INTEGER\n"  # 5
        + "  - id: list\n"  # 6
        + "    type: ARRAY\n"
        + "  - id: choice\n"  # 8
        + "    type: ENUM\n"
        + "  - id: number\n"
        + "    type: INT\n"
        + "    defaults: abc\n"  # 12
        + "  - id: number\n"  # 13
        + "    type: STRING\n"
        + "  - id: bad id\n"  # 15
        + "    type: STRING\n"
        + "tasks:\n"
        + "  - id: log\n"
        + "    type: io.kestra.plugin.core.log.Log\n"
        + "    message: hi\n"
    )
    assert [(p.line, p.path) for p in found] == [
        (5, "inputs[0].type"),
        (6, "inputs[1].itemType"),
        (8, "inputs[2].values"),
        (12, "inputs[3].defaults"),
        (13, "inputs[4]"),
        (15, "inputs[5].id"),
    ]
    messages = [p.message for p in found]
    assert messages[0].startswith("unknown input type 'INTEGER'; expected one of STRING,")
    assert messages[1] == "input 'list': an ARRAY input needs an 'itemType' (STRING, INT, ...)"
    assert messages[2] == "missing required property 'values'"
    assert messages[3] == "input 'number': invalid default value: expected an INT, got 'abc'"
    assert messages[4] == "duplicate input id 'number' (first at line 10)"
    assert all(p.task_id is None for p in found)


FLOW_WITH_ONE_TASK = (
    "tasks:\n  - id: log\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
)


@pytest.mark.parametrize(
    ("head", "path", "needle"),
    [
        ("id: 'has space'\nnamespace: company.team\n", "id", "must match"),
        ("id: ok\nnamespace: Company.Team\n", "namespace", "must match ^[a-z0-9]"),
        ("id: " + "x" * 101 + "\nnamespace: a\n", "id", "at most 100 characters"),
        ("namespace: a\n", "id", "missing required property 'id'"),
        ("id: ok\nnamespace: a\nrevision: 0\n", "revision", "greater than or equal to 1"),
    ],
)
def test_flow_id_and_namespace(head: str, path: str, needle: str) -> None:
    problem = only(head + FLOW_WITH_ONE_TASK)
    assert problem.path == path
    assert needle in problem.message


@pytest.mark.parametrize("tasks", ["tasks: []\n", "tasks:\n", ""])
def test_a_flow_needs_tasks(tasks: str) -> None:
    problem = only(HEAD + tasks)
    assert problem.path == "tasks"
    assert "tasks" in problem.message


@pytest.mark.parametrize(
    ("trigger", "path", "needle"),
    [
        ("cron: '61 * * * *'", "triggers[0].cron", "invalid cron expression '61 * * * *'"),
        ("cron: '0 * * *'", "triggers[0].cron", "has 5 fields, '0 * * *' has 4"),
        ("cron: '0 0 * * * *'", "triggers[0].cron", "withSeconds: true"),
        ("cron: '@often'", "triggers[0].cron", "unknown cron nickname '@often'"),
        ("cron: '@daily'\n    timezone: Mars/Olympus", "triggers[0].timezone", "unknown time zone"),
        (
            "cron: '@daily'\n    recoverMissedSchedules: SOME",
            "triggers[0].recoverMissedSchedules",
            "'ALL'",
        ),
        ("cron: '@daily'\n    lateMaximumDelay: soon", "triggers[0].lateMaximumDelay", "ISO-8601"),
    ],
)
def test_schedule_triggers(trigger: str, path: str, needle: str) -> None:
    text = (
        HEAD
        + FLOW_WITH_ONE_TASK
        + "triggers:\n  - id: sched\n    type: io.kestra.plugin.core.trigger.Schedule\n    "
        + trigger
        + "\n"
    )
    problem = only(text)
    assert problem.path == path
    assert needle in problem.message


def test_other_trigger_problems() -> None:
    found = problems(
        HEAD
        + FLOW_WITH_ONE_TASK  # lines 3-6
        + "triggers:\n"  # 7
        + "  - id: hook\n"  # 8
        + "    type: io.kestra.plugin.core.trigger.Webhook\n"
        + "  - id: typo\n"
        + "    type: io.kestra.plugin.core.trigger.Schedul\n"  # 11
        + "  - id: hook\n"  # 12
        + "    type: io.kestra.core.models.triggers.types.Flow\n"
    )
    assert [(p.line, p.path) for p in found] == [
        (8, "triggers[0].key"),
        (11, "triggers[1].type"),
        (12, "triggers[2]"),
    ]
    assert found[0].message == "missing required property 'key'"
    assert "did you mean 'io.kestra.plugin.core.trigger.Schedule'" in found[1].message
    assert found[2].message == "duplicate trigger id 'hook' (first at line 8)"


def test_unknown_and_refused_top_level_properties() -> None:
    found = problems(
        HEAD
        + FLOW_WITH_ONE_TASK
        + "variable:\n  a: 1\n"  # 7
        + "listeners:\n  - tasks: []\n"  # 9
        + "source: nope\n"  # 11
    )
    assert [(p.line, p.path) for p in found] == [(7, "variable"), (9, "listeners"), (11, "source")]
    assert found[0].message == "unknown property 'variable'; did you mean 'variables'?"
    assert "not supported by kestream" in found[1].message


def test_a_subflow_calling_its_own_flow_is_refused() -> None:
    problem = only(
        HEAD
        + "tasks:\n"
        + "  - id: again\n"  # 4
        + "    type: io.kestra.plugin.core.flow.Subflow\n"
        + "    namespace: company.team\n"
        + "    flowId: checked\n"
    )
    assert (problem.line, problem.task_id) == (4, "again")
    assert "recursive call" in problem.message


def test_yaml_problems_are_located() -> None:
    (syntax,) = problems(HEAD + "tasks: [\n")
    assert syntax.line == 4 and syntax.message.startswith("invalid YAML")
    assert syntax.flow == "test.yaml"
    found = problems(HEAD + FLOW_WITH_ONE_TASK + "id: again\n")
    assert [(p.line, p.message) for p in found] == [
        (7, "duplicate key 'id' (first given at line 1); only the last value is used")
    ]


def test_not_a_mapping() -> None:
    problem = only("- a\n- b\n")
    assert problem.message.startswith("a flow must be a mapping")


def test_many_problems_at_once_are_all_listed() -> None:
    text = (
        "id: many\n"
        "namespace: UPPER\n"  # 2
        "inputs:\n"
        "  - id: x\n"
        "    type: NOPE\n"  # 5
        "tasks:\n"
        "  - id: a\n"
        "    type: io.kestra.plugin.core.log.Log\n"  # 8: no message
        "  - id: a\n"  # 9: duplicate
        "    type: io.kestra.plugin.core.debug.Echo\n"  # 10: no format
        "triggers:\n"
        "  - id: s\n"
        "    type: io.kestra.plugin.core.trigger.Schedule\n"
        "    cron: nope\n"  # 14
    )
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(text, source_name="many.yaml")
    assert [p.line for p in caught.value.problems] == [2, 5, 7, 9, 9, 14]
    assert str(caught.value).startswith("flow UPPER.many is invalid (6 problems):\n  - flow UPPER")
