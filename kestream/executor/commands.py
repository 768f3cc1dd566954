"""What the executor step produces. The runtime turns each command into records (or, in the
broker-free driver, into calls); the step itself never does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kestream.executor.admission import SlotRequest
from kestream.executor.events import Event, ExecutionCreated
from kestream.models.state import StateType
from kestream.tasks.base import RunnableTask
from kestream.tasks.worker_group import WorkerGroup


@dataclass(slots=True)
class RunTask:
    """Run one attempt of a runnable task on a worker, with its properties already rendered."""

    execution_id: str
    task_run_id: str
    attempt: int
    namespace: str
    flow_id: str
    revision: int
    task: RunnableTask
    props: dict[str, Any]
    timeout_s: float | None = None
    #: Set when the task runs inside a ``WorkingDirectory``: the directory it shares with its
    #: siblings on the worker (:mod:`kestream.worker.workdirs`).
    workdir: SharedWorkdir | None = None
    #: ``(namespace, flow id, execution id)`` of the execution that started this one (a
    #: subflow's parent, a Flow trigger's source), whose stored files the task may read too.
    source: tuple[str, str, str] | None = None


@dataclass(slots=True, frozen=True)
class SharedWorkdir:
    """The working directory a ``WorkingDirectory`` task run gives its children.

    ``owner_id`` is that task run's id; ``input_files`` (its rendered ``inputFiles``) are written
    by the worker when it creates the directory, that is for the first child it runs.
    """

    owner_id: str
    input_files: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class KillTask:
    execution_id: str
    task_run_id: str


@dataclass(slots=True)
class ReleaseWorkdir:
    """A ``WorkingDirectory`` task run ended: its worker removes the directory it shared.

    It goes to the topic (hence the worker) its children's jobs went to: ``worker_group``.
    """

    execution_id: str
    owner_id: str
    worker_group: WorkerGroup | None = None


@dataclass(slots=True)
class CreateExecution:
    created: ExecutionCreated


@dataclass(slots=True)
class SendEvent:
    """An event for another execution (a subflow's end to its parent, a kill to a child)."""

    event: Event


@dataclass(slots=True)
class RequestSlot:
    """Ask for a flow-concurrency slot, or give one back: a request for the admission
    stream, keyed by flow (:mod:`kestream.executor.admission`)."""

    request: SlotRequest


@dataclass(slots=True)
class SetTimer:
    execution_id: str
    timer_id: str
    due: datetime


@dataclass(slots=True)
class CancelTimer:
    execution_id: str
    timer_id: str


@dataclass(slots=True)
class LogLine:
    execution_id: str
    task_run_id: str | None
    task_id: str | None
    attempt: int | None
    level: str
    message: str
    timestamp: datetime


@dataclass(slots=True)
class EmitLogs:
    namespace: str
    flow_id: str
    lines: list[LogLine]


@dataclass(slots=True)
class ExecutionChanged:
    """The execution moved: its state and the task runs that changed in this step.

    ``terminal`` is set exactly once per execution attempt (DESIGN.md section 3). ``created``,
    ``counters_changed`` (flowables whose lanes advanced) and ``planned`` (flowables whose lanes
    were planned in this step) tell the changelog which records to write. ``restored``: created
    from an ended execution's snapshot by a restart, the same execution again, not a new one
    (the metrics count no start).
    """

    execution_id: str
    state: StateType
    changed_task_runs: list[str]
    terminal: bool
    created: bool = False
    counters_changed: list[str] = field(default_factory=list)
    planned: set[str] = field(default_factory=set)
    restored: bool = False


Command = (
    RunTask
    | KillTask
    | ReleaseWorkdir
    | CreateExecution
    | SendEvent
    | RequestSlot
    | SetTimer
    | CancelTimer
    | EmitLogs
    | ExecutionChanged
)
