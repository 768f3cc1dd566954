"""Worker groups on a real broker: an executor, a default worker and a worker of group "gpu".

Each worker publishes its member record (with its group and task types) as its role process
would; the executor reads the members topic to apply the FAIL fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.health import Health
from kestream.runtime.kafka import make_consumer
from kestream.runtime.members import MemberPublisher
from kestream.runtime.worker_service import WorkerService
from kestream.tasks.registry import known_types

pytestmark = pytest.mark.integration

NS = "test.groups"


def _flow(flow_id: str, group: str) -> str:
    return f"""
id: {flow_id}
namespace: {NS}
tasks:
  - id: anywhere
    type: io.kestra.plugin.core.debug.Return
    format: "default"
  - id: on_gpu
    type: io.kestra.plugin.core.debug.Return
    format: "gpu"
    workerGroup: {group}
"""


class Stack:
    """The harness's executor, the workers started, their member publishers, and the logs."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.ctx = harness.ctx
        self.workers: list[WorkerService] = []
        self.publishers: list[MemberPublisher] = []
        self.logs: list[dict[str, Any]] = []
        self._reader = make_consumer(
            self.ctx.settings, self.ctx.bootstrap, self.ctx.kind, group_id=None
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reader.start()
        parts = self._reader.partitions_for_topic(self.ctx.topics.logs) or set(range(4))
        self._reader.assign([TopicPartition(self.ctx.topics.logs, p) for p in parts])
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self._reader.getmany(timeout_ms=100)
            for recs in batch.values():
                for rec in recs:
                    self.logs.extend(records.loads(rec.value))

    async def worker(self, group: str | None, task_types: list[str] | None = None) -> WorkerService:
        """A worker of ``group``, alive in the members topic as its role process makes it."""
        worker = WorkerService(self.ctx, self.harness.registry, group=group, task_types=task_types)
        await worker.start()
        self.workers.append(worker)
        publisher = MemberPublisher(
            self.ctx, "worker", Health("worker", [worker]), group=worker.group,
            task_types=sorted(worker.task_types), pid=1000 + len(self.workers),
        )  # fmt: skip
        await publisher.start()
        self.publishers.append(publisher)
        return worker

    def messages(self, execution_id: str) -> list[str]:
        return [line["message"] for line in self.logs if line.get("executionId") == execution_id]

    def run_state(self, execution_id: str, task_id: str) -> str | None:
        """The task run's latest state, from full and partial updates alike."""
        state = None
        for body in self.harness.updates.get(execution_id, []):
            runs = body["execution"]["taskRunList"] if body["full"] else body["taskRuns"]
            for run in runs:
                if run["taskId"] == task_id:
                    state = str(run["state"]["current"])
        return state

    async def close(self) -> None:
        for publisher in self.publishers:
            await publisher.stop()
        for worker in self.workers:
            await worker.stop(drain_timeout=1.0)
        if self._task is not None:
            self._task.cancel()
        await self._reader.stop()
        await self.harness.close()


@pytest.fixture
async def stack(broker: Any, topic_prefix: str) -> AsyncIterator[Stack]:
    harness = await Harness.open(broker.bootstrap, topic_prefix, executor_inline_tasks=False)
    stack = Stack(harness)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.close()


async def _run(stack: Stack, flow_id: str, group: str, execution_id: str) -> None:
    stack.harness.deploy(_flow(flow_id, group))
    await stack.harness.send(ev.ExecutionCreated(execution_id, NS, flow_id))


async def test_a_grouped_task_runs_on_its_group_and_the_rest_on_the_default_workers(
    stack: Stack,
) -> None:
    default = await stack.worker(None)
    gpu = await stack.worker("gpu")
    executor = await stack.harness.start_executor()
    await asyncio.wait_for(executor.ready.wait(), 30)
    await _run(stack, "routed", "{key: gpu, fallback: FAIL}", "r-1")
    await wait_for(lambda: stack.harness.state_of("r-1") == "SUCCESS", 60)
    runs = stack.harness.last("r-1")["execution"]["taskRunList"]  # type: ignore[index]
    assert {run["taskId"]: run["outputs"]["value"] for run in runs} == {
        "anywhere": "default",
        "on_gpu": "gpu",
    }
    # Each worker ran exactly its own task: the gpu job never reached the default worker.
    assert default.stats["finished"] == 1 and gpu.stats["finished"] == 1
    assert gpu.topic == stack.ctx.topics.group_tasks("gpu") != default.topic


async def test_fail_fallback_fails_the_task_run_when_no_worker_of_the_group_is_alive(
    stack: Stack,
) -> None:
    await stack.worker(None)  # only default workers are up
    executor = await stack.harness.start_executor()
    await asyncio.wait_for(executor.ready.wait(), 30)
    await _run(stack, "failing", "{key: gpu, fallback: FAIL}", "f-1")
    await wait_for(lambda: stack.harness.state_of("f-1") == "FAILED", 60)
    assert stack.run_state("f-1", "on_gpu") == "FAILED"
    expected = "no worker of worker group 'gpu' is alive (workerGroup.fallback: FAIL)"
    await wait_for(lambda: expected in stack.messages("f-1"), 30)


async def test_wait_fallback_holds_the_job_until_a_worker_of_the_group_starts(
    stack: Stack,
) -> None:
    await stack.worker(None)
    executor = await stack.harness.start_executor()
    await asyncio.wait_for(executor.ready.wait(), 30)
    await _run(stack, "waiting", "{key: gpu}", "w-1")
    # The gpu job is out (its task run RUNNING) and no gpu worker exists to take it.
    await wait_for(lambda: stack.run_state("w-1", "on_gpu") == "RUNNING", 60)
    assert stack.harness.state_of("w-1") == "RUNNING"
    gpu = await stack.worker("gpu")
    await wait_for(lambda: stack.harness.state_of("w-1") == "SUCCESS", 60)
    assert gpu.stats["finished"] == 1


async def test_a_worker_without_the_task_type_refuses_the_job_naming_group_and_type(
    stack: Stack,
) -> None:
    await stack.worker(None)
    return_type = "io.kestra.plugin.core.debug.Return"
    lacking = [name for name in known_types() if name != return_type]  # its plugin "missing"
    gpu = await stack.worker("gpu", task_types=lacking)
    executor = await stack.harness.start_executor()
    await asyncio.wait_for(executor.ready.wait(), 30)
    await _run(stack, "refused", "{key: gpu}", "t-1")
    await wait_for(lambda: stack.harness.state_of("t-1") == "FAILED", 60)
    assert stack.run_state("t-1", "anywhere") == "SUCCESS"
    assert stack.run_state("t-1", "on_gpu") == "FAILED"
    assert gpu.stats["refused"] == 1 and gpu.stats["started"] == 0

    def refusal() -> list[str]:
        return [m for m in stack.messages("t-1") if "cannot run on worker group 'gpu'" in m]

    await wait_for(lambda: bool(refusal()), 30)
    assert f"task type '{return_type}' cannot run on worker group 'gpu'" in refusal()[0]
