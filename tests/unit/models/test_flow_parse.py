"""Parsing flows: the whole conformance corpus, the model's helpers, defaults, labels, triggers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestream.models.flow import (
    Flow,
    FlowValidationError,
    ScheduleTrigger,
    WebhookTrigger,
    check_flow,
    parse_flow,
)
from kestream.models.inputs import DurationInput, StringInput
from kestream.tasks.flow import If, Switch
from kestream.tasks.simple import Log

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "conformance" / "flows"
CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def test_the_corpus_is_all_there() -> None:
    assert len(CORPUS_FILES) == 91


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_every_corpus_flow_is_valid(path: Path) -> None:
    text = path.read_text()
    assert check_flow(text, source_name=path.name) == []
    flow = parse_flow(text, source_name=path.name)
    assert flow.namespace == "io.kestra.tests"
    assert flow.source == text


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_model_dump_round_trips(path: Path) -> None:
    flow = parse_flow(path.read_text())
    assert Flow.model_validate(flow.model_dump()) == flow
    assert Flow.model_validate_json(flow.model_dump_json()) == flow


MINIMAL = """
id: hello
namespace: company.team
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


def test_uid_source_and_equality() -> None:
    flow = parse_flow(MINIMAL)
    assert flow.uid == "company.team/hello"
    assert flow.source == MINIMAL
    same = parse_flow(MINIMAL + "\n# a comment changes the source only\n")
    assert same == flow
    assert hash(same) == hash(flow)
    assert "source" not in flow.model_dump()
    assert flow.model_copy(update={"revision": 3}).revision == 3


def test_task_index_covers_every_depth_and_is_cached() -> None:
    flow = parse_flow((CORPUS / "switch.yaml").read_text())
    index = flow.task_index()
    assert set(index) == {"parent-seq", "t1", "t2", "t2_sub", "t3", "failed", "error-t1", "default"}
    assert isinstance(index["parent-seq"], Switch)
    assert flow.task_index() is index


def test_task_index_includes_flow_errors() -> None:
    flow = parse_flow((CORPUS / "errors.yaml").read_text())
    assert "t3-t1-t1-t1-last" in flow.task_index()
    assert [t.id for t in flow.errors] == ["t2", "t3"]


def test_task_defaults_fill_missing_properties_only() -> None:
    flow = parse_flow((CORPUS / "logs.yaml").read_text())
    messages = {t.id: t.message for t in flow.tasks if isinstance(t, Log)}
    assert messages["t1"] == "first {{task.id}}"
    assert messages["t5"] == ["five first", "five second"]
    assert flow.pluginDefaults[0].type == "io.kestra.plugin.core.log.Log"


def test_plugin_defaults_reach_nested_tasks_and_errors_and_forced_wins() -> None:
    flow = parse_flow(
        """
id: defaults
namespace: company.team
pluginDefaults:
  - type: io.kestra.plugin.core.log
    values:
      message: default message
  - type: io.kestra.plugin.core.log.Log
    forced: true
    values:
      level: ERROR
taskDefaults:
  - type: io.kestra.core.tasks.debugs.Return
    values:
      format: from the older name
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: nested
        type: io.kestra.plugin.core.log.Log
        level: DEBUG
      - id: ret
        type: io.kestra.plugin.core.debug.Return
errors:
  - id: on-error
    type: io.kestra.plugin.core.log.Log
    message: own message
"""
    )
    index = flow.task_index()
    nested, on_error = index["nested"], index["on-error"]
    assert isinstance(nested, Log) and isinstance(on_error, Log)
    assert (nested.message, nested.level) == ("default message", "ERROR")
    assert (on_error.message, on_error.level) == ("own message", "ERROR")
    assert index["ret"].model_dump()["format"] == "from the older name"
    assert [d.type for d in flow.pluginDefaults][-1] == "io.kestra.core.tasks.debugs.Return"


def test_plugin_defaults_deep_merge_maps() -> None:
    flow = parse_flow(
        """
id: deep
namespace: company.team
pluginDefaults:
  - type: io.kestra.plugin.core.output.OutputValues
    values:
      values: {a: default-a, b: default-b}
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values: {a: own-a}
"""
    )
    assert flow.task_index()["out"].model_dump()["values"] == {"a": "own-a", "b": "default-b"}


def test_labels_as_a_map_or_a_list_become_text() -> None:
    as_map = parse_flow(MINIMAL + "labels:\n  team: data\n  tier: 1\n  on: true\n")
    as_list = parse_flow(
        MINIMAL
        + "labels:\n  - key: team\n    value: data\n  - key: tier\n    value: 1\n"
        + "  - key: 'on'\n    value: true\n"
    )
    assert as_map.labels == as_list.labels == {"team": "data", "tier": "1", "on": "true"}


def test_bad_labels_are_reported() -> None:
    problems = check_flow(MINIMAL + "labels:\n  - key: team\n")
    assert [(p.path, p.line) for p in problems] == [("labels", 8)]
    assert "{key, value}" in problems[0].message


