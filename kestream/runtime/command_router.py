"""Where each command of a step goes: the executor's records, timers and ended markers.

The pure step (:mod:`kestream.executor.step`) says what should happen; this router turns it into
records for one :class:`~kestream.runtime.executor_outbox.Outbox`:

- a job to its worker group's topic, or, when no worker can take it (its group has no live
  worker and a FAIL or CANCEL fallback, or the job is too large to send), a failed result that
  the processor steps right after, as if a worker had answered;
- kills and working-directory releases to the worker topic the task run's jobs went to;
- new executions and events for other executions to the executions topic (a subflow whose
  inputs no record can hold fails its parent's task run instead);
- flow-concurrency requests (ask for a slot, give it back) to the admissions topic, keyed by
  flow;
- timers into the :class:`~kestream.executor.timers.TimerQueue`; logs, split by size;
- an execution's change: a pause's or an end's update records at once, other changes noted for
  the cycle's one update (built at the write, :meth:`CommandRouter.partial_update`); its
  changelog records, Kestra's metrics, and, when it ended, its tombstones and an ended marker.

Anything here may raise (an encoding that fails, a value no record can carry): the processor
stages one event's records in their own outbox and drops them all on a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import flow_key
from kestream.executor.sizes import over_limit
from kestream.executor.state import ExecutionState
from kestream.executor.timers import TimerQueue
from kestream.models.clock import Clock
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.execution_updates import update_records
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.metrics import Metrics
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.topics import Topics
from kestream.runtime.worker_groups import WorkerGroupRouter, refused_job

__all__ = ["CommandRouter", "Routed"]


@dataclass(slots=True)
class Routed:
    """What a step's commands left for the processor to do."""

    #: Results of jobs that could not be sent, stepped after the step's own commands.
    refused: list[ev.Event] = field(default_factory=list)
    #: The execution ended: it leaves the state table.
    ended: bool = False
    #: The step's metrics, counted by :meth:`count` once the whole event is staged (an event
    #: that fails later is rolled back, and must not have counted).
    counts: list[Callable[[], None]] = field(default_factory=list)

    def count(self) -> None:
        for count in self.counts:
            count()


