"""The worker role: runs the task runs the executor sends on ``worker-tasks``.

One consumer in the group ``<prefix>worker`` reads ``worker-tasks`` in batches (``getmany``).
Each ``run`` record names its task by flow revision and task id (:func:`records.encode_job`); the
worker finds the task in the flows table (:class:`FlowRegistry`), runs the attempt as an asyncio
task on a :class:`TaskRunner` and produces the result to ``worker-results`` and the task's log
lines to ``logs`` (keyed by execution id). Lines a task logs while it runs (a script's output) go
out every ~200 ms through a :class:`LogStream`; the rest go with the result. ``kill`` records
cancel a running attempt, whose result then says KILLED; ``release`` records remove the directory
the children of a ``WorkingDirectory`` shared (:mod:`kestream.worker.workdirs`).

**Concurrency.** Async tasks (Sleep) await on the loop and take no thread; blocking task code runs
in a pool of ``threads`` slots (``KESTREAM_WORKER_THREADS``). Jobs hand their records to the
producer one at a time (:meth:`WorkerService._produce`) and wait for the acknowledgements
together: many jobs ending at once would otherwise all wait on the same full batch.
``max_in_flight`` (``KESTREAM_WORKER_MAX_IN_FLIGHT``) caps the jobs this process holds (running,
or waiting for their flow revision): when it is reached the consumer pauses its partitions and
fetches again only when a job ends (polling meanwhile: :meth:`WorkerService._poll_paused`).

**Offsets: at-least-once.** A partition's committed offset never passes a record whose job has
not finished, where finished means its result (and logs) were acknowledged by the broker. A
worker that dies mid-Sleep therefore loses nothing: the new owner runs the job again. Jobs that
finished after the last commit may run twice; the executor applies a result once per (task run,
attempt) (DESIGN.md section 3), so that is harmless. Commits happen every
:data:`COMMIT_INTERVAL_S`, on partition revocation, and at stop; the periodic one runs beside the
loop, so its round trip never stands between a fetched job and its start (a revocation or the
stop waits for it, then commits, so commit points never go back). While the broker is away
a result is sent again (with a capped backoff) until it is acknowledged, so an outage delays
results but never changes them. A result the broker refuses for what it is (too large for the
topic, say: :func:`~kestream.runtime.produce_faults.record_fault`) never holds the commit point:
the task run is failed with the broker's reason (a small result without logs or outputs) and
the partition moves on.

**Duplicates.** The executor may send a job again after a crash (its ids are derived, so the
repeat is recognisable). A job whose (execution id, task run id, attempt) is running here, or
finished recently (:class:`~.worker_jobs.RecentJobs`), is not run again: a repeat of a running
job waits for that job (its offset is committed only when the job ends), a repeat of a finished
one is answered with the result that job produced, without running it: the executor sends a job
again when it replays a step after a crash, and its replayed state then waits for that answer.
A job the executor of this process handed over (:meth:`WorkerService.accept_local`,
:mod:`.local_handoff`) runs before its broker copy is fetched; that copy, recognised by its
offset, is attached to the running job or marked done without an answer, while any other copy
of the job is answered again.

**Rebalances.** An attempt runs on one worker at a time, so its side effects happen once. When
partitions are revoked the worker waits up to ``KESTREAM_WORKER_REVOKE_GRACE_S`` (2 s) for the
running jobs of those partitions to end, commits what is done, and forgets the jobs that still
wait for their flow (the new owner will get them again); the whole group waits for the grace,
so it is short (docs/tasks.md, "Workers and rebalances", says why it cannot be limited to the
partitions that move). Jobs still running after the grace keep running through the
rebalance: a partition assigned straight back (the common eager rebalance) finds them through
the duplicate check and commits them when they end. Those whose partition went to
another worker are stopped when the new assignment arrives, without a result: the new owner
runs them again from the committed offset. Before, they ran on both workers at once. If such a
partition comes back before its stopped job has ended, the record fetched again starts a new
job once the stopped one has ended (never beside it): attached to the stopped job, it was never
reported and froze the partition's commit point. A partition that moves between two live
workers is handed over (:mod:`.worker_handover`): the worker that loses it tells the one that
gets it which jobs it finished past the committed offset (ended after the revocation, or behind
one still running), and the new owner starts none of the partition's jobs before it knows, so
those do not run a second time.

**A member the group may have expelled** (frozen past its session, cut off from its group
coordinator, a paused VM) must not report or commit anything for partitions the group has since
given to another worker, which runs their jobs again. Two pieces, shared with the executor:
the member fence (:mod:`.member_fence`) stops every running job, unreported, on the loop's first
turn after a freeze (:meth:`WorkerService._lapsed`), and the member rejoins; the write gate
(:mod:`.write_gate`) holds every result and commits nothing while the membership is in doubt or
aiokafka was told of an expulsion. A result held there waits for the gate to open again (a
heartbeat answered, the next assignment) unless its job is stopped meanwhile: a revocation with
the gate closed stops the running jobs of its partitions at once (no grace, no commit), and an
assignment stops those of partitions it does not give back, and every one when the member
rejoined under a new member id (expelled in between: another worker may have run them).

**Worker groups.** A worker started with a group (``kestream worker --group KEY``,
``KESTREAM_WORKER_GROUP``) reads that group's own jobs topic in the consumer group
``<prefix>worker-KEY`` (creating the topic if it is the first); the others read ``worker-tasks``.
A worker runs only the task types it knows (built-ins and the plugins loaded in its process): a
job of another type fails at once, its error naming the worker group and the missing type,
rather than waiting for a flow revision this worker cannot parse.

**Bad records** (not JSON, unknown type, missing fields, a task id the flow does not have, a flow
revision still unknown after ``KESTREAM_EXECUTOR_FLOW_WAIT_S``) go to the dead-letter topic with
the reason (:func:`records.dead_letter_value`); the loop never stops for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from asyncio import Future
from collections import Counter
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.sizes import over_limit
from kestream.models.state import StateType
from kestream.runtime import local_handoff, records
from kestream.runtime.aio import stray_cancellation
from kestream.runtime.context import BrokerContext
from kestream.runtime.group_coordinator import coordination_failure, group_generation, member_id
from kestream.runtime.hand_over import HandOver
from kestream.runtime.instance_id_guard import duplicate_in, guard_instance_id
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.log_stream import LogStream
from kestream.runtime.member_fence import LOOK_EVERY_S, MemberFence
from kestream.runtime.metrics import Metrics, process_metrics
from kestream.runtime.produce_faults import authorization_fault, permanent_fault, record_fault
from kestream.runtime.static_assignment import only_worker, partitions_of
from kestream.runtime.static_membership import static_member, stop_member
from kestream.runtime.sticky_assignor import moved_from, note_generation, sticky_assignor
from kestream.runtime.topics import ensure_group_topics
from kestream.runtime.worker_handover import (
    HANDOVER_JOBS_WAIT_S,
    AwaitedHandovers,
    Handover,
    decode_handover,
    done_ranges,
    encode_handover,
)
from kestream.runtime.worker_jobs import Job, JobKey, Mark, PartitionLog, RecentJobs
from kestream.runtime.write_gate import WriteGate
from kestream.tasks.base import RunnableTask
from kestream.tasks.registry import known_types
from kestream.worker.runner import TaskRunner

log = logging.getLogger("kestream.worker")

#: How often done offsets are committed (also on revocation and at stop).
COMMIT_INTERVAL_S = 0.2
#: How long ``getmany`` waits for records when there are none (held jobs are retried as often).
FETCH_TIMEOUT_MS = 100
#: Default time :meth:`WorkerService.stop` lets running jobs finish before giving them up; the
#: results of jobs that finish in it (and dead letters, KILLED results) are still produced.
DRAIN_TIMEOUT_S = 9.0
#: How long :meth:`WorkerService.stop` waits for the jobs it gave up on to end once killed.
KILLED_WAIT_S = 1.0
#: How long past the drain's deadline :meth:`WorkerService.stop` waits for the dead letters and
#: KILLED results still being produced, before cancelling them (their records are then not
#: done: the partition's next owner sees them again).
SIDE_TASKS_WAIT_S = 0.5
#: The longest :meth:`WorkerService.stop` waits for the producer to close: aiokafka's close
#: flushes what is queued, with no end when the broker is gone.
PRODUCER_CLOSE_S = 1.0
#: The longest a forced commit (revocation, stop) waits for the periodic one under way (then
#: cancels it), and the stop for its own: on broker loss aiokafka's commit waits for a
#: coordinator with no end, and would hold the stop (and its process's other roles) with it.
COMMIT_WAIT_S = 3.0
#: At most this many jobs handed over in process (:meth:`WorkerService.accept_local`) per
#: partition whose broker copies are not fetched yet; past it, that partition's jobs come by
#: the fetch. Such a job's offset cannot be committed before its copy is fetched, so this
#: bounds what a rebalance, a stop or a crash can run a second time (:mod:`.local_handoff`),
#: and keeps copies from piling up ahead of the fetch.
HANDED_UNFETCHED_MAX = 32
#: The share of ``max_in_flight`` hand-offs never take: kept for fetched jobs, so the jobs of
#: executors in other processes on the same partitions are not starved by the local ones.
FETCH_RESERVE_SHARE = 0.25
#: How often a full worker polls its paused consumer (:meth:`WorkerService._poll_paused`):
#: well within aiokafka's ``max_poll_interval_ms`` (300 s), past which it leaves the group.
FULL_POLL_EVERY_S = 10.0
_ERROR_BACKOFF_S = 0.5
#: The longest pause between two tries of a result that must get through (:func:`_backoff`).
_MAX_BACKOFF_S = 5.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: WorkerService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.service._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service._on_assigned(set(assigned))


class WorkerService:
    """One worker process's task-running loop (see the module docs for its guarantees)."""

    def __init__(
        self,
        ctx: BrokerContext,
        registry: FlowRegistry,
        *,
        threads: int | None = None,
        max_in_flight: int | None = None,
        own_all_partitions: bool = False,
        metrics: Metrics | None = None,
        group: str | None = None,
        task_types: Iterable[str] | None = None,
        alone: bool | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``own_all_partitions``: take every partition without a consumer group, as the executor
        does for a one-shot ``kestream run`` on its own embedded broker (no group join to wait).
        ``alone``: the only worker its broker sees: every partition is taken without joining
        the group, and committed under its name (default: what ``standalone`` on its own
        embedded broker says, :mod:`~kestream.runtime.static_assignment`).
        ``metrics``: where to count (default: the process's :func:`process_metrics`).
        ``group``: the worker group served (default ``KESTREAM_WORKER_GROUP``; unset, the
        default workers). ``task_types``: the types this worker runs (default: every type
        this process knows, :func:`known_types`). ``on_failure``: told when the worker stops
        for good (its group coordination ended: :meth:`_coordination_ended`), so that its
        process exits and is replaced."""
        settings = ctx.settings
        self.on_failure = on_failure
        #: Why the worker stopped for good, if it did.
        self.failure: BaseException | None = None
        self.own_all_partitions = own_all_partitions
        self.alone = (only_worker() if alone is None else alone) and not own_all_partitions
        self.ctx = ctx
        self.registry = registry
        self.threads = threads if threads is not None else settings.task_threads
        self.max_in_flight = (
            max_in_flight if max_in_flight is not None else settings.worker_max_in_flight
        )
        #: The worker group served (``None``: the default workers) and the topic it reads.
        self.group = group if group is not None else settings.worker_group
        self.topic = ctx.topics.jobs_topic(self.group)
        suffix = f"-{self.group}" if self.group is not None else ""
        self.group_id = f"{settings.topic_prefix}worker{suffix}"
        self.task_types = frozenset(task_types if task_types is not None else known_types())
        self.flow_wait_s = settings.executor_flow_wait_s
        #: How long a revocation waits for its partitions' running jobs
        #: (``KESTREAM_WORKER_REVOKE_GRACE_S``).
        self.revoke_grace_s = settings.worker_revoke_grace_s
        #: Counters: received, started, finished, duplicates, killed, refused, dead_lettered,
        #: held.
        self.stats: Counter[str] = Counter()
        #: Set when the group has assigned partitions to this worker (cleared while revoked).
        self.assigned = asyncio.Event()
        self.limit = ctx.record_limit
        self._runner = TaskRunner(
            threads=self.threads,
            max_output_bytes=self.limit.output_bytes,
            inline_max_bytes=ctx.settings.output_inline_max_bytes,
        )
        #: Lines tasks log while they run, produced every ~200 ms rather than with the result;
        #: those refused for good are dealt with as those sent with a result are.
        self.log_stream = LogStream(self._send_lines, refused=self._logs_refused)
        self._consumer: AIOKafkaConsumer | None = None
        #: The group's assignor, a class of this consumer's own (:mod:`.sticky_assignor`).
        self._assignor = sticky_assignor()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Until when (monotonic) a stopping worker still produces results, dead letters and
        #: answers: the stop's drain deadline (none once stopping without one).
        self._send_until = 0.0
        self._partitions: dict[TopicPartition, PartitionLog] = {}
        #: Revoked partitions' fetched offsets, until the next assignment says whether each
        #: comes back or goes to another member, which is then handed what this worker
        #: finished of it (:mod:`.worker_handover`).
        self._revoked_logs: dict[TopicPartition, PartitionLog] = {}
        #: Partitions taken over from a live member: their jobs wait for its hand-over.
        self._awaited = AwaitedHandovers()
        self._jobs: dict[JobKey, Job] = {}  # running or held
        self._runs: dict[tuple[str, str], Job] = {}  # by (execution id, task run id)
        self._held: dict[JobKey, Job] = {}  # waiting for their flow revision
        self._finished = RecentJobs()
        self._side_tasks: set[asyncio.Task[None]] = set()  # dead letters, KILLED results
        self._slot_freed = asyncio.Event()
        self._last_commit = 0.0
        #: Records go to the producer one caller at a time (:meth:`_produce`).
        self._hand_over = HandOver()
        #: Told of each result acknowledged, with its ack and value (:mod:`.local_handoff`).
        self.on_result: Callable[[Any, bytes], None] | None = None
        #: The periodic commit under way beside the loop (:meth:`_commit_in_background`).
        self._committing: asyncio.Task[None] | None = None
        #: Partitions being revoked: a periodic commit begun meanwhile leaves them out, for it
        #: could reach the broker after the revocation, over their next owner's commits.
        self._revoking: set[TopicPartition] = set()
        #: The slots the fetch under way claimed (``max_records``), 0 between fetches.
        self._fetch_room = 0
        #: When ``getmany`` last returned (aiokafka's idle clock: :meth:`_poll_paused`).
        self._polled_at = time.monotonic()
        self.metrics = metrics if metrics is not None else process_metrics()
        self._pending_share = self.metrics.share(self.metrics.worker_job_pending)
        self._lag_share = self.metrics.share(self.metrics.consumer_lag, "worker")
        self._partition_lag = self.metrics.partition_lag("worker")
        #: In the group with an assignment (possibly empty: more workers than partitions).
        self._in_group = False
        #: What every result and offset commit passes first (:mod:`.write_gate`).
        self.gate = WriteGate(role="worker")

    @property
    def fence(self) -> MemberFence | None:
        """The group membership's last confirmation (:mod:`.member_fence`), which the gate
        consults; None without a group."""
        return self.gate.fence

    @fence.setter
    def fence(self, fence: MemberFence | None) -> None:
        self.gate.fence = fence

    @property
    def in_flight(self) -> int:
        """Jobs held by this worker: running, or waiting for their flow revision."""
        return len(self._jobs)

    # -- health (kestream.runtime.health.HealthPart) ---------------------------------------

    health_name = "worker"

    @property
    def is_live(self) -> bool:
        """The loop task runs (it survives failed iterations; only :meth:`stop` ends it)."""
        return self._task is not None and not self._task.done()

    @property
    def is_ready(self) -> bool:
        """Joined the group and holding an assignment (even an empty one); false while a
        rebalance has revoked it."""
        return self.is_live and self._in_group

    def health_detail(self) -> dict[str, Any]:
        partitions = sorted(tp.partition for tp in self._partitions)
        detail: dict[str, Any] = {"partitions": partitions, "jobs": len(self._jobs)}
        detail["held"] = len(self._held)
        if self.group is not None:
            detail["group"] = self.group
        return detail

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the clients, join the group, and run the loop in a background task."""
        ctx = self.ctx
        if self.group is not None:  # the first worker of its group may come before any job
            await ensure_group_topics(ctx.settings, ctx.bootstrap, ctx.kind, [self.topic])
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        await self._producer.start()
        group = None if self.own_all_partitions else self.group_id
        joins = group is not None and not self.alone
        self._consumer = make_consumer(
            ctx.settings,
            ctx.bootstrap,
            ctx.kind,
            group_id=group,
            partition_assignment_strategy=(self._assignor,),
            # A restarted worker takes its predecessor's partitions at its first join.
            **(static_member(ctx.settings, ctx.kind) if joins else {}),
        )
        if self.own_all_partitions:
            await self._consumer.start()
            count = ctx.settings.partitions
            owned = {TopicPartition(self.topic, p) for p in range(count)}
            self._consumer.assign(list(owned))
            self._on_assigned(owned)
        elif self.alone:  # the group's offsets, no member: nothing to fence (static_assignment)
            await self._consumer.start()
            owned = set(await partitions_of(self._consumer, [self.topic]))
            self._consumer.assign(list(owned))
            self._on_assigned(owned)
        else:
            self.fence = MemberFence(ctx.settings.session_timeout() / 1000)
            self._consumer.subscribe([self.topic], listener=_Rebalance(self))
            await self._consumer.start()  # (the first join: its assignment watches the fence)
            # Replaced by a live process with its instance id: stop, never take the id back.
            guard_instance_id(self._consumer, self._fail)
            self.fence.watch(self._consumer)
            self.fence.guard(self._lapsed, LOOK_EVERY_S)
        self._task = asyncio.create_task(self.run(), name="worker-loop")
        self.metrics.worker_job_thread.inc(self.threads)

    async def run(self) -> None:
        """The loop: fetch, dispatch, retry held jobs, commit; until :meth:`stop`."""
        while not self._stopping:
            try:
                await self._iteration()
            except asyncio.CancelledError:
                if not stray_cancellation():
                    raise
                if self._coordination_ended():
                    return
                log.exception("worker loop iteration failed (a cancellation not aimed at it)")
                await asyncio.sleep(_ERROR_BACKOFF_S)
            except Exception:  # log, back off, carry on: unless nothing can come of it
                if self._coordination_ended():
                    return
                log.exception("worker loop iteration failed")
                await asyncio.sleep(_ERROR_BACKOFF_S)

    def _coordination_ended(self) -> bool:
        """Whether aiokafka's group coordination has ended for good (a join the group refused,
        such as a member offering another assignor: :mod:`.sticky_assignor`; a rebalance
        callback that raised). Every fetch then raises its end again and the member never
        rejoins: the worker stops, loudly, no longer live, and :attr:`on_failure` has its
        process replaced, rather than failing every half second for ever."""
        consumer = self._consumer
        if consumer is None or self.fence is None or self._stopping:  # no group, or its end
            return False
        ended = coordination_failure(consumer)
        if ended is None:
            return False
        failure: BaseException | None = duplicate_in(ended)  # (the guard told it already)
        if failure is None:
            failure = RuntimeError(f"the worker's group coordination ended: {ended!r}")
            failure.__cause__ = ended
        log.error("worker: %s; the worker stops", failure)
        self._fail(failure)
        return True

    def _fail(self, failure: BaseException) -> None:
        """Stop for good (once): :attr:`on_failure` has the process replaced; a
        :class:`~.instance_id_guard.DuplicateInstanceId` (another live process took this
        worker's instance id, and with it its partitions) is told as it is, so ``standalone``
        does not start this one again to take the id back."""
        if self.failure is not None:
            return
        self.failure = failure
        if self.on_failure is not None:
            self.on_failure(failure)

    async def stop(self, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop fetching, let running jobs finish (bounded), commit what is done, close.

        Every step is bounded, their sum within the supervisor's SIGTERM grace: the drain
        (:data:`DRAIN_TIMEOUT_S`, :data:`KILLED_WAIT_S`, :data:`SIDE_TASKS_WAIT_S`), the
        commits (:data:`COMMIT_WAIT_S` twice) and the producer's close
        (:data:`PRODUCER_CLOSE_S`)."""
        self._send_until = time.monotonic() + drain_timeout
        self._stopping = True
        local_handoff.disconnect(self)
        if self.fence is not None:
            self.fence.stop()
        consumer = self._consumer
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.metrics.worker_job_thread.dec(self.threads)
        if consumer is not None and consumer.assignment():
            consumer.pause(*consumer.assignment())
        for job in list(self._jobs.values()):  # never started: the next owner gets them
            if job.task is None:
                self._forget(job)
        await self._drain(drain_timeout)
        await self.log_stream.close()
        if consumer is not None:
            await self._end_background_commit()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._commit(force=True), COMMIT_WAIT_S)
            await stop_member(consumer)  # a static member too: its partitions move at once
            self._consumer = None
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), PRODUCER_CLOSE_S)
            except TimeoutError:
                log.warning("the producer did not close in %.0f s; left", PRODUCER_CLOSE_S)
            self._producer = None
        self._runner.close()
        self._pending_share.report(0)
        self._lag_share.report(0)
        self._partition_lag.clear()

    async def _drain(self, timeout: float) -> None:
        """Let running jobs finish, up to ``timeout`` (their results are produced meanwhile:
        :meth:`_may_send`), then give them up; then wait for the dead letters and KILLED
        results under way, until the same deadline and :data:`SIDE_TASKS_WAIT_S` past it."""
        running = [job.task for job in self._jobs.values() if job.task is not None]
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            self.gate.wake()  # the drain's deadline: results waiting at the gate give up
            if pending:
                log.warning(
                    "stopping with %d jobs still running; they will run again", len(pending)
                )
                for job in list(self._jobs.values()):
                    job.abandoned = True
                    self._runner.kill(job.key[0], job.key[1])
                self.gate.wake()
                await asyncio.wait(pending, timeout=KILLED_WAIT_S)
        if self._side_tasks:
            left = max(self._send_until - time.monotonic(), 0.0) + SIDE_TASKS_WAIT_S
            _, late = await asyncio.wait(list(self._side_tasks), timeout=left)
            if late:
                log.warning("stopping with %d records not produced; cancelled", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    def _may_send(self) -> bool:
        """Whether records may still be produced: always while running, and while stopping
        until the drain's deadline, so a job that finishes during the drain reports its result
        (instead of running again on the partition's next owner)."""
        return not self._stopping or time.monotonic() < self._send_until

    async def __aenter__(self) -> WorkerService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop --------------------------------------------------------------------------

    async def _iteration(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "WorkerService is not started"
        if self.fence is not None and self.fence.tripped:  # until the group answers the rejoin
            await self._poll_paused(consumer, FETCH_TIMEOUT_MS)
            return
        if self._awaited:
            self._end_overdue_waits()
        if self._held:
            self._retry_held()
        room = self.max_in_flight - self.in_flight + self._held_for_handover()
        if room <= 0:
            if time.monotonic() - self._polled_at >= FULL_POLL_EVERY_S:
                await self._poll_paused(consumer, 0)
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), FETCH_TIMEOUT_MS / 1000)
        else:
            if consumer.paused():
                consumer.resume(*consumer.paused())
            if self.on_result is not None:  # in a local hand-off: leave it half the room
                room -= room // 2
            self._fetch_room = room  # claimed: hand-offs meanwhile take only other slots
            try:
                batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room)
            finally:
                self._fetch_room = 0
                self._polled_at = time.monotonic()
            self._take_batch(consumer, batch)
            if self._awaited.reading():
                await self._note_read_to_end(consumer)
        self._pending_share.report(len(self._held))
        self._commit_in_background()

    def _take_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
    ) -> None:
        """Handle a fetch's records and note each partition's lag."""
        behind: dict[tuple[str, int], int] = {}
        for tp, recs in batch.items():
            for record in recs:
                self._handle(record)
            highwater = consumer.highwater(tp) if recs else None
            if highwater is not None:  # the last fetch's high watermark: no extra request
                behind[tp] = max(0, highwater - recs[-1].offset - 1)
        self._lag_share.report(self._partition_lag.report(behind, consumer.assignment()))
        self._start_released()

    async def _note_read_to_end(self, consumer: AIOKafkaConsumer) -> None:
        """Partitions waiting to be read to their end (:mod:`.worker_handover`) that now are:
        their position has reached what the last fetch could read (the last stable offset
        under read_committed, past the markers of committed transactions; else the high
        watermark). Their held jobs start at once, not after the next fetch's wait."""
        assignment = consumer.assignment()
        for tp in self._awaited.reading():
            if tp not in assignment:
                continue
            stable = consumer.last_stable_offset(tp)
            end = stable if stable is not None and stable >= 0 else consumer.highwater(tp)
            if end is None:  # no fetch answered for it yet (nor its position, maybe)
                continue
            if await consumer.position(tp) >= end and self._awaited.reached_end(tp):
                self._waited_for(tp)
        self._start_released()

    def _start_released(self) -> None:
        """Start the held jobs of partitions whose wait ended (:meth:`_waited_for`) now, not
        after the next fetch's wait."""
        if self._awaited.released:
            self._awaited.released = False
            self._retry_held()

    async def _poll_paused(self, consumer: AIOKafkaConsumer, timeout_ms: int) -> None:
        """Poll with every assigned partition paused: no job is fetched, but the consumer
        counts as polling. A worker that takes no job (full, or its membership lapsed until
        the group answers its rejoin) must still poll: aiokafka leaves the group once
        ``getmany`` has not been called for ``max_poll_interval_ms`` (300 s), and refuses to
        rejoin while that lasts; the write gate then stops every running job unreported (a
        job longer than that on a full worker would never end), and a lapsed worker would
        never fetch again. Kafka Streams does the same since Kafka 2.3 (KIP-442): its thread
        keeps calling ``poll`` with the partitions of full buffers paused, so
        ``max.poll.interval.ms`` keeps its meaning (the processing thread is stuck) instead of
        being raised past any task, which would hide a stuck loop for as long. Records of
        partitions a rebalance assigned meanwhile (not paused) are taken as any fetch's.

        aiokafka drops what it had fetched ahead for a partition polled while paused (fetched
        again after the resume), so a full worker polls so only every
        :data:`FULL_POLL_EVERY_S`: at each turn it would cost the fetch that follows a freed
        slot a round trip."""
        consumer.pause(*consumer.assignment())
        try:
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=1)
        finally:
            self._polled_at = time.monotonic()
        for recs in batch.values():
            for record in recs:
                self._handle(record)

    def _handle(self, record: ConsumerRecord[Any, Any]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        partition = self._partitions.setdefault(tp, PartitionLog())
        mark = partition.add(record.offset)
        self.stats["received"] += 1
        handed = partition.handed.pop(record.offset, None)
        if handed is not None and self._handed_copy(handed, mark):
            return
        try:
            body = records.loads(record.value)
            if not isinstance(body, dict):
                raise records.RecordError("a job must be a JSON object")
            kind = body.get("type")
            if kind == "run":
                self._accept(body, record, mark)
            elif kind == "kill":
                self._kill(str(body["id"]), str(body["run"]))
                mark.done = True
            elif kind == "release":  # a WorkingDirectory ended: remove its shared directory
                self._runner.release_workdir(str(body["id"]), str(body["run"]))
                mark.done = True
            elif kind == "handover":  # the partition's previous owner: what it finished
                self._take_handover(record.topic, decode_handover(body, record.partition))
                mark.done = True
            else:
                raise records.RecordError(f"unknown job type {kind!r}")
        except records.RecordError as exc:
            self._dead_letter(record, str(exc), [mark])
        except Exception as exc:  # any malformed job (deep, huge numbers...): a dead letter
            self._dead_letter(record, f"bad job record: {type(exc).__name__}: {exc}", [mark])

    def _accept(self, body: dict[str, Any], record: ConsumerRecord[Any, Any], mark: Mark) -> None:
        key: JobKey = (str(body["id"]), str(body["run"]), int(body["attempt"]))
        where = (str(body["namespace"]), str(body["flowId"]), int(body["revision"]))
        task_id = str(body["taskId"])
        current = self._jobs.get(key)
        if current is not None and not current.abandoned:
            current.marks.append(mark)  # running (or held) here: commit it when that job ends
            self.stats["duplicates"] += 1
            return
        if key in self._finished:
            self.stats["duplicates"] += 1
            answer = self._finished.result(key)
            if answer is None:
                mark.done = True
            else:  # the executor replayed the step that sent it: it waits for this answer
                tp = TopicPartition(record.topic, record.partition)
                self._spawn(self._answer_again(key, answer, mark, self._revoked_since(tp)))
            return
        job = Job(key, where, task_id, body, record, [mark], time.monotonic() + self.flow_wait_s)
        self._jobs[key] = job
        self._runs[key[:2]] = job
        task_type = body.get("taskType")  # (absent from jobs sent by older executors)
        if task_type is not None and str(task_type) not in self.task_types:
            self._refuse_type(job, str(task_type))
        elif current is not None and current.task is not None and not current.task.done():
            # Its partition went away and came back while the copy stopped then still ends (a
            # thread cannot be killed at once): run the job anew once that copy has ended, so
            # the attempt never runs twice here and this record is reported and committed.
            current.task.add_done_callback(lambda _: self._start_successor(job))
            self.stats["waiting_abandoned"] += 1
        else:
            self._start_or_hold(job)

    def _handed_copy(self, job: Job, mark: Mark) -> bool:
        """Take the fetched broker copy of ``job``, handed over here, by its offset: done if the
        job's result (or dead letter) was acknowledged, else waiting for it. ``False`` (the job
        ended without either: a failure in the worker) runs the copy as any job."""
        if job.finished:
            mark.done = True
        elif job.dead_lettering or (self._jobs.get(job.key) is job and not job.abandoned):
            job.marks.append(mark)  # done with the job's result or dead letter
        else:
            return False
        self.stats["handed_copies"] += 1
        return True

    def _handoff_room(self) -> bool:
        """Whether a job handed over may start now: within ``max_in_flight`` counting the
        slots the fetch under way claimed (half the free ones, :meth:`_iteration`), or between
        fetches leaving :data:`FETCH_RESERVE_SHARE` of them to fetched jobs."""
        reserve = int(self.max_in_flight * FETCH_RESERVE_SHARE)
        return self.in_flight + max(self._fetch_room, reserve) < self.max_in_flight

    def accept_local(self, record: ConsumerRecord[Any, Any]) -> bool:
        """Start a ``run`` job the executor of this process just had acknowledged, before its
        broker copy is fetched (:mod:`.local_handoff`); ``False`` leaves it to that copy.

        Taken only when it can start now: its partition is owned (not being revoked), there is
        room (:meth:`_handoff_room`), fewer than :data:`HANDED_UNFETCHED_MAX` copies of its
        partition's handed jobs are still unfetched, the job is not known here yet, and its flow
        revision and runnable task are known. The job has no offset to commit: its broker copy,
        when fetched, is recognised by its offset (:meth:`_handed_copy`)."""
        tp = TopicPartition(record.topic, record.partition)
        partition = self._partitions.get(tp)
        if (
            self._stopping
            or record.topic != self.topic
            or partition is None
            or tp in self._revoking
            or tp in self._awaited
            or not self._in_group
            or self.gate.closed() is not None
            or not self._handoff_room()
        ):
            return False
        if len(partition.handed) >= HANDED_UNFETCHED_MAX:
            self.stats["handoff_refused_unfetched"] += 1
            return False
        body = records.loads(record.value)
        if not isinstance(body, dict) or body.get("type") != "run":
            return False
        key: JobKey = (str(body["id"]), str(body["run"]), int(body["attempt"]))
        if key in self._jobs or key in self._finished:
            return False
        where = (str(body["namespace"]), str(body["flowId"]), int(body["revision"]))
        task_id, task_type = str(body["taskId"]), body.get("taskType")
        flow = self.registry.get(*where)
        if task_type is not None and str(task_type) not in self.task_types:
            return False
        if flow is None or not isinstance(flow.task_index().get(task_id), RunnableTask):
            return False
        job = Job(key, where, task_id, body, record, [], time.monotonic() + self.flow_wait_s)
        partition.handed[record.offset] = job
        self._jobs[key] = job
        self._runs[key[:2]] = job
        self._start_or_hold(job)
        self.stats["handed_over"] += 1
        return True

    def _start_or_hold(self, job: Job) -> None:
        if not self._try_start(job):
            self._held[job.key] = job
            self.stats["held"] += 1

    def _start_successor(self, job: Job) -> None:
        """Start a job that waited for the stopped copy of its attempt to end, unless it was
        let go meanwhile (its partition revoked again, the worker stopping, a kill)."""
        if self._jobs.get(job.key) is job and not self._stopping:
            self._start_or_hold(job)

    def _try_start(self, job: Job) -> bool:
        """Start the job if its flow revision is known and its partition's hand-over is not
        awaited (``False``: hold it for later)."""
        if job.partition in self._awaited:
            self._awaited.clock(job.partition)
            return False
        (namespace, flow_id, revision), task_id = job.where, job.task_id
        flow = self.registry.get(namespace, flow_id, revision)
        if flow is None:
            return False
        task = flow.task_index().get(task_id)
        if not isinstance(task, RunnableTask):
            what = "no task" if task is None else "not a runnable task:"
            self._give_up(job, f"{what} {task_id!r} in flow {namespace}.{flow_id} rev {revision}")
            return True
        try:
            run = records.decode_job(job.body, task)
        except Exception as exc:  # the job fails, the partition goes on
            self._give_up(job, f"bad job record: {type(exc).__name__}: {exc}")
            return True
        job.task = asyncio.create_task(self._execute(job, run), name=f"job-{job.key[1]}")
        self.stats["started"] += 1
        return True

    def _held_for_handover(self) -> int:
        """Jobs held for their partition's hand-over or end (:mod:`.worker_handover`), at most
        ``max_in_flight``: they take no slot, or a worker they filled would never fetch what
        they wait for."""
        if not self._awaited:
            return 0
        held = sum(1 for job in self._held.values() if job.partition in self._awaited)
        return min(held, self.max_in_flight)

    def _end_overdue_waits(self) -> None:
        """Partitions whose hand-over (or end) did not come in time: their jobs start."""
        for tp, member in self._awaited.expired():
            if not any(job.partition == tp for job in self._held.values()):
                continue  # nothing was held for it (a partition with no job yet)
            if member is None:
                log.warning("worker: partition %d not read to its end within %.0f s; its jobs "
                            "run", tp.partition, self._awaited.wait_s)  # fmt: skip
            else:
                log.warning(
                    "worker: no hand-over of partition %d from member %s within %.0f s; its "
                    "jobs run (any that member finished after its revocation run again)",
                    tp.partition, member, self._awaited.wait_s,
                )  # fmt: skip
            self._waited_for(tp)

    def _retry_held(self) -> None:
        now = time.monotonic()
        for key, job in list(self._held.items()):
            if self._try_start(job):
                self._held.pop(key, None)
            elif job.partition not in self._awaited and now >= job.deadline:
                namespace, flow_id, revision = job.where
                self._give_up(
                    job,
                    f"flow {namespace}.{flow_id} revision {revision} "
                    f"unknown after {self.flow_wait_s:g}s",
                )

    def _give_up(self, job: Job, reason: str) -> None:
        self._forget(job)
        job.dead_lettering = True
        self._dead_letter(job.record, reason, job.marks, job)

    def _forget(self, job: Job) -> None:
        # By identity: a stopped copy that ends must not take its successor with it.
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        if self._held.get(job.key) is job:
            del self._held[job.key]
        if self._runs.get(job.key[:2]) is job:
            del self._runs[job.key[:2]]
        self._slot_freed.set()

    def _kill(self, execution_id: str, task_run_id: str) -> None:
        job = self._runs.get((execution_id, task_run_id))
        started = job is None or job.task is not None
        if started and self._runner.kill(execution_id, task_run_id):
            self.stats["killed"] += 1
        elif job is not None and job.task is not None:  # started, not yet in the runner
            job.kill_requested = True
            self.stats["killed"] += 1
        elif job is not None:  # not started (held for its flow, or waiting for a stopped
            # copy to end): report it killed without running it
            self._forget(job)
            result = ev.WorkerResult(
                job.key[0], job.key[1], job.key[2], StateType.KILLED, error="Task was killed"
            )
            self._spawn(self._report(job, result))
            self.stats["killed"] += 1

    def _refuse_type(self, job: Job, task_type: str) -> None:
        """Fail a job of a type this worker lacks: it cannot be handed to another worker (its
        partition is this worker's), and holding it would hold its execution for ever."""
        group = f"worker group '{self.group}'" if self.group else "the default worker group"
        where = f"{socket.gethostname()}/{os.getpid()}"
        error = (
            f"task type '{task_type}' cannot run on {group}: worker {where} does not have it "
            "(install its plugin on the group's workers, or set the task's workerGroup)"
        )
        log.warning("refusing job %s: %s", job.key, error)
        self._forget(job)
        result = ev.WorkerResult(job.key[0], job.key[1], job.key[2], StateType.FAILED, error=error)
        self._spawn(self._report(job, result))
        self.stats["refused"] += 1

    async def _report(self, job: Job, result: ev.WorkerResult) -> None:
        """Produce the result of a job that did not run (killed while held, or refused); not
        once its partition was revoked while the result waited at the gate."""
        sent = await self._publish(job, result, [], self._revoked_since(job.partition))
        if sent is not None:
            self._done(job, sent[1])

    async def _answer_again(
        self, key: JobKey, answer: bytes, mark: Mark, given_up: Callable[[], bool]
    ) -> None:
        """Produce a finished job's result again, for a copy of the job the executor sent
        after replaying its step (its state then lacks the result it had): the attempt does
        not run twice, and the executor applies the result once. Not once ``given_up()``."""
        topic = self.ctx.topics.results
        if await self._send_until_acked(topic, answer, key[0].encode(), given_up):
            mark.done = True
            self.stats["answered_again"] += 1

    # -- running a job -----------------------------------------------------------------------

    async def _execute(self, job: Job, run: cmd.RunTask) -> None:
        labels = (job.where[0], job.where[1], run.task.type)
        self.metrics.job_started(*labels)
        started, counted = time.monotonic(), False
        try:
            if job.kill_requested:
                result = ev.WorkerResult(
                    run.execution_id, run.task_run_id, run.attempt, StateType.KILLED,
                    error="Task was killed",
                )  # fmt: skip
                lines: list[cmd.LogLine] = []
            else:
                result, lines = await self._runner.run(run, on_line=self._line_sink(job))
            seconds = time.monotonic() - started
            job.ran = ran = not job.abandoned  # ran to its end here, not stopped on the way
            sent = None if job.abandoned else await self._publish(job, result, lines)
            if sent is not None:
                self._done(job, sent[1])
                self.stats["finished"] += 1
                self.metrics.job_ended(*labels, sent[0].state.value, seconds)
                counted = True
            elif ran:
                self._ran_unreported(job, result)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not kill the loop; the job runs again later
            log.exception("job %s failed in the worker", job.key)
        finally:
            if not counted:  # no result produced: out of the running gauges, not ended
                self.metrics.job_abandoned(*labels)
            self._forget(job)

    def _line_sink(self, job: Job) -> Callable[[cmd.LogLine], None]:
        namespace, flow_id, _ = job.where
        return lambda line: self.log_stream.add(job.key, namespace, flow_id, line)

    async def _send_lines(self, namespace: str, flow_id: str, lines: list[cmd.LogLine]) -> None:
        """Produce lines logged by a running job and wait for the acks (:class:`LogStream`).
        Of several records' failures, one the broker may take later is raised first: the whole
        batch is then sent again (the index keeps each line once), rather than dropped with a
        part refused for good."""
        key = lines[0].execution_id.encode()
        parts = records.log_records(namespace, flow_id, lines, max_bytes=self.limit.value_bytes)
        acks = await self._produce([(self.ctx.topics.logs, part, key) for part in parts])
        outcomes = await asyncio.gather(*acks, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:  # a part the broker may take later makes the batch be sent again
            raise next((f for f in failures if not permanent_fault(f)), failures[0])

    async def _produce(self, sends: Sequence[tuple[str, bytes, bytes | None]]) -> list[Future[Any]]:
        """Hand records (topic, value, key) to the producer in order, one caller at a time
        (:class:`~kestream.runtime.hand_over.HandOver`: thousands of jobs ending together with
        results for one partition, a ForEach's children, would otherwise wake each other at
        every drain of its batch); returns their acknowledgements, to await outside."""
        assert self._producer is not None
        return await self._hand_over.send(self._producer, sends)

    async def _produce_gated(
        self,
        sends: Sequence[tuple[str, bytes, bytes | None]],
        given_up: Callable[[], bool],
        held: Callable[[], bool] | None = None,
        refused: Callable[[BaseException], bool] | None = None,
    ) -> list[Future[Any]] | None:
        """:meth:`_produce` for a write that passed the gate: ``None`` (nothing handed over)
        when, by the time its turn at the producer comes, the write is given up, the gate has
        closed again or ``held()`` (the caller then waits at the gate again, or gives up). A
        record the client refuses at the hand-over with an error ``refused`` accepts gets it as
        its acknowledgement (:meth:`HandOver.send_if`)."""
        assert self._producer is not None

        def still_wanted() -> bool:
            if given_up() or self.gate.closed() is not None:
                return False
            return held is None or not held()

        return await self._hand_over.send_if(self._producer, sends, still_wanted, refused=refused)

    def _ran_unreported(self, job: Job, result: ev.WorkerResult) -> None:
        """``job`` ran to its end, but its result was not sent: its partition was revoked
        meanwhile and given to another member, or the stop's drain ended. Its effects are done,
        so it is remembered with its result (its offsets stay uncommitted): a copy fetched
        again by this worker, once its partition comes back, is answered with that result
        instead of running the attempt a second time. A copy fetched by another worker runs
        there (at-least-once); the logs the run wrote here are not sent."""
        value = records.encode_event(result)
        if self.limit.fits(value):
            self._finished.add(job.key, value)

    def _done(self, job: Job, value: bytes) -> None:
        """Mark ``job``'s records done, and remember it with the result record it was answered
        with (``value``, as produced: encoded once)."""
        self._finished.add(job.key, value)
        job.finished = True
        for mark in job.marks:
            mark.done = True

    async def _publish(
        self,
        job: Job,
        result: ev.WorkerResult,
        lines: list[cmd.LogLine],
        revoked: Callable[[], bool] | None = None,
    ) -> tuple[ev.WorkerResult, bytes] | None:
        """Produce the logs and the result and wait for the acks; the result sent and its
        record, or ``None`` when the stop's drain ends (:meth:`_may_send`), or the job is
        abandoned (its partition gone to another worker, or given up by the stop), or
        ``revoked()`` says so, first (the job then runs again on the partition's next owner).

        Each try passes the write gate first (:mod:`.write_gate`): while the group may have
        handed the partition on, the result waits, and the job is abandoned if the member lost
        its partition (:meth:`_let_go`, :meth:`_on_assigned`, :meth:`_lapsed`).

        While the broker is away (a connection lost, a request timed out, a leader moving)
        the same result is sent again, with a capped backoff, until it is acknowledged: a
        restart of the broker must not turn a task that succeeded into a failed one. Only a
        result the broker refuses for what it is (:func:`record_fault`: too large for the
        topic, an invalid topic, a policy) is replaced by a FAILED one that names the reason
        and carries neither logs nor outputs, sent until it is acknowledged: the task run ends,
        and the partition's commit point moves past the job, instead of the execution waiting
        for a result that can never come. A results topic the worker may not write fails it
        (:meth:`_denied`): the job is left for the partition's next owner.
        """
        topics = self.ctx.topics
        lines = [*await self.log_stream.take(job.key), *lines]  # queued, not yet produced
        key = result.execution_id.encode()
        room = self.limit.value_bytes
        logs = records.log_records(job.where[0], job.where[1], lines, max_bytes=room)
        value = records.encode_event(result)
        if not self.limit.fits(value):  # outputs fit (the runner checks): errors too large
            result = _result_refused(result, job.task_id, len(value), room)
            value = records.encode_event(result)

        def given_up() -> bool:
            return job.abandoned or not self._may_send() or (revoked is not None and revoked())

        def held() -> bool:  # revoked, until the assignment decides (:meth:`_on_assigned`)
            # A job that ran is reported at once while the gate is open: its effects are done
            # and its answer ends the task run (the executor applies it once). A copy that the
            # partition's next owner fetches from the committed offset may still run there
            # (at-least-once); this worker answers its own copies from memory.
            return not job.ran and job.partition not in self._partitions

        tries = 0
        while not given_up():
            if not await self.gate.passing(given_up, held):
                break
            try:
                sends = [(topics.logs, part, key) for part in logs]
                sends.append((topics.results, value, key))
                handed = await self._produce_gated(sends, given_up, held, permanent_fault)
                if handed is None:
                    continue  # given up, or the gate closed while it waited for its turn
                *log_acks, result_ack = await asyncio.gather(*handed, return_exceptions=True)
                if isinstance(result_ack, BaseException):
                    raise result_ack
                failures = [e for e in log_acks if isinstance(e, BaseException)]
                if away := next((e for e in failures if not permanent_fault(e)), None):
                    raise away  # the broker away: the whole send again (applied once)
                self._result_acked(result_ack, value)  # durable: the local executor first
                self._logs_refused(job.key, failures)
                return result, value
            except KafkaError as exc:
                if record_fault(exc):
                    return await self._publish_refused(job, result, exc, key, given_up)
                if authorization_fault(exc):  # the job is not done: the next owner runs it
                    self._denied(topics.results, exc)
                    return None
                tries += 1
                log.warning("producing the result of %s failed (%s), try %d", job.key, exc, tries)
                await asyncio.sleep(_backoff(tries))
        return None

    def _logs_refused(self, job: Hashable, failures: list[BaseException]) -> None:
        """Log lines of ``job`` (its key) refused for good (each :func:`permanent_fault`) by
        the broker, the client (as they were handed over) or the logs topic's ACLs: while the
        job runs (:class:`LogStream`), or while its result was acknowledged. Refused for what
        they are (:func:`record_fault`: a policy, an invalid topic, too large), they are left
        out, said here: a result stands, and must not be replaced by a FAILED one after its
        acknowledgement (two answers for one attempt). Refused to this worker
        (:func:`authorization_fault`), they are left out too, and the worker fails
        (:meth:`_denied`) instead of sending them, or the result, again for ever."""
        if not failures:
            return
        log.error("%d log record(s) of %s refused (%s): left out", len(failures), job, failures[0])
        denied = next((failure for failure in failures if authorization_fault(failure)), None)
        if denied is not None:
            self._denied(self.ctx.topics.logs, denied)

    def _denied(self, topic: str, denied: BaseException) -> None:
        """Fail the worker, once and loudly (:meth:`_fail`: its process is replaced), for a
        topic its user may not write (:func:`authorization_fault`), as the executor stops on
        an authorization error on its topics: every record of the topic is refused until an
        operator grants it, so sending again would only spin, the partition's commit point
        held for ever."""
        failure = RuntimeError(f"the worker may not write to topic '{topic}': {denied!r}")
        failure.__cause__ = denied
        self._fail(failure)

    def _result_acked(self, acked: Any, value: bytes) -> None:
        """Tell :attr:`on_result` of a result now durable (the local executor may take it);
        outside the produce's error handling: its failure must not send the result again."""
        if self.on_result is None:
            return
        try:
            self.on_result(acked, value)
        except Exception:  # the broker copy reaches the executor all the same
            log.exception("handing the result acknowledged at %s over failed", acked)

    async def _publish_refused(
        self,
        job: Job,
        result: ev.WorkerResult,
        fault: Exception,
        key: bytes,
        given_up: Callable[[], bool],
    ) -> tuple[ev.WorkerResult, bytes] | None:
        """Send the FAILED result that replaces one the broker refused (:meth:`_publish`)."""
        failed = _result_unpublishable(result, job.task_id, fault)
        log.error("the result of %s cannot be published: %s", job.key, failed.error)
        value = records.encode_event(failed)
        if await self._send_until_acked(self.ctx.topics.results, value, key, given_up):
            return failed, value
        return None

    async def _send_until_acked(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        given_up: Callable[[], bool] | None = None,
    ) -> bool:
        """Produce one record, retrying with a capped backoff until the broker acknowledges it
        (``True``) or the stop's drain ends (``False``, :meth:`_may_send`). Used for records
        that must get through (a FAILED result, a finished job's answer, a dead letter):
        waiting for the broker is then all a worker can do; a topic the worker may not write
        fails it instead (:meth:`_denied`, ``False``). A result (``given_up`` given)
        passes the write gate first, and is not sent once ``given_up()``."""
        tries = 0
        while self._may_send():
            if given_up is not None and not await self.gate.passing(given_up):
                return False
            sends = [(topic, value, key)]
            try:
                if given_up is None:
                    (ack,) = await self._produce(sends)
                elif (handed := await self._produce_gated(sends, given_up)) is None:
                    continue  # given up, or the gate closed while it waited for its turn
                else:
                    (ack,) = handed
                await ack
                return True
            except KafkaError as exc:
                if authorization_fault(exc):
                    self._denied(topic, exc)
                    return False
                tries += 1
                log.warning("producing to %s failed (%s), try %d", topic, exc, tries)
                await asyncio.sleep(_backoff(tries))
        return False

    # -- dead letters --------------------------------------------------------------------------

    def _dead_letter(
        self,
        record: ConsumerRecord[Any, Any],
        reason: str,
        marks: list[Mark],
        job: Job | None = None,
    ) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        self.stats["dead_lettered"] += 1
        self.metrics.dead_letter("worker")
        value = records.dead_letter_value(
            record.topic, record.partition, record.offset, record.key, record.value, reason,
            max_bytes=self.limit.value_bytes,
        )  # fmt: skip
        self._spawn(self._send_dead_letter(record.key, value, marks, job))

    async def _send_dead_letter(
        self, key: bytes | None, value: bytes, marks: list[Mark], job: Job | None = None
    ) -> None:
        """Produce a dead letter, then mark its records done (and its ``job`` finished, so the
        broker copy of a job handed over is not dead-lettered again): a broker away for a while
        holds the partition's commit point until it is back, never past a record not yet
        recorded."""
        if await self._send_until_acked(self.ctx.topics.dead_letter, value, key):
            for mark in marks:
                mark.done = True
            if job is not None:
                job.finished = True

    def _revoked_since(self, tp: TopicPartition) -> Callable[[], bool]:
        """Whether ``tp`` was revoked since this call (its fetched offsets are not the ones
        kept now), or the stop's drain ended: a result for it that waits at the write gate is
        then off (its record is fetched again by the partition's owner)."""
        plog = self._partitions.get(tp)
        return lambda: plog is None or self._partitions.get(tp) is not plog or not self._may_send()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- offsets and rebalances -------------------------------------------------------------

    def _commit_in_background(self) -> None:
        """Start the periodic commit when it is due and none is under way: the loop goes on
        fetching and starting jobs during its round trip."""
        if time.monotonic() - self._last_commit < COMMIT_INTERVAL_S:
            return
        if self._committing is not None and not self._committing.done():
            return
        self._committing = asyncio.create_task(self._commit(), name="worker-commit")
        self._committing.add_done_callback(_log_failure)

    async def _commit(
        self, *, force: bool = False, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit each partition's commit point. A forced commit (revocation, stop) first
        waits for the periodic one under way, so a later point is never overwritten by an
        earlier one answered after it; bounded (:data:`COMMIT_WAIT_S`), after which it is
        cancelled. A periodic commit leaves out the partitions being revoked. Nothing is
        committed while the write gate is closed (:mod:`.write_gate`): the group may have
        handed the partitions on, and their new owner commits its own points."""
        if force:
            await self._end_background_commit()
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        consumer = self._consumer
        if consumer is None or self.own_all_partitions:
            return  # no group: nothing to commit to
        if self.gate.closed() is not None:  # the partitions may be another member's now
            return
        offsets: dict[TopicPartition, int] = {}
        for tp, plog in self._partitions.items():
            point = plog.commit_point()
            if point is None or point == plog.committed or (only is not None and tp not in only):
                continue
            if force or tp not in self._revoking:
                offsets[tp] = point
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # rebalancing, or a transient error: done work stays done
            log.info("offset commit failed (%s); retrying later", exc)
            return
        for tp, point in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = point

    async def _end_background_commit(self) -> None:
        """Wait for the periodic commit under way, at most :data:`COMMIT_WAIT_S`, then
        cancel it."""
        running = self._committing
        if running is None or running is asyncio.current_task():
            return
        _, late = await asyncio.wait([running], timeout=COMMIT_WAIT_S)
        if late:
            log.warning("the periodic offset commit did not end in %.0f s; cancelled",
                        COMMIT_WAIT_S)  # fmt: skip
            running.cancel()
            await asyncio.wait([running])

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """aiokafka's revocation, before it rejoins (:meth:`_let_go`); a periodic commit
        begun meanwhile leaves ``revoked`` out (:attr:`_revoking`)."""
        self._revoking = set(revoked)
        try:
            await self._let_go(revoked)
        finally:
            self._revoking = set()

    async def _let_go(self, revoked: set[TopicPartition]) -> None:
        """Let the running jobs of ``revoked`` end (up to the revoke grace), commit what is
        done; with the write gate closed (expelled, or in doubt), stop them at once instead,
        unreported, and commit nothing (:meth:`_leave_unreported`)."""
        self.assigned.clear()
        self._in_group = False
        running = [job.task for job in self._running_jobs(revoked) if job.task is not None]
        if running and self.gate.closed() is None:
            # Let them end and be committed before another member reads the partitions.
            _, pending = await asyncio.wait(running, timeout=self.revoke_grace_s)
            if pending:
                log.info(
                    "worker: %d jobs of revoked partitions still run after %.0f s; they stop "
                    "if their partitions go to another worker",
                    len(pending),
                    self.revoke_grace_s,
                )
        closed = self.gate.closed()
        if closed is None:
            await self._commit(force=True, only=revoked)
        else:
            self._leave_unreported(revoked, closed)
        for tp in revoked:
            plog = self._partitions.pop(tp, None)
            if plog is not None and self.fence is not None:  # (in a group: may move)
                self._revoked_logs[tp] = plog
        self.gate.wake()  # results of ``revoked`` waiting at the gate: held, or given up
        for job in list(self._jobs.values()):  # not started (held, or after a stopped copy)
            if job.task is None and job.partition in revoked:
                self._forget(job)
        log.info("worker: partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _leave_unreported(self, revoked: set[TopicPartition], why: str) -> None:
        """A revocation with the write gate closed (``why``): the group may already have
        handed ``revoked`` to another member, which runs their jobs again from the committed
        offsets. Their running jobs stop now, unreported (a kill stops the task's code), and
        nothing of them is committed."""
        running = self._running_jobs(revoked)
        partitions = sorted(tp.partition for tp in revoked)
        if running:
            log.error("worker: %s: %d running job(s) of partitions %s stop unreported, and "
                      "nothing of them is committed", why, len(running), partitions)  # fmt: skip
        else:  # (stopped already: a lapse)
            log.info("worker: %s: nothing of partitions %s is committed", why, partitions)
        for job in running:
            self._abandon(job)

    def _running_jobs(self, partitions: set[TopicPartition] | None = None) -> list[Job]:
        """The jobs running here and not abandoned (of ``partitions``, or all): those a
        rebalance or a lapse decides about."""
        return [
            job
            for job in self._jobs.values()
            if job.task is not None
            and not job.abandoned
            and (partitions is None or job.partition in partitions)
        ]

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """The group's assignment (aiokafka's callback, at the end of a join; also the fixed
        one of ``own_all_partitions``). It confirms the membership and notes it at the write
        gate, which opens for the results of ``assigned``. A running job whose partition is
        not in ``assigned`` went to another worker, which runs it again from the committed
        offset: it stops, unreported. Every running job stops so when the member id changed
        (:meth:`WriteGate.note`): the group expelled this member in between, so even a
        partition assigned back may have had another owner meanwhile."""
        renewed = False
        if self.fence is not None:
            assert self._consumer is not None
            note_generation(self._assignor, self._consumer)
            self.fence.joined(self._consumer)  # the group has just counted this member in
            renewed = self.gate.note()  # the membership results are written under from now
        running = self._running_jobs()
        if renewed and running:
            log.error(
                "worker: rejoined its group under a new member id (it was expelled): its %d "
                "running job(s) stop unreported, for their partitions may have had another owner",
                len(running),
            )
        for job in running:
            if renewed or (job.partition not in assigned and not job.ran):
                # Its partition went to another worker (now, or while this one was out of the
                # group), which runs the job again from the committed offset: stop this copy,
                # unreported, so the attempt runs once.
                self._abandon(job)
        for tp in assigned:
            self._partitions.setdefault(tp, PartitionLog())
        self._hand_over_moved(assigned)
        log.info("worker: partitions assigned: %s", sorted(tp.partition for tp in assigned))
        self._in_group = True
        if assigned:
            self.assigned.set()

    def _hand_over_moved(self, assigned: set[TopicPartition]) -> None:
        """At an assignment: await the hand-over of each partition taken from a live member,
        and hand over each partition revoked here that went to another member
        (:mod:`.worker_handover`), both under the generation just joined."""
        leaving = {tp: plog for tp, plog in self._revoked_logs.items() if tp not in assigned}
        held_before = set(self._revoked_logs)
        # A partition that comes back while it still waits goes on waiting for the same (a
        # live member's hand-over, or its end), read again from the committed offset.
        still_waiting = self._awaited.partitions() & assigned
        self._revoked_logs.clear()
        self._awaited.keep_only(still_waiting)
        if self._consumer is None or self.fence is None:
            return
        try:
            generation, member = group_generation(self._consumer), member_id(self._consumer)
        except RuntimeError as exc:  # this aiokafka keeps them elsewhere: nothing to match
            log.warning("worker: no partition hand-over (%s)", exc)
            return
        moved = moved_from(self._assignor, member)
        for tp in assigned:
            if tp in moved:
                self._awaited.expect(tp, moved[tp], generation)
            elif tp not in held_before and tp not in still_waiting:  # from a member that left
                self._awaited.read_to_end(tp)
        for tp, plog in leaving.items():
            self._spawn(self._hand_partition_over(tp, plog, generation, member))

    async def _hand_partition_over(
        self, tp: TopicPartition, plog: PartitionLog, generation: int, member: str
    ) -> None:
        """Hand ``tp``, gone to another member, what this worker finished of it: once its jobs
        here have ended (stopped, or reporting what they ran; at most
        :data:`HANDOVER_JOBS_WAIT_S`), the offsets done past the committed point, appended to
        the partition itself, after every job its new owner reads before it."""
        running = [
            job.task
            for job in self._jobs.values()
            if job.partition == tp and job.task is not None and not job.task.done()
        ]
        if running:
            _, late = await asyncio.wait(running, timeout=HANDOVER_JOBS_WAIT_S)
            if late:
                log.warning(
                    "worker: %d job(s) of partition %d still run after %.0f s; its next owner "
                    "runs them again", len(late), tp.partition, HANDOVER_JOBS_WAIT_S,
                )  # fmt: skip
        handover = Handover(tp.partition, generation, member, done_ranges(plog))
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(
                tp.topic, encode_handover(handover), partition=tp.partition
            )
        except KafkaError as exc:  # its next owner waits its time, then runs them all
            log.warning("worker: the hand-over of partition %d failed: %s", tp.partition, exc)
            return
        self.stats["handed_over_partitions"] += 1
        log.info(
            "worker: partition %d handed over to its next owner (generation %d): offsets %s "
            "finished here", tp.partition, generation, list(handover.done) or "none",
        )  # fmt: skip

    def _take_handover(self, topic: str, handover: Handover) -> None:
        """A hand-over read from a partition: its held jobs at offsets the hand-over names are
        done without running (their results are out), whichever hand-over it is; the one
        awaited also lets the others start (:meth:`_retry_held`)."""
        tp = TopicPartition(topic, handover.partition)
        awaited = self._awaited.take(topic, handover)
        finished = 0
        for job in list(self._held.values()):
            if job.partition != tp or not job.marks:
                continue
            for mark in job.marks:
                if handover.covers(mark.offset):
                    mark.done = True
            job.marks = [mark for mark in job.marks if not mark.done]
            if job.marks:  # a copy the hand-over does not name (the executor's, sent again)
                continue
            self._forget(job)
            self._finished.add(job.key)  # a copy fetched again (after a rebalance) is done too
            finished += 1
        self.stats["handed_over_jobs"] += finished
        if awaited:
            log.info(
                "worker: partition %d taken over from member %s: %d job(s) it finished are done",
                tp.partition, handover.member, finished,
            )  # fmt: skip
            self._waited_for(tp)
        elif finished:
            log.info(
                "worker: partition %d: %d job(s) an earlier hand-over (member %s, generation %d) "
                "names are done", tp.partition, finished, handover.member, handover.generation,
            )  # fmt: skip

    def _waited_for(self, tp: TopicPartition) -> None:
        """The jobs of ``tp`` held for its hand-over may start: their wait for their flow
        revision counts from now."""
        deadline = time.monotonic() + self.flow_wait_s
        for job in self._held.values():
            if job.partition == tp:
                job.deadline = deadline
        self._awaited.released = True

    def _abandon(self, job: Job) -> None:
        """Stop a running job, unreported: another worker runs it again."""
        job.abandoned = job.kill_requested = True
        self._runner.kill(job.key[0], job.key[1])
        self.stats["abandoned"] += 1
        self.gate.wake()  # its result may wait at the gate: given up now

    def _lapsed(self) -> None:
        """No heartbeat has confirmed this worker's group membership for a whole session (its
        process was frozen past it, say): its partitions may be another worker's, which runs
        their jobs again from the committed offsets. Every running job stops at once,
        unreported, before a task woken with the process takes effect (this runs on the loop's
        first turn after the wake: :mod:`.member_fence`); fetching stops and the member
        rejoins; the jobs run again wherever the group assigns their partitions."""
        fence, consumer = self.fence, self._consumer
        assert fence is not None and consumer is not None
        running = self._running_jobs()
        log.error(
            "worker: no heartbeat has confirmed its group membership for %.1f s (the session "
            "is %.1f s): the group may have handed its partitions on; %d running job(s) stop "
            "unreported, and the member rejoins",
            fence.silent_for(), fence.session_timeout_s, len(running),
        )  # fmt: skip
        for job in running:
            self._abandon(job)
        consumer.pause(*consumer.assignment())
        fence.rejoin()


def _result_unpublishable(
    result: ev.WorkerResult, task_id: str, fault: Exception
) -> ev.WorkerResult:
    """The result that replaces one the broker refuses for what it is: FAILED, with the
    broker's reason (and the state the task had reached), without logs or outputs."""
    error = (
        f"the result of task '{task_id}' ({result.state.value}) was refused by the broker: "
        f"{type(fault).__name__}: {fault}"
    )
    return ev.WorkerResult(
        result.execution_id, result.task_run_id, result.attempt, StateType.FAILED, error=error
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log what a background commit raised past its own handling (a bug): the next one runs."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("worker commit failed", exc_info=exc)


def _backoff(tries: int) -> float:
    """The pause before the next try of a record that must get through: growing, capped."""
    return min(_ERROR_BACKOFF_S * tries, _MAX_BACKOFF_S)


def _result_refused(
    result: ev.WorkerResult, task_id: str, size: int, limit: int
) -> ev.WorkerResult:
    """The result that replaces one too large to send: FAILED, saying why, without outputs."""
    error = over_limit(f"the result of task '{task_id}'", size, limit)
    return ev.WorkerResult(
        result.execution_id, result.task_run_id, result.attempt, StateType.FAILED, error=error
    )
