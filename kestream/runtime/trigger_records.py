"""The triggers topic followed as raw records: a standby scheduler's warm state.

A standby reads the compacted triggers topic whole at start and then follows it, keeping the
latest value of every key (tombstones delete). When it wins the lease it only has to read the
tail the old active wrote last (:meth:`TriggerRecords.catch_up`) before it builds its books,
rather than the whole topic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import assign_from_start, reached
from kestream.runtime.context import BrokerContext
from kestream.runtime.fetch_pacing import wake
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters

__all__ = ["TriggerRecords"]

log = logging.getLogger("kestream.scheduler")

_FETCH_TIMEOUT_MS = 200
_CATCH_UP_POLL_S = 0.02
_RETRY_BACKOFF_S = 0.5


class TriggerRecords:
    """The latest record of every key of the triggers topic, followed live."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.latest: dict[str, bytes] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the topic whole, then follow it in the background."""
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        self._consumer = consumer
        await consumer.start()
        await assign_from_start(consumer, ctx.topics.triggers, self._apply)
        self._task = asyncio.create_task(self._follow(consumer), name="scheduler-trigger-records")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def catch_up(self) -> None:
        """Return once every record written before this call has been applied."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the trigger records are not started")
        ends = await fetch_highwaters(consumer, list(consumer.assignment()))
        wake(consumer)
        while not await reached(consumer, ends):
            await asyncio.sleep(_CATCH_UP_POLL_S)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS)
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("trigger records: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)
                continue
            for recs in batch.values():
                for record in recs:
                    self._apply(record)

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is None:
            return
        key = record.key.decode("utf-8", "replace")
        if record.value is None:
            self.latest.pop(key, None)
        else:
            self.latest[key] = record.value
