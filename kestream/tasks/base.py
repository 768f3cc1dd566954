"""What every task is: its common properties, its kind, and how the executor and worker use it.

A task type is a pydantic model (its YAML properties, validated) plus behaviour. The *kind* decides
who handles it:

- ``RUNNABLE`` tasks run on a worker (or inside the executor step when ``inline`` is set and
  ``KESTREAM_EXECUTOR_INLINE_TASKS`` is on): they take rendered properties and return an outcome.
- ``FLOWABLE`` tasks never leave the executor: they turn rendered properties into a
  :class:`ChildPlan` (which children run, with which loop values, how many at once).
- ``SUBFLOW`` tasks make the executor create another execution and wait for it.

Properties listed in ``dynamic`` are rendered by the executor, with the task run's context, just
before the task runs; the worker therefore never needs the execution's whole context.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializeAsAny,
    field_validator,
)

from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.storage.keys import TaskRunFiles
from kestream.tasks.worker_group import WorkerGroup

TASK_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$"
_TEMPLATE = re.compile(r"\{\{|\{%")


class TaskKind(StrEnum):
    RUNNABLE = "RUNNABLE"
    FLOWABLE = "FLOWABLE"
    SUBFLOW = "SUBFLOW"


class LogLevel(StrEnum):
    TRACE = "TRACE"
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


LOG_LEVEL_ORDER = {
    LogLevel.TRACE: 0,
    LogLevel.DEBUG: 1,
    LogLevel.INFO: 2,
    LogLevel.WARN: 3,
    LogLevel.ERROR: 4,
}


def _duration_or_expression(value: Any) -> Any:
    """Durations may be literal ISO-8601 text or an expression rendered at run time."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 duration such as PT30S")
    if _TEMPLATE.search(value):
        return value
    try:
        parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    return value


DurationText = Annotated[str, PlainValidator(_duration_or_expression)]


class RetryBehavior(StrEnum):
    RETRY_FAILED_TASK = "RETRY_FAILED_TASK"
    CREATE_NEW_EXECUTION = "CREATE_NEW_EXECUTION"


class Retry(BaseModel):
    """Kestra's ``retry`` block (task or flow level). ``maxAttempt`` counts the first attempt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["constant", "exponential", "random"]
    interval: DurationText | None = None
    maxInterval: DurationText | None = None
    minInterval: DurationText | None = None
    delayFactor: float | None = None
    maxAttempt: int | None = Field(default=None, ge=1)
    maxDuration: DurationText | None = None
    behavior: RetryBehavior = RetryBehavior.RETRY_FAILED_TASK
    warningOnRetry: bool = False

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Task(BaseModel):
    """Properties every task accepts. Unknown properties are rejected, as Kestra rejects them."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        serialize_by_alias=True,
        coerce_numbers_to_str=True,
    )

    kind: ClassVar[TaskKind]
    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    dynamic: ClassVar[tuple[str, ...]] = ()
    #: Render variables only the worker knows (a script's ``workingDir``): the executor renders
    #: these placeholder values in their place and the task replaces them when it runs.
    worker_vars: ClassVar[dict[str, str]] = {}

    id: str = Field(pattern=TASK_ID_PATTERN, max_length=256)
    type: str
    description: str | None = None
    retry: Retry | None = None
    timeout: DurationText | None = None
    disabled: bool = False
    allowFailure: bool = False
    allowWarning: bool = False
    runIf: str | None = None
    logLevel: LogLevel | None = None
    logToFile: bool = False
    #: Which workers run this task (:mod:`kestream.tasks.worker_group`).
    workerGroup: WorkerGroup | None = None

    def children(self) -> list[Task]:
        """Every task nested directly in this one (branches, loops, errors): for indexing."""
        return []


@dataclass(slots=True)
class TaskOutcome:
    """What a runnable task produced. ``error`` is logged at ERROR level against the task run."""

    state: StateType
    outputs: dict[str, Any] | None = None
    logs: list[tuple[LogLevel, str]] = field(default_factory=list)
    error: str | None = None


class TaskError(Exception):
    """A task failed for a reason that its author should read (logged at ERROR on the task run)."""


