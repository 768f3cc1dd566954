"""A trigger's ``inputs`` are rendered with its variables when the execution is created."""

from __future__ import annotations

from kestream.models.flow import WebhookTrigger
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.scheduler.webhooks import webhook_execution
from kestream.testing import Driver

FLOW = """
id: hooked
namespace: test.triggers
inputs:
  - id: who
    type: STRING
  - id: times
    type: INT
    defaults: 1
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      said: "{{ inputs.who }} x{{ inputs.times }}"
triggers:
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: k
    inputs:
      who: "{{ trigger.body.name | upper }}"
      times: "{{ trigger.parameters.times[0] }}"
"""


def _call(driver: Driver, body: bytes, parameters: dict[str, list[str]]) -> tuple[str, object]:
    flow = driver.deploy(FLOW)
    trigger = flow.triggers[0]
    assert isinstance(trigger, WebhookTrigger)
    event = webhook_execution(
        flow, trigger, body, {}, parameters, new_id(), content_type="application/json"
    )
    done = driver.submit(event)
    return done.state.current.value, done


def test_webhook_inputs_are_rendered_with_the_request_then_typed() -> None:
    driver = Driver()
    state, done = _call(driver, b'{"name": "ada"}', {"times": ["3"]})
    assert state == "SUCCESS"
    assert done.inputs == {"who": "ADA", "times": 3}  # type: ignore[attr-defined]
    outputs = done.task_runs("out")[0].outputs  # type: ignore[attr-defined]
    assert outputs == {"values": {"said": "ADA x3"}}


def test_an_input_that_cannot_render_fails_the_execution_and_says_why() -> None:
    driver = Driver()
    state, done = _call(driver, b'{"other": 1}', {"times": ["2"]})
    assert state == StateType.FAILED.value
    messages = [line.message for line in driver.logs(done.id)]  # type: ignore[attr-defined]
    assert any("Trigger 'hook'" in m and "name" in m for m in messages), messages
