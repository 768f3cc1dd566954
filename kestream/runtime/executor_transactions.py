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

A producer can also die without being fenced (:class:`Lost`). aiokafka ends a transactional
producer's background sender on any error it does not retry, and a broker restart gives it one:
the connection dropped under a coordinator lookup (``KafkaConnectionError``, raised as "Unexpected
error during batch delivery"). The producer can then neither commit nor abort (its transaction
state is fatal) and never recovers. Its partition is still this member's, so the processor
takes it back in place, as Kafka Streams recreates its producer: a fresh producer takes the same
transactional id (which aborts the dead one's open transaction, unless the coordinator had begun
committing it, which then completes), and the partition's state is read again from the
committed changelog, its events from the committed offsets. Taking an id retries while the
broker is still away (:meth:`PartitionTransactions.own`). A partition whose producers keep dying
(:data:`MAX_LOSSES` commits in a row) stops the processor instead of looping.

A record the broker refuses for what it is (:func:`~kestream.runtime.produce_faults.record_fault`)
aborts its partition's transaction, and the refusals are handed back
(:attr:`Committed.refused`): the processor dead-letters them, undoes what their steps counted on,
and commits the partition again without them, so one record never stops the processor.

Each producer's committed transactions note where they wrote (:attr:`PartitionTransactions.ledger`):
a partition the broker left without the transaction's markers (KAFKA-20734) is closed later by
an empty transaction of the same producer that adds it (:attr:`TxnWrite.markers`), when
:mod:`kestream.runtime.txn_markers` finds it behind while quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from kestream.runtime.executor_outbox import CommandRecord
from kestream.runtime.produce_faults import record_fault
from kestream.runtime.producer_internals import add_partitions, sender_failure
from kestream.runtime.txn_markers import MarkerLedger

__all__ = [
    "MAX_LOSSES",
    "Committed",
    "Fenced",
    "Lost",
    "PartitionTransactions",
    "Refused",
    "TransactionalProducer",
    "TxnWrite",
]

log = logging.getLogger("kestream.executor")

#: Commits of one partition in a row whose producer died (:class:`Lost`) before the processor
#: stops: a producer that dies again at once, with a fresh one each time, is not a broker bounce.
MAX_LOSSES = 3


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


class Lost(Exception):
    """An input partition's producer died without being fenced: its sender failed for good
    (see the module docstring); ``cause``, what it died of."""

    def __init__(self, partition: int, cause: BaseException) -> None:
        #: What the producer died of, and what that was raised from (aiokafka's own text
        #: says little: "Unexpected error during batch delivery").
        self.why = " from ".join(repr(seen) for seen in itertools.islice(_causes(cause), 4))
        super().__init__(f"the producer of executor partition {partition} died: {self.why}")
        self.partition = partition
        self.cause = cause


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a Kafka error worth trying again: the
    broker away or not ready yet, not a refusal (an authorization, say)."""
    return any(isinstance(seen, KafkaError) and seen.retriable for seen in _causes(exc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from (its cause, else its context), and so on, each
    once (a cause set by hand can loop back)."""
    met: set[int] = set()
    seen: BaseException | None = exc
    while seen is not None and id(seen) not in met:
        met.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


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
    #: The partitions whose producer died (:class:`Lost`): their transaction is left to the
    #: id's next producer (aborted, or completed if the coordinator had begun committing it),
    #: so their state is read again from the committed changelog.
    lost: dict[int, Lost] = field(default_factory=dict)
    #: Per partition whose transaction was aborted because the broker refused records of it
    #: for what they are: those records, and why (nothing of the partition was committed).
    refused: dict[int, list[tuple[CommandRecord, str]]] = field(default_factory=dict)


@dataclass(slots=True)
class TxnWrite:
    """One input partition's share of a cycle: its records, and its input offsets to commit."""

    records: list[CommandRecord] = field(default_factory=list)
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)
    #: Partitions added to the transaction without a record, for its marker alone
    #: (:mod:`kestream.runtime.txn_markers`: closing what the producer left open there).
    markers: set[TopicPartition] = field(default_factory=set)


