"""Dependent inputs, templated defaults, SELECT expressions, DATETIME text, render(), envs and
globals, and If's evaluationResult, through a real ``kestream standalone`` over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.inputs.{uuid.uuid4().hex[:10]}."
    env = {"KESTREAM_GLOBALS": '{"team": "data"}', "ENV_GREETING": "hello"}
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("inputs"), env)


def _flow(ns: str) -> str:
    return f"""
id: provision
namespace: {ns}
variables:
  banner: "{{{{ envs.greeting }}}} {{{{ globals.team }}}}"
inputs:
  - id: cloud
    type: SELECT
    values: [AWS, GCP]
  - id: region
    type: STRING
    dependsOn:
      inputs: [cloud]
      condition: "{{{{ inputs.cloud == 'AWS' }}}}"
  - id: service
    type: SELECT
    autoSelectFirst: true
    expression: "{{{{ {{'AWS': ['ec2', 's3'], 'GCP': ['gce']}}[inputs.cloud] }}}}"
  - id: at
    type: DATETIME
    defaults: "2024-02-29T12:00:00Z"
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ inputs.region is defined }}}}"
    then:
      - id: regional
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ inputs.region }}}}"
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ render(vars.banner) }}}} {{{{ inputs.service }}}} {{{{ inputs.at }}}}"
"""


def test_validate_answers_what_each_input_would_be(stack: Stack) -> None:
    ns = f"it.inputs.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    reply = stack.post_form(f"/executions/{ns}/provision/validate", {"cloud": "GCP"})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert (body["id"], body["namespace"]) == ("provision", ns)
    inputs = {item["input"]["id"]: item for item in body["inputs"]}
    assert inputs["cloud"]["value"] == "GCP" and inputs["cloud"]["errors"] == []
    assert inputs["region"]["enabled"] is False and inputs["region"]["value"] is None
    assert inputs["service"]["input"]["values"] == ["gce"]
    assert inputs["service"]["value"] == "gce"
    assert inputs["at"]["value"] == "2024-02-29T12:00:00Z"

    reply = stack.post_form(f"/executions/{ns}/provision/validate", {"cloud": "AWS"})
    inputs = {item["input"]["id"]: item for item in reply.json()["inputs"]}
    assert inputs["region"]["enabled"] is True
    assert inputs["region"]["errors"] == [{"message": "missing required input"}]
    assert stack.request("POST", f"/executions/{ns}/nowhere/validate").status == 404
    searched = stack.request("GET", f"/executions/search?namespace={ns}").json()
    assert searched["total"] == 0  # validating starts nothing


@pytest.mark.parametrize(
    ("fields", "regional", "shown"),
    [
        ({"cloud": "GCP", "region": "ignored"}, False, "hello data gce 2024-02-29T12:00:00Z"),
        (
            {"cloud": "AWS", "region": "eu", "service": "s3", "at": "2024-03-01T00:00:00.5Z"},
            True,
            "hello data s3 2024-03-01T00:00:00.500Z",
        ),
    ],
)
def test_an_execution_takes_the_resolved_inputs(
    stack: Stack, fields: dict[str, str], regional: bool, shown: str
) -> None:
    ns = f"it.inputs.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    reply = stack.post_form(f"/executions/{ns}/provision?wait=true", fields)
    assert reply.status == 200, reply.body
    execution = reply.json()
    assert execution["state"]["current"] == "SUCCESS", execution
    assert ("region" in execution["inputs"]) is regional
    outputs = {run["taskId"]: run.get("outputs") for run in execution["taskRunList"]}
    assert outputs["check"] == {"evaluationResult": regional}
    assert outputs["show"] == {"value": shown}
    assert ("regional" in outputs) is regional
