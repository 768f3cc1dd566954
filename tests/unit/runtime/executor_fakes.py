"""Stand-ins for a group member's consumer and for aiokafka's group coordinator, for
broker-free tests of :class:`~kestream.runtime.executor_service.ExecutorService`'s cycle and of
:class:`~kestream.runtime.worker_service.WorkerService`'s membership: the consumer hands the
batches given, then stops the service, and notes pauses and commits; the coordinator answers
heartbeats as told and keeps a generation and a member id, reset as aiokafka resets them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator

from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.worker_service import WorkerService


class GroupConsumer:
    """Hands the service the batches given, then stops it; notes pauses and commits. Its
    assignment is partitions 0 and 1 of the service's input topic (the executor's executions,
    the worker's jobs)."""

    def __init__(
        self, service: ExecutorService | WorkerService, *batches: dict[TopicPartition, Any]
    ) -> None:
        self.service, self.batches = service, list(reversed(batches))
        self.paused: set[TopicPartition] = set()
        self.commits: list[Any] = []
        #: aiokafka's group coordination, which a started consumer has (a test sets one).
        self._coordinator: Any = None
        topic = service.topic if isinstance(service, WorkerService) else service.topics.executions
        self.parts = {TopicPartition(topic, p) for p in (0, 1)}

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


class Clock:
    """A monotonic clock the test moves (``now``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Coordinator:
    """aiokafka's coordinator as the fence sees it: heartbeat (answered as ``answers`` say, in
    turn), rejoin, generation, member id."""

    def __init__(self, member_id: str = "executor-1") -> None:
        self.answers: list[bool] = []
        self.rejoins = 0
        self.joins = 0
        self.generation = 7
        self.member_id = member_id

    async def _do_heartbeat(self) -> bool:
        return self.answers.pop(0)

    def request_rejoin(self) -> None:
        self.rejoins += 1

    def reset_generation(self) -> None:
        """What aiokafka does on UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION."""
        GroupCoordinator.reset_generation(self)

    def join(self, member_id: str | None = None) -> None:
        """A join completed: the next generation, under ``member_id`` if the group handed out
        a new one (after an expulsion), else the same."""
        self.joins += 1
        self.generation = 7 + self.joins
        if member_id is not None:
            self.member_id = member_id


async def turns(clock: Clock, seconds: float) -> None:
    """Let ``seconds`` of ``clock`` pass while the event loop turns (a fence's guard looks
    between the steps: no stall)."""
    for _ in range(int(seconds / 0.5)):
        clock.now += 0.5
        await asyncio.sleep(0.02)
