"""Every expression of the conformance corpus (Kestra's own test flows), as Kestra renders them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kestream.expressions import RenderError, is_truthy, render, validate_template

CORPUS = Path("/work/shared/conformance/flows")
START = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _corpus_templates() -> list[str]:
    if not CORPUS.is_dir():
        return []
    found = set()
    for path in sorted(CORPUS.glob("*.yaml")):
        for text in _strings(yaml.safe_load(path.read_text())):
            if "{{" in text or "{%" in text:
                found.add(text)
    return sorted(found)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="conformance corpus not available")
@pytest.mark.parametrize("template", _corpus_templates())
def test_every_corpus_template_is_valid(template: str) -> None:
    assert validate_template(template) is None


BASE: dict[str, Any] = {
    "flow": {"id": "return", "namespace": "io.kestra.tests", "revision": 1},
    "execution": {"id": "exec123", "startDate": START},
    "task": {"id": "task-id", "type": "io.kestra.plugin.core.debug.Return"},
    "taskrun": {"id": "tr1", "startDate": START, "attemptsCount": 0, "value": "value 2"},
    "labels": {"key1": "value1", "system": {"correlationId": "corr-1"}},
    "outputs": {},
}


def ctx(**extra: Any) -> dict[str, Any]:
    merged = dict(BASE)
    merged.update(extra)
    return merged


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("{{ execution.startDate }}", ctx(), "2024-01-02T03:04:05.678Z"),
        ("{{ task.id }} > {{ taskrun.startDate }}", ctx(), "task-id > 2024-01-02T03:04:05.678Z"),
        ("{{flow.id}}", ctx(), "return"),
        ("{{execution.id}}", ctx(), "exec123"),
        ("{{ taskrun.id }}", ctx(), "tr1"),
        ("{{task.type}}", ctx(), "io.kestra.plugin.core.debug.Return"),
        ("{{ labels.key1 }}", ctx(), "value1"),
        ("{{labels.system.correlationId}}", ctx(), "corr-1"),
        ("{{ taskrun.value equals 'value 2' }}", ctx(), "true"),
        ("{{ outputs.not_existing ?? '' }}", ctx(), ""),
        ("{{outputs.pause.onResume.asked ?? 'MISSING'}}", ctx(), "MISSING"),
        (
            "{{outputs.pause.onResume.asked ?? 'MISSING'}}",
            ctx(outputs={"pause": {"onResume": {"asked": "yes"}}}),
            "yes",
        ),
        ("{{ (inputs.failed ?? 'NONE') == 'FIRST' ? ko : '0'}}", ctx(), "0"),
        ("{{ (inputs.failed ?? 'NONE') == 'SECOND' ? ko : '0'}}", ctx(inputs={}), "0"),
        ("{{ inputs.crash is defined }}", ctx(inputs={"crash": "1"}), "true"),
        ("{{ inputs.crash is defined }}", ctx(), "false"),
        ("{{ taskrun.attemptsCount == 3 ? 'ok' : ko}}", ctx(taskrun={"attemptsCount": 3}), "ok"),
        (
            "{{ parent.taskrun.value == 'value 1' ? 'ok' : ko }}",
            ctx(parent={"taskrun": {"value": "value 1"}}),
            "ok",
        ),
        (
            "{{ outputs.output['values']['taskrun_data'] == 1 }}",
            ctx(outputs={"output": {"values": {"taskrun_data": 1}}}),
            "true",
        ),
        (
            "{{ outputs.output['values']['taskrun_data'] == 2 }}",
            ctx(outputs={"output": {"values": {"taskrun_data": 1}}}),
            "false",
        ),
        (
            "{{ outputs.default.value ?? outputs['error-t1'].value }}",
            ctx(outputs={"error-t1": {"value": "from error"}}),
            "from error",
        ),
        (
            "{{ outputs.return }}",
            ctx(outputs={"return": {"value": "flow-with-outputs"}}),
            ('{"value":"flow-with-outputs"}'),
        ),
        (
            "{{ outputs['1-1-1_output'][parents[1].taskrun.value][parents[0].taskrun.value]"
            "[taskrun.value].value }}",
            ctx(
                outputs={"1-1-1_output": {"v1": {"v21": {"v31": {"value": "deep"}}}}},
                parents=[{"taskrun": {"value": "v21"}}, {"taskrun": {"value": "v1"}}],
                taskrun={"value": "v31"},
            ),
            "deep",
        ),
        (
            "{{task.id}} > {{outputs['1-2-1_return'].s1['a a'].value}}",
            ctx(outputs={"1-2-1_return": {"s1": {"a a": {"value": "spaced"}}}}),
            "task-id > spaced",
        ),
        (
            "{{ currentEachOutput(outputs['2-1_output']).value }}",
            ctx(outputs={"2-1_output": {"s1": {"value": "one"}}}, **{"@each_path": ["s1"]}),
            "one",
        ),
        ("{{ taskrun.value is json }}", ctx(taskrun={"value": '{"key": "my-key"}'}), "true"),
        ("{{ taskrun.value is json }}", ctx(taskrun={"value": "value 1"}), "false"),
        (
            "{{task.id}} > JSON > {{ parent.taskrun.value | jq('.key') }} > "
            "{{ parent.taskrun.value | jq('.value') }}",
            ctx(
                task={"id": "json"},
                parent={"taskrun": {"value": '{"key":"my-complex","value":{"sub":1,"bool":true}}'}},
            ),
            'json > JSON > ["my-complex"] > [{"sub":1,"bool":true}]',
        ),
        ("{{ inputs['emptyKey']['foo'] }}", ctx(inputs={"emptyKey": {"foo": ""}}), ""),
        (
            "{{ inputs.emptySubObject.json.someEmptyObject }}",
            ctx(inputs={"emptySubObject": {"json": {"someEmptyObject": {}}}}),
            "{}",
        ),
        ('{{inputs.param == "fail"}}', ctx(inputs={"param": "fail"}), "true"),
    ],
)
def test_corpus_expressions(template: str, context: dict[str, Any], expected: str) -> None:
    assert render(template, context) == expected


def test_switch_values_and_conditions_are_truthy_as_kestra() -> None:
    assert is_truthy(render("{{ taskrun.value equals 'value 2' }}", ctx())) is True
    assert is_truthy(render("{{ outputs.notexists == 2 }}", ctx(outputs={"notexists": 1}))) is False


@pytest.mark.parametrize(
    ("template", "context", "message"),
    [
        (
            "{{inputs.invalid}}",
            ctx(),
            ("Unable to find `inputs` used in the expression `{{inputs.invalid}}` at line 1"),
        ),
        ("{{ invalid }}", ctx(), "Unable to find `invalid` used in the expression `{{ invalid }}`"),
        ("{{missingVar}}", ctx(), "Unable to find `missingVar` used in the expression"),
        ("{{ outputs.notexists == 2 }}", ctx(), "Unable to find `notexists`"),
        ("{{ taskrun.attemptsCount == 1 ? 'ok' : ko}}", ctx(), "Unable to find `ko`"),
    ],
)
def test_corpus_failures(template: str, context: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as info:
        render(template, context)
    assert message in str(info.value)
