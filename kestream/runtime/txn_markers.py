"""Exactly-once: a transaction committed without its markers, found and closed.

Apache Kafka 4.4 can record a transaction complete (``CompleteCommit``) without writing its
commit marker to a partition that had no leader at that moment (KAFKA-20734; a single node has
such a moment at every restart: docs/brokers.md). The transaction's records there stay open:
read-committed readers stop at them (the partition's last stable offset stays behind its high
watermark) until the same producer's next transaction that writes the partition closes them with
its own marker. A partition the producer writes again soon heals at its next cycle; a quiet one
stays stuck.

So :class:`MarkerLedger` notes, per input partition, the partitions its producer's committed
transactions wrote, the offset of the last record each got, and when. A partition the producer
has left alone for :data:`QUIET_S` is looked at once (:class:`MarkerHealer`, every
:data:`CHECK_EVERY_S`: two ``ListOffsets``, read committed and read uncommitted, for all such
partitions together). Its last stable offset past that record, the note is dropped: the
transaction's records are closed, and there is nothing more to watch until the producer writes
there again. Not past it (the record may be open), the producer closes the partition with an
empty transaction that adds the partition (``AddPartitionsToTxn``, no record) and
commits (``EndTxn``): the coordinator writes a commit marker there, which closes whatever this
producer id left open on that partition, and no reader sees a record (markers are control
records, which every consumer skips). It holds nothing else: nothing in it can fail and abort
it, whose abort marker would throw the committed records away. (An input offset commit left
pending the same way is not closed: until the partition's next cycle commits its offsets, a new
owner would read its last events again, against a changelog that has them already: no-ops.)

Why a commit is right: a partition is noted only while the producer's last transaction that
wrote it committed; any other end of one of the input partition's transactions (aborted,
fenced, its producer dead) forgets all of that input partition's notes, as does the partition
leaving this member. The records a noted partition holds open are then of a transaction the
coordinator committed (or of an older one of the same id that the next marker would close
anyway, as any later cycle's does). A fresh producer (a new owner, a process restarted, a dead
producer replaced) starts with no notes: what an earlier producer of the id left open is closed
by its next transaction that writes there, as before.

A lag past the noted record is another producer's open transaction (another input partition's,
a live one): it asks nothing of this producer. A partition whose last stable offset stays at or
before the noted record after :data:`CLOSINGS_MAX` closings is held back by another producer's
transaction open since before it: the empty marker is harmless there (it closes nothing of
another producer id) and the note is dropped, with a warning. The looks cost nothing while
every noted partition is written more often than :data:`QUIET_S`: no request is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from kestream.runtime.kafka import make_consumer
from kestream.settings import Settings

__all__ = [
    "CHECK_EVERY_S",
    "CLOSINGS_MAX",
    "QUIET_S",
    "Ends",
    "Judged",
    "ListedEnds",
    "MarkerHealer",
    "MarkerLedger",
    "OffsetEnds",
]

log = logging.getLogger("kestream.executor")

#: How long a producer leaves a partition it wrote alone before the partition is looked at: a
#: transaction's markers land within milliseconds of its commit, and a busy partition is written
#: again (and closed by that) before this.
QUIET_S = 5.0
#: How often the healer looks for partitions gone quiet (no request when there are none).
CHECK_EVERY_S = 2.5
#: Closings of a partition still behind before it is taken for another producer's.
CLOSINGS_MAX = 3
#: The bound of one check's offset lookups (the broker away: the next check tries again).
LOOKUP_TIMEOUT_S = 10.0
#: How long a stop waits for closings under way (cancelled, one would abort after adding its
#: partitions: its abort marker would throw the committed records there away).
STOP_GRACE_S = 10.0

Ends = Mapping[TopicPartition, int]


@dataclass(slots=True)
class _Note:
    """A partition a producer's committed transaction wrote: the offset of its last record
    there, when, and how often closed since."""

    last: int
    at: float
    closings: int = 0


@dataclass(slots=True)
class Judged:
    """What one look at the quiet partitions found (:meth:`MarkerLedger.judge`)."""

    #: Per input partition, the partitions its producer is to close (behind while quiet).
    close: dict[int, set[TopicPartition]] = field(default_factory=dict)
    #: Partitions whose last stable offset passed the noted record after closings: healed.
    healed: set[TopicPartition] = field(default_factory=set)
    #: Partitions still held back after :data:`CLOSINGS_MAX` closings: another producer's.
    given_up: set[TopicPartition] = field(default_factory=set)


class MarkerLedger:
    """Per input partition, the partitions its producer's committed transactions wrote, the
    offset of the last record each got, and when (see the module docstring). Pure: the caller
    gives the time and the offsets."""

    def __init__(self, quiet_s: float = QUIET_S, closings_max: int = CLOSINGS_MAX) -> None:
        self.quiet_s = quiet_s
        self.closings_max = closings_max
        self.notes: dict[int, dict[TopicPartition, _Note]] = {}

    def committed(self, partition: int, written: Ends, now: float) -> None:
        """``partition``'s producer committed a transaction that wrote ``written`` (per
        partition, the offset of the last record it got)."""
        for tp, last in written.items():
            notes = self.notes.setdefault(partition, {})
            notes[TopicPartition(tp.topic, tp.partition)] = _Note(last, now)

    def forget(self, partitions: Iterable[int]) -> None:
        """A transaction of these input partitions ended otherwise than committed, or they
        left: what their producers left open is no longer known to be committed."""
        for partition in partitions:
            self.notes.pop(partition, None)

    def due(self, now: float) -> set[TopicPartition]:
        """The partitions some producer has left alone for ``quiet_s`` since it wrote them."""
        return {
            tp
            for notes in self.notes.values()
            for tp, note in notes.items()
            if now - note.at >= self.quiet_s
        }

    def judge(self, now: float, stable: Ends) -> Judged:
        """Sort the due partitions by their last stable offset (``stable``): one past its noted
        record is dropped, one not past it is to be closed (counted now, looked at again after
        ``quiet_s``), or given up once closed ``closings_max`` times. Partitions missing from
        the lookup wait for the next look."""
        judged = Judged()
        for partition, notes in list(self.notes.items()):
            for tp, note in list(notes.items()):
                if now - note.at < self.quiet_s or tp not in stable:
                    continue
                if stable[tp] > note.last:
                    del notes[tp]
                    if note.closings:
                        judged.healed.add(tp)
                elif note.closings >= self.closings_max:
                    del notes[tp]
                    judged.given_up.add(tp)
                else:
                    note.closings += 1
                    note.at = now
                    judged.close.setdefault(partition, set()).add(tp)
            if not notes:
                del self.notes[partition]
        return judged


class OffsetEnds(Protocol):
    """Where :class:`MarkerHealer` asks the partitions' ends."""

    async def of(self, partitions: set[TopicPartition]) -> tuple[Ends, Ends]: ...

    async def stop(self) -> None: ...


