"""The executor's state table, read back from its changelog topic.

Recovery (a partition assigned to this processor) reads the partition's changelog to its end
(:mod:`kestream.runtime.compacted`), keeps the last record of each key, and rebuilds each
execution in flight (:func:`kestream.executor.codec.rebuild`) and each ended-execution marker.
One execution whose records cannot be rebuilt is logged and left out; it never stops the others.
A partition with a local checkpoint is read from there instead (:meth:`ChangelogRestorer.
recover_from`, :mod:`kestream.runtime.changelog_checkpoints`): the same fold, gone on with.

A step's changelog records are not written atomically (Kafka transactions are not used), so a
processor killed while it writes them leaves a prefix of the step. Every step of an execution
ends with a commit mark: its dynamic record (``<id>#``), or, for the step that ends it, its
ended marker (``<id>!``). :class:`PartitionRead` holds back an execution's records until its
next commit mark, so a torn step's prefix is left out and the execution comes back as its last
whole step left it (the step's event, whose offset was not committed, is replayed). The torn
records are still the latest of their keys in the topic, and a later commit mark would make
them count, so the processor writes each such key's value again (or its tombstone) before
anything else it writes to the partition: :attr:`Recovered.repairs`.

A read that fails (the broker away, a leader moving) is tried again a few times; if it still
fails, :class:`RecoveryFailed` is raised and the processor stops its process loudly: carrying on
without the partition's state would drop or replay its executions. The same holds for the plans
a ForEach stored in the internal storage (:func:`kestream.executor.codec.stored_plans`): they are
read before the executions are rebuilt, in threads (the event loop never waits on the storage),
and tried again the same way.

:class:`ChangelogMirror` keeps, for each execution in flight, the records the changelog holds
for it (written, or about to be by the current batch). It is what an event that failed half-way
is rolled back to: the state is rebuilt from the mirror exactly as recovery would rebuild it.
It costs memory of the order of the states themselves, and no work per event beyond keeping
references to the values the changelog encoding makes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.executor import codec
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.runtime.aio import paced
from kestream.runtime.changelog_checkpoints import Checkpoint, RawFold
from kestream.runtime.changelog_fold import ExecutionRecords, PartitionRead, decode_record
from kestream.runtime.compacted import RecordSink, read_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_consumer
from kestream.storage.offload import (
    REF_KEY,
    SnapshotError,
    StorageUnavailable,
    fetch_plan,
    is_reference,
)

__all__ = [
    "ChangelogMirror",
    "ChangelogRestorer",
    "ExecutionRecords",
    "PartitionRead",
    "Recovered",
    "RecoveryFailed",
    "RecoveryStopped",
    "stale_after_end",
]

log = logging.getLogger("kestream.executor")

T = TypeVar("T")

#: Stored plans read at once (each in a thread of its own) while a recovery reads them.
PLAN_READS_AT_ONCE = 8

#: Stored plans read, by execution, then by URI: the plan, or why it is not one.
PlansRead = dict[str, dict[str, "dict[str, Any] | SnapshotError"]]


class RecoveryFailed(RuntimeError):
    """The changelog of assigned partitions could not be read, after retries."""


class RecoveryStopped(Exception):
    """The processor is stopping: a recovery under way gave up (not a failure)."""


class ChangelogMirror:
    """The changelog's records of each execution in flight (see the module docstring)."""

    def __init__(self) -> None:
        self._records: dict[str, ExecutionRecords] = {}

    def put(self, key: str, value: Any) -> None:
        """Follow one changelog record (``None``: a tombstone)."""
        execution_id = codec.execution_of(key)
        if value is None:
            recs = self._records.get(execution_id)
            if recs is not None:
                recs.pop(key, None)
                if not recs:
                    del self._records[execution_id]
        elif key != codec.header_key(execution_id, codec.ENDED):  # ended: not in flight
            self._records.setdefault(execution_id, {})[key] = value

    def load(self, execution_id: str, recs: ExecutionRecords) -> None:
        self._records[execution_id] = dict(recs)

    def forget(self, execution_ids: Iterable[str]) -> None:
        for execution_id in execution_ids:
            self._records.pop(execution_id, None)

    def records_of(self, execution_id: str) -> ExecutionRecords | None:
        return self._records.get(execution_id)

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._records


@dataclass(slots=True)
class Recovered:
    """What one changelog partition gave back."""

    states: list[tuple[ExecutionState, ExecutionRecords]] = field(default_factory=list)
    ended: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    left_out: int = 0
    #: The committed value (None: a tombstone) of every key a torn step wrote last, to write
    #: again before anything else (see the module docstring).
    repairs: list[tuple[str, Any]] = field(default_factory=list)
    #: The read's fold over the records' bytes, for the checkpoint follower
    #: (:meth:`ChangelogRestorer.recover_from`; None from :meth:`ChangelogRestorer.recover`).
    fold: RawFold | None = None
    #: Records read from the changelog, and records taken from a local checkpoint.
    read_records: int = 0
    checkpoint_records: int = 0


