"""The scheduler role: Schedule triggers on a due-time index, Flow triggers on ended executions.

Three loops, so that no one of them can hold up another:

- **tick**: sleeps until the next due slot (at most ``KESTREAM_SCHEDULER_TICK_MS``), asks the
  :class:`~kestream.scheduler.schedules.ScheduleBook` for the fires owed, produces each execution
  to the executions topic, waits for the broker's acks, and only then writes the triggers' new
  records to the compacted triggers topic. A crash between the two fires those slots again
  after restart, with the same derived execution ids, which the executor drops as repeats
  (DESIGN.md section 3): no slot is lost and none runs twice.
- **ended executions**: a consumer group on the execution-updates topic reads the stop updates
  (``full``: ended or paused), feeds them to the :class:`~kestream.scheduler.flow_triggers.
  FlowTriggerBook` (executions to start, precondition windows to keep) and to the schedules'
  ``stopAfter``; its offsets are committed after what they caused has been acknowledged.
- **monitoring**: every few seconds, counts the triggers that are late (overdue by more than
  ``KESTREAM_SCHEDULER_LATE_AFTER_S``) into the metrics and the log.
- **trigger commands**: a consumer group on the trigger-commands topic reads what the triggers
  API asks (disable, enable, set, pause, unpause or delete a backfill, unlock, restart, delete
  a trigger's state), applies it to the book, writes the records (each keeps the offset of the
  last command it took, so a command read again after a crash is skipped), and only then
  commits.

High availability: any number of schedulers may run; the one holding the lease
(:mod:`kestream.runtime.scheduler_lease`) is active and runs the four loops, the others are
standbys that only follow the triggers topic (:mod:`kestream.runtime.trigger_records`), so a
takeover reads just its tail. ``/health`` says which (``role``). A standby joins the
ended-executions and commands groups only once it has won the lease: a member joining them
would take partitions from the active scheduler for a rebalance, and leave them again in
another. The scheduler of a ``standalone`` on its own embedded broker, which no other
scheduler can reach (:data:`~kestream.runtime.process.ONLY_SCHEDULER_ENV`), joins no group at
all: it holds the lease from its start (:mod:`kestream.runtime.lone_lease`) and assigns itself
the partitions of both topics at start, committing their offsets under the groups' names. That
saves it the first joins before it is ready and three heartbeats a second while it runs.

A commit the ended-executions or commands group refuses (``CommitFailedError``: it rebalanced
between the batch and its commit, or expelled this member after a stall) is a rebalance, not a
failure: aiokafka rejoins, and the batch is read again from the last commit. What it caused is
harmless to do again: its executions have derived ids (the executor drops repeats), each
precondition window records the executions it counted, and each trigger record the last
command it took.

Activation (at start, or when the lease moves here): the trigger records are caught up to the
topic's end, fresh books are built from them (the last record per key wins; tombstones delete),
the flows table's flows are synced into the books, which also writes the records of new triggers
and tombstones those of removed ones, then the consumers and loops start. Losing the lease stops
the loops and flushes the producer before the group moves on (the lease module says why that
fences a stale active); every fire and record write also checks the lease's term first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.executor.sizes import over_limit
from kestream.models.clock import Clock, utc_now
from kestream.models.flow import Flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import topic_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.fetch_pacing import reader_wait_ms
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.lone_lease import LoneLease
from kestream.runtime.metrics import Metrics, process_metrics
from kestream.runtime.process import ONLY_SCHEDULER_ENV
from kestream.runtime.scheduler_lease import SchedulerLease
from kestream.runtime.trigger_records import TriggerRecords
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.flow_triggers import FlowTriggerBook
from kestream.scheduler.leadership import Leadership, Role
from kestream.scheduler.monitor import late_triggers
from kestream.scheduler.preconditions import EndedExecution, PreconditionWindow
from kestream.scheduler.schedules import ScheduleBook
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key

log = logging.getLogger("kestream.scheduler")

MONITOR_EVERY_S = 5.0
#: How often every flow is compared with the books, to find deleted flows (the flows table
#: tells about new revisions at once, not about deletions); not every tick, which stays
#: O(due triggers).
FULL_SYNC_EVERY_S = 5.0
_FETCH_TIMEOUT_MS = 200
_ERROR_BACKOFF_S = 0.5
#: Slots owed for less than this (or three session timeouts, when longer) when a scheduler
#: activates are delayed by the lease's move, not missed: they fire whatever
#: ``recoverMissedSchedules`` says. A group hands a killed member's partition on after its
#: session timeout (Apache Kafka), or up to a few times that (the embedded broker).
HANDOVER_MIN_S = 30.0
#: The longest a step-down waits for the batch in flight to be written and committed.
STEP_DOWN_WAIT_S = 10.0


def _is_window_key(key: str) -> bool:
    """Trigger records are keyed ``ns/flow/trigger``; precondition windows add ``/<id>``."""
    return key.count("/") >= 3


class SchedulerService:
    """The scheduler's processor (see the module docs). ``start``, then ``stop``."""

    def __init__(
        self,
        ctx: BrokerContext,
        table: FlowsTable,
        *,
        clock: Clock = utc_now,
        on_failure: Callable[[BaseException], None] | None = None,
        metrics: Metrics | None = None,
        only_scheduler: bool | None = None,
    ) -> None:
        """``only_scheduler``: no other scheduler uses this broker, so the lease is held from
        start and the ended-executions and commands topics are assigned, not shared through
        groups (default: what ``standalone`` says in
        :data:`~kestream.runtime.process.ONLY_SCHEDULER_ENV`)."""
        self.ctx = ctx
        self.settings = ctx.settings
        self.topics = ctx.topics
        self.table = table
        self.clock = clock
        self.on_failure = on_failure
        self.metrics = metrics or process_metrics()
        self.schedules = self._schedule_book()
        self.flow_triggers = FlowTriggerBook(clock)
        self.leadership = Leadership()
        self.lease: SchedulerLease | LoneLease = SchedulerLease(
            ctx,
            self.leadership,
            on_acquired=self._on_acquired,
            on_lost=self._suspend,
            on_standby=self._discard,
            on_dead=self._lease_dead,
        )
        self.trigger_records = TriggerRecords(ctx)
        #: The term the loops run under (see :class:`~kestream.scheduler.leadership.Leadership`).
        self._term = 0
        self._activation: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._updates: AIOKafkaConsumer | None = None
        self._commands: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._synced: dict[str, int | None] = {}  # flow uid -> revision synced
        # Records to write to the triggers topic: the keys whose current state is due (written
        # as the book has it at flush time, so a later change, a stopAfter say, is never
        # overwritten by an older record), precondition windows, and keys to delete.
        self._dirty: set[str] = set()
        self._windows: dict[str, PreconditionWindow] = {}
        self._deletes: set[str] = set()
        # Held from producing executions to writing the records they imply, by each loop in
        # turn: no loop commits or records what another loop has not had acknowledged yet.
        self._produce_lock = asyncio.Lock()
        self._last_full_sync = 0.0
        self._assigned = False
        #: The books and consumers of a suspended term are kept (see :meth:`_suspend`).
        self._suspended = False
        #: A loop of the current term stopped halfway through a batch (the lease went).
        self._aborted = False
        self._started = False
        #: The ended-executions and commands consumers were subscribed at start, beside the
        #: lease (:meth:`_start`), and no term has used them yet.
        self._early_groups = False
        if only_scheduler is None:
            only_scheduler = os.environ.get(ONLY_SCHEDULER_ENV) == "1"
        self.only_scheduler = only_scheduler
        if only_scheduler:  # no group to decide anything: held from start (lone_lease's docs)
            self.lease = LoneLease(
                self.leadership, on_acquired=self._on_acquired, on_lost=self._suspend
            )
        self.health_name = "scheduler"

    # -- health -------------------------------------------------------------------------------

    @property
    def is_live(self) -> bool:
        parts_alive = self.lease.alive and self.trigger_records.alive
        return self._started and parts_alive and all(not t.done() for t in self._tasks)

    @property
    def is_ready(self) -> bool:
        """A standby is ready (it is doing its job: waiting warm); an active scheduler once its
        ended-executions consumer holds its partitions."""
        if not self.is_live:
            return False
        return self.leadership.role is Role.STANDBY or (
            self.leadership.role is Role.ACTIVE and self._assigned
        )

    def health_detail(self) -> dict[str, Any]:
        return {
            # (an open /health shows facts, not text: one flag per role)
            "active": self.leadership.role is Role.ACTIVE,
            "standby": self.leadership.role is Role.STANDBY,
            "term": self.leadership.term,
            "schedules": len(self.schedules),
            "flowTriggers": len(self.flow_triggers),
            # checked for every ended execution: they name nothing the trigger index keys on
            "flowTriggersUnindexed": self.flow_triggers.unindexed,
            "ended-executions consumer assigned": self._assigned,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        ctx = self.ctx
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        await self._producer.start()
        await self.trigger_records.start()
        self.table.add_listener(self._flow_changed)
        self._monitor = asyncio.create_task(
            self._guard(self._monitor_loop()), name="scheduler-monitor"
        )
        # The only scheduler takes the ended-executions and commands partitions at start (by
        # assignment: no group to join) and holds the lease at once. Any other joins those
        # groups once active: a standby's join, and its leaving, would each rebalance the
        # active scheduler's groups (its batch's commit refused, its readiness lost meanwhile).
        if self.only_scheduler:
            await self._join_groups()
            self._early_groups = True
        await self.lease.start()
        # Say what this scheduler is before saying it started: the group's first answer, and
        # when it is the lease, the activation (so "started" means "firing" for a lone one).
        await self.lease.decided.wait()
        if self._activation is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._activation)
        self._started = True
        log.info(
            "scheduler started (%s): %d schedule(s), %d flow trigger(s)",
            self.leadership.role,
            len(self.schedules),
            len(self.flow_triggers),
        )

    async def stop(self) -> None:
        self._started = False
        await self._step_down()
        await self.lease.stop()  # leaves the group: a standby takes over at once
        await cancel_and_wait(self._monitor)
        self._monitor = None
        await self.trigger_records.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # -- the lease ------------------------------------------------------------------------------

    def _lease_dead(self, exc: BaseException) -> None:
        """This process can never hold the lease again (its group coordination died; the lease
        has stepped it down): report it as the processor's failure, so the host stops the
        process and its supervisor (``standalone``'s, an orchestrator) starts one that joins
        afresh. A scheduler with no host to tell stays up, not live (``/health``)."""
        log.error("scheduler: stepped down for good (%s); the process must be restarted", exc)
        if self.on_failure is not None:
            self.on_failure(exc)

    def _on_acquired(self, term: int) -> None:
        """The lease moved here: activate in the background (the group's callback must not wait
        for the other groups' joins), or go on at once when it came straight back."""
        if self._suspended and self.lease.kept:
            self._resume(term)
            return
        self._activation = asyncio.create_task(
            self._guard(self._activate(term)), name="scheduler-activation"
        )

    async def _activate(self, term: int) -> None:
        started = time.monotonic()
        if self._early_groups:  # joined at start beside the lease, never read by any term
            self._early_groups = False
        else:
            await self._discard()  # what a suspension kept, when another scheduler held it
        await self.trigger_records.catch_up()
        self.schedules = self._schedule_book(takeover=self.leadership.takeover)
        self.flow_triggers = FlowTriggerBook(self.clock)
        self._synced.clear()
        self._dirty.clear()
        self._windows.clear()
        self._deletes.clear()
        self._term = term
        self._load_state(self.trigger_records.latest)
        async with self._produce_lock:
            self._sync_all()
            self._last_full_sync = time.monotonic()
            self._deletes.update(self.schedules.drop_orphans())
            await self._flush()
        if self._updates is None:
            await self._join_groups()
        if not self.leadership.activated(term):
            return  # the lease went while activating: _step_down cleans up
        # Flows deployed while activating were not synced (the listener syncs an active
        # scheduler only): the first tick writes what this sync changes.
        self._sync_all()
        self._last_full_sync = time.monotonic()
        self._start_loops()
        log.info(
            "scheduler active (term %d) in %.3f s: %d schedule(s), %d flow trigger(s)",
            term,
            time.monotonic() - started,
            len(self.schedules),
            len(self.flow_triggers),
        )

    async def _join_groups(self) -> None:
        """Subscribe the ended-executions and commands consumers; their groups are joined in
        the background (:attr:`_assigned` says when the first holds its partitions)."""
        ctx = self.ctx
        self._updates = make_consumer(
            ctx.settings,
            ctx.bootstrap,
            ctx.kind,
            group_id=self.settings.topic("scheduler"),
            # A new group starts at the end, so a first start does not run the flow triggers of
            # every execution in the topic's history; on Tansu, whose offset listing is not
            # exact (DESIGN.md section 5), from the start (its topics live only as long as it).
            auto_offset_reset="latest" if ctx.kind == "kafka" else "earliest",
        )
        await self._updates.start()
        await self._follow(self._updates, self.topics.updates, _Assigned(self))
        # Commands are read from the topic's start by a new group: each record says which
        # command it took last, so old ones are skipped, and none sent before the first start
        # is lost.
        self._commands = make_consumer(
            ctx.settings, ctx.bootstrap, ctx.kind,
            group_id=self.settings.topic("scheduler-commands"), auto_offset_reset="earliest",
        )  # fmt: skip
        await self._commands.start()
        await self._follow(self._commands, self.topics.trigger_commands)

    async def _follow(
        self, consumer: AIOKafkaConsumer, topic: str, listener: _Assigned | None = None
    ) -> None:
        """Read ``topic`` in ``consumer``'s group. The only scheduler of a broker assigns
        itself every partition instead of joining the group, which has no other member to
        share them with (:mod:`~kestream.runtime.lone_lease`): no first join to wait for, no
        heartbeats. Its offsets are committed and read under the group's name all the same, so
        a restart, or a later start with peers, goes on where it stopped."""
        if not self.only_scheduler:
            consumer.subscribe([topic], listener=listener)
            return
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        if listener is not None:
            await listener.on_partitions_assigned(partitions)

    async def _step_down(self) -> None:
        """Stop firing and forget: the loops end, the other groups are left, the books go."""
        await self._suspend()
        await self._discard()

    async def _suspend(self) -> None:
        """Stop firing: the activation and the loops end and what the producer holds is written,
        all before this returns (the lease's fence). An active scheduler keeps its books and its
        other groups' consumers: when the group hands the lease back to it in the next
        generation (a standby joined or left), :meth:`_resume` goes on without rebuilding."""
        # A batch in flight is finished first (its executions, records and offsets, or none of
        # them): cancelled between its records and its commit, it would be read again by the
        # next term and counted twice in the precondition windows. Bounded, so a broker that
        # stopped answering cannot hold the group's callback forever.
        locked = False
        try:
            await asyncio.wait_for(self._produce_lock.acquire(), STEP_DOWN_WAIT_S)
            locked = True
        except TimeoutError:
            log.warning("scheduler: a batch still waits for the broker; it is abandoned")
        try:
            was_active = self.leadership.role is Role.ACTIVE
            self.leadership.release()
            tasks = [t for t in (self._activation, *self._tasks) if t is not None]
            self._activation, self._tasks = None, []
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            if locked:
                self._produce_lock.release()
        if self._producer is not None:
            await self._producer.flush()
        # Kept only whole: an activation cut short, or a batch abandoned, is rebuilt.
        self._suspended = was_active and locked and not self._aborted
        if tasks:
            log.info("scheduler paused (term %d ended)", self._term)

    async def _discard(self) -> None:
        """Leave the other groups and drop the books: a standby owes nothing, and its
        monitoring and health count no trigger (an activation builds them again)."""
        joined = self._updates is not None or self._commands is not None
        if joined and not self._early_groups:
            log.info("scheduler standby (term %d ended)", self._term)
        self._suspended = False
        self._early_groups = False
        self._assigned = False
        for consumer in (self._updates, self._commands):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        self._updates = self._commands = None
        self.schedules = self._schedule_book()
        self.flow_triggers = FlowTriggerBook(self.clock)

    def _resume(self, term: int) -> None:
        """The lease came back in the next generation, no other scheduler having held it: fire
        again under ``term`` with the kept books and consumers."""
        self._suspended = False
        if not self.leadership.activated(term):
            return
        self._term = term
        self._sync_all()  # flows deployed meanwhile (the listener syncs an active one only)
        self._last_full_sync = time.monotonic()
        self._start_loops()
        log.info("scheduler active (term %d): the lease came back, books kept", term)

    def _start_loops(self) -> None:
        self._aborted = False
        self._tasks = [
            asyncio.create_task(self._guard(self._tick_loop()), name="scheduler-tick"),
            asyncio.create_task(self._guard(self._ended_loop()), name="scheduler-ended"),
            asyncio.create_task(self._guard(self._commands_loop()), name="scheduler-commands"),
        ]

    def _holds(self) -> bool:
        return self.lease.valid(self._term)

    def _schedule_book(self, *, takeover: bool = False) -> ScheduleBook:
        """A book whose handover window is open only when ``takeover``: slots owed at a cold
        start (the first assignment of this scheduler: after an outage, a lone one's restart)
        were missed, and ``recoverMissedSchedules`` decides them."""
        # (the session is at most the setting, or Kafka's 10 s when it is unset)
        session_s = (self.settings.session_timeout_ms or 10_000) / 1000
        handover = max(HANDOVER_MIN_S, 3 * session_s) if takeover else 0.0
        return ScheduleBook(
            self.clock,
            backfill_slots=self.settings.scheduler_backfill_slots,
            backfill_interval=timedelta(milliseconds=self.settings.scheduler_tick_ms),
            handover=timedelta(seconds=handover),
        )

    async def _guard(self, loop: Any) -> None:
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except _LeaseLost:
            self._aborted = True  # its books hold what was not written: never kept
            # The revocation that follows cancels this loop; until then it stays parked (a
            # finished loop would read as a dead process).
            log.info("scheduler: the lease is gone; nothing more is fired")
            await asyncio.Event().wait()
        except BaseException as exc:
            log.exception("scheduler loop failed")
            if self.on_failure is not None:
                self.on_failure(exc)
            raise

    # -- state at start -----------------------------------------------------------------------

    def _load_state(self, latest: dict[str, bytes]) -> None:
        """Feed the books the trigger records (the latest value of each key)."""
        for key, value in latest.items():
            try:
                if _is_window_key(key):
                    self.flow_triggers.load_window(PreconditionWindow.from_json(value))
                else:
                    self.schedules.load_state(TriggerState.from_json(value))
            except ValueError as exc:
                log.warning("skipping the unreadable trigger record %s: %s", key, exc)
        log.info("trigger state loaded: %d record(s)", len(latest))

    # -- flows ------------------------------------------------------------------------------

    def _sync_all(self) -> None:
        current = {flow.uid: flow for flow in self.table.flows()}
        for uid in [u for u in self._synced if u not in current]:
            namespace, _, flow_id = uid.partition("/")
            self._remove(namespace, flow_id)
        for flow in current.values():
            if self._synced.get(flow.uid, -1) != flow.revision:
                self._sync(flow)

    def _flow_changed(self, flow: Flow) -> None:
        """A flow revision arrived in the flows table (deletions: see FULL_SYNC_EVERY_S)."""
        if self.leadership.role is not Role.ACTIVE:
            return  # a standby has no books; an activation syncs every flow
        latest = self.table.latest(flow.namespace, flow.id)
        if latest is not None and latest.revision == flow.revision:
            self._sync(flow)
            self._wake.set()

    def _sync(self, flow: Flow) -> None:
        result = self.schedules.sync_flow(flow)
        self._dirty.update(state.key for state in result.states)
        self._deletes.update(result.removed)
        self._deletes.update(self.flow_triggers.sync_flow(flow))
        self._synced[flow.uid] = flow.revision

    def _remove(self, namespace: str, flow_id: str) -> None:
        result = self.schedules.remove_flow(namespace, flow_id)
        self._dirty.update(state.key for state in result.states)
        self._deletes.update(result.removed)
        self._deletes.update(self.flow_triggers.remove_flow(namespace, flow_id))
        self._synced.pop(f"{namespace}/{flow_id}", None)
        log.info("flow %s.%s deleted: its triggers are removed", namespace, flow_id)

    async def _flush(self) -> None:
        """Write what the books changed: current trigger states, windows, deletions; wait for
        the acks. Callers hold :attr:`_produce_lock` (or run before the loops start)."""
        dirty, self._dirty = self._dirty, set()
        windows, self._windows = self._windows, {}
        deletes, self._deletes = self._deletes, set()
        producer = self._require_producer()
        if (dirty or windows or deletes) and not self._holds():
            raise _LeaseLost()
        topic = self.topics.triggers
        acks = []
        for key in sorted(dirty - deletes):
            state = self.schedules.state(key)
            if state is not None:
                acks.append(await producer.send(topic, state.to_json(), key=key.encode()))
        for key, window in windows.items():
            if key not in deletes:
                acks.append(await producer.send(topic, window.to_json(), key=key.encode()))
        for key in sorted(deletes):
            acks.append(await producer.send(topic, None, key=key.encode()))
        if acks:
            await asyncio.gather(*acks)

    # -- the tick ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        longest = self.settings.scheduler_tick_ms / 1000
        while True:
            async with self._produce_lock:
                if time.monotonic() - self._last_full_sync > FULL_SYNC_EVERY_S:
                    self._sync_all()  # deleted flows (changes come through the listener)
                    self._last_full_sync = time.monotonic()
                started = time.perf_counter()
                fires = self.schedules.tick(self.clock())
                if fires:
                    await self._emit_fires(fires)
                await self._flush()
                self.metrics.evaluate_duration(time.perf_counter() - started)
            await self._sleep_until_due(longest)

    async def _sleep_until_due(self, longest: float) -> None:
        due = self.schedules.next_due()
        wait = longest
        if due is not None:
            wait = min(longest, max(0.0, (due - self.clock()).total_seconds()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def _emit_fires(self, fires: list[Any]) -> None:
        """Executions first (acknowledged), then the trigger records."""
        producer = self._require_producer()
        if not self._holds():
            raise _LeaseLost()
        now = self.clock()
        acks = []
        for fire in fires:
            event = fire.event
            value = self._sized(event)
            if value is not None:
                acks.append(
                    await producer.send(
                        self.topics.executions, value, key=event.execution_id.encode()
                    )
                )
            namespace, flow_id, trigger_id = split_trigger_key(fire.key)
            self.metrics.trigger_fired(namespace, flow_id, trigger_id)
            if not fire.backfill:  # a backfilled slot is old on purpose
                self.metrics.trigger_delay(
                    namespace, flow_id, trigger_id, max(0.0, (now - fire.slot).total_seconds())
                )
        await asyncio.gather(*acks)
        self._dirty.update(fire.key for fire in fires)
        log.debug("fired %d schedule(s)", len(fires))

    # -- ended executions ---------------------------------------------------------------------

    @staticmethod
    async def _batches(consumer: Any, what: str) -> AsyncIterator[Any]:
        """The non-empty batches of one consumer, forever; a failed fetch is logged and retried.
        No timed work between reads: a paced consumer's wait ends with its records."""
        while True:
            try:
                batch = await consumer.getmany(
                    timeout_ms=reader_wait_ms(consumer, _FETCH_TIMEOUT_MS)
                )
            except KafkaError as exc:
                log.warning("reading %s failed (%s); retrying", what, exc)
                await asyncio.sleep(_ERROR_BACKOFF_S)
                continue
            if batch:
                yield batch

    async def _ended_loop(self) -> None:
        consumer = self._updates
        assert consumer is not None
        async for batch in self._batches(consumer, "execution updates"):
            async with self._produce_lock:
                events: list[ev.ExecutionCreated] = []
                for recs in batch.values():
                    for rec in recs:
                        events.extend(self._on_update(rec))
                await self._send_events(events)
                await self._flush()
                # (under the lock: a step-down sees the batch whole, committed, or not begun)
                offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
                await self._commit(consumer, offsets, "execution updates")

    async def _commit(self, consumer: Any, offsets: dict[TopicPartition, int], what: str) -> None:
        """Commit a batch whose effects are written; a refusal by a group that has moved on
        is a rebalance (the module docs say why reading the batch again is harmless)."""
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            self.metrics.commit_failed("scheduler")
            log.error(
                "scheduler: the consumer group refused the offset commit of the %s read (%s); "
                "taken as a rebalance: rejoining, the batch is read again",
                what,
                exc.__cause__ or type(exc).__name__,  # aiokafka's own text is a page long
            )

    def _on_update(self, rec: ConsumerRecord[Any, Any]) -> list[ev.ExecutionCreated]:
        """The executions a stop update starts, and its ``stopAfter`` effect."""
        try:
            update = records.loads(rec.value)
            if not update.get("full"):
                return []  # not a stop (an ended or paused execution sends its full list)
            ended = ended_execution(update["execution"], self.clock)
        except Exception as exc:  # one bad record must not stop the scheduler
            log.warning(
                "skipping the unreadable execution update at offset %d: %s", rec.offset, exc
            )
            return []
        result = self.flow_triggers.on_execution_end(ended)
        for window in result.windows:
            self._windows[window.record_key] = window
        for key in result.removed_windows:
            self._windows.pop(key, None)
            self._deletes.add(key)
        trigger = update["execution"].get("trigger") or {}
        if trigger.get("id") and ended.state.is_terminal:
            key = f"{ended.namespace}/{ended.flow_id}/{trigger['id']}"
            if self.schedules.on_execution_end(key, ended.execution_id, ended.state) is not None:
                self._dirty.add(key)
        return result.events

    async def _send_events(self, events: list[ev.ExecutionCreated]) -> None:
        if not events:
            return
        producer = self._require_producer()
        if not self._holds():
            raise _LeaseLost()
        sized = [(e, self._sized(e)) for e in events]
        acks = [
            await producer.send(self.topics.executions, value, key=e.execution_id.encode())
            for e, value in sized
            if value is not None
        ]
        await asyncio.gather(*acks)
        for event in events:
            trigger = event.trigger or {}
            self.metrics.trigger_fired(event.namespace, event.flow_id, str(trigger.get("id")))

    def _sized(self, event: ev.ExecutionCreated) -> bytes | None:
        """The event's record, or None (logged) when it is over the record limit: a trigger's
        variables (a Flow trigger's outputs, say) can make an execution nobody can create, and
        that must not stop the scheduler."""
        value = records.encode_event(event)
        limit = self.ctx.record_limit
        if limit.fits_header(value):  # (its updates repeat inputs and trigger: the same rule)
            return value
        log.error(
            "not starting %s.%s for its trigger: %s", event.namespace, event.flow_id,
            over_limit("its execution's record", len(value), limit.header_bytes,
                       of="a new execution"),
        )  # fmt: skip
        return None

    # -- trigger commands ----------------------------------------------------------------------

    async def _commands_loop(self) -> None:
        consumer = self._commands
        assert consumer is not None
        async for batch in self._batches(consumer, "trigger commands"):
            async with self._produce_lock:
                for recs in batch.values():
                    for rec in recs:
                        self._on_command(rec)
                await self._flush()
                offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
                await self._commit(consumer, offsets, "trigger commands")
            self._wake.set()  # a backfill or an enabled trigger may be due now

    def _on_command(self, rec: ConsumerRecord[Any, Any]) -> None:
        try:
            command = TriggerCommand.from_json(rec.value)
        except (ValueError, TypeError) as exc:  # one bad record must not stop the scheduler
            log.warning("skipping the unreadable trigger command at offset %d: %s", rec.offset, exc)
            return
        if self.schedules.apply_command(command, rec.offset) is not None:
            self._dirty.add(command.key)
            log.info("trigger %s: %s applied", command.key, command.action)

    # -- monitoring ----------------------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        threshold = timedelta(seconds=self.settings.scheduler_late_after_s)
        while True:
            await asyncio.sleep(MONITOR_EVERY_S)
            late = late_triggers(self.schedules, self.clock(), threshold)
            self.metrics.late_triggers(len(late))
            if late:
                worst = late[0]
                log.warning(
                    "%d trigger(s) late; the latest behind is %s, due %s (%s late)",
                    len(late),
                    worst.key,
                    worst.due.isoformat(),
                    worst.late_by,
                )

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the scheduler is not started")
        return self._producer


def ended_execution(execution: dict[str, Any], clock: Clock) -> EndedExecution:
    """What the trigger books need of an execution's JSON (a stop update's)."""
    state = execution["state"]
    end = state.get("endDate")
    return EndedExecution(
        execution_id=execution["id"],
        namespace=execution["namespace"],
        flow_id=execution["flowId"],
        state=StateType(state["current"]),
        labels={label["key"]: label["value"] for label in execution.get("labels") or []},
        outputs=execution.get("outputs"),
        attempt=int((execution.get("metadata") or {}).get("attemptNumber", 1)),
        flow_revision=execution.get("flowRevision"),
        end_date=datetime.fromisoformat(end) if end else clock(),
    )


class _LeaseLost(Exception):
    """Raised before a write by a loop whose term no longer holds the lease."""


class _Assigned(ConsumerRebalanceListener):
    """Tracks whether the ended-executions consumer holds its partitions (for readiness)."""

    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.service._assigned = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.service._assigned = True