class PartitionTransactions:
    """The transactional producers of the input partitions a processor owns."""

    def __init__(
        self,
        make_producer: Callable[[str], TransactionalProducer],
        id_prefix: str,
        group_id: str,
        *,
        retry_for_s: float = 60.0,
        backoff_s: float = 0.25,
    ) -> None:
        """``make_producer(transactional_id)``: an unstarted producer; ``id_prefix``: the
        transactional ids' (``<topic prefix>executor-``); ``group_id``: the executor group's,
        whose offsets the transactions commit. Taking an id is tried again for
        ``retry_for_s`` while the broker is away, ``backoff_s`` before the second try, doubling
        up to 2 s (a restarted Kafka is back within seconds: the wait stays short)."""
        self._make = make_producer
        self.id_prefix = id_prefix
        self.group_id = group_id
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.producers: dict[int, TransactionalProducer] = {}
        #: Per partition, its commits in a row whose producer died (:data:`MAX_LOSSES`).
        self.losses: dict[int, int] = {}
        #: The partitions each producer's committed transactions wrote, to close where the
        #: broker left them without markers (:mod:`kestream.runtime.txn_markers`).
        self.ledger = MarkerLedger()

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
        """Take ``partition``'s id with a fresh producer; tried again while the broker is
        away (a transient Kafka error: see :meth:`__init__`), any other failure raised.

        Each try is bounded by the time left: aiokafka's ``start()`` waits for the id with no
        deadline of its own while the broker cannot find or load the transaction coordinator,
        and the caller holds the processor's cycle lock meanwhile. Past ``retry_for_s`` the
        taking fails (:class:`TimeoutError` or the last error), and the processor stops."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.retry_for_s, self.backoff_s
        while True:
            producer = self._make(self.transactional_id(partition))
            self.producers[partition] = producer  # (stopped by leave() or stop() if this fails)
            bound = asyncio.timeout_at(deadline)
            try:
                async with bound:
                    await producer.start()
                    # An empty transaction: waits for the id (InitProducerId), sends nothing.
                    await producer.begin_transaction()
                    await producer.commit_transaction()
                return
            except ProducerFenced as exc:  # a newer owner already: it is not ours
                raise Fenced(partition) from exc
            except Exception as exc:
                if bound.expired():
                    await _stop(producer)  # half started: its sender still looks for the id
                    raise TimeoutError(
                        f"cannot take the transactional id of executor partition {partition} "
                        f"within {self.retry_for_s:g} s"
                    ) from exc
                if not _transient(exc) or loop.time() + delay > deadline:
                    raise
                log.warning("cannot take the transactional id of executor partition %d yet "
                            "(%r); trying again in %.2f s", partition, exc, delay)  # fmt: skip
            await _stop(producer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def leave(self, partitions: set[int]) -> None:
        """Stop the producers of partitions this processor no longer owns (no transaction is
        open between cycles)."""
        self.ledger.forget(partitions)
        for partition in sorted(partitions & set(self.producers)):
            producer = self.producers.pop(partition)
            await _stop(producer)  # fenced already, or the broker away: stopped anyway

    async def stop(self) -> None:
        await self.leave(set(self.producers))

    async def commit(self, writes: Mapping[int, TxnWrite]) -> Committed:
        """Commit each partition's write in its transaction, the partitions side by side.
        A partition whose producer was fenced is reported (:attr:`Committed.fenced`), so is
        one whose producer died (:attr:`Committed.lost`, up to :data:`MAX_LOSSES` in a row)
        and one whose records the broker refused (:attr:`Committed.refused`, its transaction
        aborted); any other failure aborts the partition's transaction and raises once all
        are done. Either way nothing of a failed partition is visible (a dead producer's
        transaction is aborted by the id's next producer), and its offsets are where they
        were."""
        parts = [p for p, w in writes.items() if w.records or w.offsets or w.markers]
        jobs = [self._commit_one(p, writes[p]) for p in parts]
        committed = Committed()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failure: BaseException | None = None
        for partition, result in zip(parts, results, strict=True):
            self._note(partition, result)
            if isinstance(result, Lost):
                losses = self.losses[partition] = self.losses.get(partition, 0) + 1
                if losses >= MAX_LOSSES:
                    failure = failure or result
                else:
                    committed.lost[partition] = result
                continue
            self.losses.pop(partition, None)
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

    def _note(self, partition: int, result: Any) -> None:
        """Note where a committed transaction wrote; any other end forgets the partition's
        notes (:class:`~kestream.runtime.txn_markers.MarkerLedger`)."""
        if isinstance(result, BaseException):
            self.ledger.forget({partition})
            return
        written: dict[TopicPartition, int] = {}
        for _, meta in result:
            tp = TopicPartition(meta.topic, meta.partition)
            written[tp] = max(written.get(tp, -1), meta.offset)
        self.ledger.committed(partition, written, time.monotonic())

    async def _commit_one(self, partition: int, write: TxnWrite) -> list[tuple[CommandRecord, Any]]:
        """:meth:`_transact`, its failure told apart: fenced, lost (the producer died), or the
        transaction's own (aborted, raised)."""
        producer = self.producers.get(partition)
        if producer is None:
            raise RuntimeError(f"executor partition {partition} has no transactional producer")
        try:
            return await self._transact(producer, partition, write)
        except ProducerFenced as exc:
            raise Fenced(partition) from exc
        except Exception as exc:
            died = sender_failure(producer)
            if isinstance(died, ProducerFenced):  # surfaced as another call's refusal
                raise Fenced(partition) from exc
            if died is not None:  # nothing to abort through it: the id's next producer will
                raise Lost(partition, died) from exc
            await _abort(producer)
            raise
        except BaseException:
            await _abort(producer)
            raise

    async def _transact(
        self, producer: TransactionalProducer, partition: int, write: TxnWrite
    ) -> list[tuple[CommandRecord, Any]]:
        """Commit ``write`` in one transaction of ``producer``; :class:`Refused` when the broker
        refused records of it for what they are."""
        await producer.begin_transaction()
        if write.markers:
            add_partitions(producer, write.markers)
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
        return acked


async def _stop(producer: TransactionalProducer) -> None:
    """Stop ``producer`` whatever state it is in (fenced, dead, half started, the broker
    away): nothing of it is needed any more."""
    with contextlib.suppress(Exception):
        await producer.stop()


async def _abort(producer: TransactionalProducer) -> None:
    """Abort ``producer``'s transaction if it can; the broker away, its timeout aborts it."""
    with contextlib.suppress(Exception):
        await producer.abort_transaction()