@dataclass(slots=True)
class _FoldedRead:
    """One partition's read by :meth:`ChangelogRestorer.recover_from`, under way."""

    read: PartitionRead
    fold: RawFold
    #: The checkpoint's last record is expected first (:meth:`RawFold.is_last`); False once seen.
    expect: bool = False
    refused: bool = False
    read_records: int = 0
    checkpoint_records: int = 0


class ChangelogRestorer:
    """Reads changelog partitions and rebuilds their executions (see the module docstring)."""

    def __init__(
        self,
        ctx: BrokerContext,
        registry: FlowRegistry,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        request_timeout_ms: int | None = None,
    ) -> None:
        """``attempts`` reads, ``backoff_s`` before the second, doubling; each read's broker
        requests wait ``request_timeout_ms`` (default: the client's, 40 s)."""
        self.ctx = ctx
        self.registry = registry
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.request_timeout_ms = request_timeout_ms
        #: Set when the processor stops: a read under way, or a wait before the next, ends.
        self.stopping = asyncio.Event()

    async def recover(self, partitions: set[int]) -> tuple[dict[int, Recovered], dict[int, int]]:
        """Rebuild ``partitions`` from their whole changelog (retried, see :meth:`read`);
        returns what each gave back and each one's end offset (the checkpoint it was read to)."""
        reads, ends = await self.read(partitions)
        return {p: await self.rebuild(p, read) for p, read in reads.items()}, ends

    async def recover_from(
        self, partitions: set[int], checkpoints: Mapping[int, Checkpoint]
    ) -> tuple[dict[int, Recovered], dict[int, int]]:
        """:meth:`recover`, each partition read from its local checkpoint when it has one
        (:mod:`kestream.runtime.changelog_checkpoints`): the checkpoint's fold goes on over the
        records after it, which gives what a read from the beginning gives. A checkpoint whose
        last record the changelog does not hold at its offset (another topic of the same name,
        truncated, compacted) is logged and the partition read whole. Each partition's fold of
        the records' bytes comes back too (:attr:`Recovered.fold`), for the follower."""
        what = f"the changelog of partitions {sorted(partitions)}"
        reads, ends = await self._retried(what, lambda: self._read_from(partitions, checkpoints))
        refused = {p for p, r in reads.items() if r.refused}
        if refused:
            log.warning("the local checkpoints of partitions %s do not match their changelog "
                        "(recreated, truncated or compacted); read from the beginning",
                        sorted(refused))  # fmt: skip
            again, again_ends = await self._retried(what, lambda: self._read_from(refused, {}))
            reads.update(again)
            ends.update(again_ends)
        found: dict[int, Recovered] = {}
        for partition, r in reads.items():
            found[partition] = got = await self.rebuild(partition, r.read)
            got.fold, got.read_records = r.fold, r.read_records
            got.checkpoint_records = r.checkpoint_records
        return found, ends

    async def _read_from(
        self, partitions: set[int], checkpoints: Mapping[int, Checkpoint]
    ) -> tuple[dict[int, _FoldedRead], dict[int, int]]:
        used = {p: cp for p, cp in checkpoints.items() if p in partitions}

        def from_files() -> dict[int, _FoldedRead]:  # parses and copies: not on the event loop
            reads = {p: _FoldedRead(PartitionRead(), RawFold()) for p in partitions - set(used)}
            for p, cp in used.items():
                reads[p] = _FoldedRead(cp.decoded(), cp.raw(), expect=True)
                reads[p].checkpoint_records = cp.records()
            return reads

        reads = await asyncio.to_thread(from_files)
        # Each checkpoint's last record again: it must be the one folded last.
        start = {p: cp.last_offset for p, cp in used.items()}

        def keep(rec: ConsumerRecord[Any, Any]) -> None:
            r = reads[rec.partition]
            if r.expect:
                r.expect = False
                r.refused = not r.fold.is_last(rec)
                return
            if r.refused:
                return
            r.read_records += 1
            decoded = decode_record(rec)
            r.fold.add(rec, decoded)
            if decoded is not None:
                r.read.put(*decoded)

        ends = await self._read_with(partitions, start, keep)
        for r in reads.values():
            if r.expect:  # the log ends before the checkpoint's last record
                r.refused = True
        return reads, ends

    async def read(
        self, partitions: set[int], start: dict[int, int] | None = None
    ) -> tuple[dict[int, PartitionRead], dict[int, int]]:
        """The last committed record of each key of each changelog partition, by execution,
        read from ``start[p]`` (a checkpoint: tombstones are kept, as None, to apply to what
        was known there) or from the beginning, with the keys of torn steps
        (:class:`PartitionRead`); and each partition's end. A failed read is retried;
        :class:`RecoveryFailed` once the attempts are spent, :class:`RecoveryStopped` when
        :attr:`stopping` is set meanwhile."""
        what = f"the changelog of partitions {sorted(partitions)}"
        return await self._retried(what, lambda: self._read(partitions, start or {}))

    async def read_table(self, topic: str, partitions: set[int]) -> dict[int, dict[str, Any]]:
        """The latest value of each key of the partitions of another changelog ``topic`` (the
        admission slots'), read whole and retried as :meth:`read`; tombstones drop their key,
        and a record that is not JSON is skipped and logged."""
        what = f"the changelog of partitions {sorted(partitions)}"
        return await self._retried(what, lambda: self._read_table(topic, partitions))

    async def _read_table(self, topic: str, partitions: set[int]) -> dict[int, dict[str, Any]]:
        latest: dict[int, dict[str, Any]] = {p: {} for p in partitions}

        def keep(rec: ConsumerRecord[Any, Any]) -> None:
            if (decoded := decode_record(rec)) is None:
                return
            key, value = decoded
            if value is None:
                latest[rec.partition].pop(key, None)
            else:
                latest[rec.partition][key] = value

        ctx = self.ctx
        extra = {"request_timeout_ms": self.request_timeout_ms} if self.request_timeout_ms else {}
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None, **extra)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            await read_partitions(consumer, tps, keep, max_records=10_000)
        finally:
            await consumer.stop()
        return latest

    async def _retried(self, what: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``work()``'s result, tried :attr:`attempts` times (``what``: what it reads, for the
        logs); :class:`RecoveryFailed` once they are spent."""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._unless_stopping(work())
            except (asyncio.CancelledError, RecoveryStopped):
                raise
            except Exception as exc:
                if attempt == self.attempts:
                    raise RecoveryFailed(
                        f"cannot read {what} after {attempt} attempts: {exc!r}"
                    ) from exc
                log.warning(
                    "reading %s failed (attempt %d of %d): %r; retrying in %.1fs",
                    what, attempt, self.attempts, exc, delay,
                )  # fmt: skip
                await self._unless_stopping(asyncio.sleep(delay))
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _unless_stopping(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, or :class:`RecoveryStopped` as soon as :attr:`stopping` is set
        (``work`` is cancelled: a stopping processor never waits for a slow broker)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise RecoveryStopped()
        return task.result()

    async def _read(
        self, partitions: set[int], start: dict[int, int]
    ) -> tuple[dict[int, PartitionRead], dict[int, int]]:
        reads = {p: PartitionRead(tombstones=p in start) for p in partitions}

        def keep(rec: ConsumerRecord[Any, Any]) -> None:
            reads[rec.partition].add(rec)

        return reads, await self._read_with(partitions, start, keep)

    async def _read_with(
        self, partitions: set[int], start: Mapping[int, int], keep: RecordSink
    ) -> dict[int, int]:
        """Give ``keep`` each record of the changelog ``partitions``, each from ``start[p]``
        (default: its beginning), to their ends; returns the ends."""
        ctx = self.ctx
        topic = ctx.topics.changelog
        extra = {"request_timeout_ms": self.request_timeout_ms} if self.request_timeout_ms else {}
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None, **extra)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            from_offsets = {
                TopicPartition(topic, p): o for p, o in start.items() if p in partitions
            }
            ends = await read_partitions(
                consumer, tps, keep, start=from_offsets, max_records=10_000
            )
        finally:
            await consumer.stop()
        return {tp.partition: end for tp, end in ends.items()}

    async def rebuild(self, partition: int, read: PartitionRead) -> Recovered:
        """Executions in flight and ended markers from one partition's latest committed
        records, and the repairs of its torn steps; the event loop gets a turn every few
        hundred executions (the other roles of the process keep their heartbeats). The plans
        they stored are read first (:meth:`read_plans`)."""
        found = Recovered(repairs=read.repairs(read.latest))
        plans = await self.read_plans(read.latest)
        async for execution_id, recs in paced(read.latest.items()):
            marker_key = codec.header_key(execution_id, codec.ENDED)
            marker = recs.get(marker_key)
            if marker is not None:
                found.ended.append((execution_id, marker))
                found.repairs.extend(stale_after_end(execution_id, recs, marker_key))
                continue
            st = self.rebuild_one(execution_id, recs, plans.get(execution_id, {}))
            if st is None:
                found.left_out += 1 if codec.header_of(execution_id, recs) is not None else 0
            else:
                found.states.append((st, recs))
        return found

    async def restore(self, execution_id: str, recs: ExecutionRecords) -> ExecutionState | None:
        """:meth:`rebuild_one`, its stored plans read first (:meth:`read_plans`)."""
        plans = await self.read_plans({execution_id: recs})
        return self.rebuild_one(execution_id, recs, plans.get(execution_id, {}))

    async def read_plans(self, executions: Mapping[str, ExecutionRecords]) -> PlansRead:
        """The plans stored in the internal storage that the executions in flight among
        ``executions`` name, by execution: each read in a thread (a few at once), those the
        storage did not give tried again as a changelog read is (:class:`RecoveryFailed` once
        the attempts are spent: a recovery never goes on without a plan it has). A plan that is
        missing or malformed is kept as its :class:`SnapshotError`: its execution is a bad
        record, left out when rebuilt."""
        wanted = [
            (execution_id, ref)
            for execution_id, recs in executions.items()
            if codec.header_key(execution_id, codec.ENDED) not in recs
            for ref in codec.stored_plans(execution_id, recs)
            if is_reference(ref)
        ]
        got: PlansRead = {}
        if not wanted:
            return got
        what = f"{len(wanted)} plans stored in the internal storage"
        await self._retried(what, lambda: self._read_plans(wanted, got))
        return got

    async def _read_plans(self, wanted: list[tuple[str, dict[str, Any]]], got: PlansRead) -> None:
        """Read the plans of ``wanted`` not in ``got`` yet into it; the first storage failure
        is raised once every one was tried (the next attempt reads only those left)."""
        left = [(e, ref) for e, ref in wanted if ref[REF_KEY] not in got.get(e, {})]
        failure: Exception | None = None
        for start in range(0, len(left), PLAN_READS_AT_ONCE):
            chunk = left[start : start + PLAN_READS_AT_ONCE]
            reads = [asyncio.to_thread(fetch_plan, ref, e) for e, ref in chunk]
            for (execution_id, ref), plan in zip(
                chunk, await asyncio.gather(*reads, return_exceptions=True), strict=True
            ):
                if isinstance(plan, dict | SnapshotError):
                    got.setdefault(execution_id, {})[ref[REF_KEY]] = plan
                elif isinstance(plan, Exception):
                    failure = failure or plan
                else:  # CancelledError and the like: not the storage's
                    raise plan
        if failure is not None:
            raise failure

    def rebuild_one(
        self,
        execution_id: str,
        recs: ExecutionRecords,
        plans: codec.StoredPlans | None = None,
    ) -> ExecutionState | None:
        """One execution from its records; None (logged) when that cannot be done. ``plans``:
        its stored plans read beforehand (:meth:`read_plans`), or held in memory (a
        roll-back's: :func:`~kestream.executor.codec.held_plans`); one not among them is read
        here, blocking and once, and a storage that does not answer raises
        :class:`~kestream.storage.offload.StorageUnavailable`."""
        head = codec.header_of(execution_id, recs)
        if head is None:
            return None  # leftovers of an execution whose end was recorded and later pruned
        flow = self.registry.get(head["ns"], head["flow"], head["rev"])
        if flow is None:
            log.error("cannot restore %s: flow %s.%s revision %s is unknown",
                      execution_id, head["ns"], head["flow"], head["rev"])  # fmt: skip
            return None
        try:
            return codec.rebuild(execution_id, recs, flow, plans)
        except StorageUnavailable:  # not a bad record: the caller says what becomes of it
            raise
        except Exception:  # one bad record must not stop the recovery of every other execution
            log.exception("cannot restore %s from its changelog records; left out", execution_id)
            return None


def stale_after_end(
    execution_id: str, recs: Mapping[str, Any], marker_key: str
) -> list[tuple[str, None]]:
    """Tombstones for the state records of an ended execution (its marker is set) written after
    its end. The step that ends an execution clears every one of its keys, and a restart clears
    the marker first, so such records come from a member that stepped it from an older state
    after losing its partition (frozen past its session, woken in the middle of a write: the
    member fence's one gap, docs/brokers.md). The marker wins: the execution stays ended, and
    the records are cleared, so that they do not come back as an execution in flight once the
    marker is pruned."""
    stale = [key for key, value in recs.items() if key != marker_key and value is not None]
    if stale:
        log.warning(
            "execution %s ended, but %d of its changelog records were written after its end "
            "(by a member that had lost its partition); they are cleared",
            execution_id, len(stale),
        )  # fmt: skip
    return [(key, None) for key in stale]