def test_inputs_outputs_and_variables() -> None:
    flow = parse_flow(
        MINIMAL
        + """
inputs:
  - name: old-style
    type: STRING
  - id: delay
    type: duration
    defaults: PT1S
    required: false
variables:
  greeting: hello
outputs:
  - id: out
    type: STRING
    value: "{{ outputs.say }}"
"""
    )
    first, second = flow.inputs
    assert isinstance(first, StringInput) and first.id == "old-style" and first.required
    assert isinstance(second, DurationInput) and second.type == "DURATION"
    assert flow.variables == {"greeting": "hello"}
    assert flow.outputs[0].value == "{{ outputs.say }}"


def test_triggers_are_parsed_by_type_and_alias() -> None:
    flow = parse_flow(
        MINIMAL
        + """
triggers:
  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "@hourly"
    timezone: Europe/Paris
    recoverMissedSchedules: LAST
  - id: seconds
    type: io.kestra.core.models.triggers.types.Schedule
    cron: "*/10 * * * * *"
    withSeconds: true
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: s3cr3t
  - id: upstream
    type: io.kestra.plugin.core.trigger.Flow
    inputs:
      from: "{{ trigger.executionId }}"
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
"""
    )
    hourly, seconds, hook, upstream = flow.triggers
    assert isinstance(hourly, ScheduleTrigger) and hourly.recoverMissedSchedules == "LAST"
    assert isinstance(seconds, ScheduleTrigger) and seconds.withSeconds
    assert isinstance(hook, WebhookTrigger) and hook.key == "s3cr3t"
    assert upstream.conditions[0]["in"] == ["SUCCESS"]
    assert Flow.model_validate(flow.model_dump()) == flow


def test_flow_level_blocks() -> None:
    flow = parse_flow(
        MINIMAL
        + """
description: all the optional blocks
revision: 4
tenantId: main
disabled: true
deleted: false
retry:
  type: constant
  interval: PT1S
  maxAttempt: 2
"""
    )
    assert flow.revision == 4 and flow.disabled
    assert flow.retry is not None and flow.retry.maxAttempt == 2
    dumped = flow.model_dump()
    assert Flow.model_validate(dumped) == flow


def test_concurrency_is_parsed_and_checked() -> None:
    flow = parse_flow(MINIMAL + "concurrency:\n  limit: 2\n  behavior: CANCEL\n")
    assert flow.concurrency is not None
    assert (flow.concurrency.limit, flow.concurrency.behavior) == (2, "CANCEL")
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(MINIMAL + "concurrency:\n  limit: 0\n")
    assert any("concurrency" in str(p) for p in caught.value.problems)


def test_if_else_round_trips_by_its_yaml_name() -> None:
    flow = parse_flow((CORPUS / "if-condition.yaml").read_text())
    task = flow.tasks[0]
    assert isinstance(task, If) and task.else_ is not None
    assert flow.model_dump()["tasks"][0]["else"][0]["id"] == "when-false"


def test_compact_dump_leaves_out_defaults() -> None:
    flow = parse_flow(MINIMAL)
    assert flow.model_dump(exclude_defaults=True) == {
        "id": "hello",
        "namespace": "company.team",
        "tasks": [{"id": "say", "type": "io.kestra.plugin.core.log.Log", "message": "hi"}],
    }


def test_empty_optional_blocks_are_accepted() -> None:
    flow = parse_flow(MINIMAL + "errors:\ninputs:\nlabels:\ntriggers:\n")
    assert (flow.errors, flow.inputs, flow.labels, flow.triggers) == ([], [], {}, [])


def test_parse_flow_raises_with_every_problem() -> None:
    with pytest.raises(FlowValidationError) as caught:
        parse_flow("id: x\nnamespace: Bad\ntasks: []\n", source_name="bad.yaml")
    error = caught.value
    assert error.flow == "Bad.x"
    assert [p.path for p in error.problems] == ["namespace", "tasks"]
    assert "flow Bad.x is invalid (2 problems)" in str(error)


def test_model_copy_with_new_tasks_rebuilds_the_index() -> None:
    flow = parse_flow(MINIMAL)
    assert set(flow.task_index()) == {"say"}
    other = parse_flow(MINIMAL.replace("id: say", "id: shout"))
    copied = flow.model_copy(update={"tasks": other.tasks})
    assert set(copied.task_index()) == {"shout"}
    assert set(flow.task_index()) == {"say"}


def test_model_validate_from_plain_data_applies_defaults_too() -> None:
    flow = Flow.model_validate(
        {
            "id": "plain",
            "namespace": "company.team",
            "taskDefaults": [
                {"type": "io.kestra.plugin.core.log.Log", "values": {"message": "default"}}
            ],
            "tasks": [
                {
                    "id": "seq",
                    "type": "io.kestra.plugin.core.flow.Sequential",
                    "tasks": [{"id": "log", "type": "io.kestra.plugin.core.log.Log"}],
                }
            ],
            "errors": None,
        }
    )
    log = flow.task_index()["log"]
    assert isinstance(log, Log) and log.message == "default"
    assert flow.errors == []