@dataclass(slots=True)
class RunInfo:
    """What a runnable task may know about the run it belongs to (no execution context).

    :meth:`log` is how a task logs while it runs: where the runner gives an ``emit`` callback
    (the worker), each line goes out at once, so a long script's output is seen as it comes;
    elsewhere (the executor's inline path, tests) lines are kept in ``lines`` and the runner puts
    them before the outcome's own ``logs``.

    ``killed`` is set by the runner when the attempt is killed or times out: code running in a
    thread, which cancellation cannot reach, looks at it to stop early.
    """

    execution_id: str
    task_run_id: str
    attempt: int
    emit: Callable[[LogLevel, str], None] | None = None
    lines: list[tuple[LogLevel, str]] = field(default_factory=list)
    killed: threading.Event = field(default_factory=threading.Event)
    #: The directory the task shares with its siblings of a ``WorkingDirectory``; None: the task
    #: makes a fresh one of its own if it needs one.
    working_dir: Path | None = None
    #: The run's folder in the internal storage, where its files go (the worker sets it).
    files: TaskRunFiles | None = None
    #: ``(namespace, flow id, execution id)`` of the execution that started this one, whose
    #: stored files the task may read too (a subflow's FILE input from its parent).
    source: tuple[str, str, str] | None = None

    def log(self, level: LogLevel, message: str) -> None:
        if self.emit is not None:
            self.emit(level, message)
        else:
            self.lines.append((level, message))


class RunnableTask(Task):
    kind: ClassVar[TaskKind] = TaskKind.RUNNABLE
    #: The whole effect is rendering: safe to run inside the executor step.
    inline: ClassVar[bool] = False
    #: ``arun`` awaits (timers, I/O) and takes no worker thread while it waits.
    is_async: ClassVar[bool] = False
    #: Where the worker runs blocking ``execute`` code: ``"process"``, a worker process that a
    #: kill or a timeout stops (:mod:`kestream.worker.pool`); ``"thread"``, a thread of the
    #: worker's own, sharing its memory, which a kill cannot stop (``run.killed`` only).
    isolation: ClassVar[Literal["process", "thread"]] = "process"

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        """Run synchronously with rendered ``props``. Raise :class:`TaskError` to fail."""
        raise NotImplementedError(f"{self.type} has no synchronous body")

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        """Run on the event loop; the default calls :meth:`execute`."""
        return self.execute(props, run)


Lane = list[tuple[Task, str | None]]


@dataclass(slots=True)
class ChildPlan:
    """How a flowable task's children run.

    Each lane is a list of ``(task, loop value)`` run one after the other; up to ``concurrency``
    lanes run at once (0 = all). ``outputs`` become the flowable task run's outputs (Switch's
    ``{value, defaults}``). ``failure_is_warning`` is the deprecated AllowFailure wrapper.
    ``depends`` makes the lanes a graph (Dag): lane ``i`` waits for the lanes ``depends[i]``.
    """

    lanes: list[Lane]
    concurrency: int = 1
    outputs: dict[str, Any] | None = None
    failure_is_warning: bool = False
    depends: list[tuple[int, ...]] | None = None


class FlowableTask(Task):
    kind: ClassVar[TaskKind] = TaskKind.FLOWABLE

    errors: list[AnyTask] = Field(default_factory=list)
    #: Run one after the other once the children (and ``errors``) ended, whatever the outcome;
    #: they change the task's end state only when one of them fails.
    finally_: list[AnyTask] = Field(default_factory=list, alias="finally")

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        """Decide the children from rendered ``props``. Raise :class:`TaskError` to fail."""
        raise NotImplementedError

    def branches(self) -> list[list[Task]]:
        """The nested task lists other than ``errors``."""
        return []

    def children(self) -> list[Task]:
        return [t for branch in self.branches() for t in branch] + [*self.errors, *self.finally_]


def _parse_task(value: Any) -> Task:
    """Build the task class named by ``type`` (used for nested task lists)."""
    if isinstance(value, Task):
        return value
    if not isinstance(value, dict):
        raise ValueError("a task must be a mapping with 'id' and 'type'")
    from kestream.tasks.registry import task_class

    type_name = value.get("type")
    if not isinstance(type_name, str):
        raise ValueError("a task needs a 'type'")
    cls = task_class(type_name)
    if cls is None:
        raise ValueError(f"unknown task type '{type_name}'")
    return cls.model_validate(value)


AnyTask = Annotated[SerializeAsAny[Task], PlainValidator(_parse_task)]
FlowableTask.model_rebuild()
