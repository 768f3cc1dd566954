"""Drive executor processors on a real broker from a test: deploy flows, submit, read updates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import TopicPartition

from kestream.client import Client
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.runtime import records
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings


class Harness:
    """A registry shared by the processors (as a flows table would fill it), a producer for
    events, and a reader of the execution-updates topic."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.registry = FlowRegistry()
        self.services: list[ExecutorService] = []
        self.updates: dict[str, list[dict[str, Any]]] = {}
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        self._reader = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, bootstrap: str, prefix: str, **settings: Any) -> Harness:
        ctx = await connect(
            Settings(broker=bootstrap, topic_prefix=prefix, partitions=4, **settings)
        )
        harness = cls(ctx)
        await harness._producer.start()
        await harness._reader.start()
        parts = harness._reader.partitions_for_topic(ctx.topics.updates) or set(range(4))
        harness._reader.assign([TopicPartition(ctx.topics.updates, p) for p in parts])
        harness._task = asyncio.create_task(harness._read())
        return harness

    async def _read(self) -> None:
        while True:
            batch = await self._reader.getmany(timeout_ms=100)
            for recs in batch.values():
                for rec in recs:
                    body = records.loads(rec.value)
                    self.updates.setdefault(body["execution"]["id"], []).append(body)

    def deploy(self, yaml_text: str) -> Any:
        return self.registry.put(parse_flow(yaml_text))

    async def start_executor(self) -> ExecutorService:
        service = ExecutorService(self.ctx, self.registry)
        await service.start()
        self.services.append(service)
        return service

    async def send(self, event: ev.Event) -> None:
        await self._producer.send_and_wait(
            self.ctx.topics.executions,
            records.encode_event(event),
            key=event.execution_id.encode(),
        )

    async def send_raw(self, key: bytes, value: bytes) -> None:
        await self._producer.send_and_wait(self.ctx.topics.executions, value, key=key)

    def last(self, execution_id: str) -> dict[str, Any] | None:
        found = self.updates.get(execution_id)
        return found[-1] if found else None

    def state_of(self, execution_id: str) -> str | None:
        update = self.last(execution_id)
        return update["execution"]["state"]["current"] if update else None

    async def close(self) -> None:
        for service in self.services:
            await service.stop()
        if self._task is not None:
            self._task.cancel()
        await self._reader.stop()
        await self._producer.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_roles(
    bootstrap: str, prefix: str, *, partitions: int = 4, **worker: Any
) -> AsyncIterator[Client]:
    """A flows table, an executor and a worker (``worker`` options, such as ``threads``) in this
    process on ``bootstrap``, and a connected Client: the whole path a flow takes, minus the
    process boundaries."""
    settings = Settings(broker=bootstrap, topic_prefix=prefix, partitions=partitions)
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    await table.loaded.wait()
    executor = ExecutorService(ctx, registry)
    worker_service = WorkerService(ctx, registry, **worker)
    await executor.start()
    await worker_service.start()
    client = await Client.connect(settings)
    try:
        yield client
    finally:
        await client.close()
        await worker_service.stop()
        await executor.stop()
        await table.stop()
