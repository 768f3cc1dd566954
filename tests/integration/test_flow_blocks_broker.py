"""A kill through the finally blocks, over a real broker: the executor keeps the execution KILLING
while a finally task runs on the worker, then ends it KILLED; the afterExecution task runs on the
worker after that end, and only then is the execution over for the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from executor_harness import running_roles

from kestream.client import Client
from kestream.models.state import StateType

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

S = StateType

FLOW = """
id: killed-with-finally
namespace: test.blocks.broker
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: wait
        type: io.kestra.plugin.core.flow.Pause
    finally:
      - id: cleanup
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "cleaning up while {{ execution.state }}"
finally:
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "{{ execution.state }}"
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "ended {{ execution.state }}"
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(broker: Any, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    prefix = f"blocks-{broker.backend}-{id(request)}."
    async with running_roles(broker.bootstrap, prefix) as running:
        yield running


async def test_a_kill_runs_the_finally_blocks_then_after_execution(client: Client) -> None:
    flow = await client.deploy(FLOW)
    execution_id = await client.submit(flow.namespace, flow.id, {})
    paused = await client.wait(execution_id, timeout=60)
    assert paused.state.current is S.PAUSED
    await client.kill(execution_id)
    done = await client.wait(execution_id, timeout=60, until_paused=False)
    runs = {run.taskId: run for run in done.taskRunList}
    assert done.state.current is S.KILLED
    history = [h.state for h in done.state.histories]
    assert history[-2:] == [S.KILLING, S.KILLED]
    assert runs["wait"].state.current is S.KILLED and runs["seq"].state.current is S.KILLED
    assert runs["cleanup"].state.current is S.SUCCESS  # ran on the worker while KILLING
    assert runs["last"].outputs == {"value": "KILLING"}
    assert runs["notify"].state.current is S.SUCCESS  # after the end, before the client's
    logs = [line.message for line in await client.logs(execution_id)]
    assert "cleaning up while KILLING" in logs
    assert "ended KILLED" in logs