class ListedEnds:
    """Partitions' last stable offsets and high watermarks, as ``ListOffsets`` answers a read
    committed and a read uncommitted consumer (group-less, started at the first ask)."""

    def __init__(self, settings: Settings, bootstrap: str, kind: str) -> None:
        self._settings, self._bootstrap, self._kind = settings, bootstrap, kind
        self._consumers: dict[str, AIOKafkaConsumer] = {}

    async def of(self, partitions: set[TopicPartition]) -> tuple[Ends, Ends]:
        """``(last stable offsets, high watermarks)`` of ``partitions``."""
        tps = sorted(partitions)
        stable = await (await self._consumer("read_committed")).end_offsets(tps)
        high = await (await self._consumer("read_uncommitted")).end_offsets(tps)
        return stable, high

    async def _consumer(self, level: str) -> AIOKafkaConsumer:
        consumer = self._consumers.get(level)
        if consumer is None:
            consumer = make_consumer(self._settings, self._bootstrap, self._kind,
                                     group_id=None, isolation_level=level)  # fmt: skip
            await consumer.start()
            self._consumers[level] = consumer
        return consumer

    async def stop(self) -> None:
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            with contextlib.suppress(Exception):
                await consumer.stop()


Close = Callable[[dict[int, set[TopicPartition]]], Awaitable[None]]


class MarkerHealer:
    """Looks at the partitions gone quiet every ``check_every_s`` and has the behind ones
    closed (see the module docstring). ``close(per input partition, its partitions)`` commits
    the empty transactions (the executor's, under its cycle lock)."""

    def __init__(
        self,
        ledger: MarkerLedger,
        ends: OffsetEnds,
        close: Close,
        *,
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger, self.ends, self.close = ledger, ends, close
        self.check_every_s = check_every_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        #: The closings under way, shielded from a stop's cancellation (:data:`STOP_GRACE_S`).
        self._closing: asyncio.Future[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="executor-marker-healer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closing = self._closing
        if closing is not None and not closing.done():
            await asyncio.wait({closing}, timeout=STOP_GRACE_S)
            closing.cancel()
        await self.ends.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every_s)
            try:
                await self.check()
            except Exception:  # a look that failed is tried again at the next
                log.exception("executor: looking for transactions left without markers failed")

    async def check(self) -> Judged:
        """One look: the quiet partitions' ends asked, the behind ones closed."""
        due = self.ledger.due(self.clock())
        if not due:
            return Judged()
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                stable, high = await self.ends.of(due)
        except Exception as exc:  # the broker away: the notes wait for the next look
            log.info("executor: cannot look at partitions %s yet: %r", _names(due), exc)
            return Judged()
        judged = self.ledger.judge(self.clock(), stable)
        if judged.healed:
            names = _names(judged.healed, stable, high)
            log.warning("executor: partitions %s left without markers are closed now", names)
        if judged.given_up:
            log.warning(
                "executor: partitions %s are still held back after %d closings: another "
                "producer's transaction is open there",
                _names(judged.given_up, stable, high), self.ledger.closings_max,
            )  # fmt: skip
        if judged.close:
            behind = {tp for tps in judged.close.values() for tp in tps}
            log.warning(
                "executor: partitions %s: last stable offset behind a record committed %.0f s "
                "ago or more (a transaction completed without its markers, KAFKA-20734); "
                "closing them with empty transactions of executor partitions %s",
                _names(behind, stable, high), self.ledger.quiet_s, sorted(judged.close),
            )  # fmt: skip
            self._closing = asyncio.ensure_future(self.close(judged.close))
            await asyncio.shield(self._closing)
        return judged


def _names(
    tps: Iterable[TopicPartition], stable: Ends | None = None, high: Ends | None = None
) -> str:
    """``topic[p]`` each, with its last stable offset and high watermark when given (the
    logs)."""
    names = []
    for tp in sorted(tps):
        name = f"{tp.topic}[{tp.partition}]"
        if stable is not None and high is not None:
            name += f" (stable {stable.get(tp)}, high {high.get(tp)})"
        names.append(name)
    return ", ".join(names)
