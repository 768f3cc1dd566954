"""The trigger records, read from the triggers topic as a table, and the way to change them.

The triggers API answers from here: the compacted triggers topic is read whole at start
(:func:`~kestream.runtime.compacted.assign_from_start`) and then followed, keeping the latest
record of each Schedule trigger (precondition windows, keyed with a fourth part, are left out;
tombstones delete). Changes are never written to that topic by the API: only the scheduler
writes trigger records, so :meth:`TriggersTable.send` puts a
:class:`~kestream.scheduler.commands.TriggerCommand` on the trigger-commands topic for it to
apply. A record changed that way shows here once the scheduler has written it; until then this
table answers with the record the command will make (the API's own writes are read back at once,
so a pause sent right after a backfill finds the backfill). The scheduler writes the record of
every command it reads, applied or not, with the command's offset (``commandOffset``), which is
how the table knows the prediction has been overtaken; one it never sees expires after
:data:`PENDING_TTL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import assign_from_start
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key

__all__ = ["TriggersTable"]

log = logging.getLogger("kestream.triggers")

_FETCH_TIMEOUT_MS = 200
#: How long a sent command's predicted record answers for a trigger whose record has not moved.
PENDING_TTL_S = 60.0
_RETRY_BACKOFF_S = 0.5


class TriggersTable:
    """Every Schedule trigger's latest record, followed live (module docs)."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self._states: dict[str, TriggerState] = {}
        #: key -> (offset of the command sent, the record it will make, until when to trust it)
        self._pending: dict[str, tuple[int, TriggerState, float]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the topic whole, then follow it in the background."""
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        self._consumer, self._producer = consumer, producer
        try:
            await consumer.start()
            await producer.start()
            await assign_from_start(consumer, ctx.topics.triggers, self._apply)
        except BaseException:
            await self.stop()
            raise
        log.info("triggers table loaded: %d trigger(s)", len(self._states))
        self._task = asyncio.create_task(self._follow(), name="triggers-table")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> TriggerState | None:
        """The trigger's record, or the one a command this process sent will make."""
        stored = self._states.get(key)
        pending = self._pending.get(key)
        if pending is None:
            return stored
        offset, predicted, until = pending
        overtaken = stored is not None and (stored.command_offset or -1) >= offset
        if overtaken or time.monotonic() > until:
            del self._pending[key]
            return stored
        return predicted

    def states(self) -> list[TriggerState]:
        return [state for key in list(self._states) if (state := self.get(key)) is not None]

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS)
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("triggers table: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)
                continue
            for recs in batch.values():
                for record in recs:
                    self._apply(record)

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is None:
            return
        key = record.key.decode("utf-8", "replace")
        try:
            split_trigger_key(key)
        except ValueError:
            return  # a precondition window (namespace/flow/trigger/window)
        if record.value is None:
            self._states.pop(key, None)
            return
        try:
            self._states[key] = TriggerState.from_json(record.value)
        except ValueError as exc:
            log.warning("triggers table: skipping the record of %s: %s", key, exc)

    # -- changing -----------------------------------------------------------------------------

    async def send(self, command: TriggerCommand, predicted: TriggerState) -> None:
        """Hand ``command`` to the scheduler (returns once the broker has it); ``predicted``
        is what this table answers for the trigger until the scheduler's record catches up."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("the triggers table is not started")
        meta = await producer.send_and_wait(
            self.ctx.topics.trigger_commands, command.to_json(), key=command.key.encode()
        )
        self._pending[command.key] = (meta.offset, predicted, time.monotonic() + PENDING_TTL_S)
