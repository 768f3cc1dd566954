"""The executor's per-execution state: lean, mutable, updated in place by the step.

Everything an event needs is reachable in O(1) from the task run it names: its parent, the lane it
runs in, and the parent's :class:`Group` counters. Nothing here is rescanned per event, which is
what keeps the cost of an event independent of the size of the execution (DESIGN.md section 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kestream.executor.events import SubflowLink
from kestream.models.state import (
    EXECUTION_TRANSITIONS,
    TASK_RUN_TRANSITIONS,
    StateType,
    check_transition,
)
from kestream.storage.offload import holds_references
from kestream.tasks.base import ChildPlan, FlowableTask, Lane, Task


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


class Block(StrEnum):
    """Which of its parent's task lists a task run comes from (Kestra's YAML keys)."""

    TASKS = "tasks"
    ERRORS = "errors"
    FINALLY = "finally"
    #: The flow's ``afterExecution`` tasks (no parent): they run once the execution has ended.
    AFTER_EXECUTION = "afterExecution"


@dataclass(slots=True)
class Group:
    """The children of a flowable task run (or of the execution itself), as lanes.

    A lane runs its ``(task, value)`` pairs one after another; up to ``concurrency`` lanes run at
    once (0 = all). After a failure no new lane starts; once the running lanes have ended, the
    ``errors`` branch runs, one task after another, then the ``finally`` branch, whatever the
    outcome.

    ``depends`` makes the lanes a graph (a Dag): lane ``i`` starts only once every lane in
    ``depends[i]`` has ended without failing, in any order, so ``started`` and ``done`` name
    lanes (``next_lane`` still counts the lanes started). Graphs are written by hand in flows:
    looking for a startable lane scans them, which stays cheap at their size.
    """

    lanes: list[Lane]
    concurrency: int
    errors: list[Task]
    failure_is_warning: bool = False
    finally_: list[Task] = field(default_factory=list)
    depends: list[tuple[int, ...]] | None = None
    next_lane: int = 0
    active: int = 0
    failed: bool = False
    worst: StateType = StateType.SUCCESS
    errors_pos: int = -1  # -1: the errors branch has not started
    finally_pos: int = -1  # -1: the finally branch has not started
    started: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    #: The reference to the plan's record when it was stored past the inline threshold (a
    #: ForEach over many values): the changelog's plan record carries it instead of the lanes.
    stored: dict[str, Any] | None = None

    def next_startable(self) -> int | None:
        """The lane to start now, if any (none after a failure, or at the concurrency limit)."""
        if self.failed or (self.concurrency and self.active >= self.concurrency):
            return None
        if self.depends is None:
            return self.next_lane if self.next_lane < len(self.lanes) else None
        for lane, needs in enumerate(self.depends):
            if lane not in self.started and all(need in self.done for need in needs):
                return lane
        return None

    def mark_started(self, lane: int) -> None:
        self.next_lane += 1
        if self.depends is not None:
            self.started.add(lane)

    def lane_ended(self, lane: int) -> None:
        """A lane ran to its end without failing: the lanes waiting for it may start."""
        if self.depends is not None:
            self.done.add(lane)

    def recount_graph(self, lanes: Iterable[tuple[int, bool]]) -> None:
        """A graph's ``started``/``done`` from its children's ``(lane, ended well)``."""
        if self.depends is None:
            return
        self.started, self.done = set(), set()
        for lane, ended_well in lanes:
            self.started.add(lane)
            if ended_well:
                self.done.add(lane)
        self.next_lane = len(self.started)

    @property
    def finished(self) -> bool:
        return self.active == 0 and (self.failed or self.next_lane >= len(self.lanes))


def plan_group(task: FlowableTask, plan: ChildPlan) -> Group:
    """The lanes a flowable planned, with its ``errors`` and ``finally`` branches."""
    return Group(
        plan.lanes,
        plan.concurrency,
        [t for t in task.errors if not t.disabled],
        plan.failure_is_warning,
        [t for t in task.finally_ if not t.disabled],
        plan.depends,
    )


@dataclass(slots=True)
class TaskRunState:
    id: str
    task: Task
    parent: TaskRunState | None
    value: str | None
    path: tuple[str, ...]  # loop values from the root down to this task run, outermost first
    lane: int  # lane index in the parent's group (-1 in an errors or finally branch)
    pos: int  # position in that lane (or in the errors or finally branch)
    block: Block
    state: StateRecord
    attempts: list[StateRecord] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    group: Group | None = None
    child_execution_id: str | None = None
    #: Creation order within the execution (the changelog restores the task run list by it).
    number: int = 0
    #: A ForEachItem executable's gathered list (``outputs["outputs"]``, that very object) and
    #: its record size: the next child adds its own size instead of encoding the list again.
    #: Not in the changelog (worked out once again after a recovery).
    gathered: tuple[list[Any], int] | None = field(default=None, compare=False, repr=False)

    @property
    def errors_branch(self) -> bool:
        return self.block is Block.ERRORS

    @property
    def in_side_branch(self) -> bool:
        """Whether it runs in an ``errors``, ``finally`` or ``afterExecution`` block (or below
        one): a restart drops those task runs, and runs the blocks again as needed."""
        node: TaskRunState | None = self
        while node is not None:
            if node.block is not Block.TASKS:
                return True
            node = node.parent
        return False


@dataclass(slots=True)
class Timer:
    due: datetime
    kind: str  # "retry" | "pause-delay" | "pause-timeout" | "task-timeout" | "start" | "loop"
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
    #: The flow's ``afterExecution`` tasks, once the execution reached its end state; the
    #: execution is over when they have ended too (``terminal``).
    after: Group | None = None
    #: The execution this one replays (Kestra's ``parentId``), if it is a replay.
    parent_id: str | None = None
    #: SLAs violated in this attempt (ids): EXECUTION_ASSERTIONs at the last check, so that a
    #: violation that lasts is logged once, when it begins, not at every step that checks it
    #: again; MAX_DURATIONs with ``NONE`` that fired, so that one is not set again when the
    #: execution gets its slot. A restart clears them: its attempt is measured again.
    sla_violated: dict[str, None] = field(default_factory=dict)
    #: The task run a replay runs again once it holds its concurrency slot (it waits
    #: RESTARTED, then QUEUED); None once it runs, and for anything but a waiting replay.
    replay_run: str | None = None
    #: Whether a task run's outputs hold a reference to a stored value (set as they are
    #: merged): expressions then read ``outputs`` through references (:mod:`.references`).
    references: bool = False
    #: Whether the changelog holds a record of the execution's own lanes (``<id>+``, written
    #: before they were planned again from the flow on recovery): its end clears it
    #: (:mod:`.codec`).
    root_plan_logged: bool = False
    #: Whether the changelog holds the execution apart (a record per key: header, task runs,
    #: plans) rather than whole in its dynamic record: a small execution is one record until
    #: it outgrows it, then apart for good (:mod:`.codec`).
    records_apart: bool = False

    @property
    def terminal(self) -> bool:
        """The execution is over: an end state, and no ``afterExecution`` task left to run."""
        return self.state.current.is_terminal and (self.after is None or self.after.finished)

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
        if not self.references and holds_references(tr.outputs):
            self.references = True
