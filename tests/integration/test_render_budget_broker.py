"""The render budget on a real broker: a template bomb in an inline Log task fails its task run
with "render exceeded ..." while other executions on the same executor keep flowing.

The executor and a Client run in this process, on this event loop, so a ticker on the loop
measures how long the executor's step held it; the figure is printed (no timed assertion: the
machine may be busy), the outcome of every execution is asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.expressions import (
    render_timeout_ms,
    set_render_timeout_ms,
    set_step_render_budget_ms,
    step_render_budget_ms,
)
from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 60.0
BUDGET_MS = 1000

BOMB = """
id: bomb
namespace: test.budget
inputs:
  - id: text
    type: STRING
tasks:
  - id: explode
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.text | replace('(a|aa)+$', '', regexp=true) }}"
  - id: never
    type: io.kestra.plugin.core.log.Log
    message: never
"""

NORMAL = """
id: normal
namespace: test.budget
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hello {{ range(1, 100) | distinct | length }}"
"""


@dataclass
class LoopLag:
    """How late a 5 ms ticker on the event loop woke up: the longest block of the loop."""

    worst_s: float = 0.0
    ticks: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        interval = 0.005
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            self.worst_s = max(self.worst_s, time.monotonic() - before - interval)
            self.ticks += 1


@pytest.fixture
async def client_and_registry(
    broker: BrokerHandle, topic_prefix: str
) -> AsyncIterator[tuple[Client, FlowRegistry, ExecutorService]]:
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        partitions=2,
        render_timeout_ms=BUDGET_MS,
        executor_inline_tasks=True,
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    executor = ExecutorService(ctx, registry, own_all_partitions=True)
    client = Client(ctx)
    await executor.start()
    try:
        await client.start()
        try:
            yield client, registry, executor
        finally:
            await client.close()
    finally:
        await executor.stop()


async def test_a_bomb_fails_its_task_run_while_other_executions_flow(
    client_and_registry: tuple[Client, FlowRegistry, ExecutorService],
) -> None:
    client, registry, executor = client_and_registry
    for source in (BOMB, NORMAL):
        registry.put(await client.deploy(source))
    warm = await client.wait(await client.submit("test.budget", "normal"), timeout=WAIT_S)
    assert warm.state.current is StateType.SUCCESS

    lag = LoopLag()
    lag.start()
    started = time.monotonic()
    bomb_id = await client.submit("test.budget", "bomb", {"text": "a" * 40 + "b"})
    normal_ids = []
    for _ in range(10):  # submitted while the bomb's step is queued or running
        normal_ids.append(await client.submit("test.budget", "normal"))
        await asyncio.sleep(0.05)
    bomb = await client.wait(bomb_id, timeout=WAIT_S)
    normals: list[Execution] = [await client.wait(i, timeout=WAIT_S) for i in normal_ids]
    elapsed = time.monotonic() - started
    await lag.stop()

    print(
        f"event-loop lag during the bomb: worst {lag.worst_s * 1000:.0f} ms over {lag.ticks} "
        f"ticks (render budget {BUDGET_MS} ms); bomb and {len(normals)} normal executions "
        f"done in {elapsed:.2f} s"
    )
    assert bomb.state.current is StateType.FAILED
    assert {run.taskId: run.state.current for run in bomb.taskRunList} == {
        "explode": StateType.FAILED
    }
    errors = [line for line in await client.logs(bomb_id) if line.level == "ERROR"]
    assert [line.taskId for line in errors] == ["explode"]
    assert errors[0].message.startswith(
        f"render exceeded its CPU-time budget of {BUDGET_MS} ms (KESTREAM_RENDER_TIMEOUT_MS) "
        "in task 'explode'"
    ), errors[0].message
    assert [n.state.current for n in normals] == [StateType.SUCCESS] * len(normals)
    assert executor.is_live and executor.failure is None


async def test_every_process_takes_its_budgets_from_the_settings_it_connects_with(
    broker: BrokerHandle, topic_prefix: str
) -> None:
    """Every role (the API, the scheduler and workers too, not only the executor) and
    ``kestream run`` connect through :func:`connect`, which applies the render budgets."""
    before = render_timeout_ms(), step_render_budget_ms()
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        partitions=1,
        render_timeout_ms=1234,
        step_render_budget_ms=4321,
    )
    try:
        await connect(settings)
        assert (render_timeout_ms(), step_render_budget_ms()) == (1234, 4321)
    finally:
        set_render_timeout_ms(before[0])
        set_step_render_budget_ms(before[1])
