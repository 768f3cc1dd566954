"""The executor stream processor: one member of the executor's consumer group.

It reads the co-partitioned ``executions`` and ``worker-results`` topics, keeps the state of the
executions of its partitions in memory (a table backed by the changelog topic, one changelog
partition per input partition), runs the pure step for each event, and writes what the step
commands. ``KESTREAM_EXECUTOR_STREAM_THREADS`` processes run one each, sharing the partitions
(through the group; ``standalone``'s on its own embedded broker by fixed shares, without one:
:mod:`~kestream.runtime.static_assignment`).

One cycle, in this order (at-least-once, DESIGN.md section 3):

1. **fetch** a batch (``getmany``);
2. **step** each record (:meth:`ExecutorService._step_batch`), then the timers that fell due,
   the held executions whose flow revision appeared, and the ended markers past their bounds;
3. **flush**: produce the commands (worker jobs, new executions, subflow results, logs, execution
   updates) with the earlier cycles' changelog records once they are due, and wait for the
   broker's acks; this cycle's changelog records are carried to a later flush, where a later
   step's records of the same keys replace them (:mod:`.executor_writer`);
4. **commit** the input offsets, at most every :data:`COMMIT_EVERY_S` (and at a revocation
   and a stop), the carried changelog records written first: a commit is a broker round trip,
   as costly as a small batch's steps.

A crash between a batch's commands and its changelog replays the batch from a state without its
changes: the step
produces the same commands with the same (derived) ids, and every consumer downstream ignores
repeats. A crash in the middle of one step's changelog records leaves that step torn: recovery
leaves its records out (each step ends with a commit mark) and writes their keys' committed
values again first (:class:`ChangelogRestorer`), so the replay starts from the last whole step.
A crash between 3 and 4 replays events the restored state has already applied: no-ops. Hence
commits can wait: one every :data:`COMMIT_EVERY_S` only widens what a crash replays (Kafka
Streams commits every 30 s in the same way).

Under ``KESTREAM_PROCESSING_GUARANTEE=exactly_once`` on Apache Kafka, 3 and 4 are one step, every
cycle: each input partition's records (kept apart, :class:`PartitionOutboxes`) and its input
offsets commit in one transaction (:mod:`kestream.runtime.executor_transactions`). A crash leaves
nothing of the cycle visible to the read-committed consumers, and the replay produces it once.

One record never stops the processor: whatever fails while it is handled (decoding, stepping,
routing and encoding its commands, a record the broker refuses) sends it to the dead-letter
topic with the reason, and the execution's state is rolled back to before the record (rebuilt
from the records the changelog holds for it, :class:`ChangelogMirror`). An execution that
cannot be rebuilt then waits out of the table, its later events held, for the next cycle to
rebuild it as a recovery does (:mod:`~kestream.runtime.pending_rebuilds`); failing again, the
processor stops loudly, and the next owner recovers it from the changelog. Failures that are not
one record's (the broker gone mid-flush, a changelog that cannot be read at recovery, after
retries) stop the processor loudly: its process exits and the partitions' next owner replays.

What lives where. This module keeps the cycle, in that order (its sections: the cycle, step,
flush, commit), the processor's lifecycle and health, and when partitions come and go: the
rebalance callbacks (:meth:`ExecutorService.assigned`, :meth:`ExecutorService.revoked`, under
the cycle's lock) and a membership in doubt (lapsed, or its transactional producers fenced).
The parts it owns, each tested on its own:

- :class:`~kestream.runtime.partition_recovery.PartitionRecovery`: what a partition's state
  does as it comes and goes: recovered warm from where it was parked
  (:class:`~kestream.runtime.parked_partitions.ParkedPartitions`) or cold from its changelog
  (:class:`~kestream.runtime.changelog_restorer.ChangelogRestorer`, from the local checkpoints
  of :mod:`~kestream.runtime.changelog_checkpoints` where there are some), parked at its
  changelog checkpoint as it leaves; and the repairs of torn steps found meanwhile;
- :class:`~kestream.executor.timers.TimerQueue` (shared with ``kestream.testing.Driver``),
  :class:`~kestream.runtime.held_events.HeldEvents` (events held for a flow revision not
  deployed yet, or for their execution's rebuild),
  :class:`~kestream.runtime.pending_rebuilds.PendingRebuilds` (executions a roll-back could not
  rebuild), :class:`~kestream.runtime.ended_executions.EndedExecutions` (the ended markers);
- :class:`~kestream.runtime.command_router.CommandRouter`: where a step's commands go;
- :mod:`~kestream.runtime.executor_writer`: the flush and the dead letters, of the records
  :mod:`~kestream.runtime.executor_outbox` holds; :mod:`~kestream.runtime.executor_transactions`:
  exactly-once's transactions;
- :class:`~kestream.runtime.admission_slots.AdmissionSlots`: the slot tables of the admissions
  topic (flow concurrency), which the same consumer reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import Release
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.restore import snapshot_attempt
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult, UnknownFlow
from kestream.executor.timers import TimerQueue
from kestream.expressions import set_render_timeout_ms
from kestream.kv.store import sync_current_store
from kestream.models.clock import Clock, utc_now
from kestream.models.state import IllegalTransition, StateType
from kestream.runtime import records
from kestream.runtime.admission_slots import AdmissionSlots
from kestream.runtime.aio import paced, stray_cancellation
from kestream.runtime.changelog_checkpoints import checkpoint_follower
from kestream.runtime.changelog_fold import ExecutionRecords
from kestream.runtime.changelog_restorer import (
    ChangelogMirror,
    RecoveryFailed,
    RecoveryStopped,
)
from kestream.runtime.command_router import CommandRouter, Routed
from kestream.runtime.compacted import seek_starts
from kestream.runtime.context import BrokerContext
from kestream.runtime.ended_executions import Ended, EndedExecutions
from kestream.runtime.event_offload import needs_storage, prepare
from kestream.runtime.executor_outbox import CommandRecord, Outbox, Outboxes, PartitionOutboxes
from kestream.runtime.executor_transactions import (
    Fenced,
    Lost,
    PartitionTransactions,
    TransactionalProducer,
    TxnWrite,
)
from kestream.runtime.executor_writer import DeadLetters, RecordWriter, Refusal
from kestream.runtime.held_events import HeldEvents
from kestream.runtime.instance_id_guard import guard_instance_id
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.local_handoff import LocalResults, disconnect
from kestream.runtime.member_fence import LOOK_EVERY_S, MemberFence
from kestream.runtime.metrics import Metrics, process_metrics
from kestream.runtime.partition_recovery import PartitionRecovery
from kestream.runtime.pending_rebuilds import PendingRebuilds, RebuildFailed
from kestream.runtime.processing_guarantee import exactly_once
from kestream.runtime.purge_fence import apply_purge_event
from kestream.runtime.static_assignment import Share, executor_share, partitions_of
from kestream.runtime.static_membership import static_member, stop_member
from kestream.runtime.txn_markers import ListedEnds, MarkerHealer
from kestream.runtime.worker_groups import WorkerGroupRouter
from kestream.runtime.write_gate import WriteRefused
from kestream.storage.offload import StorageUnavailable

__all__ = ["ExecutorService", "Outbox"]

log = logging.getLogger("kestream.executor")

_MAX_POLL_MS = 200
_BATCH = 2000
_PRUNE_EVERY = timedelta(minutes=1)
_WINDOW_LOG_EVERY = timedelta(hours=1)
#: How long a stop waits for the cycle under way to end (its flush and commit).
_STOP_GRACE_S = 5.0
#: Writes of one cycle: the batch's, then up to this many more for what refusals undid.
_FLUSH_ROUNDS = 3
#: The input offsets stepped and flushed are committed at most this often (seconds); a
#: revocation and a stop commit what is left. 0: after every batch.
COMMIT_EVERY_S = 1.0

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class ChangelogLayoutRange(RangePartitionAssignor):
    """Kafka's range assignment under a protocol name that says which changelog layouts the
    member writes. The versions before the whole-execution record and the lanes left to
    recovery (:mod:`kestream.executor.codec`) cannot read what this one writes, and offered
    ``range``: sharing no protocol, their members and this version's cannot be in one group
    (this version reads theirs: a group of its own takes their changelog over). The one who
    joins a group the others hold is refused (``INCONSISTENT_GROUP_PROTOCOL``, fatal to
    aiokafka: its processor stops loudly) instead of taking over partitions whose changelog it
    cannot read. Renamed again whenever the layouts change that way."""

    name = "range-changelog-2"


#: The executor group's assignor: range only, so every input's partition ``p`` goes to one
#: processor whatever their number, on every broker. aiokafka (up to 0.14 at least,
#: aio-libs/aiokafka#1168) sends one JoinGroup per assignor offered, each with one more
#: protocol: Kafka takes a member's second JoinGroup as changed metadata and rebalances again,
#: and two executors whose joins fell out of step rebalanced each other for ever (one never
#: finished a join); Tansu held such a member for a second join round. So round robin is not
#: offered second for members of older versions that offered nothing else: a rolling upgrade
#: from such a version stops all executors first.
#:
#: The range assignment goes under a protocol name of its own, named after the changelog
#: layouts its members write (:class:`ChangelogLayoutRange`).
EXECUTOR_ASSIGNORS: tuple[type[AbstractPartitionAssignor], ...] = (ChangelogLayoutRange,)


class ExecutorService:
    """One executor stream processor (see the module docstring)."""

    def __init__(
        self,
        ctx: BrokerContext,
        registry: FlowRegistry,
        *,
        clock: Clock = utc_now,
        own_all_partitions: bool = False,
        on_failure: Callable[[BaseException], None] | None = None,
        metrics: Metrics | None = None,
        route_worker_groups: bool = True,
        share: Share | None = None,
    ) -> None:
        """``own_all_partitions``: take every partition without a consumer group (a one-shot
        ``kestream run`` on its own embedded broker: nobody to share with, no join to wait for).
        ``share``: take these partitions without joining the group, committing under its name
        (default: what ``standalone`` on its own embedded broker says,
        :mod:`~kestream.runtime.static_assignment`; exactly-once keeps the group).
        ``metrics``: where to count (default: the process's :func:`process_metrics`).
        ``route_worker_groups=False``: send every job to the default workers, whatever its
        ``workerGroup`` (that ``kestream run``, whose own worker is the only one).
        """
        self.own_all_partitions, self.share = own_all_partitions, share or executor_share()
        #: Called once if the processor fails; the host stops the process (see :meth:`_run`).
        self.on_failure = on_failure
        self.failure: BaseException | None = None
        self.ctx = ctx
        settings = self.settings = ctx.settings
        self.topics = ctx.topics
        self.clock = clock
        self.limit = ctx.record_limit
        self.executor = Executor(
            registry,
            clock=clock,
            inline_tasks=settings.executor_inline_tasks,
            max_output_bytes=self.limit.output_bytes,
            inline_max_bytes=settings.output_inline_max_bytes,
        )
        self.registry = registry
        self.metrics = metrics if metrics is not None else process_metrics()
        #: Where jobs go (their worker group's topic), and the groups' fallbacks.
        self.groups = WorkerGroupRouter(ctx, routed=route_worker_groups)
        set_render_timeout_ms(settings.render_timeout_ms)  # every render in this process
        # -- the state table and its parts
        self.states: dict[str, ExecutionState] = {}
        self.partition_of: dict[str, int] = {}
        self.timers = TimerQueue()
        self.held = HeldEvents(timedelta(seconds=settings.executor_flow_wait_s))
        #: Records of this batch decoded ahead, off the loop (:meth:`_prepare`).
        self._prepared: dict[tuple[TopicPartition, int], ev.Event | Exception] = {}
        self.ended = EndedExecutions(
            timedelta(hours=settings.executor_ended_retention_h), settings.executor_ended_max
        )
        self.mirror = ChangelogMirror()
        self.letters = DeadLetters(self.topics, self.limit, self.metrics)
        #: Flow concurrency: the slot tables of the admissions partitions owned.
        self.admission = AdmissionSlots(self.topics, self.letters, clock)
        self.writer = RecordWriter(self.topics, self.limit, self.letters, self._partial_update)
        self.router = CommandRouter(
            self.topics, self.limit, self.groups, self.timers, self.ended, self.metrics, clock
        )
        #: The partitions' state coming (recovered) and going (parked, released).
        self.recovery = PartitionRecovery(
            ctx, registry, states=self.states, partition_of=self.partition_of,
            mirror=self.mirror, timers=self.timers, ended=self.ended, admission=self.admission,
            metrics=self.metrics,
        )  # fmt: skip
        #: Executions a roll-back could not rebuild, out of the table, their events held.
        self.rebuilds = PendingRebuilds(self.recovery)
        self.owned: set[int] = set()
        #: Results a worker of this process handed over (:mod:`.local_handoff`).
        self.local = LocalResults(lambda partition: partition in self.owned and not self._stopping)
        self.ready = asyncio.Event()
        # -- the loop
        self._lock = asyncio.Lock()
        #: Bumped by every assignment and revocation: a batch fetched under an older one is
        #: fetched again (:meth:`_fetch_again`).
        self._generation = 0
        self._stopping = False
        #: A lapsed membership dropped the partitions; the group's next assignment settles them.
        self._rejoining = False
        self._fatal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        #: Exactly-once: closes transactions the broker left without markers (:mod:`.txn_markers`).
        self.healer: MarkerHealer | None = None
        #: Per input partition, the offset after the last record flushed but not yet
        #: committed (:meth:`_commit`); and when the last commit was.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()
        self.commit_every_s = COMMIT_EVERY_S
        self._last_prune = clock()
        self._window_logged = self._last_prune - _WINDOW_LOG_EVERY
        self._held_share = self.metrics.share(self.metrics.executor_held)
        self._in_flight_share = self.metrics.share(self.metrics.executor_in_flight)
        self._lag_share = self.metrics.share(self.metrics.consumer_lag, "executor")
        self._partition_lag = self.metrics.partition_lag("executor")

    @property
    def fence(self) -> MemberFence | None:
        """The group membership's last confirmation (:mod:`.member_fence`), which the writer's
        gate consults (:mod:`.write_gate`); None without a group."""
        return self.writer.gate.fence

    @fence.setter
    def fence(self, fence: MemberFence | None) -> None:
        self.writer.gate.fence = fence

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.groups.start()
        producer = make_producer(self.settings, self.ctx.bootstrap, self.ctx.kind)
        await producer.start()
        self.writer.producer = producer
        group = None if self.own_all_partitions else f"{self.settings.topic_prefix}executor"
        if group is not None and exactly_once(self.settings, self.ctx.kind):
            self.writer.transactions = PartitionTransactions(
                self._transactional_producer, f"{group}-", group
            )
            ends = ListedEnds(self.settings, self.ctx.bootstrap, self.ctx.kind)
            self.healer = MarkerHealer(self.writer.transactions.ledger, ends, self._close_markers)
            log.info("exactly-once: a transaction per input partition and cycle")
        if group is None or self.writer.transactions is not None:
            self.share = None  # no group to commit under; exactly-once's is the group's
        await self.recovery.start(checkpoint_follower(self.ctx))
        self._consumer = make_consumer(
            self.settings,
            self.ctx.bootstrap,
            self.ctx.kind,
            group_id=group,
            max_poll_records=_BATCH,
            # Same partition numbers of every input to one processor, whatever the number of
            # processors (round robin splits them when it does not divide the partitions).
            partition_assignment_strategy=EXECUTOR_ASSIGNORS,
            **(static_member(self.settings, self.ctx.kind) if group and not self.share else {}),
        )
        inputs = [self.topics.executions, self.topics.results, self.topics.admissions]
        if self.own_all_partitions:
            await self._consumer.start()
            count = self.settings.partitions
            self._consumer.assign([TopicPartition(t, p) for t in inputs for p in range(count)])
            await self.assigned(set(range(count)))
            if self._fatal is not None:
                raise self._fatal
        elif self.share is not None:  # standalone's: the group's offsets, no member (no fence)
            await self._consumer.start()
            taken = await partitions_of(self._consumer, inputs, self.share)
            self._consumer.assign(taken)
            await self.assigned({tp.partition for tp in taken})
            if self._fatal is not None:
                raise self._fatal
        else:
            self.fence = MemberFence(self.settings.session_timeout() / 1000)
            self._consumer.subscribe(inputs, listener=_Rebalance(self))
            await self._consumer.start()  # (the first join: its assignment watches the fence)
            # Replaced by a live process with its instance id: stop, never take the id back.
            guard_instance_id(self._consumer, self._fail)
            self.fence.watch(self._consumer)
            self.fence.guard(None, LOOK_EVERY_S)  # (only to tell a freeze from an outage)
        self._task = asyncio.create_task(self._run(), name="executor-loop")
        if self.healer is not None:
            self.healer.start()
        self.metrics.executor_threads.inc()

    async def stop(self) -> None:
        """Stop after the cycle under way: cancelled half-way through its flush, it would
        leave its steps' changelog records torn and its offsets uncommitted, for the next
        owner to repair and replay. A cycle that does not end within
        :data:`_STOP_GRACE_S` (the broker away) is cancelled."""
        self._stopping = True
        disconnect(self)
        if self.fence is not None:
            self.fence.stop()
        self.recovery.give_up()  # a recovery under way gives up
        if self.healer is not None:
            await self.healer.stop()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=_STOP_GRACE_S)  # the loop ends after its cycle
            task.cancel()
            self.metrics.executor_threads.dec()
            for share in (self._held_share, self._in_flight_share, self._lag_share):
                share.report(0)
            self._partition_lag.clear()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.local.close()
        await self.recovery.stop()  # its checkpoints, the last cycle's records in
        if self._consumer is not None:
            await stop_member(self._consumer)
        if self.writer.producer is not None:
            await self.writer.producer.stop()
        if self.writer.transactions is not None:
            await self.writer.transactions.stop()
        await self.groups.stop()

    def _transactional_producer(self, transactional_id: str) -> TransactionalProducer:
        return make_producer(
            self.settings, self.ctx.bootstrap, self.ctx.kind, transactional_id=transactional_id
        )

    def partitions(self) -> set[int]:
        """The input partitions this processor owns now."""
        return set(self.owned)

    # -- health (kestream.runtime.health.HealthPart) -----------------------------------------

    health_name = "executor"

    @property
    def is_live(self) -> bool:
        """The loop task runs (it stops only on a failure, which also stops the process)."""
        return self._task is not None and not self._task.done() and self._fatal is None

    @property
    def is_ready(self) -> bool:
        """Partitions assigned and their state recovered; false from a revocation until the
        next assignment's recovery has finished (the :attr:`ready` event, as a bool)."""
        return self.is_live and self.ready.is_set()

    def health_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"partitions": sorted(self.owned), "executions": len(self.states)}
        detail["held"] = len(self.held)
        detail["rebuilding"] = len(self.rebuilds)
        if self.failure is not None:
            detail["failure"] = repr(self.failure)
        return detail

    # -- the cycle: fetch -> step -> flush -> commit ----------------------------------------

    async def _run(self) -> None:
        """The loop; a failure stops it, loudly.

        After a batch fails half-way in a way that is not one record's (the broker refusing
        every send, say), the states in memory are ahead of the changelog and of the committed
        offsets: carrying on could commit past commands that were never written. So the
        processor stops and reports; its process exits, and the next owner of the partitions
        restores the last committed state and replays the batch.
        """
        try:
            await self._loop()
        except asyncio.CancelledError as exc:
            if not stray_cancellation():
                raise
            failure = RuntimeError(f"a cancellation not aimed at the loop: {exc!r}")
            log.exception("executor stream processor failed; stopping it (a restart replays)")
            self._fail(failure)
            raise failure from exc
        except Exception as exc:
            log.exception("executor stream processor failed; stopping it (a restart replays)")
            self._fail(exc)
            raise

    async def _loop(self) -> None:
        assert self._consumer is not None
        while not self._stopping:
            generation, batch = await self.local.fetch(
                self._consumer, self._poll_ms(), _BATCH, self._generation
            )
            if self._fatal is not None:  # set by a rebalance callback that could not recover
                raise self._fatal
            started = time.perf_counter()
            await self._sync_kv(batch)
            async with self._lock:
                if generation != self._generation:
                    batch = await self._fetch_again(batch)
                if await self._lapsed() or self._rejoining:
                    continue  # out of the group, maybe: nothing stepped from the state held
                await self._prepare(batch)
                out: Outboxes = PartitionOutboxes() if self.writer.transactions else Outbox()
                self.recovery.take_repairs(out)  # torn steps' repairs before any new record
                if self.rebuilds:  # before any record, which may queue behind them
                    self._leave_table(await self.rebuilds.rebuild(out))  # (those left out)
                await self._step_batch_paced(batch, out)
                await self._step_handed(out)
                if await self._lapsed():
                    continue  # lapsed while stepping: nothing of the cycle is written
                try:
                    await self._write_cycle(batch, out)
                except WriteRefused as exc:  # the group moved on: nothing more is written
                    await self._leave_membership(str(exc))
                    continue
            self._report(batch, started)

    async def _write_cycle(self, batch: Batch, out: Outboxes) -> None:
        """Flush the cycle's records and commit when due (under exactly-once, as one)."""
        if isinstance(out, PartitionOutboxes):  # exactly-once: flush and commit as one
            self._flushed(batch)
            await self._commit_transactions(out)
            return
        await self._flush(out)
        self._flushed(batch)
        if self._stopping or time.monotonic() - self._committed_at >= self.commit_every_s:
            await self._commit()

    async def _fetch_again(self, batch: Batch) -> Batch:
        """Drop a batch that a rebalance may have overtaken (fetched, in part, before it): its
        records would be stepped against states recovered since, and its offsets committed
        over what the partitions' owner meanwhile committed. A partition whose position the
        assignment reset (to its committed offset) is read from there; one still right after
        the batch is rewound to the batch's first record, so nothing of it is skipped; one
        assigned away is its new owner's to read."""
        consumer = self._consumer
        assert consumer is not None
        assignment = consumer.assignment()
        for tp, recs in batch.items():
            if recs and tp in assignment and await consumer.position(tp) == recs[-1].offset + 1:
                consumer.seek(tp, recs[0].offset)
        return {}

    async def _sync_kv(self, batch: Batch) -> None:
        """One KV sync before a batch of records whose steps may render ``kv()``, which then
        reads the table without waiting: begun after the batch was read, it holds every write
        acknowledged before its events were sent. A failed sync makes those reads fail, naming
        why. (Timers and held events step with the table as it follows the topic.)"""
        if self.registry.calls_kv and (any(batch.values()) or len(self.local)):
            await sync_current_store()

    async def _prepare(self, batch: Batch) -> None:
        """Decode in a thread the records that need the internal storage (a stored snapshot
        to read, a replay's or retry's values to copy: :mod:`.event_offload`), so the step
        that follows never waits on the storage on the event loop."""
        self._prepared.clear()
        executions = self.topics.executions
        for tp, recs in batch.items():
            if tp.topic != executions or tp.partition not in self.owned:
                continue
            for rec in recs:
                if rec.value is not None and needs_storage(rec.value):
                    self._prepared[(tp, rec.offset)] = await prepare(rec.value)

    def _step_batch(self, batch: Batch, out: Outboxes) -> None:
        """Step every record of the batch, then what time brought (timers, held, ended)."""
        for tp, rec in self._owned_records(batch):
            self._step_record(tp, rec, out)
        self._step_time(out)

    async def _step_batch_paced(self, batch: Batch, out: Outboxes) -> None:
        """:meth:`_step_batch`, giving the event loop a turn every few hundred records (the
        roles sharing this process's loop keep their heartbeats). The cycle's lock is held
        throughout: no rebalance or other cycle comes between the records of a batch."""
        async for tp, rec in paced(self._owned_records(batch)):
            self._step_record(tp, rec, out)
        self._step_time(out)

    async def _step_handed(self, out: Outboxes) -> None:
        """Step the results a worker of this process handed over (:mod:`.local_handoff`), after
        the fetched records: a batch at most, yielding as the batch does. Each is stepped as its
        broker copy would be, from the copy's place: held behind its execution, it holds the
        commit there; that copy, fetched in a later cycle, is skipped (:meth:`_handle`)."""
        async for partition, offset, event in paced(self.local.take(_BATCH)):
            self._apply(partition, event, out.of(partition), (self.topics.results, offset))

    def _owned_records(
        self, batch: Batch
    ) -> Iterator[tuple[TopicPartition, ConsumerRecord[Any, Any]]]:
        for tp, recs in batch.items():
            if tp.partition in self.owned:
                for rec in recs:
                    yield tp, rec

    def _step_record(
        self, tp: TopicPartition, rec: ConsumerRecord[Any, Any], out: Outboxes
    ) -> None:
        if tp.topic == self.topics.admissions:
            self.admission.handle(tp.partition, rec, out.of(tp.partition))
        else:
            self._handle(tp, rec, out.of(tp.partition))

    def _step_time(self, out: Outboxes) -> None:
        now = self.clock()
        self._fire_timers(now, out)
        self._release_held(now, out)
        self._prune_ended(now, out)

    def _fail(self, exc: BaseException) -> None:
        """Report a failure of the processor once; the host then stops the process."""
        if self.failure is not None:
            return
        self.failure = exc
        if self.on_failure is not None:
            self.on_failure(exc)

    def _report(self, batch: Batch, started: float) -> None:
        """Per-batch metrics: events, batch time, held and in-flight executions, lag (the
        high watermark of the last fetch minus what this batch reached: no extra request)."""
        assert self._consumer is not None
        events = 0
        behind: dict[tuple[str, int], int] = {}
        for tp, recs in batch.items():
            if recs:
                events += len(recs)
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    behind[tp] = max(0, highwater - recs[-1].offset - 1)
        if events:
            self.metrics.executor_batch_done(events, time.perf_counter() - started)
        assigned = self._consumer.assignment()
        self._lag_share.report(self._partition_lag.report(behind, assigned))
        self._held_share.report(len(self.held))
        self._in_flight_share.report(len(self.states))

    def _poll_ms(self) -> int:
        due = self.timers.next_due()
        if due is None:
            return _MAX_POLL_MS
        wait = (due - self.clock()).total_seconds() * 1000
        return max(1, min(_MAX_POLL_MS, int(wait)))

    # -- step: one record ------------------------------------------------------------------

    def _handle(self, tp: TopicPartition, rec: ConsumerRecord[Any, Any], out: Outbox) -> None:
        if tp.topic == self.topics.results and self.local.stepped_copy(tp.partition, rec.offset):
            return  # the broker copy of a result handed over and stepped in an earlier cycle
        prepared = self._prepared.pop((tp, rec.offset), None)
        try:
            if isinstance(prepared, Exception):
                raise prepared
            event = records.decode_event(rec.value) if prepared is None else prepared
        except Exception as exc:  # RecordError, or anything else a hostile record provokes
            self.letters.add(out, tp.topic, tp.partition, rec.offset, rec.key, rec.value, str(exc))
            return
        self._apply(tp.partition, event, out, (tp.topic, rec.offset))

    def _apply(
        self, partition: int, event: ev.Event, out: Outbox, source: tuple[str, int] | None
    ) -> None:
        """Step one event and stage its records; on any failure, roll the execution back to
        before the event and dead-letter the event (see the module docstring)."""
        execution_id = event.execution_id
        # keep this execution's events in order behind the held one, or behind its rebuild
        if execution_id in self.held or execution_id in self.rebuilds:
            self.held.hold(partition, source, event, "queued", self.clock())
            return
        state = self.states.get(execution_id)
        if isinstance(event, ev.Purge):  # decided here, in order with restarts (purge_fence)
            staged = Outbox()
            apply_purge_event(
                event, state, self.ended, partition, self.clock(), self.topics.logs, staged
            )
            out.extend(staged)
            for key, value in staged.logged:
                self.mirror.put(key, value)
            return
        ended = self.ended.get(execution_id)
        if state is None and ended is not None:
            if isinstance(event, ev.ExecutionCreated):
                return  # a redelivered creation of an execution that already ran
            if isinstance(event, ev.Restart) and _stale_restart(event, ended.attempt):
                log.info("ignoring a restart of %s from an older attempt's snapshot", execution_id)
                return
        staged = Outbox()  # all of the event's records, or none of them
        try:
            result = self.executor.step(state, event)
            routed = self._stage(partition, state, result, staged)
        except UnknownFlow as exc:  # raised before the step changed anything
            self.held.hold(partition, source, event, str(exc), self.clock())
            return
        except Exception as exc:
            log.exception("executor error on an event of execution %s", execution_id)
            self._roll_back(execution_id, state is not None, ended)
            topic, offset = source if source is not None else (self.topics.executions, -1)
            self.letters.add(
                out, topic, partition, offset, execution_id.encode(), _event_bytes(event),
                f"executor error: {exc!r}",
            )  # fmt: skip
            return
        out.extend(staged)
        routed.count()
        for key, value in staged.logged:
            self.mirror.put(key, value)
        for failed in routed.refused:  # after the step's own records, as if a worker answered
            self._apply(partition, failed, out, None)

    def _stage(
        self, partition: int, before: ExecutionState | None, result: StepResult, staged: Outbox
    ) -> Routed:
        st = result.state
        if st is None:  # a slot granted to an execution that left the table goes back
            for command in result.commands:
                if isinstance(command, cmd.RequestSlot):
                    self.router.request_slot(command, staged)
            return Routed()
        if before is None:
            self.states[st.id] = st
            self.partition_of[st.id] = partition
        routed = self.router.route(
            partition, st, result.commands, staged, before.created_runs if before else 0
        )
        if routed.ended:
            self._leave_table([st.id])
        return routed

    def _roll_back(self, execution_id: str, existed: bool, ended: Ended | None) -> None:
        """Put the execution back as it was before the failed event: rebuilt from the records
        the changelog holds for it (nothing of the failed event was staged), or gone if the
        event created it. The plans those records name in the internal storage are taken from
        the state in memory (:func:`~kestream.executor.codec.held_plans`): a storage that does
        not answer then cannot stop the rebuild, and with it the update of the execution's
        earlier steps in the cycle, whose changelog is written. One that cannot be rebuilt
        waits out of the table, its events held, for the next cycle's rebuild
        (:class:`~kestream.runtime.pending_rebuilds.PendingRebuilds`)."""
        self.ended.put(execution_id, ended)
        self.executor.forget(execution_id)
        self.timers.forget([execution_id])
        if not existed:
            self._leave_table([execution_id])
            return
        recs = self.mirror.records_of(execution_id)
        held = self.states.get(execution_id)
        why = "its changelog records cannot make an execution (logged above)"
        try:
            plans = None if held is None or not recs else self._held_plans(held, execution_id, recs)
            st = self.recovery.restorer.rebuild_one(execution_id, recs, plans) if recs else None
        except StorageUnavailable as exc:  # a stored plan it names: its changelog keeps it
            st, why = None, str(exc)
        if st is None:
            self.rebuilds.wait(execution_id, why if recs else "no changelog records in memory")
            return
        self.states[execution_id] = st
        for timer_id, timer in st.timers.items():
            self.timers.set(execution_id, timer_id, timer.due)

    @staticmethod
    def _held_plans(
        held: ExecutionState, execution_id: str, recs: ExecutionRecords
    ) -> codec.StoredPlans | None:
        """The stored plans ``recs`` name, from memory (:func:`codec.held_plans`); ``None``
        (each read from the storage instead) when memory cannot give them: a roll-back runs
        on the error path of a step, and must not raise there."""
        try:
            return codec.held_plans(held, codec.stored_plans(execution_id, recs))
        except Exception:
            log.exception("execution %s: its stored plans cannot be taken from memory",
                          execution_id)  # fmt: skip
            return None

    def _partial_update(self, execution_id: str, changed: list[str]) -> list[bytes]:
        """The execution's partial update of the cycle, from its state at the write (the
        writer asks, :meth:`Outbox.build_updates`): none once it left the table (its end's full
        update said all, or it was let go). A state no update can encode raises: its steps
        were applied and their changelog is written, so the writer dead-letters the update
        with the reason (:meth:`RecordWriter.coalesce`)."""
        st = self.states.get(execution_id)
        if st is None and execution_id in self.rebuilds:  # made once it is rebuilt
            self.rebuilds.defer_update(execution_id, changed)
        return [] if st is None else self.router.partial_update(st, changed)

    def _leave_table(self, execution_ids: list[str]) -> None:
        for execution_id in execution_ids:
            self.states.pop(execution_id, None)
            self.partition_of.pop(execution_id, None)
            self.executor.forget(execution_id)
        self.timers.forget(execution_ids)
        self.mirror.forget(execution_ids)
        self.rebuilds.forget(execution_ids)

    # -- step: what time brought -----------------------------------------------------------

    def _fire_timers(self, now: Any, out: Outboxes) -> None:
        for execution_id, timer_id, due in self.timers.pop_due(now):
            st = self.states.get(execution_id)
            timer = st.timers.get(timer_id) if st is not None else None
            if timer is None or timer.due != due:
                continue  # cancelled by a step, or the state was rolled back past it
            partition = self.partition_of[execution_id]
            self._apply(partition, ev.TimerFired(execution_id, timer_id), out.of(partition), None)

    def _release_held(self, now: Any, out: Outboxes) -> None:
        if not len(self.held):
            return
        wait = self.settings.executor_flow_wait_s
        for queue in self.held.release(now, self._flow_known, keep=self.rebuilds):
            for item in queue:
                if self._flow_known(item.event) or isinstance(item.event, ev.TimerFired):
                    self._apply(item.partition, item.event, out.of(item.partition), item.source)
                    continue
                topic, offset = item.source or (self.topics.executions, -1)
                reason = f"{item.reason}: not deployed within {wait:g}s"
                self.letters.add(
                    out.of(item.partition), topic, item.partition, offset,
                    item.event.execution_id.encode(), _event_bytes(item.event), reason,
                )  # fmt: skip

    def _flow_known(self, event: ev.Event) -> bool:
        if isinstance(event, ev.ExecutionCreated):
            found = self.registry.get(event.namespace, event.flow_id, event.revision)
            return found is not None
        return True

    def _prune_ended(self, now: Any, out: Outboxes) -> None:
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        self.recovery.expire(time.monotonic())
        for key, partition in self.ended.prune(now):
            out.of(partition).log(key, None, partition)
        window = self.ended.window(now)
        if window < self.ended.retention and now - self._window_logged >= _WINDOW_LOG_EVERY:
            self._window_logged = now
            log.warning(
                "ended executions are remembered for %s only (KESTREAM_EXECUTOR_ENDED_MAX=%d "
                "reached, retention %s): a creation redelivered from before that runs again",
                window, self.ended.max_count, self.ended.retention,
            )  # fmt: skip

    # -- flush -----------------------------------------------------------------------------

    async def _flush(self, out: Outbox, *, carry: bool = True) -> None:
        """Write the batch's records (its changelog carried to the next write, unless not
        ``carry``); then undo, in this same cycle, what the steps of records the broker refused
        counted on (:meth:`_undo_refused`), and write what that made, carrying nothing."""
        for box, refused in self._refusal_rounds(out):
            await self.groups.create_topics()  # a worker group's first job: its topic first
            written = await self.writer.write(box, carry=carry)
            carry = False
            self.recovery.acknowledged(written.checkpoints)
            refused.extend(written.refused)

    def _refusal_rounds(self, out: Outbox) -> Iterator[tuple[Outbox, list[Refusal]]]:
        """The rounds of a write whose refused records are undone (:meth:`_undo_refused`) in
        the same cycle: ``out`` first, then an outbox of what the last round's refusals undid,
        each with the list its write adds its refusals to; until a round has none or its
        undoing makes no record, at most :data:`_FLUSH_ROUNDS` undoings. The records of the
        last are written all the same (it changed memory: dropped, memory would be ahead of
        the changelog), and what that write refuses is left dead-lettered, said in the log."""
        for _ in range(_FLUSH_ROUNDS):
            refused: list[Refusal] = []
            yield out, refused
            if not refused:
                return
            out = Outbox()
            self._undo_refused(refused, out)
            if out.empty():
                return
        refused = []
        yield out, refused
        if refused:
            log.error("records still refused after %d rounds; left dead-lettered", _FLUSH_ROUNDS)

    def _undo_refused(self, refused: list[Refusal], out: Outbox) -> None:
        """A refused job's task run fails (as one too large to send does), with the broker's
        reason; a refused changelog record fails its execution, which leaves the table (what
        memory holds of it is ahead of what the changelog got, so it cannot go on); a refused
        subflow execution, or a refused answer of one, reaches its parent as a failed subflow
        (:func:`_parent_answer`). Other refused commands stay dead-lettered only (the log, and
        the dead letter, say why)."""
        failed: set[str] = set()
        for (topic, key, value, _), reason in refused:
            if topic == self.topics.executions:
                if (answer := _parent_answer(value, reason)) is not None:
                    event = records.encode_event(answer)
                    out.send(self.topics.executions, answer.execution_id, event)
            elif topic == self.topics.changelog:
                if key.endswith(codec.ENDED):  # its execution is over (a marker carried to
                    continue  # a later write: it may even have been restarted since)
                execution_id = codec.execution_of(key)
                if execution_id not in failed:
                    failed.add(execution_id)
                    self._fail_execution(execution_id, reason, out)
            elif (job := self._job_of(topic, value)) is not None:
                execution_id, run_id, attempt = job
                # in the table, or waiting for its rebuild (the result is held behind it)
                if execution_id in self.partition_of and execution_id not in failed:
                    result = ev.WorkerResult(
                        execution_id, run_id, attempt, StateType.FAILED, error=reason
                    )
                    self._apply(self.partition_of[execution_id], result, out, None)

    def _job_of(self, topic: str, value: bytes | None) -> tuple[str, str, int] | None:
        """``(execution id, task run id, attempt)`` of a worker job record, else None."""
        jobs = self.topics.worker_tasks
        if value is None or not (topic == jobs or topic.startswith(jobs + "-")):
            return None
        body = records.loads(value)
        if not isinstance(body, dict) or body.get("type") != "run":
            return None
        return str(body["id"]), str(body["run"]), int(body["attempt"])

    def _fail_execution(self, execution_id: str, reason: str, out: Outbox) -> None:
        """End an execution still in the table FAILED (KILLED from a state that cannot fail,
        KILLING say), as a terminal step would: its update, its tombstones, its ended marker,
        and its flow-concurrency slot given back. One waiting for its rebuild stops the
        processor (:class:`RebuildFailed`)."""
        st = self.states.get(execution_id)
        if st is None and execution_id in self.rebuilds:
            # Its records in memory, which a rebuild reads, are ahead of the changelog now:
            # only a recovery from the changelog can take it back.
            log.error("execution %s waits for its rebuild and its changelog record was refused "
                      "(%s); the processor stops, and its partition's next owner recovers it",
                      execution_id, reason)  # fmt: skip
            raise RebuildFailed(f"execution {execution_id} cannot be rebuilt: its changelog "
                                f"record was refused ({reason})")  # fmt: skip
        if st is None:
            return  # it ended in the same batch: its end record is what was refused
        log.error("execution %s fails: its changelog record was refused (%s)", execution_id,
                  reason)  # fmt: skip
        end = StateType.FAILED
        try:
            st.state.move_execution(end, self.clock(), "execution")
        except IllegalTransition:
            end = StateType.KILLED
            st.state.move_execution(end, self.clock(), "execution")
        commands: list[cmd.Command] = [cmd.ExecutionChanged(execution_id, end, [], terminal=True)]
        flow = self.registry.get(st.namespace, st.flow_id, st.revision)
        if flow is not None and flow.concurrency is not None:
            back = Release(
                st.namespace, st.flow_id, st.id, st.attempt_number, flow.concurrency.limit
            )
            commands.append(cmd.RequestSlot(back))
        staged = Outbox()
        self._stage(self.partition_of[execution_id], st, StepResult(st, commands), staged).count()
        out.extend(staged)

    # -- commit ----------------------------------------------------------------------------

    def _flushed(self, batch: Batch) -> None:
        """Note what the batch read (stepped and flushed) as to be committed."""
        uncommitted = self._uncommitted
        for tp, recs in batch.items():
            if recs and tp.partition in self.owned:
                uncommitted[tp] = recs[-1].offset + 1

    async def _commit(self, partitions: set[int] | None = None) -> None:
        """Commit what the batches read since the last commit (of ``partitions``, default all),
        but never past an event still held (a crash must replay it), nor past a changelog
        record the writer carries (written first). Under exactly-once every cycle's
        transactions commit its offsets (:meth:`_commit_transactions`): nothing is left."""
        self._committed_at = time.monotonic()
        if self.writer.transactions is not None:
            return
        if self.writer.carried:  # what a refused one counted on undone, as in a flush
            await self._flush(Outbox(), carry=False)
        left = dict(self._uncommitted)
        offsets = self._take_offsets(partitions)
        if offsets and not self.own_all_partitions:
            assert self._consumer is not None
            await self.writer.gate.passing()
            try:
                await self._consumer.commit(offsets)
            except CommitFailedError as exc:
                self._commit_refused({tp: left[tp] for tp in offsets}, exc)

    def _commit_refused(self, offsets: dict[TopicPartition, int], exc: CommitFailedError) -> None:
        """The group refused the commit: it has moved on (this member was expelled after a
        stall past its session, or a rebalance began). A rebalance, not a failure, so the
        process goes on: aiokafka rejoins, and the revocation that comes first
        (:meth:`revoked`) commits what it still can, drops what is left of the partitions and
        parks their state, as at any rebalance. Their next owner (this processor again,
        perhaps) reads the records since the last commit against the changelog's state,
        where they are no-ops. Until that revocation the offsets are kept to commit."""
        self.metrics.commit_failed("executor")
        log.error(
            "executor: the consumer group refused the offset commit of partitions %s (%s); "
            "taken as a rebalance: rejoining, their records since the last commit are read "
            "again",
            sorted({tp.partition for tp in offsets}),
            exc.__cause__ or type(exc).__name__,  # aiokafka's own text is a page long
        )
        for tp, upto in offsets.items():
            self._uncommitted.setdefault(tp, upto)

    def _take_offsets(self, partitions: set[int] | None) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit of ``partitions`` (default all), taken off what is left to
        commit; never past an event still held."""
        if not self._uncommitted:
            return {}
        bounds = self.held.commit_bounds()
        offsets = {}
        for tp, upto in list(self._uncommitted.items()):
            if partitions is not None and tp.partition not in partitions:
                continue
            del self._uncommitted[tp]
            bound = bounds.get((tp.topic, tp.partition))
            offsets[tp] = OffsetAndMetadata(upto if bound is None else min(upto, bound), "")
        return offsets

    async def _commit_transactions(self, out: PartitionOutboxes) -> None:
        """Exactly-once: each input partition's records (sized, with what the refusals of
        oversized ones undid: :meth:`_sized`) and its input offsets commit in one transaction
        (:mod:`~kestream.runtime.executor_transactions`). A partition whose records the broker
        refused is committed again without them (:meth:`_without_refused`). Any other failure
        raises: the processor stops, and nothing of the cycle is visible to the partitions'
        next owner."""
        await self.groups.create_topics()  # a worker group's first job: its topic first
        writes: dict[int, TxnWrite] = {}
        for partition, box in out.parts.items():
            if not box.empty():
                writes[partition] = TxnWrite(self._sized(box))
        for tp, offset in self._take_offsets(None).items():
            writes.setdefault(tp.partition, TxnWrite()).offsets[tp] = offset
        self._committed_at = time.monotonic()
        fenced: set[int] = set()
        lost: dict[int, Lost] = {}
        for _ in range(_FLUSH_ROUNDS):
            if not writes:
                break
            written = await self.writer.write_transactions(writes)
            self.recovery.acknowledged(written.checkpoints)
            fenced |= written.fenced
            lost |= written.lost
            writes = {
                partition: self._without_refused(writes[partition], refusals)
                for partition, refusals in written.refused_in.items()
            }
        else:
            if writes:
                raise RuntimeError(
                    f"records of executor partitions {sorted(writes)} still refused after "
                    f"{_FLUSH_ROUNDS} rounds"
                )
        if fenced or lost:
            await self._fenced(fenced, lost)

    async def _close_markers(self, closings: dict[int, set[TopicPartition]]) -> None:
        """Exactly-once: commit the empty transactions that close, per input partition still
        owned, the partitions its producer left without markers (:mod:`.txn_markers`), between
        cycles. A producer fenced or dead meanwhile is handled as in a cycle (a partition that
        cannot be taken back stops the processor, as there); after another failure the
        partition's notes are forgotten (as after any transaction not committed), and what it
        left open waits for its next cycle."""
        async with self._lock:
            if self._stopping or self._rejoining:
                return
            writes = {p: TxnWrite(markers=tps) for p, tps in closings.items() if p in self.owned}
            if not writes:
                return
            try:
                written = await self.writer.write_transactions(writes)
            except Exception as exc:
                log.warning("executor: closing partitions of %s failed: %r", sorted(writes), exc)
                return
            if written.fenced or written.lost:
                try:
                    await self._fenced(written.fenced, written.lost)
                except Exception as exc:  # the loop stops at its next fetch, as after a callback
                    log.exception("executor cannot take partitions back; stopping")
                    self._fatal = exc
                    self._fail(exc)

    def _without_refused(self, write: TxnWrite, refusals: list[Refusal]) -> TxnWrite:
        """A partition's write again, after the broker refused some of its records (its
        transaction aborted): those replaced by their dead letters, with the reason, and what
        their steps counted on undone (:meth:`_undo_refused`, as a flush does), with the same
        input offsets: the cycle moves on."""
        gone = {id(rec) for rec, _ in refusals}
        out = Outbox()
        for rec, reason in refusals:
            topic, key, value, target = rec
            self.letters.add(
                out, topic, target if target is not None else -1, -1, key.encode(), value, reason
            )
        self._undo_refused(refusals, out)
        kept = [rec for rec in write.records if id(rec) not in gone]
        return TxnWrite(kept + self._sized(out), write.offsets)

    def _sized(self, out: Outbox) -> list[CommandRecord]:
        """``out``'s records to commit: a record over the limit is replaced by its dead letter,
        and what its step counted on is undone (:meth:`_undo_refused`), as a flush does."""
        kept: list[CommandRecord] = []
        for box, refused in self._refusal_rounds(out):
            kept += self.writer.sized(self.writer.records_of(box), refused)
        return kept

    # -- partitions: assigned, revoked -----------------------------------------------------

    async def assigned(self, partitions: set[int]) -> None:
        """Recover the new partitions' state, then own them. A recovery that keeps failing
        stops the processor (:meth:`_fail`): it is never left to the rebalance callback, which
        would log it and carry on without the state."""
        async with self._lock:
            self._generation += 1
            if self.fence is not None:
                self.fence.joined(self._consumer)  # the group has just counted this member in
                self.writer.gate.note()  # the generation whose records are written from now
                self._rejoining = False
            new = partitions - self.owned
            if new:
                try:
                    await self._own_transactions(new)
                    await self.recovery.recover(new)
                except RecoveryStopped:
                    return  # stopping: the partitions' next owner recovers them
                except RecoveryFailed as exc:
                    log.error("executor cannot recover partitions %s; stopping: %s",
                              sorted(new), exc)  # fmt: skip
                    self._fatal = exc
                    self._fail(exc)
                    return
            self.owned = set(partitions)
            self.ready.set()
            log.info("executor owns partitions %s", sorted(self.owned))

    async def _own_transactions(self, partitions: set[int]) -> None:
        """Exactly-once: take the partitions' transactional ids before their changelogs are
        read (the former owner's open transactions abort, its producers are fenced); a
        failure is a recovery's."""
        if self.writer.transactions is None:
            return
        try:
            await self.writer.transactions.own(partitions)
        except Exception as exc:
            raise RecoveryFailed(f"cannot take the transactional ids of {sorted(partitions)}: "
                                 f"{exc!r}") from exc  # fmt: skip

    async def revoked(self, partitions: set[int]) -> None:
        """Let go of the partitions' executions, held events, timers and ended markers; the
        state of each one is parked at its checkpoint, for a quick recovery if it comes back."""
        async with self._lock:
            self._generation += 1
            self.ready.clear()
            gone = partitions & self.owned
            # Nothing is written or committed once the group may have moved on (the write gate
            # closed): the carried records would land over the next owner's.
            closed = self.writer.gate.closed()
            if closed is None:
                await self._commit_leaving(gone)
            else:
                log.error("executor: %s: nothing of partitions %s is written or committed at "
                          "their revocation", closed, sorted(gone))  # fmt: skip
            # Records of theirs still carried were not written (the commit failed, the gate
            # closed): the state held is ahead of their changelog, and is not parked. Nor is it
            # once the membership is in doubt: a member that lapsed may have written after
            # another owner, and its checkpoints skip that owner's records.
            unwritten = self.writer.drop_carried(gone)
            await self._let_go(gone, park=not (unwritten or closed is not None))

    async def _let_go(self, gone: set[int], *, park: bool) -> None:
        """Drop the partitions' executions, held events, timers, ended markers, offsets left to
        commit and transactional producers; with ``park``, each one's state is parked at its
        checkpoint, for a quick recovery if it comes back (:meth:`PartitionRecovery.release`)."""
        self._leave_table(self.recovery.release(gone, park=park))
        self.held.leave(gone)
        self.admission.leave(gone)
        self.local.forget(gone)
        for tp in [tp for tp in self._uncommitted if tp.partition in gone]:
            del self._uncommitted[tp]
        self.owned -= gone
        if self.writer.transactions is not None:
            await self.writer.transactions.leave(gone)

    async def _commit_leaving(self, gone: set[int]) -> None:
        """Commit what was flushed of partitions leaving, so their next owner does not replay
        it. A commit the group no longer takes (it has moved on) is left: the next owner
        replays those events against the changelog's state, where they are no-ops."""
        try:
            await self._commit(gone)
        except Exception as exc:  # the group's generation is gone, the broker away, ...
            log.warning("could not commit partitions %s at their revocation: %r",
                        sorted(gone), exc)  # fmt: skip

    # -- partitions: a membership in doubt (lapsed, fenced) --------------------------------

    async def _lapsed(self) -> bool:
        """Whether this member's group membership has lapsed (:mod:`.member_fence`): no
        heartbeat confirmed it for a whole session, so the group may have handed its partitions
        on. Then it writes nothing from the state it holds: the partitions' state is dropped
        (not parked: their new owner may have written their changelog since), their fetching
        paused, and the group asked to rejoin; its assignment recovers them afresh."""
        fence = self.fence
        if fence is None or not fence.lapsed():
            return False
        if not self._rejoining:
            await self._leave_membership(
                f"no heartbeat has confirmed its group membership for {fence.silent_for():.1f} s"
                f" (the session is {fence.session_timeout_s:.1f} s)"
            )
        return True

    async def _leave_membership(self, why: str) -> None:
        """The group may have handed this member's partitions on (``why``): their state is
        dropped (not parked), nothing is written from it, their fetching paused, and the
        group asked to rejoin; its assignment recovers them afresh."""
        self._rejoining = True
        gone = set(self.owned)
        log.error(
            "executor: %s: the group may have handed its partitions %s on; their state is "
            "dropped, nothing is written from it, and the member rejoins",
            why, sorted(gone),
        )  # fmt: skip
        self.ready.clear()
        self._generation += 1
        self.writer.drop_carried(gone)  # not written from the state held either
        await self._let_go(gone, park=False)
        assert self._consumer is not None
        self._consumer.pause(*self._consumer.assignment())
        if self.fence is not None:
            self.fence.rejoin()

    async def _fenced(self, fenced: set[int], lost: Mapping[int, Lost] | None = None) -> None:
        """These partitions' producers were fenced (``fenced``) or died (``lost``): their
        transactions were not committed, or (a dead producer's) may yet be, so the state in
        memory may be ahead of their changelog, and it is dropped, not parked.

        Either another member took their transactional ids (this processor missed a
        rebalance: a stall past its session, say), and the partitions are left to the group,
        which assigns them again at this member's rejoin; or the broker timed the transaction
        out (``INVALID_PRODUCER_EPOCH`` is both), or the producer's sender died of a broker
        restart (:class:`~kestream.runtime.executor_transactions.Lost`), and nobody else will
        serve them: no rebalance comes while this member stays in the group. A heartbeat later
        (time for the consumer to learn of a rebalance), partitions still assigned to it and no
        rejoin pending are taken back in place (:meth:`_reclaim`), with fresh producers."""
        lost = lost or {}
        if fenced:
            log.error(
                "executor fenced on partitions %s: another member took their transactional "
                "ids, or the broker timed their transactions out; their state is dropped",
                sorted(fenced),
            )
        if lost:
            log.warning(
                "executor: the transactional producers of partitions %s died (%s), not fenced; "
                "their state is dropped and read again with fresh producers",
                sorted(lost),
                "; ".join(sorted({died.why for died in lost.values()})),
            )
        partitions = fenced | set(lost)
        self.ready.clear()
        self._generation += 1  # a batch fetched before is fetched again (_fetch_again)
        await self._let_go(partitions & self.owned, park=False)
        await asyncio.sleep(self.settings.heartbeat_interval_ms / 1000)
        back = self._still_assigned(partitions)
        if back:
            await self._reclaim(back)
        if self.owned == self._assigned_partitions():
            self.ready.set()

    def _assigned_partitions(self) -> set[int]:
        """The input partitions the group assigned to this member, as its consumer knows."""
        assert self._consumer is not None
        executions = self.topics.executions
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == executions}

    def _still_assigned(self, partitions: set[int]) -> set[int]:
        """Those of ``partitions`` the consumer still holds with no rejoin pending (a rejoin
        would revoke or assign them: the group decides)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        subscription = getattr(self._consumer, "_subscription", None)
        if (
            coordinator is not None
            and subscription is not None
            and coordinator.need_rejoin(subscription.subscription)
        ):
            return set()
        return partitions & self._assigned_partitions()

    async def _reclaim(self, partitions: set[int]) -> None:
        """Take fenced partitions the group still assigns to this member back in place: their
        transactional ids again, their state from the committed changelog, and the consumer
        rewound to their committed offsets (the records fetched since are read again). A
        partition another member took meanwhile fences this claim: it is left to the group.
        Any other failure stops the processor (the process restarts), never leaving the
        partitions unserved.

        It runs under the cycle lock, which stops every partition meanwhile: a revocation or
        assignment (which wait on the lock) must not interleave with a half-done reclaim (it
        would let go of partitions being read, which the reclaim then owns again), and a cycle
        must not step their records fetched before the rewind. Taking the ids is bounded
        (``PartitionTransactions.retry_for_s``, 60 s, well within ``max_poll_interval_ms``): a
        coordinator that never answers stops the processor rather than the group dropping it."""
        assert self._consumer is not None
        consumer = self._consumer
        try:
            await self._own_transactions(partitions)
        except RecoveryFailed as exc:
            if isinstance(exc.__cause__, Fenced):
                log.error("executor partitions %s are another member's: %s",
                          sorted(partitions), exc)  # fmt: skip
                await self._let_go(partitions, park=False)
                return
            raise
        await self.recovery.recover(partitions)
        tps = [tp for tp in consumer.assignment() if tp.partition in partitions]
        await seek_starts(consumer, tps, {tp: await consumer.committed(tp) for tp in tps})
        self.owned |= partitions
        log.warning("executor took fenced partitions %s back (still assigned to it)",
                    sorted(partitions))  # fmt: skip


def _event_bytes(event: ev.Event) -> bytes | None:
    """The event as a dead letter shows it; None for a timer, or one that cannot be encoded."""
    if isinstance(event, ev.TimerFired):
        return None
    try:
        return records.encode_event(event)
    except Exception:  # the dead letter still goes, with its reason
        return None


def _parent_answer(value: bytes | None, reason: str) -> ev.SubflowFinished | None:
    """What the parent of a refused executions-topic record hears instead, so its Subflow task
    run does not wait for ever: the child that could not be created, or whose answer could not
    be sent, failed with ``reason``. None for any other record."""
    try:
        event = records.decode_event(value)
    except Exception:  # not an event this processor wrote: nothing waits for it
        return None
    if isinstance(event, ev.ExecutionCreated) and event.parent is not None and event.parent.wait:
        link = event.parent
        return ev.SubflowFinished(
            link.execution_id, link.task_run_id, link.attempt, event.execution_id,
            StateType.FAILED, error=reason,
        )  # fmt: skip
    if isinstance(event, ev.SubflowFinished):  # (its outputs or error too large, say)
        return ev.SubflowFinished(
            event.execution_id, event.task_run_id, event.attempt, event.child_id,
            StateType.FAILED, error=reason,
        )  # fmt: skip
    return None


def _stale_restart(event: ev.Restart, ended_attempt: int) -> bool:
    """A restart whose snapshot is of an attempt older than the one that ended last: replaying
    it would run that older attempt again (a redelivered restart, or a lagging index)."""
    return event.snapshot is not None and snapshot_attempt(event.snapshot) < ended_attempt


class _Rebalance(ConsumerRebalanceListener):
    """Routes aiokafka's rebalance callbacks to the processor (input partition numbers)."""

    def __init__(self, service: ExecutorService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.service.assigned({tp.partition for tp in assigned})