class CommandRouter:
    """Turns a step's commands into records (see the module docstring)."""

    def __init__(
        self,
        topics: Topics,
        limit: RecordLimit,
        groups: WorkerGroupRouter,
        timers: TimerQueue,
        ended: EndedExecutions,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.topics = topics
        self.limit = limit
        self.groups = groups
        self.timers = timers
        self.ended = ended
        self.metrics = metrics
        self.clock = clock

    def route(
        self,
        partition: int,
        st: ExecutionState,
        commands: list[cmd.Command],
        out: Outbox,
        runs_before: int,
    ) -> Routed:
        """Route ``commands`` of one step of ``st``; ``runs_before`` is its ``created_runs``
        before the step (task runs numbered from there were created by it)."""
        routed = Routed()
        for command in commands:
            if isinstance(command, cmd.RequestSlot):
                self.request_slot(command, out)
            else:
                self._command(partition, st, command, out, routed, runs_before)
        return routed

    def _command(
        self,
        partition: int,
        st: ExecutionState,
        command: cmd.Command,
        out: Outbox,
        routed: Routed,
        runs_before: int,
    ) -> None:
        topics = self.topics
        if isinstance(command, cmd.RunTask):
            self._dispatch(partition, st, command, out, routed, runs_before)
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
                routed.refused.append(
                    _child_refused(created, created.parent, len(value), self.limit)
                )
        elif isinstance(command, cmd.SendEvent):
            event = command.event
            out.send(topics.executions, event.execution_id, records.encode_event(event))
        elif isinstance(command, cmd.SetTimer):
            self.timers.set(command.execution_id, command.timer_id, command.due)
        elif isinstance(command, cmd.CancelTimer):
            self.timers.cancel(command.execution_id, command.timer_id)
        elif isinstance(command, cmd.EmitLogs):
            for value in records.log_records(
                command.namespace, command.flow_id, command.lines, max_bytes=self.limit.value_bytes
            ):
                out.send(topics.logs, st.id, value)
        elif isinstance(command, cmd.ExecutionChanged):
            self._changed(partition, st, command, out, routed, runs_before)

    def request_slot(self, command: cmd.RequestSlot, out: Outbox) -> None:
        """A flow-concurrency request to the admissions topic, keyed by its flow (the one
        command a step of an execution that left the table can give: a slot back)."""
        request = command.request
        key = flow_key(request.namespace, request.flow_id)
        out.send(self.topics.admissions, key, records.encode_slot_request(request))

    def _dispatch(
        self,
        partition: int,
        st: ExecutionState,
        job: cmd.RunTask,
        out: Outbox,
        routed: Routed,
        runs_before: int,
    ) -> None:
        """Send a job to its worker group's topic, or end its task run now: its group has no
        live worker and a FAIL or CANCEL fallback (:mod:`kestream.runtime.worker_groups`), or
        the job is too large for any worker to receive."""
        group = job.task.workerGroup
        if (refusal := self.groups.refusal(group)) is not None:
            logs, event = refused_job(job, *refusal, self.clock())
            if logs is not None:
                self._command(partition, st, logs, out, routed, runs_before)
            routed.refused.append(event)
            return
        value = records.encode_job(job)
        if self.limit.fits(value):
            out.send(self.groups.topic_for(group), st.id, value)
        else:  # no worker could receive it: the task run fails, the execution goes on
            routed.refused.append(_job_refused(job, len(value), self.limit.value_bytes))

    def _changed(
        self,
        partition: int,
        st: ExecutionState,
        change: cmd.ExecutionChanged,
        out: Outbox,
        routed: Routed,
        runs_before: int,
    ) -> None:
        routed.counts.append(partial(self._count, st, change, runs_before))
        if change.terminal or st.state.current is StateType.PAUSED:
            updates = update_records(
                st,
                change.changed_task_runs,
                terminal=change.terminal,
                full=True,
                max_bytes=self.limit.value_bytes,
            )
            out.full_update(self.topics.updates, st.id, updates)
        else:  # built once for the cycle, at the write (:meth:`partial_update`)
            out.partial_update(st.id, change.changed_task_runs)
        if not change.terminal:
            if change.created and (key := self.ended.unmark(st.id)) is not None:
                out.log(key, None, partition)  # restarted from its snapshot: the marker would
                # hide it from recovery
            changed = change.changed_task_runs + change.counters_changed
            whole_max = min(codec.WHOLE_MAX_BYTES, self.limit.value_bytes)
            for key, value, data in codec.encode_step(
                st, changed, created=change.created, new_groups=change.planned, whole_max=whole_max
            ):
                out.log(key, value or None, partition, data=data)
            return
        if not change.created:  # it has records to clear
            for key, _ in codec.tombstones(st):
                out.log(key, None, partition)
        key, marker = self.ended.mark(
            st.id, partition, st.state.current.value, st.attempt_number, self.clock()
        )
        out.log(key, marker, partition)
        routed.ended = True

    def partial_update(self, st: ExecutionState, changed: list[str]) -> list[bytes]:
        """The records of the execution's partial update over a cycle: its fields now and the
        ``changed`` task runs as they are now (:meth:`Outbox.build_updates`)."""
        return update_records(
            st, changed, terminal=False, full=False, max_bytes=self.limit.value_bytes
        )

    def _count(self, st: ExecutionState, change: cmd.ExecutionChanged, first_new: int) -> None:
        """Kestra's executor metrics for one step, in O(task runs changed) like the step. A
        restart from the snapshot of an ended execution is not a started execution, whether or
        not this executor still remembers that it ended (its marker is pruned after
        ``KESTREAM_EXECUTOR_ENDED_RETENTION_H``): the step says so (``restored``).

        A task run counts as created when its number is past the execution's count before the
        step, and as ended when it is listed changed in a terminal state (a restart moves it out
        of that state first, so its next end is a new one).
        """
        metrics, namespace, flow_id = self.metrics, st.namespace, st.flow_id
        if change.created and not change.restored:
            metrics.execution_started(namespace, flow_id)
        runs = st.task_runs
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
