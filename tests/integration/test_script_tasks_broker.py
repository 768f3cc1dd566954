"""Script tasks on a real broker: output streamed while the script runs, and an execution kill
that stops the script's whole process group.

Executor, worker, flows table and client run as in ``kestream standalone``. Nothing here waits on
the clock: the streaming script blocks until the test creates a gate file, which the test does
only after reading the script's first line from the logs topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from executor_harness import running_roles

from kestream.client import Client
from kestream.models.state import StateType
from kestream.tasks.scripts.process import group_alive, live_members

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STREAMING = """
id: streaming
namespace: test.scripts
inputs:
  - id: gate
    type: STRING
tasks:
  - id: long
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "first line"
      - while [ ! -e "{{ inputs.gate }}" ]; do sleep 0.05; done
      - echo "last line"
"""

SPAWNING = """
id: spawning
namespace: test.scripts
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - sleep 1000 &
      - echo "group $$ child $!"
      - wait
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(broker: Any, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    prefix = f"scripts-{broker.backend}-{id(request)}."
    async with running_roles(broker.bootstrap, prefix) as client:
        yield client


async def _until(check: Callable[[], Any], within: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_output_lines_reach_the_logs_topic_while_the_script_runs(
    runtime: Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    flow = await runtime.deploy(STREAMING)
    execution_id = await runtime.submit(flow.namespace, flow.id, {"gate": str(gate)})

    async def first_line_logged() -> bool:
        return any(entry.message == "first line" for entry in await runtime.logs(execution_id))

    await _until(first_line_logged)
    assert not gate.exists()  # so the script is still running: the line came while it ran
    gate.touch()
    execution = await runtime.wait(execution_id, timeout=60)
    assert execution.state.current is StateType.SUCCESS

    async def last_line_logged() -> list[str]:
        messages = [entry.message for entry in await runtime.logs(execution_id)]
        return messages if "last line" in messages else []

    messages = await _until(last_line_logged)
    assert messages.count("first line") == 1  # what was streamed is not sent again at the end
    assert messages.count("last line") == 1


async def test_an_execution_kill_stops_the_scripts_whole_process_group(runtime: Client) -> None:
    flow = await runtime.deploy(SPAWNING)
    execution_id = await runtime.submit(flow.namespace, flow.id, {})

    async def spawned() -> tuple[int, int] | None:
        for entry in await runtime.logs(execution_id):
            if entry.message.startswith("group "):
                _, group, _, child = entry.message.split()
                return int(group), int(child)
        return None

    group, child = await _until(spawned)
    assert group_alive(group)
    await runtime.kill(execution_id)
    execution = await runtime.wait(execution_id, timeout=60)
    assert execution.state.current is StateType.KILLED

    async def stopped() -> bool:  # the KILLED update may come before the worker's clean-up
        return not group_alive(group)

    await _until(stopped)
    assert live_members(group) == []
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
