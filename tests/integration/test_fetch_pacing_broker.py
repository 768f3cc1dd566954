"""Fetch pacing on a real broker: idle roles stop polling, and a new execution wakes them.

On the embedded broker (Tansu) every consumer of the roles pauses once nothing flows
(:mod:`kestream.runtime.fetch_pacing`); a producer's doorbell ring wakes them. On Kafka, whose
fetches wait for data, consumers are not paced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.protocol.fetch import FetchRequest

from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.fetch_pacing import PacedConsumer
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

pytestmark = pytest.mark.integration

FLOW = """
id: paced
namespace: test.pacing
tasks:
  - id: hello
    type: io.kestra.plugin.core.debug.Return
    format: "hello {{ execution.id }}"
"""

#: What one consumer polling with Tansu's 10 ms fetch wait sends in a second: about 100. A
#: resting consumer sends one fetch per wake-up (a probe every 5 s, or a ring), whatever its
#: partition count; the window holds a probe of each.
WINDOW_S = 6.0
FETCHES_PER_WAKE_MAX = 2


def _count_fetches(consumer: AIOKafkaConsumer, counts: dict[int, int]) -> None:
    client = consumer._client
    send = client.send

    async def counting(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__.startswith(FetchRequest.__name__):
            counts[id(consumer)] = counts.get(id(consumer), 0) + 1
        return await send(node_id, request, *args, **kwargs)

    client.send = counting


async def test_idle_roles_rest_and_a_new_execution_wakes_them(
    broker: Any, topic_prefix: str, eventually: Callable[..., Awaitable[Any]]
) -> None:
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        partitions=4,
        executor_inline_tasks=False,  # the task runs on the worker: every role takes part
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    await table.loaded.wait()
    executor = ExecutorService(ctx, registry)
    worker = WorkerService(ctx, registry)
    await executor.start()
    await worker.start()
    client = await Client.connect(settings)
    try:
        await client.deploy(FLOW)
        await eventually(lambda: registry.get("test.pacing", "paced") is not None)
        consumers = [executor._consumer, worker._consumer, table._consumer, client._updates]
        assert all(c is not None for c in consumers)
        if broker.kind != "tansu":
            assert not any(isinstance(c, PacedConsumer) for c in consumers)
        else:
            paced = [c for c in consumers if isinstance(c, PacedConsumer)]
            assert len(paced) == len(consumers), "every consumer of the roles is paced"
            await eventually(lambda: all(c.resting for c in paced), timeout=30)
            counts: dict[int, int] = {}
            for consumer in paced:
                _count_fetches(consumer, counts)
            woken_before = {id(c): c.wakes for c in paced}
            await asyncio.sleep(WINDOW_S)
            for consumer in paced:
                wakes = consumer.wakes - woken_before[id(consumer)]
                fetched = counts.get(id(consumer), 0)
                assert fetched <= FETCHES_PER_WAKE_MAX * max(wakes, 1), (
                    f"a resting consumer of {len(consumer.assignment())} partitions fetched "
                    f"{fetched} times for {wakes} wake-ups"
                )
            woken_before = {id(c): c.wakes for c in paced}

        execution_id = await client.submit("test.pacing", "paced")
        done = await client.wait(execution_id, timeout=60)
        assert done.state.current == "SUCCESS"
        assert done.taskRunList[0].outputs == {"value": f"hello {execution_id}"}
        if broker.kind == "tansu":
            for consumer in (executor._consumer, worker._consumer):
                assert isinstance(consumer, PacedConsumer)
                assert consumer.wakes > woken_before[id(consumer)], "woken by the execution"
    finally:
        await client.close()
        await worker.stop()
        await executor.stop()
        await table.stop()
