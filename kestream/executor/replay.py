"""Replay: a new execution that reuses what an ended execution ran before one of its task runs,
and runs again from that task run (Kestra's ``replay``).

A replay is a creation (:class:`~kestream.executor.events.ExecutionCreated`), made by
:func:`replay_event` from the replayed execution's last JSON, as the API and the broker-free
driver hold it. The new execution carries, as Kestra's does:

- a new id, ``parentId`` the replayed execution's id, the same ``originalId`` (the first
  execution of the chain), ``metadata.attemptNumber`` one more, the same original creation date;
- the same flow revision, or the one asked for; the same inputs, or new ones (replay with
  inputs), checked against that revision; the same trigger; the labels, plus ``system.replay``.

Without a task run, the replay runs the whole flow again from its start (a plain creation).
With one, the event also carries the snapshot and the task run, and the executor builds the new
state with :func:`replay_state`, the way a restart rebuilds an ended execution from its snapshot
(:mod:`kestream.executor.restore`), then goes on the way a restart does
(``_Step.go_on``), once it has a slot when its flow has a ``concurrency`` limit. What the new
execution keeps of the replayed one:

- every task run that came before the chosen one, with its state, attempts and outputs, under a
  new id: the ones before it in its lane, the other lanes (a Parallel's, a ForEach's values) and,
  in a Dag, the tasks that do not depend on it;
- its parents, moved back to RUNNING, their lanes recounted;

and what it drops: the task runs after the chosen one in its lane and in each parent's lane, the
Dag tasks that depend on them, the ``errors``, ``finally`` and ``afterExecution`` task runs, and
whatever ran below the chosen task run, which is planned (or run) again as RESTARTED. The
execution's state history goes on from the replayed one's, with RESTARTED then RUNNING.

A task run inside a ``WorkingDirectory`` replays the whole ``WorkingDirectory`` (its directory, and
the files the tasks before wrote in it, went with its end). A task run of an ``errors``,
``finally`` or ``afterExecution`` block cannot be chosen: :class:`ReplayError`, naming the block.
Kestra's docs speak of replaying from "any chosen task run" without saying what a replay from
inside these blocks keeps (the task runs of ``tasks`` that ran, all of them? the block's runs
before it?), so kestream refuses rather than guess; replaying from the task run the block
followed runs the block again when its turn comes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kestream.executor import events as ev
from kestream.executor.context import input_variables
from kestream.executor.restore import execution_from_snapshot, state_from_execution, typed_inputs
from kestream.executor.state import Block, ExecutionState, Group, StateRecord, TaskRunState
from kestream.models.clock import Clock, utc_now
from kestream.models.execution import Execution
from kestream.models.flow import Flow
from kestream.models.ids import derived_id
from kestream.models.inputs import parse_inputs
from kestream.models.state import StateType
from kestream.secrets.encryption import scope_of
from kestream.tasks.working_directory import WorkingDirectory

__all__ = ["REPLAY_LABEL", "ReplayError", "replay_event", "replay_state"]

S = StateType

#: The label every replayed execution carries (Kestra's ``system.replay``).
REPLAY_LABEL = "system.replay"


class ReplayError(ValueError):
    """A replay that cannot be made (the reason says why)."""


def replay_event(
    snapshot: Mapping[str, Any],
    flow: Flow,
    *,
    execution_id: str,
    task_run_id: str | None = None,
    inputs: dict[str, Any] | None = None,
) -> ev.ExecutionCreated:
    """The creation of the replay of ``snapshot`` (an ended execution's JSON) on ``flow`` (the
    revision to run), from ``task_run_id`` or from the start, with ``inputs`` if given.

    Raises :class:`ReplayError` (an execution still running, a task run it does not have),
    :class:`~kestream.executor.restore.RestoreError` (not an execution JSON) or
    :class:`~kestream.models.inputs.InputValidationError` (inputs that do not fit ``flow``).
    """
    execution = execution_from_snapshot(snapshot)
    if not execution.state.current.is_terminal:
        raise ReplayError(
            f"Execution '{execution.id}' is {execution.state.current.value}: only an ended "
            "execution can be replayed"
        )
    if task_run_id is not None and all(run.id != task_run_id for run in execution.taskRunList):
        raise ReplayError(f"Execution '{execution.id}' has no task run '{task_run_id}'")
    scope, variables = scope_of(execution.namespace, execution.flowId), input_variables(flow)
    given = (
        parse_inputs(flow.inputs, inputs, scope=scope, variables=variables)
        if inputs is not None
        else None
    )
    return ev.ExecutionCreated(
        execution_id=execution_id,
        namespace=execution.namespace,
        flow_id=execution.flowId,
        revision=flow.revision or 1,
        inputs=given if given is not None else typed_inputs(flow, execution.inputs),
        validate_inputs=False,
        labels={**execution.label_map(), REPLAY_LABEL: "true"},
        trigger=execution.trigger.model_dump(mode="json") if execution.trigger else None,
        original_id=execution.originalId or execution.id,
        attempt_number=execution.metadata.attemptNumber + 1,
        original_created=execution.metadata.originalCreatedDate,
        parent_id=execution.id,
        replay=ev.ReplayFrom(dict(snapshot), task_run_id) if task_run_id is not None else None,
    )


def replay_state(
    event: ev.ExecutionCreated,
    flow: Flow,
    *,
    original: Flow | None = None,
    clock: Clock = utc_now,
    copied: bool = True,
) -> tuple[ExecutionState, TaskRunState]:
    """The state of a replay from a task run (``event.replay``) on ``flow``, and that task run
    to start. ``original``: the revision the replayed execution ran, when it differs from
    ``flow`` and is still known; what comes after the chosen task run is then found in the
    lanes it had, so only the task runs kept must fit ``flow``.

    The flowables kept are planned again, which may read values the snapshot stores: as the
    new execution once they were copied into its folder (``copied``, the executor's case:
    :func:`kestream.executor.references.adopted`), else as the replayed execution (the API's
    check before the replay is sent).

    Raises :class:`ReplayError`, or :class:`~kestream.executor.restore.RestoreError` when the
    kept task runs do not fit ``flow`` (another revision that lacks one of their tasks).
    """
    replay = event.replay
    if replay is None:
        raise ReplayError(f"execution {event.execution_id} is not a replay from a task run")
    now = clock()
    replayed = execution_from_snapshot(replay.snapshot)
    execution = replayed.model_copy(update={"id": event.execution_id}) if copied else replayed
    first = original if original is not None else flow
    st, chosen, dropped = _chosen_and_after(
        execution, first, replay.task_run_id, clock, replayed.id
    )
    if first is not flow:  # the kept task runs, in the revision to run
        runs = [run for run in execution.taskRunList if run.id not in dropped]
        narrowed = execution.model_copy(
            update={"flowRevision": flow.revision or 1, "taskRunList": runs}
        )
        st = state_from_execution(narrowed, flow, clock=clock)
        chosen, dropped = st.task_runs[chosen.id], set()
    _take_header(st, event, now)
    kept = [tr for tr in st.task_runs.values() if tr.id not in dropped]
    st.task_runs, st.outputs, st.paused_runs = {}, {}, {}
    for tr in kept:
        tr.id = derived_id(event.execution_id, "replayed", tr.id)
        st.task_runs[tr.id] = tr
    node = chosen.parent
    while node is not None:
        _reopen(node.state, S.RUNNING, now)
        node = node.parent
    _reopen(chosen.state, S.RESTARTED, now)
    chosen.group, chosen.outputs, chosen.child_execution_id = None, None, None
    for tr in kept:
        if tr.outputs is not None:
            st.merge_outputs(tr)
    return st, chosen


def _chosen_and_after(
    execution: Execution, flow: Flow, task_run_id: str, clock: Clock, replayed_id: str
) -> tuple[ExecutionState, TaskRunState, set[str]]:
    """The replayed execution's state on ``flow``, the task run to run again, and the ids of
    the task runs after it (``replayed_id``: its id, for the errors)."""
    execution = execution.model_copy(update={"flowRevision": flow.revision or 1})
    st = state_from_execution(execution, flow, clock=clock)
    chosen = st.task_runs.get(task_run_id)
    if chosen is None:
        raise ReplayError(f"Execution '{replayed_id}' has no task run '{task_run_id}'")
    chosen = _outermost_working_directory(chosen)
    if chosen.in_side_branch:
        raise ReplayError(
            f"Task run '{chosen.id}' (task '{chosen.task.id}') ran in {_side_block(chosen)}: "
            "a replay starts from a task run of a `tasks` list, never inside an errors, "
            "finally or afterExecution block; replay from the task run the block followed "
            "(the one that failed, say), and the block runs again when its turn comes"
        )
    return st, chosen, _after(st, chosen)


def _side_block(tr: TaskRunState) -> str:
    """Which block ``tr`` ran in, for the refusal: the innermost that is not a ``tasks`` list
    (``the errors block of task 'seq'``, ``the flow's finally block``)."""
    node: TaskRunState | None = tr
    while node is not None and node.block is Block.TASKS:
        node = node.parent
    assert node is not None  # (tr.in_side_branch)
    if node.parent is None:
        return f"the flow's {node.block.value} block"
    return f"the {node.block.value} block of task '{node.parent.task.id}'"


def _take_header(st: ExecutionState, event: ev.ExecutionCreated, now: datetime) -> None:
    """The new execution's own fields, from its creation; the state history goes on."""
    st.id = event.execution_id
    st.original_id = event.original_id or event.execution_id
    st.attempt_number = event.attempt_number
    if event.original_created is not None:
        st.original_created = event.original_created
    st.labels = dict(event.labels)
    st.inputs = event.inputs
    st.trigger = event.trigger
    st.parent_id = event.parent_id
    st.flow_outputs, st.error_logs, st.timers, st.after = None, [], {}, None
    _reopen(st.state, S.RESTARTED, now)


def _reopen(record: StateRecord, state: StateType, now: datetime) -> None:
    """Move a state back (a replay rewrites what ended, outside the transition tables)."""
    if record.current is not state:
        record.current = state
        record.history.append((state, now))


def _outermost_working_directory(tr: TaskRunState) -> TaskRunState:
    chosen, node = tr, tr.parent
    while node is not None:
        if isinstance(node.task, WorkingDirectory):
            chosen = node
        node = node.parent
    return chosen


def _after(st: ExecutionState, chosen: TaskRunState) -> set[str]:
    """The ids of the task runs that come after ``chosen`` (see the module docstring), and of
    everything below it."""
    children: dict[str | None, list[TaskRunState]] = {}
    for tr in st.task_runs.values():
        children.setdefault(tr.parent.id if tr.parent else None, []).append(tr)
    dropped: set[str] = set()
    node: TaskRunState | None = chosen
    while node is not None:
        group = node.parent.group if node.parent is not None else st.root
        later = _dependents(group, node.lane) if group is not None else set()
        for sibling in children.get(node.parent.id if node.parent else None, []):
            if sibling is node:
                continue
            if (
                sibling.in_side_branch
                or (sibling.lane == node.lane and sibling.pos > node.pos)
                or sibling.lane in later
            ):
                dropped.add(sibling.id)
        node = node.parent
    below = [chosen.id, *dropped]
    while below:
        for child in children.get(below.pop(), []):
            dropped.add(child.id)
            below.append(child.id)
    return dropped


def _dependents(group: Group, lane: int) -> set[int]:
    """The lanes of a Dag that wait, directly or not, for ``lane`` (none outside a Dag)."""
    if group.depends is None:
        return set()
    found: set[int] = set()
    frontier = [lane]
    while frontier:
        current = frontier.pop()
        for other, needs in enumerate(group.depends):
            if current in needs and other not in found:
                found.add(other)
                frontier.append(other)
    return found
