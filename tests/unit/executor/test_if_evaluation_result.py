"""``If`` gives its condition's truth as the ``evaluationResult`` output, as Kestra does."""

from __future__ import annotations

import pytest

from kestream.models.state import StateType
from kestream.testing import Driver

FLOW = """
id: branch
namespace: company.team
inputs:
  - id: flag
    type: STRING
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{ inputs.flag }}"
    then:
      - id: yes
        type: io.kestra.plugin.core.debug.Return
        format: "yes"
  - id: other
    type: io.kestra.plugin.core.flow.If
    condition: "{{ inputs.flag }}"
    then:
      - id: also
        type: io.kestra.plugin.core.debug.Return
        format: "also"
    else:
      - id: no
        type: io.kestra.plugin.core.debug.Return
        format: "no"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.check.evaluationResult }} {{ outputs.other.evaluationResult }}"
"""


@pytest.mark.parametrize(
    ("flag", "result", "ran"),
    [
        ("true", True, ["check", "yes", "other", "also", "after"]),
        ("0", False, ["check", "other", "no", "after"]),  # no else branch: nothing runs there
        ("False", False, ["check", "other", "no", "after"]),
    ],
)
def test_if_outputs_its_evaluation_result(flag: str, result: bool, ran: list[str]) -> None:
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        done = driver.get(driver.start(flow.namespace, flow.id, {"flag": flag}).id)
    assert done.state.current is StateType.SUCCESS
    assert sorted(run.taskId for run in done.taskRunList) == sorted(ran)
    outputs = {run.taskId: run.outputs for run in done.taskRunList}
    assert outputs["check"] == {"evaluationResult": result}
    assert outputs["other"] == {"evaluationResult": result}
    text = "true" if result else "false"
    assert outputs["after"] == {"value": f"{text} {text}"}
