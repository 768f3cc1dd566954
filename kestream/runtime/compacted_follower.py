"""Follow a compacted topic live: read it whole at start, then apply every record as it comes.

A table kept in a compacted topic (the triggers API's table, a standby scheduler's warm trigger
state) is loaded with :func:`~kestream.runtime.compacted.assign_from_start` and then kept up to
date by a background fetch loop that rides out transient broker trouble (a broker restart, a
leader move) instead of dying: a follower that stopped silently would serve an ever older table.
:meth:`CompactedFollower.catch_up` returns once everything written before the call is applied,
which is what a reader needs before it acts on the table (a scheduler taking the lease).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import RecordSink, assign_from_start, reached
from kestream.runtime.context import BrokerContext
from kestream.runtime.fetch_pacing import reader_wait_ms, wake
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters

__all__ = ["CompactedFollower"]

log = logging.getLogger("kestream.runtime.compacted")

_FETCH_TIMEOUT_MS = 200
_CATCH_UP_POLL_S = 0.02
#: The pause after a failed fetch before the next one (the broker is away or electing).
RETRY_BACKOFF_S = 0.5


class CompactedFollower:
    """One topic read whole, then followed, each record handed to ``apply`` in offset order
    per partition (``apply`` keeps the table; tombstones are its business)."""

    def __init__(self, ctx: BrokerContext, topic: str, apply: RecordSink, *, name: str) -> None:
        self.ctx = ctx
        self.topic = topic
        self.apply = apply
        #: Names the background task and the warnings of a failed fetch.
        self.name = name
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the topic whole (returns once every record present at the start is applied),
        then follow it in the background."""
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        self._consumer = consumer
        try:
            await consumer.start()
            await assign_from_start(consumer, self.topic, self.apply)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._follow(consumer), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    @property
    def alive(self) -> bool:
        """Started and still following (the fetch loop ends only by :meth:`stop` or a bug)."""
        return self._task is not None and not self._task.done()

    async def catch_up(self) -> None:
        """Return once every record written before this call has been applied."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"{self.name}: not started")
        ends = await fetch_highwaters(consumer, list(consumer.assignment()))
        wake(consumer)
        while not await reached(consumer, ends):
            await asyncio.sleep(_CATCH_UP_POLL_S)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                # No timed work between reads: a paced consumer's wait ends with its records.
                wait_ms = reader_wait_ms(consumer, _FETCH_TIMEOUT_MS)
                batch = await consumer.getmany(timeout_ms=wait_ms)
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("%s: fetch failed (%s); retrying", self.name, exc)
                await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            for recs in batch.values():
                for record in recs:
                    self.apply(record)
