"""Exactly-once for the executor: one transaction per input partition and cycle.

Under ``KESTREAM_PROCESSING_GUARANTEE=exactly_once`` (Apache Kafka) the records a cycle's steps
of one input partition made (worker jobs, new executions, updates, logs, changelog records) and
the partition's input offsets commit in one transaction. A crash anywhere in the cycle leaves
none of it visible to a read-committed consumer, and the next owner replays the partition's
events from its last committed offsets against its last committed changelog: each event's
effects are seen once.

The transactional id is the input partition's, ``<prefix>executor-<partition>``, not the
member's: aiokafka commits offsets in a transaction without the consumer group's generation
(``TxnOffsetCommit`` v0, before KIP-447), so fencing a former owner that still runs (a zombie:
its session expired while it was paused) rests on the transactional id alone. A new owner's
producer takes the id (``InitProducerId``), which aborts the former owner's open transaction and
fences its producer: whatever it then sends or commits fails with ``ProducerFenced``. The new
owner does this before it reads the partition's changelog, so its read-committed recovery never
waits for a transaction nobody will end.

A fenced producer means another member owns the partition (:class:`Fenced`): the processor
drops the partition's state, loudly, and leaves it to the group, which assigns it again when
this member rejoins.

A record the broker refuses for what it is (:func:`~kestream.runtime.produce_faults.record_fault`)
aborts its partition's transaction, and the refusals are handed back
(:attr:`Committed.refused`): the processor dead-letters them, undoes what their steps counted on,
and commits the partition again without them, so one record never stops the processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from kestream.runtime.executor_outbox import CommandRecord
from kestream.runtime.produce_faults import record_fault

__all__ = [
    "Committed",
    "Fenced",
    "PartitionTransactions",
    "Refused",
    "TransactionalProducer",
    "TxnWrite",
]

log = logging.getLogger("kestream.executor")


class TransactionalProducer(Protocol):
    """What this module uses of aiokafka's transactional producer."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def begin_transaction(self) -> None: ...

    async def commit_transaction(self) -> None: ...

    async def abort_transaction(self) -> None: ...

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None: ...

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, partition: int | None
    ) -> asyncio.Future[Any]: ...


class Fenced(Exception):
    """Another member took an input partition's transactional id: it owns the partition now."""

    def __init__(self, partition: int) -> None:
        super().__init__(
            f"the producer of executor partition {partition} was fenced: another member "
            "owns the partition"
        )
        self.partition = partition


class Refused(Exception):
    """The broker refused records of a partition's transaction for what they are: the
    transaction was aborted (nothing of it is visible)."""

    def __init__(self, partition: int, refusals: list[tuple[CommandRecord, str]]) -> None:
        super().__init__(f"records of executor partition {partition} refused")
        self.partition = partition
        self.refusals = refusals


@dataclass(slots=True)
class Committed:
    """What :meth:`PartitionTransactions.commit` did."""

    #: Every record committed, with its ack (``RecordMetadata``).
    acked: list[tuple[CommandRecord, Any]] = field(default_factory=list)
    #: The partitions whose producer was fenced: nothing of theirs was committed.
    fenced: set[int] = field(default_factory=set)
    #: Per partition whose transaction was aborted because the broker refused records of it
    #: for what they are: those records, and why (nothing of the partition was committed).
    refused: dict[int, list[tuple[CommandRecord, str]]] = field(default_factory=dict)


@dataclass(slots=True)
class TxnWrite:
    """One input partition's share of a cycle: its records, and its input offsets to commit."""

    records: list[CommandRecord] = field(default_factory=list)
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)


class PartitionTransactions:
    """The transactional producers of the input partitions a processor owns."""

    def __init__(
        self,
        make_producer: Callable[[str], TransactionalProducer],
        id_prefix: str,
        group_id: str,
    ) -> None:
        """``make_producer(transactional_id)``: an unstarted producer; ``id_prefix``: the
        transactional ids' (``<topic prefix>executor-``); ``group_id``: the executor group's,
        whose offsets the transactions commit."""
        self._make = make_producer
        self.id_prefix = id_prefix
        self.group_id = group_id
        self.producers: dict[int, TransactionalProducer] = {}

    def transactional_id(self, partition: int) -> str:
        return f"{self.id_prefix}{partition}"

    async def own(self, partitions: set[int]) -> None:
        """Start the producers of new partitions and take their transactional ids, fencing
        their former owners and aborting what those left open (see the module docstring);
        before the partitions' changelogs are read."""
        new = sorted(partitions - set(self.producers))
        results = await asyncio.gather(*(self._own(p) for p in new), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _own(self, partition: int) -> None:
        producer = self._make(self.transactional_id(partition))
        self.producers[partition] = producer  # (stopped by leave() or stop() if this fails)
        await producer.start()
        try:  # an empty transaction: waits for the id (InitProducerId), sends nothing
            await producer.begin_transaction()
            await producer.commit_transaction()
        except ProducerFenced as exc:  # a newer owner already: it is not ours
            raise Fenced(partition) from exc

    async def leave(self, partitions: set[int]) -> None:
        """Stop the producers of partitions this processor no longer owns (no transaction is
        open between cycles)."""
        for partition in sorted(partitions & set(self.producers)):
            producer = self.producers.pop(partition)
            with contextlib.suppress(Exception):  # fenced already, or the broker away
                await producer.stop()

    async def stop(self) -> None:
        await self.leave(set(self.producers))

    async def commit(self, writes: Mapping[int, TxnWrite]) -> Committed:
        """Commit each partition's write in its transaction, the partitions side by side.
        A partition whose producer was fenced is reported (:attr:`Committed.fenced`), and so
        is one whose records the broker refused (:attr:`Committed.refused`, its transaction
        aborted); any other failure aborts the partition's transaction and raises once all
        are done. Either way nothing of a failed partition is visible, and its offsets are
        where they were."""
        jobs = [self._commit_one(p, w) for p, w in writes.items() if w.records or w.offsets]
        committed = Committed()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, Fenced):
                committed.fenced.add(result.partition)
            elif isinstance(result, Refused):
                committed.refused[result.partition] = result.refusals
            elif isinstance(result, BaseException):
                failure = failure or result
            else:
                committed.acked.extend(result)
        if failure is not None:
            raise failure
        return committed

    async def _commit_one(self, partition: int, write: TxnWrite) -> list[tuple[CommandRecord, Any]]:
        producer = self.producers.get(partition)
        if producer is None:
            raise RuntimeError(f"executor partition {partition} has no transactional producer")
        try:
            await producer.begin_transaction()
            sent = []
            refusals: list[tuple[CommandRecord, str]] = []
            for rec in write.records:
                topic, key, value, target = rec
                try:
                    future = await producer.send(topic, value, key=key.encode(), partition=target)
                except Exception as exc:
                    if not record_fault(exc):
                        raise
                    refusals.append((rec, f"not produced: {exc!r}"))
                    continue
                sent.append((rec, future))
            acked = []
            for rec, future in sent:
                try:
                    acked.append((rec, await future))
                except Exception as exc:
                    if not record_fault(exc):
                        raise
                    refusals.append((rec, f"not produced: {exc!r}"))
            if refusals:
                raise Refused(partition, refusals)
            if write.offsets:
                await producer.send_offsets_to_transaction(write.offsets, self.group_id)
            await producer.commit_transaction()
        except ProducerFenced as exc:
            raise Fenced(partition) from exc
        except BaseException:
            with contextlib.suppress(Exception):  # the broker away: its timeout aborts it
                await producer.abort_transaction()
            raise
        return acked
