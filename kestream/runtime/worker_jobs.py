"""The worker's bookkeeping of the jobs it fetched: what each record's commit waits for, and
which jobs it finished recently.

A partition's committed offset never passes a record whose job has not finished (its result
acknowledged by the broker): :class:`PartitionLog` keeps the fetched offsets in order, each a
:class:`Mark` set ``done`` when its work is acknowledged, and the commit point is the first not
done. :class:`RecentJobs` remembers the jobs finished within :data:`DEDUP_TTL_S` with the result
each was answered with, so a copy the executor sends again (after its own crash or replay) is
answered without running the task twice. :class:`Job` is one task run attempt the worker holds,
from its fetch to its acknowledged result (:mod:`kestream.runtime.worker_service` runs it).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

__all__ = [
    "DEDUP_MAX",
    "DEDUP_RESULT_BYTES",
    "DEDUP_TTL_S",
    "Job",
    "JobKey",
    "Mark",
    "PartitionLog",
    "RecentJobs",
]

#: How long a finished job is remembered, so a re-sent copy is not run again.
DEDUP_TTL_S = 600.0
#: At most this many finished jobs are remembered (the oldest are forgotten first).
DEDUP_MAX = 100_000
#: At most this many bytes of the results of finished jobs are kept, to answer a job the
#: executor sends again (the oldest results are dropped first; their jobs are still skipped).
DEDUP_RESULT_BYTES = 64 * 1024 * 1024

JobKey = tuple[str, str, int]  # execution id, task run id, attempt


@dataclass(slots=True, eq=False)
class Mark:
    """One fetched record; ``done`` once its work is acknowledged by the broker."""

    offset: int
    done: bool = False


class PartitionLog:
    """Fetched offsets of one partition, in order; the commit point is the first not done."""

    __slots__ = ("committed", "first", "handed", "next_offset", "pending")

    def __init__(self) -> None:
        self.pending: deque[Mark] = deque()
        #: Jobs handed over in process by the offset of their broker copy, until that copy is
        #: fetched (or the partition revoked): kept apart from the evicting finished memory,
        #: so a copy is recognised however late it comes (at most
        #: :data:`~kestream.runtime.worker_service.HANDED_UNFETCHED_MAX`).
        self.handed: dict[int, Job] = {}
        self.next_offset: int | None = None
        self.committed: int | None = None
        #: The first offset fetched: where the done offsets begin while none is committed
        #: (:func:`~kestream.runtime.worker_handover.done_ranges`).
        self.first: int | None = None

    def add(self, offset: int) -> Mark:
        if self.first is None:
            self.first = offset
        mark = Mark(offset)
        self.pending.append(mark)
        self.next_offset = offset + 1
        return mark

    def commit_point(self) -> int | None:
        """The offset to commit (the next record to process after a restart), if any."""
        while self.pending and self.pending[0].done:
            self.pending.popleft()
        return self.pending[0].offset if self.pending else self.next_offset


class RecentJobs:
    """A bounded set of keys that expire after ``ttl`` seconds (insertion-ordered), each with
    the result record it was answered with while that fits :data:`DEDUP_RESULT_BYTES`."""

    def __init__(
        self, ttl: float = DEDUP_TTL_S, limit: int = DEDUP_MAX, budget: int = DEDUP_RESULT_BYTES
    ) -> None:
        self.ttl, self.limit, self.budget = ttl, limit, budget
        self._expiry: OrderedDict[JobKey, float] = OrderedDict()
        self._results: OrderedDict[JobKey, bytes] = OrderedDict()
        self._bytes = 0

    def add(self, key: JobKey, result: bytes | None = None) -> None:
        self._expiry.pop(key, None)
        self._expiry[key] = time.monotonic() + self.ttl
        self._drop_result(key)
        if result is not None:
            self._results[key] = result
            self._bytes += len(result)
        self._trim()

    def result(self, key: JobKey) -> bytes | None:
        """The result record ``key`` was answered with, if still kept."""
        return self._results.get(key) if key in self else None

    def _drop_result(self, key: JobKey) -> None:
        dropped = self._results.pop(key, None)
        if dropped is not None:
            self._bytes -= len(dropped)

    def __contains__(self, key: object) -> bool:
        self._trim()
        return key in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def _trim(self) -> None:
        now = time.monotonic()
        while self._expiry and (
            len(self._expiry) > self.limit or next(iter(self._expiry.values())) <= now
        ):
            key, _ = self._expiry.popitem(last=False)
            self._drop_result(key)
        while self._bytes > self.budget and self._results:
            _, dropped = self._results.popitem(last=False)
            self._bytes -= len(dropped)


@dataclass(slots=True, eq=False)
class Job:
    key: JobKey
    #: namespace, flow id, revision
    where: tuple[str, str, int]
    task_id: str
    body: dict[str, Any]
    record: ConsumerRecord[Any, Any]
    marks: list[Mark]
    deadline: float
    task: asyncio.Task[None] | None = None
    kill_requested: bool = False
    #: Given up at stop: its result is not produced (the job runs again elsewhere).
    abandoned: bool = False
    #: Its result, or its dead letter, was acknowledged (:meth:`WorkerService._done`).
    finished: bool = False
    #: Its task ran to its end here: its effects are done, its result is on its way.
    ran: bool = False
    #: Given up: its dead letter is being sent (:meth:`WorkerService._give_up`).
    dead_lettering: bool = False

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)
