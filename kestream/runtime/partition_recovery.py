"""The executor's partitions coming and going: their state recovered when the group assigns
them to the processor, parked when it takes them away.

**Coming** (:meth:`PartitionRecovery.recover`): a partition parked here not long ago
(:mod:`~kestream.runtime.parked_partitions`) is taken back warm, with only what its changelog
got after its checkpoint read and applied; only the executions those records touch are rebuilt.
One that ended meanwhile stays ended, whatever a zombie wrote for it after its end: those
records are stale, and their tombstones are repairs. Any other partition is read cold: from its
local checkpoint where there is one (:mod:`~kestream.runtime.changelog_checkpoints`), else from
the whole changelog partition (:class:`~kestream.runtime.changelog_restorer.ChangelogRestorer`,
which retries a failed read and then raises
:class:`~kestream.runtime.changelog_restorer.RecoveryFailed`). The states recovered go into the
processor's table with their changelog records (the mirror) and their timers, the ended markers
into :class:`~kestream.runtime.ended_executions.EndedExecutions`, the flow-concurrency slots
into :class:`~kestream.runtime.admission_slots.AdmissionSlots`.

**Going** (:meth:`PartitionRecovery.release`): each partition with a known checkpoint is parked
there, with its executions, their records and its ended markers, unless the state held may be
ahead of the changelog (``park=False``) or lacks one of its executions (out of the table,
waiting for its rebuild: :mod:`~kestream.runtime.pending_rebuilds`); the processor then drops
the executions from its table.

**Between**: the changelog offset each partition owned is known to hold (acknowledged by the
writer, :meth:`PartitionRecovery.acknowledged`), which is the checkpoint it is parked at; and
the repairs of torn steps recovery found, which the processor's next flush writes first
(:meth:`PartitionRecovery.take_repairs`).

The processor (:class:`~kestream.runtime.executor_service.ExecutorService`) decides when: its
rebalance callbacks, a lapsed membership, a fenced producer. This class holds no lock, consumer
or producer of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kestream.executor import codec
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.timers import TimerQueue
from kestream.runtime.admission_slots import AdmissionSlots
from kestream.runtime.changelog_checkpoints import CheckpointFollower
from kestream.runtime.changelog_restorer import (
    ChangelogMirror,
    ChangelogRestorer,
    ExecutionRecords,
    stale_after_end,
)
from kestream.runtime.context import BrokerContext
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.executor_outbox import Outboxes
from kestream.runtime.metrics import Metrics
from kestream.runtime.parked_partitions import Parked, ParkedPartitions

__all__ = ["PartitionRecovery", "Repair"]

log = logging.getLogger("kestream.executor")

#: A changelog record that undoes a torn step found at recovery: ``(key, value or None,
#: partition)``.
Repair = tuple[str, Any, int]


class PartitionRecovery:
    """Recovers, parks and releases the executor's partitions (see the module docstring).

    ``states``, ``partition_of``, ``mirror``, ``timers``, ``ended`` and ``admission`` are the
    processor's own table and its parts, filled in place.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        registry: FlowRegistry,
        *,
        states: dict[str, ExecutionState],
        partition_of: dict[str, int],
        mirror: ChangelogMirror,
        timers: TimerQueue,
        ended: EndedExecutions,
        admission: AdmissionSlots,
        metrics: Metrics,
    ) -> None:
        self.topics = ctx.topics
        self.states, self.partition_of, self.mirror = states, partition_of, mirror
        self.timers, self.ended, self.admission = timers, ended, admission
        self.metrics = metrics
        self.restorer = ChangelogRestorer(ctx, registry)
        self.parked = ParkedPartitions()
        #: Local checkpoints of the changelog partitions owned (:meth:`start` sets it up).
        self.checkpoints: CheckpointFollower | None = None
        #: Changelog records that undo torn steps found at recovery: written first by the next
        #: flush (:meth:`take_repairs`, :class:`ChangelogRestorer`).
        self.repairs: list[Repair] = []
        #: Per changelog partition owned, the offset after the last record it is known to hold
        #: (read at recovery, then acknowledged to this processor): the checkpoint it is parked at.
        self.offsets: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, checkpoints: CheckpointFollower | None) -> None:
        """Follow the changelog partitions owned into local checkpoints (None: none kept)."""
        self.checkpoints = checkpoints
        if checkpoints is not None:
            await checkpoints.start()

    def give_up(self) -> None:
        """The processor stops: a recovery under way gives up
        (:class:`~kestream.runtime.changelog_restorer.RecoveryStopped`)."""
        self.restorer.stopping.set()

    async def stop(self) -> None:
        """Close the local checkpoints (the last cycle's records in: a clean close's)."""
        if self.checkpoints is not None:
            await self.checkpoints.stop()

    # -- coming ----------------------------------------------------------------------------

    async def recover(self, partitions: set[int]) -> None:
        """Rebuild the states of ``partitions``: from their parked state and what their
        changelog got since (:mod:`kestream.runtime.parked_partitions`), else from the whole
        changelog partition."""
        started = time.perf_counter()
        now = time.monotonic()
        warm = {p: k for p in partitions if (k := self.parked.take(p, now)) is not None}
        cold = partitions - set(warm)
        restored = 0
        if warm:
            checkpoints = {p: k.checkpoint for p, k in warm.items()}
            deltas, ends = await self.restorer.read(set(warm), checkpoints)
            for partition, parked in warm.items():
                if ends[partition] < parked.checkpoint:  # not the topic it was parked on
                    cold.add(partition)
                    continue
                delta = deltas[partition]
                restored += await self._unpark(partition, parked, delta.latest)
                repairs = delta.repairs(parked.records)  # the records known once merged
                self.repairs.extend((k, v, partition) for k, v in repairs)
                self.offsets[partition] = ends[partition]
                if self.checkpoints is not None:
                    self.checkpoints.resume(partition, now)
        if cold:
            if self.checkpoints is None:
                found_by_partition, ends = await self.restorer.recover(cold)
            else:  # from the local checkpoints where they are valid
                loaded = await self.checkpoints.load(cold)
                found_by_partition, ends = await self.restorer.recover_from(cold, loaded)
            for partition, found in found_by_partition.items():
                if self.checkpoints is not None and found.fold is not None:
                    self.checkpoints.follow(partition, found.fold)
                self.metrics.changelog_restored("changelog", found.read_records)
                self.metrics.changelog_restored("checkpoint", found.checkpoint_records)
                for execution_id, marker in found.ended:
                    self.ended.restore(execution_id, partition, marker)
                for st, recs in found.states:
                    self.install(partition, st, recs)
                for _ in range(found.left_out):
                    self.metrics.dead_letter("executor")
                self.repairs.extend((k, v, partition) for k, v in found.repairs)
                restored += len(found.states)
            self.offsets.update(ends)
        # The admission slots of the same partitions (flow concurrency): read whole, small.
        topic = self.topics.admission_changelog
        self.admission.install(await self.restorer.read_table(topic, partitions))
        log.info(
            "recovered %d executions from partitions %s (%d from their checkpoint) in %.2fs",
            restored,
            sorted(partitions),
            len(partitions) - len(cold),
            time.perf_counter() - started,
        )

    async def _unpark(
        self, partition: int, parked: Parked, delta: dict[str, ExecutionRecords]
    ) -> int:
        """Take a parked partition back, with the changelog records written after its
        checkpoint applied; only the executions those records touch are rebuilt."""
        states, by_execution = parked.states, parked.records
        for execution_id, marker in parked.ended.items():
            self.ended.put(execution_id, marker)
        for execution_id, recs in delta.items():
            marker_key = codec.header_key(execution_id, codec.ENDED)
            known = by_execution.setdefault(execution_id, {})
            for key, value in recs.items():
                if key == marker_key:
                    if value is None:
                        self.ended.unmark(execution_id)
                    else:
                        self.ended.restore(execution_id, partition, value)
                elif value is None:
                    known.pop(key, None)
                else:
                    known[key] = value
            if self.ended.get(execution_id) is not None:  # ended: what came after is stale
                self.repairs.extend(
                    (key, None, partition)
                    for key, _ in stale_after_end(execution_id, known, marker_key)
                )
                states.pop(execution_id, None)
                by_execution.pop(execution_id, None)
                continue
            st = await self.restorer.restore(execution_id, known) if known else None
            if st is None:
                states.pop(execution_id, None)
                by_execution.pop(execution_id, None)
            else:
                states[execution_id] = st
        for execution_id, st in states.items():
            self.install(partition, st, by_execution[execution_id])
        return len(states)

    def install(self, partition: int, st: ExecutionState, recs: ExecutionRecords) -> None:
        """Put a recovered execution in the table, with its records and its timers (also one
        rebuilt after a roll-back that could not: :mod:`~kestream.runtime.pending_rebuilds`)."""
        self.states[st.id] = st
        self.partition_of[st.id] = partition
        self.mirror.load(st.id, recs)
        for timer_id, timer in st.timers.items():
            self.timers.set(st.id, timer_id, timer.due)

    # -- going -----------------------------------------------------------------------------

    def release(self, gone: set[int], *, park: bool) -> list[str]:
        """Let go of the partitions' checkpoints, ended markers and repairs; with ``park``,
        each one's state is parked at its checkpoint, for a quick recovery if it comes back.
        Returns the executions of those partitions, which the caller drops from its table."""
        now = time.monotonic()
        parked: dict[int, Parked] = {}
        for partition in gone:
            checkpoint = self.offsets.pop(partition, None)
            if park and checkpoint is not None:
                parked[partition] = Parked(checkpoint, now)
        leaving = [e for e, p in self.partition_of.items() if p in gone]
        for execution_id in leaving:
            partition = self.partition_of[execution_id]
            st, recs = self.states.get(execution_id), self.mirror.records_of(execution_id)
            if st is None:  # out of the table, waiting for its rebuild: the parked state
                parked.pop(partition, None)  # would lack it, so the changelog is read again
            elif (into := parked.get(partition)) is not None and recs is not None:
                into.states[execution_id] = st
                into.records[execution_id] = recs
        for execution_id, marker in self.ended.leave(gone).items():
            if (into := parked.get(marker.partition)) is not None:
                into.ended[execution_id] = marker
        for partition, state in parked.items():
            self.parked.park(partition, state)
        if self.checkpoints is not None:
            self.checkpoints.leave(gone, now, park=park)
        self.repairs[:] = [r for r in self.repairs if r[2] not in gone]  # the next owner's
        return leaving

    def expire(self, now: float) -> None:
        """Let go of parked partitions too old to be taken back (``now``: monotonic)."""
        self.parked.expire(now)

    # -- between ---------------------------------------------------------------------------

    def acknowledged(self, checkpoints: Mapping[int, int]) -> None:
        """The writer's acks, ``{partition: offset}``: each changelog partition holds the
        records before its offset, the checkpoint it would be parked at."""
        for partition, offset in checkpoints.items():
            self.offsets[partition] = max(self.offsets.get(partition, 0), offset)

    def take_repairs(self, out: Outboxes) -> None:
        """Stage the repairs of torn steps, and forget them: the cycle puts them first, before
        any record of its batch can follow (and commit) the torn ones."""
        for key, value, partition in self.repairs:
            out.of(partition).log(key, value, partition)
        self.repairs.clear()
