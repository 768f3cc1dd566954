"""conformance-next scenarios on a real broker: a :class:`~conformance_scenarios.Backend` made
of a :class:`~kestream.client.Client` (submit, kill, logs) and a reader of the whole
execution-updates topic (every execution's state as the updates merge it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import TopicPartition
from conformance_corpus import Entry
from conformance_scenarios import STEP_TIMEOUT_S, reached

from kestream.client import Client
from kestream.models.execution import Execution, LogEntry
from kestream.runtime import records
from kestream.runtime.execution_updates import MergedExecution, merge_update
from kestream.runtime.kafka import make_consumer


class UpdatesFollower:
    """Every execution of the topic prefix, merged from its updates, from the beginning."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.merged: dict[str, MergedExecution] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> UpdatesFollower:
        ctx = self.client.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        parts = [TopicPartition(ctx.topics.updates, p) for p in range(ctx.settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=50)
                for recs in batch.values():
                    for rec in recs:
                        execution_id = rec.key.decode()
                        update = records.loads(rec.value)
                        self.merged[execution_id] = merge_update(
                            self.merged.get(execution_id), update
                        )
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, execution_id: str) -> Execution | None:
        merged = self.merged.get(execution_id)
        return merged.model() if merged is not None and merged.complete else None


class BrokerBackend:
    """A scenario's installation: roles on a broker, seen through a client and the updates."""

    def __init__(self, client: Client, follower: UpdatesFollower) -> None:
        self.client = client
        self.follower = follower

    async def start(self, entry: Entry, inputs: dict[str, Any]) -> str:
        return await self.client.submit(
            entry.namespace,
            entry.flow_id,
            inputs,
            labels=dict(entry.labels or {}),
            validate_inputs=entry.inputs_validated,
        )

    async def until(self, execution_id: str, until: str) -> Execution:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            execution = self.follower.get(execution_id)
            if execution is not None and reached(execution, until):
                return execution
            if time.monotonic() > deadline:
                if execution is None:
                    raise TimeoutError(f"no update of {execution_id} in {STEP_TIMEOUT_S}s")
                return execution
            await asyncio.sleep(0.02)

    async def now(self, execution_id: str) -> Execution:
        return await self.until(execution_id, "CREATED")  # it exists: as it is now

    async def kill(self, execution_id: str) -> None:
        await self.client.kill(execution_id)

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def logs(self, execution_id: str) -> list[LogEntry]:
        return list(await self.client.logs(execution_id))

    async def executions(self) -> list[Execution]:
        found = [self.follower.get(execution_id) for execution_id in list(self.follower.merged)]
        return [execution for execution in found if execution is not None]
