"""The executor's per-execution state: lean, mutable, updated in place by the step.

Everything an event needs is reachable in O(1) from the task run it names: its parent, the lane it
runs in, and the parent's :class:`Group` counters. Nothing here is rescanned per event, which is
what keeps the cost of an event independent of the size of the execution (DESIGN.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kestream.executor.events import SubflowLink
from kestream.models.state import (
    EXECUTION_TRANSITIONS,
    TASK_RUN_TRANSITIONS,
    StateType,
    check_transition,
)
from kestream.tasks.base import Lane, Task


@dataclass(slots=True)
class StateRecord:
    """A current state and its dated history."""

    current: StateType
    history: list[tuple[StateType, datetime]]

    @classmethod
    def new(cls, state: StateType, now: datetime) -> StateRecord:
        return cls(state, [(state, now)])

    @property
    def start(self) -> datetime:
        return self.history[0][1]

    def move_task_run(self, new: StateType, now: datetime, what: str) -> bool:
        return self._move(TASK_RUN_TRANSITIONS, new, now, what)

    def move_execution(self, new: StateType, now: datetime, what: str) -> bool:
        return self._move(EXECUTION_TRANSITIONS, new, now, what)

    def _move(self, table: Any, new: StateType, now: datetime, what: str) -> bool:
        if not check_transition(table, what, self.current, new):
            return False
        self.current = new
        self.history.append((new, now))
        return True


@dataclass(slots=True)
class Group:
    """The children of a flowable task run (or of the execution itself), as lanes.

    A lane runs its ``(task, value)`` pairs one after another; up to ``concurrency`` lanes run at
    once (0 = all). After a failure no new lane starts; once the running lanes have ended, the
    ``errors`` branch runs, one task after another.
    """

    lanes: list[Lane]
    concurrency: int
    errors: list[Task]
    failure_is_warning: bool = False
    next_lane: int = 0
    active: int = 0
    failed: bool = False
    worst: StateType = StateType.SUCCESS
    errors_pos: int = -1  # -1: the errors branch has not started

    def can_start_lane(self) -> bool:
        return (
            not self.failed
            and self.next_lane < len(self.lanes)
            and (self.concurrency == 0 or self.active < self.concurrency)
        )

    @property
    def finished(self) -> bool:
        return self.active == 0 and (self.failed or self.next_lane >= len(self.lanes))


@dataclass(slots=True)
class TaskRunState:
    id: str
    task: Task
    parent: TaskRunState | None
    value: str | None
    path: tuple[str, ...]  # loop values from the root down to this task run, outermost first
    lane: int  # lane index in the parent's group (-1 in an errors branch)
    pos: int  # position in that lane (or in the errors branch)
    errors_branch: bool
    state: StateRecord
    attempts: list[StateRecord] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    group: Group | None = None
    child_execution_id: str | None = None
    #: Creation order within the execution (the changelog restores the task run list by it).
    number: int = 0


@dataclass(slots=True)
class Timer:
    due: datetime
    kind: str  # "retry" | "pause-delay" | "pause-timeout" | "task-timeout" | "start"
    task_run_id: str | None = None
    attempt: int = 0


@dataclass(slots=True)
class ExecutionState:
    id: str
    namespace: str
    flow_id: str
    revision: int
    original_id: str
    attempt_number: int
    original_created: datetime
    labels: dict[str, str]
    inputs: dict[str, Any] | None
    trigger: dict[str, Any] | None
    schedule_date: datetime | None
    parent_link: SubflowLink | None
    state: StateRecord
    root: Group | None = None
    task_runs: dict[str, TaskRunState] = field(default_factory=dict)
    #: The ``outputs`` expression variable, merged incrementally as task runs produce outputs.
    outputs: dict[str, Any] = field(default_factory=dict)
    flow_outputs: dict[str, Any] | None = None
    error_logs: list[dict[str, Any]] = field(default_factory=list)
    timers: dict[str, Timer] = field(default_factory=dict)
    #: Task runs waiting in PAUSED (ids), so a resume never scans the execution.
    paused_runs: dict[str, None] = field(default_factory=dict)
    #: Task runs created so far (the next task run's creation number).
    created_runs: int = 0
    #: Whether a task (Labels) changed ``labels`` since creation: the changelog then carries them
    #: in the per-step record, as the header record is written once.
    labels_changed: bool = False

    @property
    def terminal(self) -> bool:
        return self.state.current.is_terminal

    def add_task_run(self, tr: TaskRunState) -> None:
        tr.number = self.created_runs
        self.created_runs += 1
        self.task_runs[tr.id] = tr

    def merge_outputs(self, tr: TaskRunState) -> None:
        """Put a task run's outputs into the ``outputs`` variable, keyed by task id then by the
        loop values on its path (``outputs['t']['v1']['v2']``): O(depth), never a rebuild."""
        node, key = self.outputs, tr.task.id
        for value in tr.path:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node, key = child, value
        node[key] = tr.outputs
