"""The trigger records, read from the triggers topic as a table, and the way to change them.

The triggers API answers from here: the compacted triggers topic is read whole at start and
then followed (:class:`~kestream.runtime.compacted_follower.CompactedFollower`), keeping the
latest record of each Schedule trigger (precondition windows, keyed with a fourth part, are left
out; tombstones delete). Changes are never written to that topic by the API: only the scheduler
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

import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from kestream.runtime.compacted_follower import CompactedFollower
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_producer
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key

__all__ = ["TriggersTable"]

log = logging.getLogger("kestream.triggers")

#: How long a sent command's predicted record answers for a trigger whose record has not moved.
PENDING_TTL_S = 60.0


class TriggersTable:
    """Every Schedule trigger's latest record, followed live (module docs)."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self._states: dict[str, TriggerState] = {}
        #: key -> (offset of the command sent, the record it will make, until when to trust it)
        self._pending: dict[str, tuple[int, TriggerState, float]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._follower: CompactedFollower | None = None

    async def start(self) -> None:
        """Read the topic whole, then follow it in the background."""
        ctx = self.ctx
        producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        follower = CompactedFollower(ctx, ctx.topics.triggers, self._apply, name="triggers-table")
        self._producer, self._follower = producer, follower
        try:
            await producer.start()
            await follower.start()
        except BaseException:
            await self.stop()
            raise
        log.info("triggers table loaded: %d trigger(s)", len(self._states))

    async def stop(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

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
