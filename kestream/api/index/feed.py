"""The index feed: keeps a :class:`~kestream.api.index.store.Store` up to date from Kafka.

One group-less consumer is assigned every partition of ``execution-updates`` and ``logs``
(manual assignment, like :class:`~kestream.runtime.flows_table.FlowsTable`), and positioned at
the next offsets the store has recorded (:meth:`Store.offsets`), or at the beginning of a
partition the store has never seen. No consumer group, and no committed offsets: the store's
offsets are written in the same transaction as the data, so they are the only truth, and any
number of API processes can each keep their own index.

Each fetch (``getmany``, at most ``max_records``) becomes one :class:`Batch`: records are decoded
and checked in the feed's thread (:func:`decode_fetched`), off the event loop; one that cannot be
read is logged, sent to the dead-letter topic with the reason (:func:`records.dead_letter_value`)
and stepped over. The batch is applied in that thread too (sqlite3 and psycopg block), so the event
loop keeps serving HTTP while the database writes. Its own, not the event loop's default pool: the
API's index reads run there, and a burst of slow searches must not hold the feed's writes back (the
index would fall behind the executions it lists), nor a long catch-up hold a thread the reads need.
A failed apply (database down, disk full) is retried with a back-off, never skipped: the consumer
does not fetch further until the batch is in. A batch the database *refuses* (a value it cannot
hold, an index row too large) is split in halves until the records it refuses are found
(:func:`apply_isolating`); those are logged, sent to the dead-letter topic with the database's
reason, counted in the health details, and stepped over, so one record never stops the index for
good.

An update larger than a record arrives as several (:mod:`kestream.runtime.execution_updates`:
every record but the last has ``more``), and each carries the execution's fields, its end
state included. The feed applies an update only once its last record has been read
(:func:`hold_incomplete`): the records of an update whose rest a fetch has not brought yet wait
for the next fetch, and the stored offset of their partition stays at the first of them (a
restart reads them again), so no reader of the index ever sees an execution's end state with
only part of its task runs (a restart sent from that view would carry an incomplete snapshot).
The hold is bounded, since a last record can be lost (dead-lettered): the execution's next
whole update, a dead letter of one of its update records, a wait longer than
:data:`MAX_HOLD_S`, or more than :data:`MAX_HELD_RECORDS` records held applies what is held,
with a warning.

:attr:`IndexFeed.caught_up` is set once every partition has been applied up to the high
watermark it had when the feed started (read from a Fetch, :func:`fetch_highwaters`): from then
on the index answers for everything that happened before the start. The store's statistics
are refreshed once at that moment (:meth:`Store.maintain`), since a first catch-up is a bulk load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.api.index.purges import PurgeRecord
from kestream.api.index.store import ApplyResult, Batch, FeedRecord, RecordKind, Store
from kestream.runtime import records
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import seek_starts, topic_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.metrics import process_metrics
from kestream.runtime.tansu_compat import fetch_highwaters

__all__ = ["FeedStats", "IndexFeed", "apply_isolating", "decode_fetched", "hold_incomplete"]

log = logging.getLogger("kestream.index")
_T = TypeVar("_T")
#: The name of the feed's database thread (in thread dumps and py-spy).
THREAD_NAME = "index-feed"

#: Records per fetch, and so per transaction: large enough that a catch-up over millions of
#: updates is a few hundred transactions, small enough that one takes well under a second.
MAX_RECORDS = 5_000
_FETCH_TIMEOUT_MS = 200
_RETRY_FIRST_S = 0.5
#: The most update records held back for their update's last record (:func:`hold_incomplete`):
#: bounds the memory and how far the stored offset may stay behind when a last record is lost.
MAX_HELD_RECORDS = 20_000
#: The longest an update waits for its last record: the records of one update are written
#: together, so one still missing after this was lost; what arrived is applied.
MAX_HOLD_S = 60.0
_RETRY_MAX_S = 10.0
#: Longest database reason kept for a dead letter and the log.
_REASON_MAX = 500


def _reason(exc: BaseException) -> str:
    text = f"the execution index refused it: {type(exc).__name__}: {exc}"
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def apply_isolating(store: Store, batch: Batch) -> tuple[ApplyResult, list[tuple[FeedRecord, str]]]:
    """Apply ``batch``; when the database refuses it, apply what it takes and return the records
    it refuses, each with the reason (blocking: the feed runs it in its own thread).

    The refused records are found by halves (two transactions per level, so a few bad records
    among thousands cost tens of transactions). A record is only called refused when the
    database is otherwise writable (:meth:`Store.ping`); an error the store calls transient
    (:meth:`Store.is_transient`), or a failing ping, is raised for the caller to retry. At the
    end every partition of ``batch`` is moved past its last offset, refused records included.
    """
    try:
        return store.apply(batch), []
    except Exception as exc:
        if store.is_transient(exc):
            raise
    refused: list[tuple[FeedRecord, str]] = []
    result = _apply_halves(store, batch.records, refused)
    return result + store.apply(Batch(positions=dict(batch.positions))), refused


def _apply_halves(
    store: Store, part: list[FeedRecord], refused: list[tuple[FeedRecord, str]]
) -> ApplyResult:
    batch = Batch()
    for record in part:  # halves keep each partition's records in offset order
        batch.add(record)
    try:
        return store.apply(batch)
    except Exception as exc:
        if store.is_transient(exc):
            raise
        if len(part) > 1:
            middle = len(part) // 2
            first = _apply_halves(store, part[:middle], refused)
            return first + _apply_halves(store, part[middle:], refused)
        store.ping()  # raises when the database, not the record, is the trouble
        refused.append((part[0], _reason(exc)))
        return ApplyResult()


_Fetched = Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
_Raw = dict[tuple[str, int, int], ConsumerRecord[Any, Any]]


def decode_fetched(
    kinds: Mapping[str, RecordKind], fetched: _Fetched
) -> tuple[Batch, list[tuple[ConsumerRecord[Any, Any], str]], _Raw]:
    """One fetch as a :class:`Batch`, the records that cannot be read (each with the reason;
    the batch steps over them) and every record by ``(topic, partition, offset)``."""
    batch = Batch()
    dead: list[tuple[ConsumerRecord[Any, Any], str]] = []
    raw: _Raw = {}
    for tp, recs in fetched.items():
        kind = kinds[tp.topic]
        for rec in recs:
            raw[(tp.topic, tp.partition, rec.offset)] = rec
            try:
                batch.add(
                    FeedRecord.decode(kind, tp.topic, tp.partition, rec.offset, rec.key, rec.value)
                )
            except records.RecordError as exc:
                dead.append((rec, str(exc)))
                batch.advance(tp.topic, tp.partition, rec.offset)
    return batch, dead, raw


def hold_incomplete(
    batch: Batch,
    held: Sequence[FeedRecord] = (),
    *,
    release: Collection[str] = (),
    max_held: int = MAX_HELD_RECORDS,
) -> tuple[Batch, list[FeedRecord]]:
    """``held`` (the records a previous call kept back) then ``batch``, split into what can be
    applied now and the update records to keep back for the next fetch.

    Kept back: an execution's update records after its last one without ``more``, when there
    are any (an update whose last record has not been read yet). The batch to apply moves each
    partition only up to the first record kept back on it, so the store's offset never passes
    a record it has not applied; the records after it that are applied now are applied again,
    in order, after a restart, which leaves the same index.

    A last record may never come (dead-lettered by the executor's writer, or unreadable here),
    so the hold is bounded: a later whole update of the execution applies the partial one with
    it (task runs merge by id), the executions in ``release`` (an update record of theirs was
    dead-lettered) are applied as they are, and past ``max_held`` records kept back every one
    of them is applied; each with a warning.
    """
    records = [*held, *batch.records]
    last_whole: dict[str, int] = {}  # execution -> index of its last record without ``more``
    last_seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record.kind is RecordKind.UPDATE:
            last_seen[record.execution_id] = index
            if not record.value.get("more"):
                last_whole[record.execution_id] = index
    waiting = {
        execution_id
        for execution_id, index in last_seen.items()
        if last_whole.get(execution_id, -1) < index
    }
    waiting = _still_waiting(waiting, records, last_whole, release, max_held)
    if not waiting:
        ready = Batch(records, dict(batch.positions))
        for record in held:
            ready.advance(record.topic, record.partition, record.offset)
        return ready, []
    ready, kept = Batch(), []
    for index, record in enumerate(records):
        if (
            record.kind is RecordKind.UPDATE
            and record.execution_id in waiting
            and index > last_whole.get(record.execution_id, -1)
        ):
            kept.append(record)
        else:
            ready.add(record)
    for (topic, partition), offset in batch.positions.items():  # dead letters stepped over
        ready.positions[(topic, partition)] = max(
            ready.positions.get((topic, partition), 0), offset
        )
    for record in kept:  # ...but never past a record kept back
        key = (record.topic, record.partition)
        ready.positions[key] = min(ready.positions.get(key, record.offset), record.offset)
    return ready, kept


def _still_waiting(
    waiting: set[str],
    records: Sequence[FeedRecord],
    last_whole: Mapping[str, int],
    release: Collection[str],
    max_held: int,
) -> set[str]:
    """The executions of ``waiting`` to keep holding: not those in ``release``, and none once
    more than ``max_held`` records would be held (see :func:`hold_incomplete`)."""
    for execution_id in sorted(waiting & set(release)):
        log.warning(
            "index feed: execution %s's update is applied without its lost record(s)",
            execution_id,
        )
    waiting = waiting - set(release)
    count = sum(
        1
        for index, record in enumerate(records)
        if record.kind is RecordKind.UPDATE
        and record.execution_id in waiting
        and index > last_whole.get(record.execution_id, -1)
    )
    if count <= max_held:
        return waiting
    log.warning(
        "index feed: %d records of %d unfinished update(s) held (more than %d);"
        " they are applied as they are",
        count,
        len(waiting),
        max_held,
    )
    return set()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "index feed stopped: the index no longer follows the topics", exc_info=task.exception()
        )


@dataclass(slots=True)
class FeedStats:
    """Counters since :meth:`IndexFeed.start` (for logs, metrics and tests)."""

    batches: int = 0
    updates: int = 0
    log_lines: int = 0
    skipped: int = 0
    dead_letters: int = 0
    failed_applies: int = 0
    #: Records the database refused (each also dead-lettered), and the last reason.
    refused: int = 0
    last_refusal: str | None = None


class IndexFeed:
    """Consume ``execution-updates`` and ``logs`` into ``store`` (see the module docs).

    The store is the caller's: :meth:`stop` leaves it open.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        store: Store,
        *,
        max_records: int = MAX_RECORDS,
        fetch_timeout_ms: int = _FETCH_TIMEOUT_MS,
        maintain_on_catch_up: bool = True,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.max_records = max_records
        self.fetch_timeout_ms = fetch_timeout_ms
        self.maintain_on_catch_up = maintain_on_catch_up
        #: Set once the index holds everything the topics held when the feed started.
        self.caught_up = asyncio.Event()
        self.stats = FeedStats()
        self._kinds = {ctx.topics.updates: RecordKind.UPDATE, ctx.topics.logs: RecordKind.LOGS}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[TopicPartition, int] = {}
        #: The current batch failed to apply and is being retried (the index falls behind).
        self.retrying = False
        self.last_error: str | None = None
        #: Next offset applied (or stepped over, or held for the rest of its update), per
        #: partition.
        self._positions: dict[TopicPartition, int] = {}
        #: Purges of executions this API waits for the executor to decide (:meth:`watch_purges`).
        self._purge_watches: dict[str, list[asyncio.Future[PurgeRecord]]] = {}
        #: The feed's database thread (module docs); made on first use, ended by :meth:`stop`.
        self._thread: ThreadPoolExecutor | None = None
        #: Update records read but not applied yet: their update's last record is still to
        #: come (:func:`hold_incomplete`), with the raw records for a dead letter.
        self._held: list[FeedRecord] = []
        #: When each execution's held records began waiting (:data:`MAX_HOLD_S`).
        self._held_since: dict[str, float] = {}
        self._now: Callable[[], float] = time.monotonic
        self._held_raw: _Raw = {}

    async def _in_thread(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking store call in the feed's own thread, one call at a time."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(call, *args))

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Position the consumer from the store's offsets and start following the topics."""
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        self._consumer = consumer
        try:
            tps = [tp for topic in self._kinds for tp in await topic_partitions(consumer, topic)]
            consumer.assign(tps)
            start: dict[TopicPartition, int | None] = {}
            for topic in self._kinds:
                stored = await self._in_thread(self.store.offsets, topic)
                start |= {tp: stored.get(tp.partition) for tp in tps if tp.topic == topic}
            await seek_starts(consumer, tps, start)  # the unread ones in one seek
            self._targets = await fetch_highwaters(consumer, tps)
            if await self._topics_replaced(tps):
                await consumer.seek_to_beginning(*tps)
            for tp in tps:
                self._positions[tp] = await consumer.position(tp)
        except BaseException:
            await self._close_clients()
            raise
        behind = sum(max(0, hw - self._positions[tp]) for tp, hw in self._targets.items())
        log.info("index feed: %d records behind on %d partitions", behind, len(tps))
        self._task = asyncio.create_task(self._run(), name="index-feed")
        self._task.add_done_callback(_report_end)

    async def _topics_replaced(self, tps: list[TopicPartition]) -> bool:
        """Whether the index followed other topics of the same names: an offset it recorded is
        past the topic's end. That happens when the embedded broker (memory only) restarted
        with the index file kept; the index is emptied and filled again from the topics."""
        beyond = []
        for topic in self._kinds:
            stored = await self._in_thread(self.store.offsets, topic)
            beyond += [
                tp
                for tp in tps
                if tp.topic == topic and stored.get(tp.partition, 0) > self._targets.get(tp, 0)
            ]
        if not beyond:
            return False
        log.warning(
            "index feed: the index holds offsets past the end of %d partition(s) (%s...): the "
            "topics were created anew; emptying the index and reading them from the start",
            len(beyond),
            beyond[0],
        )
        await self._in_thread(self.store.reset)
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._close_clients()
        thread, self._thread = self._thread, None
        if thread is not None:  # let a write under way finish before the caller closes the store
            # Through the feed's own thread (one worker: the no-op runs after what is under
            # way), not the default pool, where slow index reads may queue ahead of it; the
            # thread is idle then, so joining it takes no time.
            await asyncio.get_running_loop().run_in_executor(thread, _nothing)
            thread.shutdown()

    async def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> IndexFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """The feed's loop runs: false once it failed (the API's health says not live)."""
        return self._task is not None and not self._task.done()

    @property
    def positions(self) -> Mapping[TopicPartition, int]:
        """The next offset the index holds, per partition (read-only view)."""
        return dict(self._positions)

    async def logs_end(self) -> dict[TopicPartition, int]:
        """The logs topic's high watermarks now: once :meth:`reached`, the index holds every
        line produced before this call (raises :class:`KafkaError` when the broker cannot say)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the index feed is not running")
        logs = [tp for tp in self._positions if tp.topic == self.ctx.topics.logs]
        return await fetch_highwaters(consumer, logs)

    def reached(self, marks: Mapping[TopicPartition, int]) -> bool:
        """The index has applied every partition of ``marks`` up to its offset."""
        return all(self._positions.get(tp, 0) >= offset for tp, offset in marks.items())

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._check_caught_up()
        while True:
            consumer = self._consumer
            assert consumer is not None
            try:
                fetched = await consumer.getmany(
                    timeout_ms=self.fetch_timeout_ms, max_records=self.max_records
                )
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("index feed: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_FIRST_S)
                continue
            if fetched or self._overdue():
                await self._handle(fetched)
            await self._check_caught_up()

    def _overdue(self) -> set[str]:
        """The executions whose held records have waited longer than :data:`MAX_HOLD_S`."""
        if not self._held_since:
            return set()
        limit = self._now() - MAX_HOLD_S
        return {execution_id for execution_id, t in self._held_since.items() if t < limit}

    async def _handle(self, fetched: _Fetched) -> None:
        # Parsing thousands of JSON records takes a while: off the loop that serves HTTP.
        read, dead, raw = await self._in_thread(decode_fetched, self._kinds, fetched)
        if dead:
            await self._dead_letter(dead)
        raw.update(self._held_raw)
        lost = {
            rec.key.decode("utf-8", "replace")
            for rec, _ in dead
            if rec.key is not None and self._kinds.get(rec.topic) is RecordKind.UPDATE
        }
        for execution_id in sorted(self._overdue()):
            log.warning(
                "index feed: execution %s's update has waited for its last record for more"
                " than %.0f s; what arrived is applied as it is",
                execution_id,
                MAX_HOLD_S,
            )
            lost.add(execution_id)
        batch, self._held = await self._in_thread(
            partial(hold_incomplete, release=lost), read, self._held
        )
        now = self._now()
        self._held_since = {
            r.execution_id: self._held_since.get(r.execution_id, now) for r in self._held
        }
        self._held_raw = {
            (r.topic, r.partition, r.offset): raw[(r.topic, r.partition, r.offset)]
            for r in self._held
        }
        refused = await self._apply(batch)
        if refused:
            await self._dead_letter(
                [(raw[(r.topic, r.partition, r.offset)], why) for r, why in refused]
            )
        for (topic, partition), offset in read.positions.items():  # held records count as read
            self._positions[TopicPartition(topic, partition)] = offset
        if self._purge_watches:
            self._settle_purges(batch, {id(record) for record, _ in refused})

    def watch_purges(self, execution_ids: Iterable[str]) -> dict[str, asyncio.Future[PurgeRecord]]:
        """A future per execution, resolved with the executor's answer to a purge of it once
        this feed has applied that answer: the purge record that deletes it, or the refusal
        (:mod:`kestream.runtime.purge_fence`). Watch before sending the purges (so no answer
        goes unseen), and :meth:`unwatch_purges` after."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[PurgeRecord]] = {}
        for execution_id in execution_ids:
            futures[execution_id] = loop.create_future()
            self._purge_watches.setdefault(execution_id, []).append(futures[execution_id])
        return futures

    def unwatch_purges(self, futures: Mapping[str, asyncio.Future[PurgeRecord]]) -> None:
        """Stop watching (answered or not)."""
        for execution_id, future in futures.items():
            waiting = self._purge_watches.get(execution_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._purge_watches.pop(execution_id, None)

    def _settle_purges(self, batch: Batch, refused: set[int]) -> None:
        """Answer the watches of the executions whose purge this batch decided (a purge of
        lines only, by another request, decides nothing: it is not an answer; nor does a record
        the store refused, ``refused`` holding their ``id()``)."""
        for record in batch.records:
            if record.kind is not RecordKind.PURGE or id(record) in refused:
                continue
            purge: PurgeRecord = record.value
            if not (purge.execution or purge.refused):
                continue
            for future in self._purge_watches.pop(record.execution_id, []):
                if not future.done():
                    future.set_result(purge)

    async def _apply(self, batch: Batch) -> list[tuple[FeedRecord, str]]:
        """Apply in a worker thread, retrying until the database is back when it cannot write
        (never skip data); returns the records it refused (:func:`apply_isolating`)."""
        delay = _RETRY_FIRST_S
        while True:
            try:
                result, refused = await self._in_thread(apply_isolating, self.store, batch)
                break
            except Exception as exc:
                self.stats.failed_applies += 1
                self.retrying = True
                self.last_error = f"{type(exc).__name__}: {exc}"[:_REASON_MAX]
                log.exception("index feed: applying %d records failed; retrying", len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        self.retrying = False
        stats = self.stats
        stats.batches += 1
        stats.updates += result.updates
        stats.log_lines += result.log_lines
        stats.skipped += result.skipped
        if refused:
            stats.refused += len(refused)
            stats.last_refusal = refused[-1][1]
        return refused

    def health_detail(self) -> dict[str, Any]:
        """What the API's open health shows of the feed: counters and whether it is retrying.

        Never the database's reasons (:attr:`last_error`, :attr:`FeedStats.last_refusal`): they
        name hosts, users and row values, and ``/health`` needs no credentials. The reasons are
        in the log, and in the dead letters.
        """
        stats = self.stats
        return {
            "log_lines": stats.log_lines,
            "updates": stats.updates,
            "dead_letters": stats.dead_letters,
            "refused": stats.refused,
            "failed_applies": stats.failed_applies,
            "retrying": self.retrying,
        }

    async def _dead_letter(self, dead: list[tuple[ConsumerRecord[Any, Any], str]]) -> None:
        """Send unreadable records to the dead-letter topic; a failed send is logged, not fatal."""
        ctx = self.ctx
        for rec, reason in dead:
            log.warning(
                "index feed: dead letter from %s[%d]@%d: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                reason,
            )
            self.stats.dead_letters += 1
            process_metrics().dead_letter("index")
        try:
            if self._producer is None:
                producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
                await producer.start()
                self._producer = producer
            sends = [
                await self._producer.send(
                    ctx.topics.dead_letter,
                    records.dead_letter_value(
                        rec.topic,
                        rec.partition,
                        rec.offset,
                        rec.key,
                        rec.value,
                        reason,
                        max_bytes=ctx.record_limit.value_bytes,
                    ),
                    key=rec.key,
                )
                for rec, reason in dead
            ]
            await asyncio.gather(*sends)
        except KafkaError as exc:
            log.error("index feed: could not send %d dead letters: %s", len(dead), exc)

    async def _check_caught_up(self) -> None:
        if self.caught_up.is_set():
            return
        if any(self._positions.get(tp, 0) < hw for tp, hw in self._targets.items()):
            return
        if self.maintain_on_catch_up and self.stats.batches:
            await self._in_thread(self.store.maintain)
        self.caught_up.set()
        log.info(
            "index feed caught up: %d updates, %d log lines",
            self.stats.updates,
            self.stats.log_lines,
        )


def _nothing() -> None:
    """What :meth:`IndexFeed.stop` waits for in the feed's thread: the work before it."""
