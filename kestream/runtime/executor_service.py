"""The executor stream processor: one member of the executor's consumer group.

It reads the co-partitioned ``executions`` and ``worker-results`` topics, keeps the state of the
executions of its partitions in memory (a table backed by the changelog topic, one changelog
partition per input partition), runs the pure step for each event, and writes what the step
commands. ``KESTREAM_EXECUTOR_STREAM_THREADS`` processes run one each, sharing the partitions.

One loop iteration, in this order (at-least-once, DESIGN.md section 3):

1. fetch a batch (``getmany``), decode each record (undecodable -> dead-letter topic), step it;
   fire the timers that fell due; retry executions held for a flow revision not yet seen;
2. produce the commands (worker jobs, new executions, subflow results, logs, execution updates)
   and wait for the broker's acks;
3. only then produce the changelog records of the states the batch changed, and wait again;
4. only then commit the input offsets.

A crash between 2 and 3 replays the batch from a state without its changes: the step produces
the same commands with the same (derived) ids, and every consumer downstream ignores repeats.
A crash between 3 and 4 replays events the restored state has already applied: no-ops.

Recovery: when partitions are assigned, the processor reads their changelog partitions up to
the high watermark taken from a Fetch (``end_offsets`` is wrong on the embedded broker), rebuilds
each execution's state (:mod:`kestream.executor.codec`) and its timers, and only then processes
events. Executions that ended leave the table; a small marker per ended execution stays for
``KESTREAM_EXECUTOR_ENDED_RETENTION_H`` so a redelivered creation never runs it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.restore import snapshot_attempt
from kestream.executor.sizes import over_limit
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult, UnknownFlow
from kestream.expressions import set_render_timeout_ms
from kestream.models.clock import Clock, utc_now
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.metrics import Metrics, process_metrics
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.runtime.worker_groups import WorkerGroupRouter, refused_job

log = logging.getLogger("kestream.executor")

_MAX_POLL_MS = 200
_BATCH = 2000


@dataclass(slots=True)
class Outbox:
    """Records produced by one batch: commands first, then the changelog (see the module doc)."""

    commands: list[tuple[str, str, bytes | None, int | None]] = field(default_factory=list)
    changelog: list[tuple[str, bytes | None, int]] = field(default_factory=list)

    def send(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.commands.append((topic, key, value, partition))


@dataclass(slots=True)
class Held:
    """An event waiting for its flow revision to appear in the flows table."""

    partition: int
    offset: int | None
    event: ev.Event
    deadline: datetime
    reason: str


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
    ) -> None:
        """``own_all_partitions``: take every partition without a consumer group (a one-shot
        ``kestream run`` on its own embedded broker: nobody to share with, no join to wait for).
        ``metrics``: where to count (default: the process's :func:`process_metrics`).
        ``route_worker_groups=False``: send every job to the default workers, whatever its
        ``workerGroup`` (that ``kestream run``, whose own worker is the only one).
        """
        self.own_all_partitions = own_all_partitions
        #: Called once if the loop fails; the host stops the process (see :meth:`_run`).
        self.on_failure = on_failure
        self.failure: BaseException | None = None
        self.ctx = ctx
        self.settings = ctx.settings
        self.topics = ctx.topics
        self.clock = clock
        self.limit = ctx.record_limit
        self.executor = Executor(
            registry,
            clock=clock,
            inline_tasks=self.settings.executor_inline_tasks,
            max_output_bytes=self.limit.output_bytes,
        )
        self.registry = registry
        #: Where jobs go (their worker group's topic), and the groups' fallbacks.
        self.groups = WorkerGroupRouter(ctx, routed=route_worker_groups)
        set_render_timeout_ms(self.settings.render_timeout_ms)  # every render in this process
        self.states: dict[str, ExecutionState] = {}
        self.partition_of: dict[str, int] = {}
        self.ended: dict[str, tuple[datetime, int, int]] = {}  # at, partition, attempt
        self.held: dict[str, list[Held]] = {}
        self.owned: set[int] = set()
        self.ready = asyncio.Event()
        self._timers: list[tuple[datetime, int, str, str]] = []
        self._seq = itertools.count()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._last_prune = clock()
        self.metrics = metrics if metrics is not None else process_metrics()
        self._held_share = self.metrics.share(self.metrics.executor_held)
        self._in_flight_share = self.metrics.share(self.metrics.executor_in_flight)
        self._lag_share = self.metrics.share(self.metrics.consumer_lag, "executor")
        #: ``created_runs`` of the execution before the current step: task runs numbered from
        #: here on were created by the step (counted without a scan, see :meth:`_count`).
        self._runs_before = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.groups.start()
        self._producer = make_producer(self.settings, self.ctx.bootstrap, self.ctx.kind)
        await self._producer.start()
        group = None if self.own_all_partitions else f"{self.settings.topic_prefix}executor"
        self._consumer = make_consumer(
            self.settings,
            self.ctx.bootstrap,
            self.ctx.kind,
            group_id=group,
            max_poll_records=_BATCH,
        )
        if self.own_all_partitions:
            await self._consumer.start()
            inputs = (self.topics.executions, self.topics.results)
            count = self.settings.partitions
            self._consumer.assign([TopicPartition(t, p) for t in inputs for p in range(count)])
            await self.assigned(set(range(count)))
        else:
            self._consumer.subscribe(
                [self.topics.executions, self.topics.results], listener=_Rebalance(self)
            )
            await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="executor-loop")
        self.metrics.executor_threads.inc()

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self.metrics.executor_threads.dec()
            for share in (self._held_share, self._in_flight_share, self._lag_share):
                share.report(0)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.groups.stop()

    def partitions(self) -> set[int]:
        """The input partitions this processor owns now."""
        return set(self.owned)

    # -- health (kestream.runtime.health.HealthPart) -----------------------------------------

    health_name = "executor"

    @property
    def is_live(self) -> bool:
        """The loop task runs (it stops only on a failure, which also stops the process)."""
        return self._task is not None and not self._task.done()

    @property
    def is_ready(self) -> bool:
        """Partitions assigned and their state recovered; false from a revocation until the
        next assignment's recovery has finished (the :attr:`ready` event, as a bool)."""
        return self.is_live and self.ready.is_set()

    def health_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"partitions": sorted(self.owned), "executions": len(self.states)}
        detail["held"] = len(self.held)
        if self.failure is not None:
            detail["failure"] = repr(self.failure)
        return detail

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        """The loop; a failure stops it, loudly.

        After a batch fails half-way (a produce refused, say), the states in memory are ahead of
        the changelog and of the committed offsets: carrying on could commit past commands that
        were never written. So the processor stops and reports; its process exits, and the
        next owner of the partitions restores the last committed state and replays the batch.
        """
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("executor stream processor failed; stopping it (a restart replays)")
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure(exc)
            raise

    async def _loop(self) -> None:
        assert self._consumer is not None
        while not self._stopping:
            batch = await self._consumer.getmany(timeout_ms=self._poll_ms(), max_records=_BATCH)
            started = time.perf_counter()
            async with self._lock:
                out = Outbox()
                for tp, recs in batch.items():
                    if tp.partition in self.owned:
                        for rec in recs:
                            self._handle(tp, rec, out)
                self._fire_timers(out)
                self._retry_held(out)
                self._prune_ended(out)
                await self._flush(out)
                await self._commit(batch)
            self._report(batch, started)

    def _report(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]], started: float
    ) -> None:
        """Per-batch metrics: events, batch time, held and in-flight executions, lag (the
        high watermark of the last fetch minus what this batch reached: no extra request)."""
        assert self._consumer is not None
        events = lag = 0
        for tp, recs in batch.items():
            if recs:
                events += len(recs)
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    lag += max(0, highwater - recs[-1].offset - 1)
        if events:
            self.metrics.executor_batch_done(events, time.perf_counter() - started)
        self._lag_share.report(lag)
        self._held_share.report(len(self.held))
        self._in_flight_share.report(len(self.states))

    def _poll_ms(self) -> int:
        if not self._timers:
            return _MAX_POLL_MS
        wait = (self._timers[0][0] - self.clock()).total_seconds() * 1000
        return max(1, min(_MAX_POLL_MS, int(wait)))

    def _handle(self, tp: TopicPartition, rec: ConsumerRecord[Any, Any], out: Outbox) -> None:
        try:
            event = records.decode_event(rec.value)
        except records.RecordError as exc:
            self._dead_letter(out, tp.topic, tp.partition, rec.offset, rec.key, rec.value, str(exc))
            return
        self._apply(tp.partition, event, out, rec.offset)

    def _apply(self, partition: int, event: ev.Event, out: Outbox, offset: int | None) -> None:
        execution_id = event.execution_id
        if execution_id in self.held:  # keep this execution's events in order behind the held one
            self.held[execution_id].append(self._held(partition, offset, event, "queued"))
            return
        state = self.states.get(execution_id)
        if state is None and execution_id in self.ended:
            if isinstance(event, ev.ExecutionCreated):
                return  # a redelivered creation of an execution that already ran
            if isinstance(event, ev.Restart) and _stale_restart(event, self.ended[execution_id][2]):
                log.info("ignoring a restart of %s from an older attempt's snapshot", execution_id)
                return
        self._runs_before = state.created_runs if state is not None else 0
        try:
            result = self.executor.step(state, event)
        except UnknownFlow as exc:
            self.held[execution_id] = [self._held(partition, offset, event, str(exc))]
            return
        except Exception as exc:  # an engine bug must not stop the processor: say it, go on
            log.exception("step failed for execution %s", execution_id)
            value = _event_bytes(event)
            self._dead_letter(
                out, self.topics.executions, partition, offset or -1,
                execution_id.encode(), value, f"executor error: {exc!r}",
            )  # fmt: skip
            return
        staged = Outbox()  # all of the step's records, or none of them
        try:
            self._after_step(partition, state, result, staged)
        except Exception as exc:  # a state no record can hold must not stop the processor
            log.exception("cannot write the step of execution %s; it is dropped", execution_id)
            self.states.pop(execution_id, None)
            self.partition_of.pop(execution_id, None)
            self.executor.forget(execution_id)
            value = _event_bytes(event)
            self._dead_letter(
                out, self.topics.executions, partition, offset or -1,
                execution_id.encode(), value, f"executor error while writing the step: {exc!r}",
            )  # fmt: skip
            return
        out.commands.extend(staged.commands)
        out.changelog.extend(staged.changelog)

    def _held(self, partition: int, offset: int | None, event: ev.Event, reason: str) -> Held:
        deadline = self.clock() + timedelta(seconds=self.settings.executor_flow_wait_s)
        return Held(partition, offset, event, deadline, reason)

    def _after_step(
        self, partition: int, before: ExecutionState | None, result: StepResult, out: Outbox
    ) -> None:
        st = result.state
        if st is None:
            return
        if before is None:
            self.states[st.id] = st
            self.partition_of[st.id] = partition
        refused: list[ev.Event] = []
        for command in result.commands:
            self._command(partition, st, command, out, refused)
        for failed in refused:  # after the step's own commands, as if a worker had answered
            self._apply(partition, failed, out, None)

    def _command(
        self,
        partition: int,
        st: ExecutionState,
        command: cmd.Command,
        out: Outbox,
        refused: list[ev.Event],
    ) -> None:
        topics = self.topics
        if isinstance(command, cmd.RunTask):
            self._dispatch(partition, st, command, out, refused)
        elif isinstance(command, cmd.KillTask):  # to the topic (the worker) its job went to
            run = st.task_runs.get(command.task_run_id)
            topic = self.groups.topic_for(run.task.workerGroup if run is not None else None)
            out.send(topic, st.id, records.encode_kill_job(command))
        elif isinstance(command, cmd.ReleaseWorkdir):  # to the worker its children's jobs went to
            topic = self.groups.topic_for(command.worker_group)
            out.send(topic, st.id, records.encode_release_job(command))
        elif isinstance(command, cmd.CreateExecution):
            created = command.created
            value = records.encode_event(created)
            if self.limit.fits_header(value) or created.parent is None:  # (else: guard's letter)
                out.send(topics.executions, created.execution_id, value)
            else:  # a subflow whose inputs no record can hold: its task run fails
                refused.append(_child_refused(created, created.parent, len(value), self.limit))
        elif isinstance(command, cmd.SendEvent):
            event = command.event
            out.send(topics.executions, event.execution_id, records.encode_event(event))
        elif isinstance(command, cmd.SetTimer):
            heapq.heappush(
                self._timers, (command.due, next(self._seq), command.execution_id, command.timer_id)
            )
        elif isinstance(command, cmd.EmitLogs):
            for value in records.log_records(
                command.namespace, command.flow_id, command.lines, max_bytes=self.limit.value_bytes
            ):
                out.send(topics.logs, st.id, value)
        elif isinstance(command, cmd.ExecutionChanged):
            self._changed(partition, st, command, out)
        # CancelTimer: the heap entry is skipped when it falls due (the state no longer has it).

    def _dispatch(
        self,
        partition: int,
        st: ExecutionState,
        job: cmd.RunTask,
        out: Outbox,
        refused: list[ev.Event],
    ) -> None:
        """Send a job to its worker group's topic, or end its task run now: its group has no
        live worker and a FAIL or CANCEL fallback (:mod:`kestream.runtime.worker_groups`), or
        the job is too large for any worker to receive."""
        group = job.task.workerGroup
        if (refusal := self.groups.refusal(group)) is not None:
            logs, event = refused_job(job, *refusal, self.clock())
            if logs is not None:
                self._command(partition, st, logs, out, refused)
            refused.append(event)
            return
        value = records.encode_job(job)
        if self.limit.fits(value):
            out.send(self.groups.topic_for(group), st.id, value)
        else:  # no worker could receive it: the task run fails, the execution goes on
            refused.append(_job_refused(job, len(value), self.limit.value_bytes))

    def _changed(
        self, partition: int, st: ExecutionState, change: cmd.ExecutionChanged, out: Outbox
    ) -> None:
        self._count(st, change)
        full = change.terminal or st.state.current is StateType.PAUSED
        for update in records.update_records(
            st,
            change.changed_task_runs,
            terminal=change.terminal,
            full=full,
            max_bytes=self.limit.value_bytes,
        ):
            out.send(self.topics.updates, st.id, update)
        if not change.terminal:
            if change.created and self.ended.pop(st.id, None) is not None:
                # restarted from its snapshot: the end marker would hide it from recovery
                out.changelog.append((codec.header_key(st.id, codec.ENDED), None, partition))
            changed = change.changed_task_runs + change.counters_changed
            for key, value in codec.encode_changes(
                st, changed, created=change.created, new_groups=change.planned
            ):
                out.changelog.append((key, records.dumps(value) if value else None, partition))
            return
        if not change.created:  # it has records to clear
            for key, _ in codec.tombstones(st):
                out.changelog.append((key, None, partition))
        marker = {"state": st.state.current.value, "attempt": st.attempt_number}
        marker["at"] = self.clock().isoformat()
        out.changelog.append(
            (codec.header_key(st.id, codec.ENDED), records.dumps(marker), partition)
        )
        self.ended[st.id] = (self.clock(), partition, st.attempt_number)
        del self.states[st.id]
        self.partition_of.pop(st.id, None)
        self.executor.forget(st.id)

    def _count(self, st: ExecutionState, change: cmd.ExecutionChanged) -> None:
        """Kestra's executor metrics for one step, in O(task runs changed) like the step.

        A task run counts as created when its number is past the execution's count before the
        step, and as ended when it is listed changed in a terminal state (a restart moves it out
        of that state first, so its next end is a new one).
        """
        metrics, namespace, flow_id = self.metrics, st.namespace, st.flow_id
        if change.created:
            metrics.execution_started(namespace, flow_id)
        runs, first_new = st.task_runs, self._runs_before
        for run_id in change.changed_task_runs:
            tr = runs.get(run_id)
            if tr is None:
                continue
            if tr.number >= first_new:
                metrics.task_run_created(namespace, flow_id, tr.task.type)
            state = tr.state
            if state.current.is_terminal:
                seconds = (state.history[-1][1] - state.history[0][1]).total_seconds()
                metrics.task_run_ended(
                    namespace, flow_id, tr.task.type, state.current.value, seconds
                )
        if change.terminal:
            seconds = (self.clock() - st.state.start).total_seconds()
            metrics.execution_ended(namespace, flow_id, st.state.current.value, seconds)

    def _fire_timers(self, out: Outbox) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, execution_id, timer_id = heapq.heappop(self._timers)
            st = self.states.get(execution_id)
            timer = st.timers.get(timer_id) if st is not None else None
            if timer is None or timer.due != due:
                continue  # cancelled, replaced, or the execution moved away
            self._apply(
                self.partition_of[execution_id], ev.TimerFired(execution_id, timer_id), out, None
            )

    def _retry_held(self, out: Outbox) -> None:
        if not self.held:
            return
        now = self.clock()
        for execution_id in list(self.held):
            queue = self.held.pop(execution_id)
            first = queue[0]
            if not self._flow_known(first.event) and now < first.deadline:
                self.held[execution_id] = queue
                continue
            for item in queue:
                if self._flow_known(item.event) or isinstance(item.event, ev.TimerFired):
                    self._apply(item.partition, item.event, out, item.offset)
                else:
                    self._dead_letter(
                        out, self.topics.executions, item.partition, item.offset or -1,
                        execution_id.encode(), records.encode_event(item.event),
                        f"{item.reason}: not deployed within "
                        f"{self.settings.executor_flow_wait_s:g}s",
                    )  # fmt: skip

    def _flow_known(self, event: ev.Event) -> bool:
        if isinstance(event, ev.ExecutionCreated):
            found = self.registry.get(event.namespace, event.flow_id, event.revision)
            return found is not None
        return True

    def _prune_ended(self, out: Outbox) -> None:
        now = self.clock()
        if now - self._last_prune < timedelta(minutes=1):
            return
        self._last_prune = now
        horizon = now - timedelta(hours=self.settings.executor_ended_retention_h)
        for execution_id, (at, partition, _) in list(self.ended.items()):
            if at < horizon:
                del self.ended[execution_id]
                key = codec.header_key(execution_id, codec.ENDED)
                out.changelog.append((key, None, partition))

    def _dead_letter(
        self,
        out: Outbox,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
    ) -> None:
        log.warning("dead letter from %s[%d]@%d: %s", topic, partition, offset, reason)
        self.metrics.dead_letter("executor")
        body = records.dead_letter_value(
            topic, partition, offset, key, value, reason, max_bytes=self.limit.value_bytes
        )
        out.send(self.topics.dead_letter, key.decode("utf-8", "replace") if key else "", body)

    async def _flush(self, out: Outbox) -> None:
        producer = self._producer
        assert producer is not None
        await self.groups.create_topics()  # a worker group's first job: its topic first
        sent = [
            await producer.send(topic, value, key=key.encode(), partition=partition)
            for topic, key, value, partition in self._sized(out.commands)
        ]
        if sent:
            await asyncio.gather(*sent)
        changelog = self.topics.changelog
        logged = [  # (a record over the limit goes to the dead-letter topic instead)
            await producer.send(topic, value, key=key.encode(), partition=part)
            for topic, key, value, part in self._sized([(changelog, *r) for r in out.changelog])
        ]
        if logged:
            await asyncio.gather(*logged)

    def _sized(
        self, recs: list[tuple[str, str, bytes | None, int | None]]
    ) -> list[tuple[str, str, bytes | None, int | None]]:
        """``recs``, with any record over the limit replaced by its (cut) dead letter.

        The step's rules keep records within the limit (outputs, jobs, updates and logs are
        sized where they are made); this is the last guard, for combinations no rule foresaw
        (a huge execution header, say): a record the broker would refuse must not stop the
        processor and block its partitions. A changelog record left out this way is missing
        after a restart of the partition: the log says which.
        """
        if all(self.limit.fits(value) for _, _, value, _ in recs):
            return recs
        kept: list[tuple[str, str, bytes | None, int | None]] = []
        for topic, key, value, partition in recs:
            if self.limit.fits(value):
                kept.append((topic, key, value, partition))
                continue
            assert value is not None
            reason = "not produced: " + over_limit("the record", len(value), self.limit.value_bytes)
            log.error("record for %s key %s %s", topic, key, reason)
            self.metrics.dead_letter("executor")
            letter = records.dead_letter_value(
                topic, partition if partition is not None else -1, -1, key.encode(), value,
                reason, max_bytes=self.limit.value_bytes,
            )  # fmt: skip
            kept.append((self.topics.dead_letter, key, letter, None))
        return kept

    async def _commit(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        if not batch:
            return
        assert self._consumer is not None
        held_min: dict[int, int] = defaultdict(lambda: 1 << 62)
        for queue in self.held.values():
            for item in queue:
                if item.offset is not None:
                    held_min[item.partition] = min(held_min[item.partition], item.offset)
        offsets = {}
        for tp, recs in batch.items():
            if recs and tp.partition in self.owned:
                upto = recs[-1].offset + 1
                if tp.topic == self.topics.executions:
                    upto = min(upto, held_min[tp.partition])
                offsets[tp] = OffsetAndMetadata(upto, "")
        if offsets and not self.own_all_partitions:
            await self._consumer.commit(offsets)

    # -- partitions ----------------------------------------------------------------------

    async def assigned(self, partitions: set[int]) -> None:
        async with self._lock:
            new = partitions - self.owned
            if new:
                await self._recover(new)
            self.owned = set(partitions)
            self.ready.set()
            log.info("executor owns partitions %s", sorted(self.owned))

    async def revoked(self, partitions: set[int]) -> None:
        async with self._lock:
            self.ready.clear()
            gone = partitions & self.owned
            for execution_id in [e for e, p in self.partition_of.items() if p in gone]:
                self.states.pop(execution_id, None)
                self.partition_of.pop(execution_id, None)
                self.held.pop(execution_id, None)
                self.executor.forget(execution_id)
            self.ended = {e: v for e, v in self.ended.items() if v[1] not in gone}
            self.owned -= gone

    async def _recover(self, partitions: set[int]) -> None:
        """Rebuild the states of ``partitions`` from their changelog partitions."""
        started = self.clock()
        latest = await self._read_changelog(partitions)
        restored = 0
        for partition, by_execution in latest.items():
            for execution_id, recs in by_execution.items():
                restored += self._restore(partition, execution_id, recs)
        elapsed = (self.clock() - started).total_seconds()
        log.info(
            "recovered %d executions from partitions %s in %.2fs",
            restored,
            sorted(partitions),
            elapsed,
        )

    def _restore(self, partition: int, execution_id: str, recs: dict[str, Any]) -> int:
        marker = recs.get(codec.header_key(execution_id, codec.ENDED))
        if marker is not None:
            at = datetime.fromisoformat(marker["at"])
            self.ended[execution_id] = (at, partition, int(marker.get("attempt", 1)))
            return 0
        head = recs.get(codec.header_key(execution_id))
        if head is None:
            return 0  # leftovers of an execution whose end was recorded and later pruned
        flow = self.registry.get(head["ns"], head["flow"], head["rev"])
        if flow is None:
            log.error("cannot restore %s: flow %s.%s revision %s is unknown",
                      execution_id, head["ns"], head["flow"], head["rev"])  # fmt: skip
            return 0
        try:
            st = codec.rebuild(execution_id, recs, flow.task_index())
        except Exception:  # one bad record must not stop the recovery of every other execution
            log.exception("cannot restore %s from its changelog records; left out", execution_id)
            self.metrics.dead_letter("executor")
            return 0
        self.states[execution_id] = st
        self.partition_of[execution_id] = partition
        for timer_id, timer in st.timers.items():
            heapq.heappush(self._timers, (timer.due, next(self._seq), execution_id, timer_id))
        return 1

    async def _read_changelog(self, partitions: set[int]) -> dict[int, dict[str, dict[str, Any]]]:
        consumer = make_consumer(self.settings, self.ctx.bootstrap, self.ctx.kind, group_id=None)
        await consumer.start()
        latest: dict[int, dict[str, dict[str, Any]]] = {p: {} for p in partitions}
        try:
            tps = [TopicPartition(self.topics.changelog, p) for p in partitions]
            consumer.assign(tps)
            highwaters = await fetch_highwaters(consumer, tps)
            pending = {tp for tp in tps if highwaters.get(tp, 0) > 0}
            for tp in pending:
                consumer.seek(tp, 0)
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
                for tp, recs in batch.items():
                    for rec in recs:
                        _keep_latest(latest[tp.partition], rec)
                for tp in list(pending):
                    if await consumer.position(tp) >= highwaters[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        return latest


def _job_refused(job: cmd.RunTask, size: int, limit: int) -> ev.WorkerResult:
    """The failed result of a job too large to send to a worker (its rendered properties)."""
    error = over_limit(f"the rendered properties of task '{job.task.id}'", size, limit, plural=True)
    return ev.WorkerResult(
        job.execution_id, job.task_run_id, job.attempt, StateType.FAILED, error=error
    )


def _child_refused(
    created: ev.ExecutionCreated, parent: ev.SubflowLink, size: int, limit: RecordLimit
) -> ev.SubflowFinished:
    """What the parent hears of a subflow execution too large to create (its inputs)."""
    what = f"the subflow execution of {created.namespace}.{created.flow_id}"
    error = over_limit(what, size, limit.header_bytes, of="a new execution")
    return ev.SubflowFinished(
        parent.execution_id, parent.task_run_id, parent.attempt, created.execution_id,
        StateType.FAILED, error=error,
    )  # fmt: skip


def _event_bytes(event: ev.Event) -> bytes | None:
    """The event as a dead letter shows it; None for a timer, or one that cannot be encoded."""
    if isinstance(event, ev.TimerFired):
        return None
    try:
        return records.encode_event(event)
    except Exception:  # the dead letter still goes, with its reason
        return None


def _stale_restart(event: ev.Restart, ended_attempt: int) -> bool:
    """A restart whose snapshot is of an attempt older than the one that ended last: replaying
    it would run that older attempt again (a redelivered restart, or a lagging index)."""
    return event.snapshot is not None and snapshot_attempt(event.snapshot) < ended_attempt


def _keep_latest(by_execution: dict[str, dict[str, Any]], rec: ConsumerRecord[Any, Any]) -> None:
    key = rec.key.decode()
    execution_id = codec.execution_of(key)
    recs = by_execution.setdefault(execution_id, {})
    if rec.value is None:
        recs.pop(key, None)
        if not recs:
            by_execution.pop(execution_id, None)
    else:
        recs[key] = records.loads(rec.value)


class _Rebalance(ConsumerRebalanceListener):
    """Routes aiokafka's rebalance callbacks to the processor (input partition numbers)."""

    def __init__(self, service: ExecutorService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.service.assigned({tp.partition for tp in assigned})
