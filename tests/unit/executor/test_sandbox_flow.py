"""Template-injection payloads run through a real flow: each fails its task run with a render
error, and none of them reaches Python internals, files, the environment or the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kestream.models.state import StateType
from kestream.testing import Driver

SENTINEL = Path("/tmp/kestream-sandbox-sentinel")

PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ inputs.__class__ }}",
    "{{ inputs.name.__class__.__base__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch /tmp/kestream-sandbox-sentinel') }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ __import__('os').system('touch /tmp/kestream-sandbox-sentinel') }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ getattr(inputs, '__class__') }}",
    "{{ '{0.__class__}'.format(inputs) }}",
    "{{ '%s' % inputs }}",
    "{% set x = __builtins__ %}{{ x }}",
    "{% import 'os' %}",
    "{% include '/etc/passwd' %}",
    "{{ inputs | attr('__class__') }}",
    "{{ ''.join }}",
    "{{ [].pop() }}",
    "{{ range.__call__ }}",
    "{{ variable.getClass().forName('java.lang.Runtime').getRuntime().exec('id') }}",
    "{{ (1).TYPE }}",
    "{{ read('/etc/passwd') }}",
    "{{ env.HOME }}",
    "{{ eval('1+1') }}",
    "{{ exec('import os') }}",
    "{{ globals() }}",
    "{{ inputs['__dict__'] }}",
    "{{ outputs.__getattribute__('x') }}",
    "{{ '' | jq('env') }}",
    "{{ '{}' | jq('$ENV') }}",
    "{{ '{}' | jq('input_filename') }}",
]

FLOW = {
    "id": "sandbox",
    "namespace": "test.sandbox",
    "inputs": [{"id": "name", "type": "STRING", "defaults": "World"}],
    "tasks": [{"id": "inject", "type": "io.kestra.plugin.core.debug.Return", "format": None}],
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_fails_the_task_with_a_render_error(payload: str) -> None:
    SENTINEL.unlink(missing_ok=True)
    flow = json.loads(json.dumps(FLOW))
    flow["tasks"][0]["format"] = payload
    with Driver() as driver:
        try:
            deployed = driver.deploy(json.dumps(flow))
        except ValueError as exc:  # rejected before it runs: also safe, and said clearly
            assert "inject" in str(exc)
            return
        execution = driver.start(deployed.namespace, deployed.id)
        logs = driver.logs(execution.id)
    (task_run,) = execution.taskRunList
    assert task_run.state.current is StateType.FAILED
    assert task_run.outputs is None
    errors = [line for line in logs if line.level == "ERROR" and line.taskId == "inject"]
    assert errors, "the render error must be logged against the task run"
    assert "Traceback" not in errors[0].message
    assert not SENTINEL.exists()


def test_there_are_enough_payloads() -> None:
    assert len(PAYLOADS) >= 20
