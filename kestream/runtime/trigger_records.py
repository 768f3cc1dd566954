"""The triggers topic followed as raw records: a standby scheduler's warm state.

A standby reads the compacted triggers topic whole at start and then follows it
(:class:`~kestream.runtime.compacted_follower.CompactedFollower`), keeping the latest value of
every key (tombstones delete). When it wins the lease it only has to read the tail the old active
wrote last (:meth:`TriggerRecords.catch_up`) before it builds its books, rather than the whole
topic.
"""

from __future__ import annotations

from typing import Any

from aiokafka.structs import ConsumerRecord

from kestream.runtime.compacted_follower import CompactedFollower
from kestream.runtime.context import BrokerContext

__all__ = ["TriggerRecords"]


class TriggerRecords:
    """The latest record of every key of the triggers topic, followed live."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.latest: dict[str, bytes] = {}
        self._follower = CompactedFollower(
            ctx, ctx.topics.triggers, self._apply, name="scheduler-trigger-records"
        )

    async def start(self) -> None:
        """Read the topic whole, then follow it in the background."""
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    @property
    def alive(self) -> bool:
        return self._follower.alive

    async def catch_up(self) -> None:
        """Return once every record written before this call has been applied."""
        await self._follower.catch_up()

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is None:
            return
        key = record.key.decode("utf-8", "replace")
        if record.value is None:
            self.latest.pop(key, None)
        else:
            self.latest[key] = record.value
