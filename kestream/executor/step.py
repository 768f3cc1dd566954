"""The executor step: ``(state, event) -> (state, commands)``, with no I/O.

One :class:`Executor` serves many executions; :meth:`Executor.step` applies one event to one
execution's state. Work inside a step is driven by a small queue of task runs to start and task
runs that ended, so a long chain of inline tasks never recurses, and every operation touches only
the task run named by the event, its parent and the parent's :class:`~kestream.executor.state.Group`
counters: the cost of an event does not grow with the size of the execution. The exceptions are
rare events that walk the execution once: a kill, a restart, and a LoopUntil's next iteration
(which drops the task runs of the one before); a Dag looks through its own (hand-written) graph.

Phases of one step:

1. dispatch the event (created, worker result, kill, resume, restart, subflow finished, timer);
2. drain the queue: START creates and runs a task run (runnable: render and dispatch, or run
   inline; flowable: plan children; subflow: create the child execution), DONE advances the
   parent's lanes, starts the errors branch, then the finally branch, or ends the parent (and,
   at the root, the execution, whose afterExecution tasks then run the same way);
3. emit one ``ExecutionChanged`` listing the task runs that changed, plus collected log lines.

The state object is updated in place and returned: copying it would make each event cost as much
as the whole execution.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import Ask, Release
from kestream.executor.codec import ROOT, encode_plan
from kestream.executor.context import (
    execution_context,
    input_variables,
    task_run_context,
    working_directory_of,
)
from kestream.executor.references import (
    STEP_STORE_MAX_BYTES,
    fit_outputs,
    flow_outputs_keys,
    flow_outputs_view,
    gathered,
    loaded_values,
    outputs_for_parent,
    outputs_keys,
    parent_task_run_files,
)
from kestream.executor.replay import replay_state
from kestream.executor.restore import (
    RESTARTABLE,
    RestoreError,
    execution_from_snapshot,
    flow_group,
    snapshot_attempt,
    state_from_execution,
)
from kestream.executor.retry import next_attempt_due
from kestream.executor.sizes import (
    encoded_size,
    outputs_too_large,
    plan_too_large,
    record_json,
    size_with,
    too_large,
)
from kestream.executor.sla import TIMER_KIND as SLA_TIMER
from kestream.executor.sla import (
    Violation,
    assertion_violations,
    duration_violation,
    has_assertions,
    max_durations,
)
from kestream.executor.state import (
    Block,
    ExecutionState,
    Group,
    StateRecord,
    TaskRunState,
    Timer,
    plan_group,
)
from kestream.expressions import RenderError, is_truthy, render, render_value
from kestream.expressions.budget import step_budget
from kestream.models.clock import Clock, utc_now
from kestream.models.durations import DurationError, parse_duration
from kestream.models.flow import Flow, trigger_class_for
from kestream.models.ids import derived_id
from kestream.models.input_resolution import fill_defaults
from kestream.models.inputs import InputValidationError, coerce_output, parse_inputs
from kestream.models.state import StateType, worst
from kestream.models.values import check_portable, find_unportable, safe_text
from kestream.secrets.deferred import SECRETS_KEY, render_properties
from kestream.secrets.encryption import holds_sealed, reseal, scope_of
from kestream.settings import get_settings
from kestream.storage.access import ExecutionFiles
from kestream.storage.current import get_storage
from kestream.storage.keys import TaskRunFiles
from kestream.storage.offload import plan_key, run_nonce, store
from kestream.tasks.base import (
    LOG_LEVEL_ORDER,
    ChildPlan,
    FlowableTask,
    LogLevel,
    Retry,
    RetryBehavior,
    RunInfo,
    RunnableTask,
    Task,
    TaskError,
    TaskKind,
    TaskOutcome,
)
from kestream.tasks.execution import ExecutionUpdate, ExecutionUpdatingTask
from kestream.tasks.flow import one_lane
from kestream.tasks.for_each_item import (
    ITEMS_VARIABLE,
    ITERATION_VARIABLE,
    ForEachItemExecutable,
    batch_child_id,
)
from kestream.tasks.loop_until import LoopUntil
from kestream.tasks.pause import Pause
from kestream.tasks.subflow import Subflow
from kestream.tasks.working_directory import WorkingDirectory, input_files

S = StateType
_START, _DONE = 0, 1
#: The execution states in which SLAs are enforced (not before it starts, nor while a kill or
#: an end is under way).
_SLA_STATES = frozenset({S.RUNNING, S.PAUSED})
_MAX_ERROR_LOGS = 100


class FlowSource(Protocol):
    """Where the executor finds flows (the flows table in the runtime, a dict in the driver)."""

    def get(self, namespace: str, flow_id: str, revision: int | None = None) -> Flow | None: ...


class UnknownFlow(LookupError):
    """An event names a flow (or revision) the executor does not know (yet)."""


@dataclass(slots=True)
class StepResult:
    state: ExecutionState | None
    commands: list[cmd.Command]


class Executor:
    """Holds what every step needs: the flows, the clock, the inline-task switch, and the
    largest outputs a task run may have (``max_output_bytes``, see :mod:`.sizes`; None: no
    limit, as in the broker-free driver)."""

    def __init__(
        self,
        flows: FlowSource,
        *,
        clock: Clock = utc_now,
        inline_tasks: bool = True,
        rng: random.Random | None = None,
        max_output_bytes: int | None = None,
        inline_max_bytes: int | None = None,
    ) -> None:
        self.flows = flows
        self.clock = clock
        self.inline_tasks = inline_tasks
        self.max_output_bytes = max_output_bytes
        #: Outputs larger than this go to the internal storage (:mod:`.references`); 0: never.
        #: None: the process's KESTREAM_OUTPUT_INLINE_MAX_BYTES.
        if inline_max_bytes is None:
            inline_max_bytes = get_settings().output_inline_max_bytes
        self.inline_max_bytes = inline_max_bytes
        self.rng = rng or random.Random()
        self.context_cache: dict[str, dict[str, Any]] = {}

    def step(self, state: ExecutionState | None, event: ev.Event) -> StepResult:
        """Apply ``event`` to ``state`` (None for an execution not seen yet).

        The step holds its caller (the executor's event loop) until it returns, so every render it
        makes shares one deadline besides its own budget: past it, the task run being rendered
        fails with "render exceeded ... step budget" (see :mod:`kestream.expressions.budget`).
        """
        with step_budget():
            return self._step(state, event)

    def _step(self, state: ExecutionState | None, event: ev.Event) -> StepResult:
        now = self.clock()
        if state is None:
            if isinstance(event, ev.Restart) and event.snapshot is not None:
                return self._restart_from_snapshot(event.execution_id, event.snapshot, now)
            if isinstance(event, ev.Admission):  # a slot for an execution that is gone
                return StepResult(None, _unwanted_slot(event, self.flows))
            if not isinstance(event, ev.ExecutionCreated):
                return StepResult(None, [])
            flow = self._flow(event.namespace, event.flow_id, event.revision)
            if event.replay is not None:  # goes on from a task run of an ended execution
                ran = event.replay.revision
                original = self.flows.get(event.namespace, event.flow_id, ran) if ran else None
                replayed, chosen = replay_state(event, flow, original=original, clock=self.clock)
                run = _Step(self, replayed, flow, now)
                run.replayed(chosen)
            else:
                run = _Step(self, _new_state(event, flow, now), flow, now)
                run.created(event)
        else:
            if isinstance(event, ev.ExecutionCreated):
                return StepResult(state, [])
            flow = self._flow(state.namespace, state.flow_id, state.revision)
            run = _Step(self, state, flow, now)
            run.dispatch(event)
        run.drain()
        if run.check_assertions():
            run.drain()  # the afterExecution tasks of an execution an SLA ended
        return StepResult(run.st, run.finish())

    def _restart_from_snapshot(
        self, execution_id: str, snapshot: dict[str, Any], now: datetime
    ) -> StepResult:
        """Restart an execution that left the state table, from its last snapshot.

        A snapshot of an execution that is not restartable changes nothing (as in place). One
        that cannot be rebuilt raises :class:`~kestream.executor.restore.RestoreError` (the
        runtime dead-letters the event): its flow revision is unknown, or it does not fit it.
        """
        execution = execution_from_snapshot(snapshot)
        if execution.id != execution_id:
            raise RestoreError(f"restart of {execution_id} carries a snapshot of {execution.id}")
        if execution.state.current not in RESTARTABLE:
            return StepResult(None, [])
        flow = self.flows.get(execution.namespace, execution.flowId, execution.flowRevision)
        if flow is None:  # not UnknownFlow: an old revision that is gone will not come back
            raise RestoreError(
                f"cannot restart {execution_id}: flow '{execution.namespace}."
                f"{execution.flowId}' revision {execution.flowRevision} is unknown"
            )
        st = state_from_execution(execution, flow, clock=self.clock)
        if st.root is None:  # it never started (its inputs failed): as in place, nothing to do
            return StepResult(None, [])
        run = _Step(self, st, flow, now)
        run.restored()
        run.restart()
        run.drain()
        return StepResult(run.st, run.finish())

    def forget(self, execution_id: str) -> None:
        """Drop caches kept for an execution that left the state table."""
        self.context_cache.pop(execution_id, None)

    def _flow(self, namespace: str, flow_id: str, revision: int | None) -> Flow:
        flow = self.flows.get(namespace, flow_id, revision)
        if flow is None:
            rev = f" revision {revision}" if revision is not None else ""
            raise UnknownFlow(f"Unknown flow '{namespace}.{flow_id}'{rev}")
        return flow


def _new_state(event: ev.ExecutionCreated, flow: Flow, now: datetime) -> ExecutionState:
    labels = {**flow.labels, **event.labels}
    labels.setdefault("system.correlationId", event.execution_id)
    return ExecutionState(
        id=event.execution_id,
        namespace=event.namespace,
        flow_id=event.flow_id,
        revision=flow.revision or 1,
        original_id=event.original_id or event.execution_id,
        attempt_number=event.attempt_number,
        original_created=event.original_created or now,
        labels=labels,
        inputs=event.inputs,
        trigger=event.trigger,
        schedule_date=event.schedule_date,
        parent_link=event.parent,
        state=StateRecord.new(S.CREATED, now),
        parent_id=event.parent_id,
    )


def _effective_retry(tr: TaskRunState, flow: Flow) -> Retry | None:
    """A task's own retry, else the nearest flowable ancestor's, else the flow's."""
    if tr.task.retry is not None:
        return tr.task.retry
    node = tr.parent
    while node is not None:
        if node.task.retry is not None:
            return node.task.retry
        node = node.parent
    return flow.retry


def _allowed(task: Task, state: StateType) -> StateType:
    """Apply ``allowFailure`` / ``allowWarning`` to a task run's final state."""
    if state is S.FAILED and task.allowFailure:
        state = S.WARNING
    if state is S.WARNING and task.allowWarning:
        state = S.SUCCESS
    return state


class _Step:
    """The work of one event on one execution (short-lived; holds the step's scratch state)."""

    def __init__(self, ex: Executor, st: ExecutionState, flow: Flow, now: datetime) -> None:
        self.ex = ex
        self.st = st
        self.flow = flow
        self.now = now
        self.queue: deque[tuple[int, TaskRunState]] = deque()
        self.commands: list[cmd.Command] = []
        self.changed: dict[str, None] = {}
        self.logs: list[cmd.LogLine] = []
        self.moved = False
        self.terminal = False
        #: Flowable task runs whose lanes were planned, and whose counters moved, in this step
        #: (the changelog writes a plan once and counters with the task run).
        self.new_groups: set[str] = set()
        self.created_now = False
        self.restored_now = False
        self.group_changed: dict[str, None] = {}

    # -- events --------------------------------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.Restart):
            if event.snapshot is None or _same_attempt(self.st, event.snapshot):
                self.restart()
            return
        if isinstance(event, ev.Admission):
            self.admitted(event)
            return
        if self.st.terminal:
            return  # late results, timers or kills of an ended execution change nothing
        if self.st.state.current.is_terminal and not self.for_after_execution(event):
            return  # only the afterExecution tasks still run: the rest is over
        if isinstance(event, ev.Kill | ev.Resume) and event.attempt not in (
            None,
            self.st.attempt_number,
        ):
            return  # sent to an earlier attempt (replayed after a restart): not this one's
        if isinstance(event, ev.WorkerResult):
            self.worker_result(event)
        elif isinstance(event, ev.TimerFired):
            self.timer_fired(event.timer_id)
        elif isinstance(event, ev.SubflowFinished):
            self.subflow_finished(event)
        elif isinstance(event, ev.Resume):
            self.resume(event)
        elif isinstance(event, ev.Kill):
            self.kill()

    def for_after_execution(self, event: ev.Event) -> bool:
        """Whether an event that reaches an execution whose afterExecution tasks run is theirs
        (a kill is: it stops them); a late result of a task that an Exit left running is not."""
        if isinstance(event, ev.Kill):
            return True
        if isinstance(event, ev.WorkerResult | ev.SubflowFinished):
            run_id: str | None = event.task_run_id
        elif isinstance(event, ev.TimerFired):
            timer = self.st.timers.get(event.timer_id)
            run_id = timer.task_run_id if timer is not None else None
        else:
            return isinstance(event, ev.Resume)
        tr = self.st.task_runs.get(run_id or "")
        while tr is not None and tr.parent is not None:
            tr = tr.parent
        return tr is not None and tr.block is Block.AFTER_EXECUTION

    def created(self, event: ev.ExecutionCreated) -> None:
        self.moved = True
        self.created_now = True
        if event.validate_inputs:
            try:
                given = self.trigger_inputs(event.inputs or {})
                scope = scope_of(self.st.namespace, self.st.flow_id)
                variables = input_variables(self.flow)
                self.st.inputs = parse_inputs(
                    self.flow.inputs, given, scope=scope, variables=variables
                )
            except (InputValidationError, RenderError) as exc:
                self.log(None, LogLevel.ERROR, str(exc))
                self.move_execution(S.FAILED)
                self.end_execution(S.FAILED, render_outputs=False)
                return
        else:
            self.st.inputs = self.with_default_inputs(event.inputs)
        if event.schedule_date is not None and event.schedule_date > self.now:
            self.set_timer("start", Timer(event.schedule_date, "start"))
            return
        self.begin()

    def trigger_inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        """A trigger's ``inputs`` rendered with its variables (``{{ trigger.body.name }}``,
        ``{{ trigger.date }}``), as Kestra renders them when the trigger fires. Inputs given by
        a person or a parent are values, never templates, and are taken as they are."""
        trigger = self.st.trigger
        if trigger is None or not given or trigger_class_for(trigger.get("type")) is None:
            return given  # not a flow trigger's (a subflow's inputs come rendered by its parent)
        ctx = execution_context(self.st, self.flow, self.ex.clock, {})
        try:
            return {key: render_value(value, ctx) for key, value in given.items()}
        except RenderError as exc:
            trigger_id = trigger.get("id")
            raise RenderError(f"Trigger '{trigger_id}': cannot render its inputs: {exc}") from exc

    def with_default_inputs(self, given: dict[str, Any] | None) -> dict[str, Any] | None:
        """Inputs taken as given still see the flow's defaults for the enabled ones left out
        (as Kestra); templated defaults are rendered with the inputs before them."""
        scope = scope_of(self.st.namespace, self.st.flow_id)
        variables = input_variables(self.flow)
        return fill_defaults(self.flow.inputs, given, scope=scope, variables=variables)

    # -- flow concurrency (kestream.executor.admission) ------------------------------------

    def begin(self) -> None:
        """Start the execution; one of a flow with a concurrency limit asks for a slot first
        and stays CREATED until the admission answers (:meth:`admitted`). Its MAX_DURATION
        SLAs count from here, the wait for a slot included, as Kestra's count from creation."""
        self.arm_max_durations()
        if self.flow.concurrency is None:
            self.start_execution()
        else:
            self.ask_slot(queue=False)

    def ask_slot(self, *, queue: bool) -> None:
        limit = self.flow.concurrency
        assert limit is not None
        st = self.st
        ask = Ask(
            st.namespace, st.flow_id, st.id, st.attempt_number, limit.limit, limit.behavior, queue
        )
        self.commands.append(cmd.RequestSlot(ask))

    def release_slot(self) -> None:
        limit = self.flow.concurrency
        assert limit is not None
        st = self.st
        release = Release(st.namespace, st.flow_id, st.id, st.attempt_number, limit.limit)
        self.commands.append(cmd.RequestSlot(release))

    def awaiting_slot(self) -> bool:
        """Whether the execution asked for a slot and has not started with it: CREATED (not
        waiting for its scheduled date), QUEUED, or RESTARTED (a restart waits for a slot)."""
        if self.flow.concurrency is None:
            return False
        current = self.st.state.current
        if current is S.CREATED:
            return "start" not in self.st.timers
        return current in (S.QUEUED, S.RESTARTED)

    def admitted(self, answer: ev.Admission) -> None:
        """The admission's answer. A slot that this attempt no longer waits for (it ended,
        it was killed, or the answer is an older attempt's) goes back at once; an answer
        repeated after a replay changes nothing."""
        st = self.st
        if answer.attempt != st.attempt_number or not self.awaiting_slot():
            ours = answer.attempt == st.attempt_number and not st.state.current.is_terminal
            if answer.decision is S.RUNNING and not ours and self.flow.concurrency is not None:
                limit = self.flow.concurrency.limit
                back = Release(st.namespace, st.flow_id, st.id, answer.attempt, limit)
                self.commands.append(cmd.RequestSlot(back))
            return
        # The state takes the admission's date: the histories show the order of its decisions.
        self.now = max(answer.at, st.state.history[-1][1])
        decision = answer.decision
        if decision is S.QUEUED:
            self.move_execution(S.QUEUED)
        elif decision is S.RUNNING:
            self.run_with_slot()
        else:  # CANCEL or FAIL at the limit
            limit = self.flow.concurrency.limit if self.flow.concurrency else 0
            if decision is S.FAILED:
                self.log(None, LogLevel.ERROR, "Flow is FAILED due to concurrency limit exceeded")
            else:
                self.log(None, LogLevel.INFO, f"Cancelled: the flow's concurrency limit ({limit})"
                         " is reached")  # fmt: skip
            self.move_execution(decision)
            self.end_execution(decision, render_outputs=False)

    def run_with_slot(self) -> None:
        """Run what waited for its slot: a new execution starts, a replay runs its chosen task
        run again (``replay_run``, noted by :meth:`replayed`), a restart runs again."""
        st = self.st
        self.arm_max_durations(missing_only=True)
        if st.root is None:
            self.start_execution()
            return
        chosen, st.replay_run = st.replay_run, None
        if chosen is not None:
            self.go_on([st.task_runs[chosen]])
        else:
            self.rerun()

    def start_execution(self) -> None:
        self.move_execution(S.RUNNING)
        self.st.root = flow_group(self.flow)
        self.new_groups.add(ROOT)  # the execution's own lanes were planned
        if self.enforce_assertions():  # their first look, before any task starts
            return
        self.fill(self.st.root, None)
        if self.st.root.finished:
            self.branches_done(self.st.root, None)

    def worker_result(self, result: ev.WorkerResult) -> None:
        tr = self.current_attempt(result.task_run_id, result.attempt)
        if tr is None:
            return
        if isinstance(tr.task, WorkingDirectory):
            self.workdir_files_done(tr, result)
            return
        for line in result.error_logs:
            self.remember_error(tr, line)
        outcome = TaskOutcome(result.state, result.outputs, error=result.error)
        self.apply_outcome(tr, outcome)

    def subflow_finished(self, done: ev.SubflowFinished) -> None:
        tr = self.current_attempt(done.task_run_id, done.attempt)
        if tr is None:
            return
        task = tr.task
        assert isinstance(task, Subflow)
        if isinstance(task, ForEachItemExecutable):
            self.batch_finished(tr, task, done)
            return
        outputs: dict[str, Any] = {"executionId": done.child_id, "state": done.child_state.value}
        if done.outputs is not None:
            outputs["outputs"] = done.outputs
        self.set_outputs(tr, outputs)
        if done.error:
            self.attempt_failed(tr, done.error)
        elif done.child_state.is_failed and task.transmitFailed:
            self.attempt_failed(
                tr, f"Subflow execution '{done.child_id}' ended in state {done.child_state}"
            )
        else:
            final = S.WARNING if done.child_state is S.WARNING else S.SUCCESS
            tr.attempts[-1].move_task_run(final, self.now, tr.task.id)
            self.complete(tr, final)

    def timer_fired(self, timer_id: str) -> None:
        timer = self.st.timers.pop(timer_id, None)
        if timer is None:
            return
        if timer.kind == "start":
            self.begin()
            return
        if timer.kind == SLA_TIMER:
            violation = duration_violation(self.flow, timer_id)
            if violation is not None and (
                self.st.state.current in _SLA_STATES or self.awaiting_slot()
            ):
                self.apply_violations([violation])
            return
        tr = self.st.task_runs.get(timer.task_run_id or "")
        if tr is None:
            return
        if timer.kind == "retry" and tr.state.current is S.RETRYING:
            self.new_attempt(tr)
        elif timer.kind == "pause-delay" and tr.state.current is S.PAUSED:
            self.resume_pause(tr, None)
        elif timer.kind == "pause-timeout" and tr.state.current is S.PAUSED:
            self.unpause(tr)
            self.fail_flowable(tr, f"Pause timed out after {tr.task.timeout}")
        elif timer.kind == "task-timeout" and self.current_attempt(tr.id, timer.attempt):
            self.commands.append(cmd.KillTask(self.st.id, tr.id))
            self.attempt_failed(tr, f"Task timed out after {tr.task.timeout}")
        elif timer.kind == "loop" and tr.state.current is S.RUNNING:
            self.next_iteration(tr)

    def resume(self, resume: ev.Resume) -> None:
        ids = list(self.st.paused_runs)
        for task_run_id in ids:
            if resume.task_run_id is None or task_run_id == resume.task_run_id:
                self.resume_pause(self.st.task_runs[task_run_id], resume.inputs or {})

    def kill(self) -> None:
        """Kill what runs. Where ``finally`` blocks wait, the kill goes through them: the
        execution is KILLING while they run (a second kill stops them too); the tasks still
        running after the end (``afterExecution``) are killed without changing its state."""
        current = self.st.state.current
        # After the end, the afterExecution tasks end through the queue (and with them the
        # execution); before it, the queue takes the kill through the finally blocks. One that
        # waits for a concurrency slot runs nothing: it ends at once.
        if self.awaiting_slot():
            self.kill_running(killing=False)  # a waiting replay's chosen run and its parents
            self.move_execution(S.KILLED)  # nothing of it runs: no KILLING
            self.end_execution(S.KILLED, render_outputs=False)
            return
        graceful = current is not S.KILLING and self.st.root is not None
        if current.is_terminal or (graceful and _has_finally(self.flow)):
            self.kill_running(leaves_only=True)
        else:
            self.kill_running()
            self.st.paused_runs.clear()
            self.move_execution(S.KILLED)
            self.end_execution(S.KILLED, render_outputs=False)

    def kill_running(self, *, leaves_only: bool = False, killing: bool = True) -> None:
        """Move the task runs still going to KILLED, and stop their work. ``leaves_only``: kill
        the ones that hold no lanes, and let their parents end through the queue (their
        ``finally`` blocks run); a loop waiting for its next iteration ends there too.
        ``killing``: the execution goes KILLING (not when an SLA ends it in another state)."""
        if killing and not self.st.state.current.is_terminal:
            self.move_execution(S.KILLING)
        killed: list[TaskRunState] = []
        for tr in list(self.st.task_runs.values()):
            if tr.state.current.is_terminal:
                continue
            waiting_loop = self.st.timers.get(f"loop:{tr.id}") is not None
            if leaves_only and tr.group is not None and not waiting_loop:
                continue  # it ends when its children have
            if tr.attempts and not tr.attempts[-1].current.is_terminal:
                tr.attempts[-1].move_task_run(S.KILLED, self.now, tr.task.id)
                if isinstance(tr.task, RunnableTask):
                    self.commands.append(cmd.KillTask(self.st.id, tr.id))
            if tr.child_execution_id and isinstance(tr.task, Subflow):
                self.commands.append(cmd.SendEvent(ev.Kill(tr.child_execution_id)))
            self.kill_batches(tr)
            if leaves_only:
                waiting_pause = tr.id in self.st.paused_runs
                self.unpause(tr)
                self.cancel_timer(f"loop:{tr.id}")
                self.cancel_timer(f"retry:{tr.id}")
                if not ((waiting_loop or waiting_pause) and self.killed_into_finally(tr)):
                    self.complete(tr, S.KILLED)  # its parent goes on through the queue
                continue
            tr.state.move_task_run(S.KILLED, self.now, tr.task.id)
            self.changed[tr.id] = None
            killed.append(tr)
        for tr in killed:  # after the kills, which reach the worker first
            self.release_workdir(tr)

    def killed_into_finally(self, tr: TaskRunState) -> bool:
        """A flowable killed while none of its children run (a LoopUntil waiting for its next
        iteration, a Pause waiting to be resumed) still runs its own ``finally`` block, then
        ends KILLED, like one killed through its children. False when it has none."""
        task = tr.task
        if not isinstance(task, FlowableTask) or not task.finally_:
            return False
        group = tr.group
        if group is None:  # a Pause plans its children once resumed
            group = tr.group = plan_group(task, ChildPlan([]))
            self.new_groups.add(tr.id)
        if tr.state.current is S.PAUSED:
            self.move(tr, S.RUNNING)
        group.failed, group.worst = True, worst(group.worst, S.KILLED)
        self.group_changed[tr.id] = None
        self.branches_done(group, tr)  # no loop, no errors once failed by a kill
        return True

    # -- the queue -----------------------------------------------------------------------

    def drain(self) -> None:
        queue = self.queue
        while queue:
            op, tr = queue.popleft()
            if op == _START:
                self.start(tr)
            else:
                self.child_done(tr)

    def start(self, tr: TaskRunState) -> None:
        task = tr.task
        if task.runIf is not None:
            try:
                condition = render(task.runIf, self.context(tr))
            except RenderError as exc:
                self.fail_task_run(tr, str(exc))
                return
            if not is_truthy(condition):
                self.move(tr, S.SKIPPED)
                self.queue.append((_DONE, tr))
                return
        if isinstance(task, Pause):
            self.start_pause(tr)
        elif task.kind is TaskKind.FLOWABLE:
            self.start_flowable(tr)
        else:
            self.new_attempt(tr)

    def new_attempt(self, tr: TaskRunState) -> None:
        """Run (again) a task that has attempts: a runnable task or a Subflow."""
        if tr.task.kind is TaskKind.RUNNABLE:
            self.run_attempt(tr)
        else:
            self.run_subflow(tr)

    def child_done(self, tr: TaskRunState) -> None:
        """A task run ended: advance its lane, fill lanes, maybe run errors or end the parent."""
        parent = tr.parent
        group = self.group_of(tr)
        state = tr.state.current
        if parent is not None:
            self.group_changed[parent.id] = None
        if tr.block is Block.FINALLY:
            self.finally_child_done(group, parent, tr)
            return
        group.worst = worst(group.worst, S.SUCCESS if state is S.SKIPPED else state)
        if tr.errors_branch:
            self.errors_child_done(group, parent, tr)
            return
        last = tr.pos + 1 >= len(group.lanes[tr.lane])
        if state.is_failed:
            group.failed = True
            group.active -= 1
        elif not last and not group.failed and not _reopened_after_warning(tr):
            self.create_child(group, parent, tr.lane, tr.pos + 1)
        else:
            group.active -= 1
            if last:
                group.lane_ended(tr.lane)
        self.fill(group, parent)
        if group.finished:
            killing = self.st.state.current is S.KILLING
            if group.failed and group.errors and group.errors_pos < 0 and not killing:
                group.errors_pos = 0
                self.create_errors_child(group, parent)
            else:
                self.branches_done(group, parent)

    def group_of(self, tr: TaskRunState) -> Group:
        if tr.parent is not None:
            group = tr.parent.group
        elif tr.block is Block.AFTER_EXECUTION:
            group = self.st.after
        else:
            group = self.st.root
        assert group is not None
        return group

    def errors_child_done(
        self, group: Group, parent: TaskRunState | None, tr: TaskRunState
    ) -> None:
        group.errors_pos += 1
        if not tr.state.current.is_failed and group.errors_pos < len(group.errors):
            self.create_errors_child(group, parent)
        else:
            self.branches_done(group, parent)

    def branches_done(self, group: Group, parent: TaskRunState | None) -> None:
        """The lanes (and the errors branch, if it ran) ended: loop again, run the ``finally``
        branch, or end the owner."""
        if group is self.st.after:
            self.after_execution_done()
            return
        if (
            parent is not None
            and isinstance(parent.task, LoopUntil)
            and not group.failed
            and self.st.state.current is not S.KILLING
            and self.loop_again(parent, group)
        ):
            return
        if group.finally_ and group.finally_pos < 0:
            group.finally_pos = 0
            self.create_finally_child(group, parent)
            return
        self.finish_group(group, parent)

    def finally_child_done(
        self, group: Group, parent: TaskRunState | None, tr: TaskRunState
    ) -> None:
        """A ``finally`` task ended: only a failure changes the owner's end state (and stops
        the branch, as in ``errors``)."""
        group.finally_pos += 1
        state = tr.state.current
        if state.is_failed:
            group.failed = True
            group.worst = worst(group.worst, state)
        elif group.finally_pos < len(group.finally_):
            self.create_finally_child(group, parent)
            return
        self.finish_group(group, parent)

    def fill(self, group: Group, parent: TaskRunState | None) -> None:
        while (lane := group.next_startable()) is not None:
            group.mark_started(lane)
            group.active += 1
            self.create_child(group, parent, lane, 0)

    def finish_group(self, group: Group, parent: TaskRunState | None) -> None:
        final = _group_end_state(group)
        if parent is None:
            if self.enforce_assertions():  # their last look before the end state
                return
            self.end_execution(final, render_outputs=True)
        elif (
            not group.failed
            and isinstance(parent.task, WorkingDirectory)
            and parent.task.files_task is not None
            and self.st.state.current is not S.KILLING
        ):
            self.workdir_files_job(parent, "collect")  # it ends when they are collected
        else:
            self.complete(parent, final)

    # -- task runs -----------------------------------------------------------------------

    def create_child(self, group: Group, parent: TaskRunState | None, lane: int, pos: int) -> None:
        task, value = group.lanes[lane][pos]
        block = Block.AFTER_EXECUTION if group is self.st.after else Block.TASKS
        self.new_task_run(task, parent, value, lane, pos, block=block)

    def create_errors_child(self, group: Group, parent: TaskRunState | None) -> None:
        task = group.errors[group.errors_pos]
        self.new_task_run(task, parent, None, -1, group.errors_pos, block=Block.ERRORS)

    def create_finally_child(self, group: Group, parent: TaskRunState | None) -> None:
        task = group.finally_[group.finally_pos]
        self.new_task_run(task, parent, None, -1, group.finally_pos, block=Block.FINALLY)

    def new_task_run(
        self,
        task: Task,
        parent: TaskRunState | None,
        value: str | None,
        lane: int,
        pos: int,
        *,
        block: Block,
    ) -> None:
        base_path = parent.path if parent is not None else ()
        tr = TaskRunState(
            id=derived_id(self.st.id, "run", self.st.attempt_number, self.st.created_runs),
            task=task,
            parent=parent,
            value=value,
            path=(*base_path, value) if value is not None else base_path,
            lane=lane,
            pos=pos,
            block=block,
            state=StateRecord.new(S.CREATED, self.now),
        )
        self.st.add_task_run(tr)
        self.changed[tr.id] = None
        self.queue.append((_START, tr))

    def begin_attempt(self, tr: TaskRunState) -> dict[str, Any] | None:
        """Open a new attempt and render the task's properties for it.

        Returns None when rendering failed (the attempt has then failed, and may be retried).
        """
        self.move(tr, S.RUNNING)
        tr.attempts.append(StateRecord.new(S.RUNNING, self.now))
        try:
            props = self.render_props(tr, defer_secrets=isinstance(tr.task, RunnableTask))
        except RenderError as exc:
            self.attempt_failed(tr, str(exc))
            return None
        problem = find_unportable(props, "properties")
        if problem is not None:  # the job record could not be written
            self.attempt_failed(tr, f"Task '{tr.task.id}' properties cannot be stored: {problem}")
            return None
        return props

    def run_attempt(self, tr: TaskRunState) -> None:
        """Start a new attempt of a runnable task: render, then run inline or dispatch."""
        task = tr.task
        assert isinstance(task, RunnableTask)
        props = self.begin_attempt(tr)
        if props is None:
            return
        attempt = len(tr.attempts)
        # A task that changes the execution (Labels, Exit) runs here whatever the inline switch;
        # one that names a worker group runs on that group's workers, even if it could inline.
        inline = self.ex.inline_tasks and task.inline and task.workerGroup is None
        # secret() and SECRET inputs are resolved on a worker only (kestream.secrets)
        secrets = SECRETS_KEY in props or holds_sealed(props)
        if SECRETS_KEY in props and isinstance(task, ExecutionUpdatingTask):
            self.attempt_failed(
                tr, "secret() is only resolved on a worker; this task runs in the executor"
            )
            return
        if (inline and not secrets) or isinstance(task, ExecutionUpdatingTask):
            info = RunInfo(self.st.id, tr.id, attempt)
            try:
                outcome = task.execute(props, info)
            except TaskError as exc:
                self.emit_task_logs(tr, TaskOutcome(S.FAILED, logs=info.lines))
                self.attempt_failed(tr, str(exc))
                return
            outcome.logs[:0] = info.lines  # what the task logged as it ran comes first
            self.emit_task_logs(tr, outcome)
            self.apply_outcome(tr, outcome)
            return
        try:
            workdir = self.shared_workdir(tr)
        except (RenderError, TaskError) as exc:
            self.attempt_failed(tr, str(exc))
            return
        timeout = self.timeout_seconds(tr)
        self.commands.append(
            cmd.RunTask(
                self.st.id,
                tr.id,
                attempt,
                self.st.namespace,
                self.st.flow_id,
                self.st.revision,
                task,
                props,
                timeout,
                workdir,
                self.source_execution(),
            )
        )
        if timeout is not None:
            due = self.now + parse_duration(str(task.timeout))
            timer = Timer(due, "task-timeout", tr.id, attempt)
            self.set_timer(f"timeout:{tr.id}:{attempt}", timer)

    def source_execution(self) -> tuple[str, str, str] | None:
        """The execution that started this one, when its trigger names one (stored files)."""
        variables = (self.st.trigger or {}).get("variables")
        return ExecutionFiles.of(self.st.namespace, self.st.flow_id, self.st.id, variables).trigger

    def shared_workdir(self, tr: TaskRunState) -> cmd.SharedWorkdir | None:
        """The directory of the nearest enclosing WorkingDirectory, for a job that uses files
        (inline tasks do not); its ``inputFiles`` rendered with that task run's context."""
        if not isinstance(tr.task, RunnableTask) or tr.task.inline:
            return None
        owner = working_directory_of(tr)
        if owner is None:
            return None
        return cmd.SharedWorkdir(owner.id, input_files(self.render_props(owner)))

    def task_run_files(self, tr: TaskRunState) -> TaskRunFiles:
        """The storage folder of ``tr`` (its offloaded outputs, its files)."""
        return TaskRunFiles(self.st.namespace, self.st.flow_id, self.st.id, tr.task.id, tr.id)

    def apply_outcome(self, tr: TaskRunState, outcome: TaskOutcome) -> None:
        unportable = find_unportable(outcome.outputs, "outputs")
        problem: str | None
        outputs = outcome.outputs
        if unportable is not None:  # it would stop whoever has to write it: the task run fails
            problem = f"Task '{tr.task.id}' outputs cannot be stored: {unportable}"
        else:  # stored past the inline threshold; no record could hold the rest: fail it
            outputs, problem = fit_outputs(
                tr.task.id, outputs, self.ex.max_output_bytes, self.ex.inline_max_bytes,
                lambda: outputs_keys(self.task_run_files(tr), len(tr.attempts)),
                store_max=STEP_STORE_MAX_BYTES,
            )  # fmt: skip
        if outcome.error is not None or outcome.state.is_failed:
            if outputs is not None and problem is None:
                self.set_outputs(tr, outputs)  # a failed script keeps its exitCode
            self.attempt_failed(tr, outcome.error or f"Task ended in state {outcome.state}")
            return
        if problem is not None:
            self.attempt_failed(tr, problem)
            return
        attempt = len(tr.attempts)
        self.cancel_timer(f"timeout:{tr.id}:{attempt}")
        if isinstance(outcome, ExecutionUpdate) and outcome.exit_state is not None:
            self.exit_execution(tr, outcome.exit_state)
            return
        if isinstance(outcome, ExecutionUpdate) and outcome.labels:
            self.set_labels(outcome.labels)
        tr.attempts[-1].move_task_run(outcome.state, self.now, tr.task.id)
        if outputs is not None:
            self.set_outputs(tr, outputs)
        final = outcome.state
        retry = _effective_retry(tr, self.flow)
        if final is S.SUCCESS and attempt > 1 and retry is not None and retry.warningOnRetry:
            final = S.WARNING
        self.complete(tr, final)

    def attempt_failed(self, tr: TaskRunState, message: str) -> None:
        """The current attempt failed: retry it, retry the execution, or fail the task run."""
        self.log(tr, LogLevel.ERROR, message)
        attempt = len(tr.attempts)
        if tr.attempts and not tr.attempts[-1].current.is_terminal:
            tr.attempts[-1].move_task_run(S.FAILED, self.now, tr.task.id)
        self.cancel_timer(f"timeout:{tr.id}:{attempt}")
        retry = _effective_retry(tr, self.flow)
        if retry is not None and self.retry(tr, retry):
            return
        self.complete(tr, S.FAILED)

    def retry(self, tr: TaskRunState, retry: Retry) -> bool:
        if retry.behavior is RetryBehavior.CREATE_NEW_EXECUTION:
            due = next_attempt_due(
                retry, self.st.attempt_number, self.st.original_created, self.now, self.ex.rng
            )
            if due is None:
                return False
            self.move(tr, S.FAILED)
            self.retry_as_new_execution(due)
            return True
        first = tr.attempts[0].start if tr.attempts else self.now
        due = next_attempt_due(retry, len(tr.attempts), first, self.now, self.ex.rng)
        if due is None:
            return False
        self.move(tr, S.RETRYING)
        self.set_timer(f"retry:{tr.id}", Timer(due, "retry", tr.id, len(tr.attempts) + 1))
        return True

    def fail_task_run(self, tr: TaskRunState, message: str) -> None:
        """Fail a task run that could not start (no attempt to retry)."""
        self.log(tr, LogLevel.ERROR, message)
        self.complete(tr, S.FAILED)

    def complete(self, tr: TaskRunState, state: StateType) -> None:
        """End a task run (``allowFailure``/``allowWarning`` applied); queue its parent's turn."""
        self.move(tr, _allowed(tr.task, state))
        self.queue.append((_DONE, tr))
        self.release_workdir(tr)

    def release_workdir(self, tr: TaskRunState) -> None:
        """A WorkingDirectory task run ended (its children too, or they were killed): the
        worker that ran them removes their directory."""
        task = tr.task
        if isinstance(task, WorkingDirectory) and tr.group is not None and task.runs_on_workers():
            self.commands.append(cmd.ReleaseWorkdir(self.st.id, tr.id, task.worker_group()))

    def start_flowable(self, tr: TaskRunState) -> None:
        task = tr.task
        assert isinstance(task, FlowableTask)
        self.move(tr, S.RUNNING)
        if isinstance(task, WorkingDirectory) and task.cache is not None:
            self.workdir_files_job(tr, "restore")  # the children are planned once it is done
            return
        self.plan_children(tr, task)

    def workdir_files_job(self, tr: TaskRunState, phase: str) -> None:
        """A job of the WorkingDirectory ``tr`` itself, in its directory: ``restore`` its cache
        before the first child, ``collect`` its outputFiles and cache after the last
        (:mod:`kestream.tasks.working_directory_files`); an attempt of ``tr`` while it runs."""
        task = tr.task
        assert isinstance(task, WorkingDirectory) and task.files_task is not None
        try:
            workdir = cmd.SharedWorkdir(tr.id, input_files(self.render_props(tr)))
        except (RenderError, TaskError) as exc:
            self.fail_flowable(tr, str(exc))
            return
        tr.attempts.append(StateRecord.new(S.RUNNING, self.now))
        self.changed[tr.id] = None
        self.commands.append(
            cmd.RunTask(
                self.st.id,
                tr.id,
                len(tr.attempts),
                self.st.namespace,
                self.st.flow_id,
                self.st.revision,
                task.files_task,
                {"phase": phase},
                workdir=workdir,
                source=self.source_execution(),
            )
        )

    def workdir_files_done(self, tr: TaskRunState, result: ev.WorkerResult) -> None:
        """A WorkingDirectory's own job ended: after ``restore`` its children run; after
        ``collect`` it ends as its children did, with the ``outputFiles`` output. A failed job
        fails it."""
        task = tr.task
        assert isinstance(task, WorkingDirectory)
        restored = tr.group is None  # before the first child, the job was the restore
        for line in result.error_logs:
            self.remember_error(tr, line)
        if result.state is not S.SUCCESS:
            tr.attempts[-1].move_task_run(S.FAILED, self.now, task.id)
            message = result.error or "the WorkingDirectory's files could not be handled"
            if restored:  # no child ran; the directory the job made goes too
                self.commands.append(cmd.ReleaseWorkdir(self.st.id, tr.id, task.worker_group()))
                self.fail_flowable(tr, message)
            else:
                self.fail_task_run(tr, message)
            return
        tr.attempts[-1].move_task_run(S.SUCCESS, self.now, task.id)
        if restored:
            self.plan_children(tr, task)
            return
        self.set_outputs(tr, dict(result.outputs or {}))
        assert tr.group is not None
        self.complete(tr, _group_end_state(tr.group))

    def plan_children(self, tr: TaskRunState, task: FlowableTask) -> None:
        try:
            plan = task.plan(self.render_props(tr))
        except (RenderError, TaskError) as exc:
            self.fail_flowable(tr, str(exc))
            return
        group = plan_group(task, plan)
        problem = self.fit_plan(tr, group)
        if problem is not None:
            self.fail_task_run(tr, problem)
            return
        if plan.outputs is not None:
            self.set_outputs(tr, plan.outputs)
        tr.group = group
        self.new_groups.add(tr.id)
        self.fill(group, tr)
        if group.finished:
            self.branches_done(group, tr)

    def fit_plan(self, tr: TaskRunState, group: Group) -> str | None:
        """Keep the plan record of ``tr``'s new ``group`` small, or say why it cannot be kept.

        The plan is one changelog record, written once (a ForEach's values, one lane each).
        Past the inline threshold it is stored in the task run's folder (``_plan/``) and the
        record carries its reference (:func:`.codec.encode_plan`; recovery reads it back).
        One no record can hold and too large to store would be lost, and with it the
        execution on the next recovery: the task run fails instead, saying why."""
        record = encode_plan(group)
        data = record_json(record)
        threshold = self.ex.inline_max_bytes
        if 0 < threshold < len(data) <= STEP_STORE_MAX_BYTES:
            key = plan_key(self.task_run_files(tr).prefix, len(tr.attempts), run_nonce())
            try:
                group.stored = store(get_storage(), key, data)
            except Exception as exc:  # the storage's own errors (a disk, a network)
                return f"the lanes planned by task '{tr.task.id}' could not be stored: {exc}"
            return None
        limit = self.ex.max_output_bytes
        if limit is not None and len(data) > limit:
            return plan_too_large(tr.task.id, record, len(group.lanes), limit, size=len(data))
        return None

    def fail_flowable(self, tr: TaskRunState, message: str) -> None:
        """A flowable fails before any child ran (its plan did not render, a Pause timed out):
        its own ``errors`` branch, then its ``finally`` branch, still run."""
        task = tr.task
        assert isinstance(task, FlowableTask)
        group = plan_group(task, ChildPlan([]))
        if not group.errors and not group.finally_:
            self.fail_task_run(tr, message)
            return
        self.log(tr, LogLevel.ERROR, message)
        group.failed, group.worst = True, S.FAILED
        tr.group = group
        self.new_groups.add(tr.id)
        if group.errors:
            group.errors_pos = 0
            self.create_errors_child(group, tr)
        else:
            self.branches_done(group, tr)

    # -- LoopUntil -----------------------------------------------------------------------

    def loop_again(self, tr: TaskRunState, group: Group) -> bool:
        """An iteration of a LoopUntil ended well: True when another one follows (after the
        interval) or its ``errors`` branch runs; False when the loop ends (``group.failed``
        says how, see :mod:`kestream.tasks.loop_until`)."""
        task = tr.task
        assert isinstance(task, LoopUntil)
        if not group.lanes:
            return False  # every child disabled: nothing could ever change
        try:
            met = is_truthy(render(task.condition, self.context(tr)))
        except RenderError as exc:
            self.log(tr, LogLevel.ERROR, str(exc))
            return self.loop_failed(group, tr)
        if met:
            return False
        iteration = int((tr.outputs or {}).get("iterationCount", 1)) + 1
        self.set_outputs(tr, {"iterationCount": iteration})
        end = task.limit_reached(iteration, self.now - tr.state.start)
        if end is S.FAILED:
            message = f"LoopUntil '{task.id}' reached its limit before its condition held"
            self.log(tr, LogLevel.ERROR, message)
            return self.loop_failed(group, tr)
        if end is not None:
            return False
        due = self.now + task.checkFrequency.interval
        self.set_timer(f"loop:{tr.id}", Timer(due, "loop", tr.id))
        return True

    def loop_failed(self, group: Group, tr: TaskRunState) -> bool:
        group.failed, group.worst = True, worst(group.worst, S.FAILED)
        if not group.errors:
            return False
        group.errors_pos = 0
        self.create_errors_child(group, tr)
        return True

    def next_iteration(self, tr: TaskRunState) -> None:
        """Drop the task runs of the iteration before (and their outputs), run the children
        again with the same plan."""
        st, group = self.st, tr.group
        assert group is not None
        for tid in [tid for tid, run in st.task_runs.items() if _below_any(run, {tr.id})]:
            self.forget_outputs(st.task_runs.pop(tid))
            self.changed[tid] = None
        group.next_lane, group.active, group.failed, group.worst = 0, 0, False, S.SUCCESS
        group.errors_pos = group.finally_pos = -1
        group.started.clear()
        group.done.clear()
        self.group_changed[tr.id] = None
        self.fill(group, tr)
        if group.finished:
            self.branches_done(group, tr)

    # -- pause ---------------------------------------------------------------------------

    def start_pause(self, tr: TaskRunState) -> None:
        self.move(tr, S.RUNNING)
        try:
            props = self.render_props(tr)
            delay = _optional_duration(props.get("delay"))
            timeout = _optional_duration(props.get("timeout"))
        except (RenderError, DurationError) as exc:
            self.fail_task_run(tr, str(exc))
            return
        self.move(tr, S.PAUSED)
        self.st.paused_runs[tr.id] = None
        if self.st.state.current is S.RUNNING:
            self.move_execution(S.PAUSED)
        if delay is not None:
            self.set_timer(f"pause:{tr.id}", Timer(self.now + delay, "pause-delay", tr.id))
        if timeout is not None:
            due = self.now + timeout
            self.set_timer(f"pause-timeout:{tr.id}", Timer(due, "pause-timeout", tr.id))

    def unpause(self, tr: TaskRunState) -> None:
        self.st.paused_runs.pop(tr.id, None)
        self.cancel_timer(f"pause:{tr.id}")
        self.cancel_timer(f"pause-timeout:{tr.id}")
        if not self.st.paused_runs and self.st.state.current is S.PAUSED:
            self.move_execution(S.RUNNING)

    def resume_pause(self, tr: TaskRunState, inputs: dict[str, Any] | None) -> None:
        task = tr.task
        assert isinstance(task, Pause)
        self.unpause(tr)
        self.move(tr, S.RUNNING)
        if task.onResume:
            try:
                scope = scope_of(self.st.namespace, self.st.flow_id)
                variables = input_variables(self.flow)
                values = parse_inputs(task.onResume, inputs or {}, scope=scope, variables=variables)
                self.set_outputs(tr, {"onResume": values})
            except InputValidationError as exc:
                self.fail_task_run(tr, str(exc))
                return
        self.plan_children(tr, task)

    # -- subflows ------------------------------------------------------------------------

    def run_subflow(self, tr: TaskRunState) -> None:
        task = tr.task
        assert isinstance(task, Subflow)
        props = self.begin_attempt(tr)
        if props is None:
            return
        if isinstance(task, ForEachItemExecutable):
            self.run_batches(tr, task, props)
            return
        if not self.subflow_exists(tr, props):
            return
        attempt = len(tr.attempts)
        child_id = derived_id(self.st.id, "subflow", tr.id, attempt)
        tr.child_execution_id = child_id
        inputs = props.get("inputs") or {}
        self.commands.append(cmd.CreateExecution(self.child_execution(tr, props, child_id, inputs)))
        if not task.wait:
            self.set_outputs(tr, {"executionId": child_id})
            tr.attempts[-1].move_task_run(S.SUCCESS, self.now, task.id)
            self.complete(tr, S.SUCCESS)

    def child_execution(
        self, tr: TaskRunState, props: dict[str, Any], child_id: str, inputs: dict[str, Any]
    ) -> ev.ExecutionCreated:
        """The creation of one child execution of the Subflow (or ForEachItem batch) ``tr``,
        from its rendered ``props`` and the child's ``inputs``."""
        task = tr.task
        assert isinstance(task, Subflow)
        namespace, flow_id = str(props["namespace"]), str(props["flowId"])
        attempt = len(tr.attempts)
        link = ev.SubflowLink(self.st.id, tr.id, attempt, task.outputs) if task.wait else None
        return ev.ExecutionCreated(
            execution_id=child_id,
            namespace=namespace,
            flow_id=flow_id,
            revision=task.revision,
            # SECRET inputs handed on are sealed again for the child, the only flow that may
            # decrypt them there (kestream.secrets.encryption)
            inputs=reseal(
                inputs,
                scope_of(self.st.namespace, self.st.flow_id),
                scope_of(namespace, flow_id),
            ),
            labels=self.child_labels(task, props.get("labels")),
            trigger={
                "id": task.id,
                "type": task.type_name,
                "variables": {
                    "executionId": self.st.id,
                    "namespace": self.st.namespace,
                    "flowId": self.st.flow_id,
                    "flowRevision": self.st.revision,
                },
            },
            schedule_date=props.get("scheduleDate"),
            parent=link,
        )

    def subflow_exists(self, tr: TaskRunState, props: dict[str, Any]) -> bool:
        """Whether the flow the rendered ``props`` name exists; if not, the attempt fails."""
        namespace, flow_id = str(props["namespace"]), str(props["flowId"])
        assert isinstance(tr.task, Subflow)
        if self.ex.flows.get(namespace, flow_id, tr.task.revision) is None:
            self.attempt_failed(tr, f"Unable to find the subflow '{namespace}.{flow_id}'")
            return False
        return True

    def run_batches(
        self, tr: TaskRunState, task: ForEachItemExecutable, props: dict[str, Any]
    ) -> None:
        """ForEachItem: one child execution per batch file, ``taskrun.items`` naming it and
        ``taskrun.iteration`` numbering it (from 1) while the children's inputs render. No
        batch: the task run succeeds without outputs."""
        try:
            uris = task.batch_uris(props.get("splits"))
            props["scheduleDate"] = task.schedule_date(props.get("scheduleDate"))
            ctx = self.context(tr)
            children = []
            for number, uri in enumerate(uris, start=1):
                ctx["taskrun"] = {**ctx["taskrun"], ITEMS_VARIABLE: uri, ITERATION_VARIABLE: number}
                children.append(render_value(task.inputs, ctx))
        except (TaskError, RenderError) as exc:
            self.attempt_failed(tr, str(exc))
            return
        if uris and not self.subflow_exists(tr, props):
            return
        attempt = len(tr.attempts)
        for index, inputs in enumerate(children):
            child_id = batch_child_id(self.st.id, tr.id, attempt, index)
            self.commands.append(
                cmd.CreateExecution(self.child_execution(tr, props, child_id, inputs))
            )
        if uris:
            created = len(uris) if task.wait else 0
            iterations = {"CREATED": created, "RUNNING": 0}
            if not task.wait:
                iterations[S.SUCCESS.value] = len(uris)
            self.set_outputs(tr, {"numberOfBatches": len(uris), "iterations": iterations})
        if not uris or not task.wait:
            tr.attempts[-1].move_task_run(S.SUCCESS, self.now, task.id)
            self.complete(tr, S.SUCCESS)

    def batch_finished(
        self, tr: TaskRunState, task: ForEachItemExecutable, done: ev.SubflowFinished
    ) -> None:
        """One ForEachItem child ended: count it by its end state and keep its outputs (for
        the merge task); the last one ends the task run, failed when one failed and
        ``transmitFailed`` says so."""
        outputs = tr.outputs or {}
        iterations = outputs["iterations"]
        state = S.FAILED if done.error else done.child_state
        if done.error:
            self.remember_error(tr, done.error)
        iterations["CREATED"] -= 1
        iterations[state.value] = iterations.get(state.value, 0) + 1
        if done.outputs is not None:
            # grown one child at a time: past the inline threshold the list so far is stored
            # in the task run's folder as one file and stands as one reference (references).
            # Its record size is kept up to date child by child: the list, up to the
            # threshold, is encoded only when it spills.
            before = outputs.get("outputs", [])
            kept = [*before, done.outputs]

            def spill() -> str:
                return outputs_keys(self.task_run_files(tr), len(tr.attempts))(None, "")

            try:
                size = gathered_size(tr, before) + encoded_size(done.outputs) + (1 if before else 0)
                outputs["outputs"] = gathered(kept, self.ex.inline_max_bytes, spill, size=size)
                if outputs["outputs"] is not kept:
                    size = encoded_size(outputs["outputs"])
                tr.gathered = (outputs["outputs"], size)
                problem = outputs_too_large(
                    task.id, outputs, self.ex.max_output_bytes,
                    size=size_with(outputs, "outputs", size),
                )  # fmt: skip
            except Exception as exc:  # the storage's own errors (a disk, a network)
                problem = f"outputs of task '{task.id}' could not be stored: {exc}"
            if problem is not None:  # no record could hold them: stop here, saying why
                outputs["outputs"] = kept[:-1]
                self.set_outputs(tr, outputs)
                self.kill_batches(tr)
                self.attempt_failed(tr, f"{problem}; the subflows' outputs are kept inline")
                return
        self.set_outputs(tr, outputs)
        if iterations["CREATED"] > 0:
            return
        ended = [S(name) for name, count in iterations.items() if count and name != "CREATED"]
        failed = sum(iterations[s.value] for s in ended if s.is_failed)
        if failed and task.transmitFailed:
            total = outputs["numberOfBatches"]
            self.attempt_failed(tr, f"{failed} of the {total} subflow executions failed")
            return
        final = S.WARNING if S.WARNING in ended else S.SUCCESS
        tr.attempts[-1].move_task_run(final, self.now, task.id)
        self.complete(tr, final)

    def kill_batches(self, tr: TaskRunState) -> None:
        """Kill the children of the current attempt of a ForEachItem executable that waits for
        them (a kill of one that has ended changes nothing)."""
        task = tr.task
        if not (isinstance(task, ForEachItemExecutable) and task.wait and tr.outputs):
            return
        for index in range(int(tr.outputs["numberOfBatches"])):
            child_id = batch_child_id(self.st.id, tr.id, len(tr.attempts), index)
            self.commands.append(cmd.SendEvent(ev.Kill(child_id)))

    def child_labels(self, task: Subflow, rendered: Any) -> dict[str, str]:
        labels: dict[str, str] = {}
        if task.inheritLabels:
            labels.update(self.st.labels)
        if isinstance(rendered, dict):
            labels.update({str(k): str(v) for k, v in rendered.items()})
        elif isinstance(rendered, list):
            labels.update({str(i["key"]): str(i["value"]) for i in rendered if "key" in i})
        labels["system.correlationId"] = self.st.labels.get("system.correlationId", self.st.id)
        return labels

    # -- restart -------------------------------------------------------------------------

    def restored(self) -> None:
        """The state was rebuilt from a snapshot: the changelog has none of it, write it all."""
        self.created_now = True
        self.restored_now = True
        self.changed.update(dict.fromkeys(self.st.task_runs))
        self.new_groups.add(ROOT)
        for run_id, tr in self.st.task_runs.items():
            if tr.group is not None:
                self.new_groups.add(run_id)
                if tr.group.stored is None:  # planned again from the snapshot: kept small
                    problem = self.fit_plan(tr, tr.group)
                    if problem is not None:
                        self.log(tr, LogLevel.ERROR, problem)

    def restart(self) -> None:
        """Restart in place: drop errors-branch runs, give failed task runs a new attempt.

        The parents of what runs again wait again (a FAILED or KILLED flowable, and one that an
        allowed failure inside ended WARNING); their lanes are recounted, and the lanes that
        another lane's failure cut short go on where they stopped. A failure that a parent
        turned into SUCCESS (``allowFailure`` with ``allowWarning``) stays as it is.

        The new attempt's SLAs are measured again: its MAX_DURATION timers are set from now,
        and the violations of the attempt before no longer count (a restart from a snapshot
        starts without them too); the labels they added stay.

        An execution whose ``afterExecution`` tasks still run is not over, and is left as it
        is (the API answers 409): a restart would drop their runs while the worker still runs
        them, and run them again after the new end.
        """
        st = self.st
        if st.state.current not in RESTARTABLE or st.root is None or not st.terminal:
            return
        self.move_execution(S.RESTARTED)
        st.attempt_number += 1
        st.replay_run = None  # a replay that ended waiting is restarted, not replayed
        st.sla_violated = {}  # the attempt before's: this one is measured again
        self.arm_max_durations()  # counted again from the restart (Kestra: from the creation)
        if self.flow.concurrency is not None:
            self.ask_slot(queue=True)  # it runs again once it holds a slot (self.rerun)
            return
        self.rerun()

    def rerun(self) -> None:
        """The restart itself, once the execution may run (see :meth:`restart`)."""
        st = self.st
        for tid in [tid for tid, tr in st.task_runs.items() if tr.in_side_branch]:
            self.forget_outputs(st.task_runs.pop(tid))
            self.changed[tid] = None
        st.after = None  # the afterExecution tasks run again after the new end
        emptied = self.reopen_working_directories()
        rerun = self.reopen_failed()
        self.go_on(rerun, emptied)

    def replayed(self, chosen: TaskRunState) -> None:
        """A replay's first step: its state holds what the replayed execution ran before
        ``chosen`` (:func:`~kestream.executor.replay.replay_state`); run ``chosen`` again. One
        of a flow with a concurrency limit waits for a slot first, as a restart does (it stays
        RESTARTED, ``chosen`` too, until :meth:`admitted`)."""
        self.restored()
        self.arm_max_durations()
        if self.flow.concurrency is not None:
            self.st.replay_run = chosen.id
            self.ask_slot(queue=True)
            return
        self.go_on([chosen])

    def go_on(self, rerun: list[TaskRunState], emptied: Iterable[TaskRunState] = ()) -> None:
        """Set a restarted (or replayed) execution running again: recount the lanes of the
        execution and of its running flowables, start ``rerun``, fill the emptied
        WorkingDirectory task runs, go on with the lanes a failure cut short."""
        st = self.st
        assert st.root is not None
        children: dict[str | None, list[TaskRunState]] = {}
        for tr in st.task_runs.values():
            children.setdefault(tr.parent.id if tr.parent else None, []).append(tr)
        cut = self.reset_group(st.root, None, children.get(None, []))
        for tr in st.task_runs.values():
            if tr.group is not None and tr.state.current is S.RUNNING:
                cut += self.reset_group(tr.group, tr, children.get(tr.id, []))
        self.move_execution(S.RUNNING)
        for tr in emptied:
            assert tr.group is not None
            self.fill(tr.group, tr)
        for tr in rerun:
            self.queue.append((_START, tr))
        for group, owner, last in cut:
            group.active += 1
            self.create_child(group, owner, last.lane, last.pos + 1)
        # A flowable that failed in its finally block alone (or at a LoopUntil's limit) has no
        # child to run again: it goes on from its branches (its finally runs again).
        for tr in [tr for tr in st.task_runs.values() if tr.state.current is S.RUNNING]:
            if tr.group is not None and tr.group.finished:
                self.branches_done(tr.group, tr)
        if st.root.finished:  # nothing else to run again: it ends again
            self.branches_done(st.root, None)

    def reopen_working_directories(self) -> list[TaskRunState]:
        """Empty the failed WorkingDirectory task runs, to run again from their first task:
        their directory, with what the tasks that succeeded wrote there, was removed when they
        ended. Their task runs are dropped and their lanes start over (the plan stays); returns
        them, for :meth:`restart` to fill once the groups are recounted."""
        st = self.st
        failed = {
            tr.id
            for tr in st.task_runs.values()
            if isinstance(tr.task, WorkingDirectory)
            and tr.group is not None
            and tr.state.current in (S.FAILED, S.KILLED)
            and not _allowed_away(tr)
        }
        for tid in [tid for tid, tr in st.task_runs.items() if _below_any(tr, failed)]:
            self.forget_outputs(st.task_runs.pop(tid))
            self.changed[tid] = None
        emptied = [st.task_runs[tid] for tid in failed if tid in st.task_runs]
        for tr in emptied:  # (one inside another was dropped with it)
            assert tr.group is not None
            tr.group.next_lane = 0
            self.changed[tr.id] = None
        return emptied

    def reopen_failed(self) -> list[TaskRunState]:
        """Move failed task runs and their parents back; return the ones to run again."""
        rerun: list[TaskRunState] = []
        for tr in self.st.task_runs.values():
            if tr.state.current in (S.FAILED, S.KILLED) and not _allowed_away(tr):
                if tr.group is not None and tr.group.lanes:
                    self.move(tr, S.RUNNING)
                else:  # a flowable that failed before planning any child plans again
                    tr.group = None
                    self.move(tr, S.RESTARTED)
                    rerun.append(tr)
        for tr in rerun:
            node = tr.parent
            while node is not None:
                if node.state.current is S.WARNING:
                    self.move(node, S.RUNNING)
                node = node.parent
        return rerun

    def reset_group(
        self, group: Group, owner: TaskRunState | None, children: list[TaskRunState]
    ) -> list[tuple[Group, TaskRunState | None, TaskRunState]]:
        """Recount a group's lanes from its remaining children after a restart.

        Returns the lanes cut short (their last task run ended well before the lane's end: the
        group had failed), each as its last task run, for the restart to go on with.
        """
        group.failed, group.errors_pos, group.worst = False, -1, S.SUCCESS
        group.active, group.finally_pos = 0, -1
        last: dict[int, TaskRunState] = {}
        for tr in children:
            state = tr.state.current
            if state.is_terminal:
                group.worst = worst(group.worst, S.SUCCESS if state is S.SKIPPED else state)
            else:
                group.active += 1
            if tr.lane not in last or tr.pos > last[tr.lane].pos:
                last[tr.lane] = tr
        group.recount_graph(
            (tr.lane, tr.state.current.is_terminal and not tr.state.current.is_failed)
            for tr in children
        )
        return [
            (group, owner, tr)
            for tr in last.values()
            if tr.state.current.is_terminal
            and not tr.state.current.is_failed
            and tr.pos + 1 < len(group.lanes[tr.lane])
        ]

    def forget_outputs(self, tr: TaskRunState) -> None:
        """Take a dropped task run's outputs out of the ``outputs`` variable."""
        if tr.outputs is None:
            return
        trail: list[tuple[dict[str, Any], str]] = []
        node, key = self.st.outputs, tr.task.id
        for value in tr.path:
            child = node.get(key)
            if not isinstance(child, dict):
                return
            trail.append((node, key))
            node, key = child, value
        node.pop(key, None)
        for parent, name in reversed(trail):  # maps left empty go too
            if parent[name]:
                break
            del parent[name]

    # -- execution updates (Labels, Exit) -------------------------------------------------

    def set_labels(self, labels: dict[str, str]) -> None:
        """Add or override execution labels; later expressions see them (``labels.x``)."""
        self.st.labels = {**self.st.labels, **labels}
        self.st.labels_changed = True
        self.ex.context_cache.pop(self.st.id, None)
        self.moved = True  # the execution itself changed: its record is written

    def exit_execution(self, tr: TaskRunState, state: StateType) -> None:
        """Exit: ``tr``, its ancestors (attempts included) and the execution end in ``state``.

        KILLED kills every other task run still going; any other state leaves them running
        (as Kestra does): their results arrive after the end and change nothing.
        """
        self.queue.clear()  # nothing queued in this step may start after the exit
        node: TaskRunState | None = tr
        while node is not None:
            if not node.attempts:
                node.attempts.append(StateRecord.new(state, self.now))
            elif not node.attempts[-1].current.is_terminal:
                node.attempts[-1].move_task_run(state, self.now, node.task.id)
            self.move(node, state)
            node = node.parent
        if state is S.KILLED:
            self.kill()
            return
        self.st.paused_runs.clear()
        self.move_execution(state)
        self.end_execution(state, render_outputs=True)

    # -- execution end -------------------------------------------------------------------

    def end_execution(self, final: StateType, *, render_outputs: bool) -> None:
        # A step reads the clock once, but one step can run a whole loop of inline tasks: the
        # end is stamped with the time it really happened, not the time the step began.
        self.now = self.ex.clock()
        st = self.st
        rendered = None
        if render_outputs and final in (S.SUCCESS, S.WARNING) and self.flow.outputs:
            try:
                rendered = self.render_flow_outputs()
                st.flow_outputs = self.fit_flow_outputs(rendered)
            except (RenderError, ValueError) as exc:
                self.log(None, LogLevel.ERROR, f"Unable to render the flow outputs: {exc}")
                final, rendered = S.FAILED, None
        if not st.state.current.is_terminal:
            self.move_execution(final)
        for timer_id in list(st.timers):
            self.cancel_timer(timer_id)
        self.notify_parent(rendered)
        if not self.start_after_execution():
            self.terminal = True

    def start_after_execution(self) -> bool:
        """Start the flow's ``afterExecution`` tasks, one after the other, now that the execution
        has its end state (which they read as ``execution.state`` and never change); False when
        there are none to run."""
        tasks = [task for task in self.flow.afterExecution if not task.disabled]
        if not tasks or self.st.after is not None:
            return False
        self.st.after = after = Group(one_lane(tasks), 1, [])
        self.moved = True  # the execution's record carries the group
        self.fill(after, None)
        return not after.finished

    def after_execution_done(self) -> None:
        """The ``afterExecution`` tasks ended (or were killed): the execution is over."""
        self.terminal = True
        self.moved = True

    def render_flow_outputs(self) -> dict[str, Any]:
        base = execution_context(self.st, self.flow, self.ex.clock, self.ex.context_cache)
        outputs = {
            output.id: coerce_output(output, render_value(output.value, base))
            for output in self.flow.outputs
        }
        check_portable(outputs, "outputs")  # an UnportableValue is a ValueError: the flow fails
        return outputs

    def fit_flow_outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The flow's rendered outputs as the execution keeps them: past the inline threshold
        their largest entries are stored in the execution's folder (``_outputs/flow/``) and
        referenced (entries only: ``execution.outputs.x`` reads them by name); what no record
        could hold still fails the flow (a ValueError)."""
        st = self.st
        kept, problem = fit_outputs(
            "", outputs, self.ex.max_output_bytes, self.ex.inline_max_bytes,
            lambda: flow_outputs_keys(st.namespace, st.flow_id, st.id),
            entries_only=True, what="the flow's outputs", store_max=STEP_STORE_MAX_BYTES,
        )  # fmt: skip
        if problem is not None:  # the execution's records could not hold them
            raise ValueError(problem)
        return kept if kept is not None else outputs

    def notify_parent(self, rendered: dict[str, Any] | None = None) -> None:
        """Tell the parent task run waiting for this execution that it ended, with its outputs
        (``rendered``: the flow outputs just rendered, as values). Outputs past the inline
        threshold are stored in the parent task run's folder (:func:`outputs_for_parent`)."""
        link = self.st.parent_link
        if link is None:
            return
        outputs: dict[str, Any] | None = rendered
        error = None
        base = execution_context(self.st, self.flow, self.ex.clock, self.ex.context_cache)
        try:
            if link.outputs is not None:
                outputs = render_value(link.outputs, base)
                check_portable(outputs, "outputs")
            elif outputs is None and self.st.flow_outputs is not None:  # ended in an earlier step
                outputs = loaded_values(self.st.flow_outputs, base["@files"], "flow output")
        except (RenderError, ValueError) as exc:
            outputs, error = None, f"Unable to render the subflow outputs: {exc}"
        parent = parent_task_run_files(self.st.trigger, link.task_run_id)
        outputs, problem = outputs_for_parent(
            outputs, parent, link.attempt, self.ex.inline_max_bytes, self.ex.max_output_bytes
        )
        if problem is not None:
            outputs, error = None, error or f"Unable to hand the subflow outputs on: {problem}"
        done = ev.SubflowFinished(
            link.execution_id, link.task_run_id, link.attempt, self.st.id,
            self.st.state.current, outputs, error,
        )  # fmt: skip
        self.commands.append(cmd.SendEvent(done))

    def retry_as_new_execution(self, due: datetime) -> None:
        st = self.st
        created = ev.ExecutionCreated(
            execution_id=derived_id(st.original_id, "retry", st.attempt_number + 1),
            namespace=st.namespace,
            flow_id=st.flow_id,
            revision=st.revision,
            inputs=st.inputs,
            validate_inputs=False,
            labels=dict(st.labels),
            trigger=st.trigger,
            schedule_date=due,
            original_id=st.original_id,
            attempt_number=st.attempt_number + 1,
            original_created=st.original_created,
            parent=st.parent_link,
            retry_of=st.id,
        )
        self.commands.append(cmd.CreateExecution(created))
        self.move_execution(S.RETRIED)
        for timer_id in list(st.timers):
            self.cancel_timer(timer_id)
        self.terminal = True

    # -- SLA (see kestream.executor.sla) ---------------------------------------------------

    def arm_max_durations(self, *, missing_only: bool = False) -> None:
        """Set the MAX_DURATION timers: the execution asks to run (it starts, or waits for a
        concurrency slot), or to run again (a restart, a replay).

        ``missing_only``: when it gets its slot, only the timers it lacks, from then: one
        that asked before the timers were set at the ask (they were set when it ran) holds
        none. A timer that fired while it waited (``NONE``: its SLA is marked violated in this
        attempt, :meth:`restart` clears the marks) is not set again, nor is one it holds moved."""
        held, violated = self.st.timers, self.st.sla_violated
        for timer_id, sla_id, duration in max_durations(self.flow):
            if missing_only and (timer_id in held or sla_id in violated):
                continue
            self.set_timer(timer_id, Timer(self.now + duration, SLA_TIMER))

    def check_assertions(self) -> bool:
        """After a step that changed an execution still running: its assertions, if any."""
        if not (self.moved or self.changed) or self.st.state.current not in _SLA_STATES:
            return False
        return self.enforce_assertions()

    def enforce_assertions(self) -> bool:
        """Evaluate the EXECUTION_ASSERTION SLAs; True when a violation ended the execution."""
        if not has_assertions(self.flow) or self.st.state.current not in _SLA_STATES:
            return False
        violations = assertion_violations(self.flow, self.execution_scope())
        violated = {v.sla.id for v in violations}
        # An assertion whose violation ended may begin again (logged again); the marks of the
        # MAX_DURATION SLAs stay, for this attempt.
        assertions = {sla.id for sla in self.flow.sla if sla.type == "EXECUTION_ASSERTION"}
        kept = {k: None for k in self.st.sla_violated if k not in assertions or k in violated}
        if kept.keys() != self.st.sla_violated.keys():
            self.st.sla_violated = kept
        return bool(violations) and self.apply_violations(violations)

    def apply_violations(self, violations: list[Violation]) -> bool:
        """The first violation acts (its behavior, its labels), the others are only logged, as
        in Kestra. True when the execution ended (FAIL, CANCEL)."""
        labels = violations[0].sla.labels
        added = {k: v for k, v in labels.items() if self.st.labels.get(k) != v}
        for violation in violations:
            sla = violation.sla
            if sla.behavior != "NONE" or sla.id not in self.st.sla_violated:
                # a NONE violation is logged when it begins, not at each step while it lasts
                self.log(None, LogLevel.WARN, f"SLA '{sla.id}' violated: {violation.reason}")
                self.st.sla_violated[sla.id] = None
        if added:
            self.set_labels(added)
        first = violations[0].sla
        if first.behavior == "NONE":
            return False
        final = S.FAILED if first.behavior == "FAIL" else S.CANCELLED
        verb = "failed" if final is S.FAILED else "cancelled"
        self.log(None, LogLevel.ERROR, f"Execution {verb} due to SLA '{first.id}' violated")
        self.queue.clear()  # nothing queued in this step may start after the end
        self.kill_running(killing=False)
        self.st.paused_runs.clear()
        self.move_execution(final)
        self.end_execution(final, render_outputs=False)
        return True

    # -- helpers -------------------------------------------------------------------------

    def current_attempt(self, task_run_id: str, attempt: int) -> TaskRunState | None:
        """The task run if ``attempt`` is its current, running attempt; None for a stale event."""
        tr = self.st.task_runs.get(task_run_id)
        if tr is None or len(tr.attempts) != attempt or tr.state.current is not S.RUNNING:
            return None
        if tr.attempts[-1].current is not S.RUNNING:
            return None
        return tr

    def context(self, tr: TaskRunState) -> dict[str, Any]:
        base = execution_context(self.st, self.flow, self.ex.clock, self.ex.context_cache)
        ctx = task_run_context(base, tr)
        ctx["execution"] = self.execution_variable(base)
        return ctx

    def execution_scope(self) -> dict[str, Any]:
        """What expressions outside any task run see (an SLA's assertion)."""
        base = execution_context(self.st, self.flow, self.ex.clock, self.ex.context_cache)
        return {**base, "execution": self.execution_variable(base)}

    def execution_variable(self, base: dict[str, Any]) -> dict[str, Any]:
        """``execution`` with its state, and once it ended its flow outputs (what
        ``afterExecution`` tasks read): they change during the execution, so they are not in
        the shared part."""
        execution = {**base["execution"], "state": self.st.state.current.value}
        if self.st.flow_outputs is not None:
            execution["outputs"] = flow_outputs_view(self.st.flow_outputs, base["@files"])
        return execution

    def render_props(self, tr: TaskRunState, *, defer_secrets: bool = False) -> dict[str, Any]:
        task = tr.task
        if not task.dynamic:
            return {}
        ctx = self.context(tr)
        ctx.update(task.worker_vars)
        values = {name: getattr(task, name) for name in task.dynamic}
        values = {name: value for name, value in values.items() if value is not None}
        if defer_secrets:  # a job's: texts calling secret() are rendered on the worker
            props = render_properties(values, ctx)
            what = f"the variables task '{task.id}' sends with its texts calling secret()"
            problem = too_large(what, props.get(SECRETS_KEY), self.ex.max_output_bytes)
            if problem is not None:
                raise RenderError(problem)
            return props
        return {name: render_value(value, ctx) for name, value in values.items()}

    def timeout_seconds(self, tr: TaskRunState) -> float | None:
        if tr.task.timeout is None:
            return None
        try:
            return parse_duration(str(tr.task.timeout)).total_seconds()
        except DurationError:
            return None

    def set_outputs(self, tr: TaskRunState, outputs: dict[str, Any]) -> None:
        tr.outputs = outputs
        self.changed[tr.id] = None
        self.st.merge_outputs(tr)

    def move(self, tr: TaskRunState, state: StateType) -> None:
        if tr.state.move_task_run(state, self.now, tr.task.id):
            self.changed[tr.id] = None

    def move_execution(self, state: StateType) -> None:
        if self.st.state.move_execution(state, self.now, f"execution {self.st.id}"):
            self.moved = True
            if state.is_terminal and self.flow.concurrency is not None:
                self.release_slot()  # held or not: a release of what is not held is a no-op

    def set_timer(self, timer_id: str, timer: Timer) -> None:
        self.st.timers[timer_id] = timer
        self.commands.append(cmd.SetTimer(self.st.id, timer_id, timer.due))

    def cancel_timer(self, timer_id: str) -> None:
        if self.st.timers.pop(timer_id, None) is not None:
            self.commands.append(cmd.CancelTimer(self.st.id, timer_id))

    def emit_task_logs(self, tr: TaskRunState, outcome: TaskOutcome) -> None:
        floor = LOG_LEVEL_ORDER[tr.task.logLevel] if tr.task.logLevel else 0
        for level, message in outcome.logs:
            if LOG_LEVEL_ORDER[level] >= floor:
                self.log(tr, level, message)

    def log(self, tr: TaskRunState | None, level: LogLevel, message: str) -> None:
        line = cmd.LogLine(
            self.st.id,
            tr.id if tr else None,
            tr.task.id if tr else None,
            len(tr.attempts) if tr and tr.attempts else None,
            level.value,
            safe_text(message),
            self.now,
        )
        self.logs.append(line)
        if level is LogLevel.ERROR and tr is not None:
            self.remember_error(tr, message)

    def remember_error(self, tr: TaskRunState, message: str) -> None:
        errors = self.st.error_logs
        if len(errors) < _MAX_ERROR_LOGS:
            errors.append(
                {
                    "taskId": tr.task.id,
                    "taskRunId": tr.id,
                    "message": message,
                    "level": "ERROR",
                    "timestamp": self.now,
                }
            )

    def finish(self) -> list[cmd.Command]:
        out = self.commands
        if self.logs:
            out.append(cmd.EmitLogs(self.st.namespace, self.st.flow_id, self.logs))
        if self.changed or self.moved or self.group_changed:
            out.append(
                cmd.ExecutionChanged(
                    self.st.id,
                    self.st.state.current,
                    list(self.changed),
                    self.terminal,
                    created=self.created_now,
                    counters_changed=[k for k in self.group_changed if k not in self.changed],
                    planned=self.new_groups,
                    restored=self.restored_now,
                )
            )
        return out


def _unwanted_slot(answer: ev.Admission, flows: FlowSource) -> list[cmd.Command]:
    """A slot granted to an execution that left the state table goes back at once."""
    if answer.decision is not S.RUNNING:
        return []
    flow = flows.get(answer.namespace, answer.flow_id)
    limit = flow.concurrency.limit if flow is not None and flow.concurrency is not None else 1
    back = Release(answer.namespace, answer.flow_id, answer.execution_id, answer.attempt, limit)
    return [cmd.RequestSlot(back)]


def gathered_size(tr: TaskRunState, items: list[Any]) -> int:
    """The record size of ``items``, a ForEachItem executable's gathered list: as the last step
    left it (:attr:`TaskRunState.gathered`, when it is that very list), else encoded."""
    known = tr.gathered
    if known is not None and known[0] is items:
        return known[1]
    return encoded_size(items)


def _allowed_away(tr: TaskRunState) -> bool:
    """Whether a parent ended SUCCESS over this failure (``allowFailure`` + ``allowWarning``):
    the restart leaves it as it is."""
    node = tr.parent
    while node is not None:
        if node.state.current is S.SUCCESS:
            return True
        node = node.parent
    return False


def _reopened_after_warning(tr: TaskRunState) -> bool:
    """A flowable that a restart reopened after it ended WARNING (an allowed failure inside).

    Its lane went on after it the first time, so its second end must not start the next task.
    """
    history = tr.state.history
    return len(history) > 3 and any(s is S.WARNING for s, _ in history[:-1])


def _same_attempt(st: ExecutionState, snapshot: dict[str, Any]) -> bool:
    """Whether a restart's snapshot shows the state's attempt (else the restart is stale)."""
    return snapshot_attempt(snapshot) == st.attempt_number


def _below_any(tr: TaskRunState, ids: set[str]) -> bool:
    """Whether one of ``tr``'s ancestors is among ``ids``."""
    node = tr.parent
    while node is not None:
        if node.id in ids:
            return True
        node = node.parent
    return False


def _group_end_state(group: Group) -> StateType:
    """The state a flowable ends in once its lanes (errors and finally included) ended."""
    if group.failed:
        if group.worst is S.KILLED:
            return S.KILLED
        return S.WARNING if group.failure_is_warning else S.FAILED
    return S.WARNING if group.worst is S.WARNING else S.SUCCESS


def _has_finally(flow: Flow) -> bool:
    """Whether a kill must go through ``finally`` blocks (the flow's, or a flowable's)."""
    if flow.finally_:
        return True
    return any(
        isinstance(task, FlowableTask) and task.finally_ for task in flow.task_index().values()
    )


def _optional_duration(value: Any) -> Any:
    if value is None or value == "":
        return None
    return parse_duration(str(value))
