"""Rebuild the executor state of an ended execution from its execution JSON (a snapshot).

Over Kafka a terminal execution leaves the executor's state table (DESIGN.md section 3); to restart
it, the restart event carries the execution's last snapshot (Kestra 1.x execution JSON with its
``taskRunList``, as the execution-updates topic and the API's index hold it) and
:func:`state_from_execution` turns it back into the :class:`ExecutionState` the step needs. The
rebuild is pure and costs O(size of the execution), paid once per restart.

What the JSON carries is copied: ids, states with their dated histories (Kestra's millisecond
precision), attempts, outputs, values and parent task runs, labels, inputs, trigger, schedule date,
flow outputs and ``metadata`` (attempt number, original creation date). What the executor keeps
beside it is derived:

- the ``outputs`` expression variable, merged task run by task run in creation order
  (:meth:`ExecutionState.merge_outputs`, as the step merged it);
- each flowable task run's lanes (its :class:`Group`): the flowable is planned again, its dynamic
  properties rendered in its own context (the outputs of the whole execution, its parents, its
  loop values), and every child found in the snapshot must sit in that plan, or in the flowable's
  ``errors`` branch; the lane counters (lanes started, lanes running, failed, worst state, errors
  position) are counted from the children, as the step would have left them;
- the task runs' lane and position, the errors-branch flag, the loop path, the id of a Subflow
  task run's child execution (derived from the task run and its attempt, as the step derives it),
  the task runs waiting in PAUSED;
- the number of task runs created so far, which names the task runs the restart creates: the
  snapshot's count, raised when the newest task run's id shows a larger creation number.

What cannot be rebuilt, and how the restart behaves without it:

- **the link to a parent execution** (Subflow task run id and attempt) is not in the JSON: a
  restarted child execution ends without notifying its parent. In place, that notification would
  be ignored anyway, since the parent's Subflow task run ended when the child first ended;
- **error logs** kept for ``errorLogs()`` are not in the JSON: an ``errors`` branch of the
  restarted attempt sees only the errors logged after the restart;
- **types of values**: inputs of the temporal types (DATETIME, DATE, TIME, DURATION) are parsed
  back with the flow's input definitions; other values (task-run outputs, trigger variables) come
  back as their JSON form (a date in an output becomes its ISO text);
- **creation numbers** when the newest task runs were errors-branch runs dropped by an earlier
  restart and no task run was created since (or the number lies more than ``_NUMBER_SEARCH`` past
  the count): the count falls short, so new task runs get other ids than an in-place restart
  would give (still unique, since they carry the new attempt number);
- **plans that depend on when they were made** (loop values rendered from ``now()``, say): the
  plan made now must still hold every child the snapshot has, or the restore fails (below); the
  lanes not started yet follow the plan made now;
- **dates** have millisecond precision (Kestra's instant format).

A snapshot that cannot be rebuilt raises :class:`RestoreError` (a ``ValueError``): not an
execution JSON, another execution's, a flow revision the executor does not know (the step
checks it; a revision that old will not be deployed later, so the event is not held as a creation
would be), a task id the revision lacks, a child outside its parent's plan, a flowable whose
properties no longer render. The step lets it propagate: the driver raises it, the runtime sends
the restart event (snapshot included) to the dead-letter topic with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kestream.executor.context import execution_context, task_run_context
from kestream.executor.state import (
    Block,
    ExecutionState,
    Group,
    StateRecord,
    TaskRunState,
    plan_group,
)
from kestream.expressions import RenderError, render_value
from kestream.models.clock import Clock, utc_now
from kestream.models.execution import Execution, State, TaskRun
from kestream.models.flow import Flow
from kestream.models.ids import derived_id
from kestream.models.inputs import InputType, InputValueError, parse_typed
from kestream.models.state import StateType, worst
from kestream.tasks.base import FlowableTask, TaskError
from kestream.tasks.flow import one_lane
from kestream.tasks.subflow import Subflow

S = StateType

#: Execution states a restart applies to (anything else: the restart changes nothing).
RESTARTABLE = frozenset({S.FAILED, S.KILLED, S.WARNING})

#: How far past the snapshot's task-run count the creation number of the newest task run is
#: looked for (errors-branch runs dropped by earlier restarts); each candidate is one hash.
_NUMBER_SEARCH = 256

_TEMPORAL = frozenset({InputType.DATETIME, InputType.DATE, InputType.TIME, InputType.DURATION})


class RestoreError(ValueError):
    """A snapshot that cannot be turned back into executor state (the reason says why)."""


def snapshot_attempt(snapshot: Mapping[str, Any]) -> int:
    """The attempt a restart's snapshot shows (``metadata.attemptNumber``, 1 when absent).

    Raises :class:`RestoreError` for anything but a positive integer, so a malformed restart
    is refused where it is read (a dead letter), never deep in the executor's loop.
    """
    metadata = snapshot.get("metadata")
    if metadata is None:
        return 1
    if not isinstance(metadata, Mapping):
        raise RestoreError("the snapshot's 'metadata' must be an object")
    attempt = metadata.get("attemptNumber", 1)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise RestoreError(
            f"the snapshot's 'metadata.attemptNumber' is not a positive integer: {attempt!r}"
        )
    return attempt


def execution_from_snapshot(snapshot: Mapping[str, Any]) -> Execution:
    """Validate a snapshot (``Execution.model_dump(mode="json", by_alias=True)``)."""
    try:
        return Execution.model_validate(snapshot)
    except ValidationError as exc:
        raise RestoreError(f"not an execution snapshot: {exc}") from None


def state_from_execution(
    execution: Execution, flow: Flow, *, clock: Clock = utc_now
) -> ExecutionState:
    """The executor state of ``execution`` as it ended, for ``flow`` (its ``flowRevision``).

    ``clock`` is what ``now()`` reads while flowables are planned again. Raises
    :class:`RestoreError` when the snapshot does not fit the flow (see the module docstring).
    """
    wanted = (execution.namespace, execution.flowId, execution.flowRevision)
    if wanted != (flow.namespace, flow.id, flow.revision or 1):
        raise RestoreError(
            f"execution {execution.id} ran flow '{wanted[0]}.{wanted[1]}' revision {wanted[2]},"
            f" not '{flow.namespace}.{flow.id}' revision {flow.revision or 1}"
        )
    st = _header(execution, flow)
    runs = _parents_first(execution.id, execution.taskRunList)
    _add_task_runs(st, flow, runs)
    _plan_groups(st, flow, clock)
    st.created_runs = _created_runs(st, runs)
    return st


# -- the execution's own fields ----------------------------------------------------------------


def _record(state: State, fallback: datetime) -> StateRecord:
    history = [(h.state, h.date) for h in state.histories]
    if not history or history[-1][0] is not state.current:  # a JSON without its history
        history.append((state.current, history[-1][1] if history else fallback))
    return StateRecord(state.current, history)


def _header(execution: Execution, flow: Flow) -> ExecutionState:
    state = _record(execution.state, execution.metadata.originalCreatedDate)
    started = any(s is S.RUNNING for s, _ in state.history)
    st = ExecutionState(
        id=execution.id,
        namespace=execution.namespace,
        flow_id=execution.flowId,
        revision=execution.flowRevision,
        original_id=execution.originalId or execution.id,
        attempt_number=execution.metadata.attemptNumber,
        original_created=execution.metadata.originalCreatedDate,
        labels=execution.label_map(),
        inputs=typed_inputs(flow, execution.inputs),
        trigger=execution.trigger.model_dump(mode="json") if execution.trigger else None,
        schedule_date=execution.scheduleDate,
        parent_link=None,  # not in the JSON: see the module docstring
        state=state,
        parent_id=execution.parentId,
    )
    st.flow_outputs = execution.outputs
    if started or execution.taskRunList:
        # The execution's own lanes exist once it started (an execution that failed on its
        # inputs never did, and a restart leaves it alone, as in place).
        st.root = flow_group(flow)
    return st


def flow_group(flow: Flow) -> Group:
    """The execution's own lanes: the flow's tasks, its ``errors`` and its ``finally``."""
    return Group(
        one_lane(flow.tasks),
        1,
        [t for t in flow.errors if not t.disabled],
        finally_=[t for t in flow.finally_ if not t.disabled],
    )


def typed_inputs(flow: Flow, inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """Temporal inputs parsed back from their JSON text (the step saw typed values)."""
    if not inputs:
        return inputs
    typed = dict(inputs)
    for definition in flow.inputs:
        if definition.type not in _TEMPORAL:
            continue
        *heads, last = definition.id.split(".")
        node: Any = typed
        for head in heads:
            child = node.get(head) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                node = None
                break
            node = node[head] = dict(child)
        if isinstance(node, dict) and isinstance(node.get(last), str):
            with contextlib.suppress(InputValueError):  # else kept as given
                node[last] = parse_typed(definition.type, node[last])
    return typed


# -- task runs ---------------------------------------------------------------------------------


def _parents_first(execution_id: str, runs: list[TaskRun]) -> list[TaskRun]:
    """The task runs in creation order, a parent always before its children.

    The snapshot lists task runs in creation order already; a list merged from updates by some
    other reader may not, so a child met before its parent waits for it.
    """
    by_id = {run.id: run for run in runs}
    ordered: list[TaskRun] = []
    placed: set[str] = set()
    waiting: dict[str, list[TaskRun]] = {}

    def place(run: TaskRun) -> None:
        pending = [run]
        while pending:
            current = pending.pop()
            ordered.append(current)
            placed.add(current.id)
            pending.extend(reversed(waiting.pop(current.id, [])))

    for run in runs:
        parent = run.parentTaskRunId
        if parent is None or parent in placed:
            place(run)
        elif parent not in by_id:
            raise RestoreError(
                f"execution {execution_id}: task run {run.id} names parent {parent}, "
                "which the snapshot does not hold"
            )
        else:
            waiting.setdefault(parent, []).append(run)
    if waiting:
        raise RestoreError(f"execution {execution_id}: task runs form a cycle")
    return ordered


def _add_task_runs(st: ExecutionState, flow: Flow, runs: list[TaskRun]) -> None:
    tasks = flow.task_index()
    for run in runs:
        task = tasks.get(run.taskId)
        if task is None:
            raise RestoreError(
                f"task '{run.taskId}' of task run {run.id} is not in revision {st.revision} of "
                f"flow '{flow.namespace}.{flow.id}'"
            )
        parent = st.task_runs[run.parentTaskRunId] if run.parentTaskRunId else None
        base = parent.path if parent is not None else ()
        tr = TaskRunState(
            id=run.id,
            task=task,
            parent=parent,
            value=run.value,
            path=(*base, run.value) if run.value is not None else base,
            lane=0,  # lane, position and errors flag come with the parent's plan
            pos=0,
            block=Block.TASKS,
            state=_record(run.state, st.state.start),
            attempts=[_record(a.state, st.state.start) for a in run.attempts or []],
            outputs=run.outputs,
        )
        if isinstance(task, Subflow) and tr.attempts:
            tr.child_execution_id = derived_id(st.id, "subflow", tr.id, len(tr.attempts))
        st.add_task_run(tr)
        if tr.outputs is not None:
            st.merge_outputs(tr)
        if tr.state.current is S.PAUSED:
            st.paused_runs[tr.id] = None


# -- lanes -------------------------------------------------------------------------------------


def _plan_groups(st: ExecutionState, flow: Flow, clock: Clock) -> None:
    """Give every flowable task run that has children its lanes; place each child in them."""
    children: dict[str | None, list[TaskRunState]] = {}
    for tr in st.task_runs.values():
        children.setdefault(tr.parent.id if tr.parent else None, []).append(tr)
    cache: dict[str, dict[str, Any]] = {}
    for tr in st.task_runs.values():
        if (
            isinstance(tr.task, FlowableTask)
            and tr.id not in children
            and tr.state.current in (S.SUCCESS, S.WARNING)
        ):
            # planned with no children (an If whose branch is empty): kept as the step kept it,
            # though no restart reads it; a plan that no longer renders is left out
            with contextlib.suppress(RestoreError):
                tr.group = _replan(st, flow, tr, clock, cache)
    for owner_id, kids in children.items():
        owner = st.task_runs[owner_id] if owner_id is not None else None
        if owner is None:
            group = st.root
            if group is None:
                raise RestoreError(f"execution {st.id} has task runs but never started")
            kids = _after_execution_runs(st, flow, kids)
        else:
            group = owner.group = _replan(st, flow, owner, clock, cache)
        _place(group, owner, kids)
        _count(group, kids)


def _after_execution_runs(
    st: ExecutionState, flow: Flow, kids: list[TaskRunState]
) -> list[TaskRunState]:
    """Mark the flow's ``afterExecution`` task runs as such; return the other root runs.

    (A restart drops them; they only need to be told from the flow's own tasks.)
    """
    after = {task.id for task in flow.afterExecution}
    rest = []
    for tr in kids:
        if tr.task.id in after and tr.value is None:
            tr.block, tr.lane = Block.AFTER_EXECUTION, -1
        else:
            rest.append(tr)
    return rest


def _replan(
    st: ExecutionState,
    flow: Flow,
    tr: TaskRunState,
    clock: Clock,
    cache: dict[str, dict[str, Any]],
) -> Group:
    task = tr.task
    if not isinstance(task, FlowableTask):
        raise RestoreError(f"task run {tr.id} of '{task.id}' has children but is not flowable")
    try:
        props: dict[str, Any] = {}
        if task.dynamic:
            ctx = task_run_context(execution_context(st, flow, clock, cache), tr)
            for name in task.dynamic:
                value = getattr(task, name)
                if value is not None:
                    props[name] = render_value(value, ctx)
        plan = task.plan(props)
    except (RenderError, TaskError) as exc:
        raise RestoreError(
            f"cannot plan the children of '{task.id}' ({tr.id}) again: {exc}"
        ) from exc
    return plan_group(task, plan)


def _place(group: Group, owner: TaskRunState | None, kids: Iterable[TaskRunState]) -> None:
    """Set each child's lane and position from the plan (or its place in the errors branch)."""
    where = {
        (task.id, value): (lane, pos)
        for lane, tasks in enumerate(group.lanes)
        for pos, (task, value) in enumerate(tasks)
    }
    errors = {task.id: pos for pos, task in enumerate(group.errors)}
    finals = {task.id: pos for pos, task in enumerate(group.finally_)}
    taken: set[tuple[int, int]] = set()
    for tr in kids:
        found = where.get((tr.task.id, tr.value))
        if found is not None and found not in taken:
            taken.add(found)
            tr.lane, tr.pos = found
        elif tr.task.id in errors and tr.value is None:
            tr.lane, tr.pos, tr.block = -1, errors[tr.task.id], Block.ERRORS
        elif tr.task.id in finals and tr.value is None:
            tr.lane, tr.pos, tr.block = -1, finals[tr.task.id], Block.FINALLY
        else:
            name = f"'{owner.task.id}' ({owner.id})" if owner else "the flow"
            value = f" with value {tr.value!r}" if tr.value is not None else ""
            raise RestoreError(
                f"task run {tr.id} of '{tr.task.id}'{value} does not fit the plan of {name}"
            )


def _count(group: Group, kids: list[TaskRunState]) -> None:
    """The lane counters as the step leaves them (see ``_Step.child_done``)."""
    lanes = [tr for tr in kids if tr.block is Block.TASKS]
    errors = [tr for tr in kids if tr.errors_branch]
    finals = [tr for tr in kids if tr.block is Block.FINALLY]
    group.next_lane = max((tr.lane for tr in lanes), default=-1) + 1
    group.recount_graph((tr.lane, _ended_well(tr)) for tr in lanes)
    group.active = sum(1 for tr in lanes if not tr.state.current.is_terminal)
    group.failed = any(tr.state.current.is_failed for tr in [*lanes, *finals])
    for tr in [*lanes, *errors]:
        state = tr.state.current
        if state.is_terminal:
            group.worst = worst(group.worst, S.SUCCESS if state is S.SKIPPED else state)
    if errors:
        done = sum(1 for tr in errors if tr.state.current.is_terminal)
        group.errors_pos = done if done == len(errors) else len(errors) - 1
    if finals:
        done = sum(1 for tr in finals if tr.state.current.is_terminal)
        group.finally_pos = done if done == len(finals) else len(finals) - 1
        for tr in finals:  # only a failure there counts (see ``_Step.finally_child_done``)
            if tr.state.current.is_failed:
                group.worst = worst(group.worst, tr.state.current)


def _ended_well(tr: TaskRunState) -> bool:
    state = tr.state.current
    return state.is_terminal and not state.is_failed


# -- creation numbers --------------------------------------------------------------------------


def _created_runs(st: ExecutionState, runs: list[TaskRun]) -> int:
    """How many task runs the execution created (the next one's creation number).

    The step names task run ``n`` of attempt ``k`` ``derived_id(execution, "run", k, n)``. The
    newest task run is the last one created, unless a restart dropped newer errors-branch runs:
    finding its number keeps the ids of the task runs the restart creates equal to an in-place
    restart's.
    """
    count = len(st.task_runs)
    if not runs:
        return count
    newest = runs[-1].id
    for attempt in range(st.attempt_number, 0, -1):
        for number in range(count - 1, count - 1 + _NUMBER_SEARCH):
            if derived_id(st.id, "run", attempt, number) == newest:
                return number + 1
    return count
