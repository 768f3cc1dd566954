"""A stand-in for an executor's group consumer, for broker-free tests of
:class:`~kestream.runtime.executor_service.ExecutorService`'s cycle: it hands the batches given,
then stops the service, and notes pauses and commits."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from kestream.runtime.executor_service import ExecutorService


class GroupConsumer:
    """Hands the executor the batches given, then stops it; notes pauses and commits."""

    def __init__(self, service: ExecutorService, *batches: dict[TopicPartition, Any]) -> None:
        self.service, self.batches = service, list(reversed(batches))
        self.paused: set[TopicPartition] = set()
        self.commits: list[Any] = []
        self.parts = {TopicPartition(service.topics.executions, p) for p in (0, 1)}

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            self.service._stopping = True
            return {}
        return self.batches.pop()

    def assignment(self) -> set[TopicPartition]:
        return set(self.parts)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    async def commit(self, offsets: Any) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> None:
        return None
