"""The execution as kestream shows it to the outside world: Kestra 1.x's execution JSON.

These pydantic models are the *edge* shape (CLI ``--json``, the API, ``kestream.testing``). The
executor keeps a leaner internal state and builds these on demand; serialise with
``model_dump(mode="json", by_alias=True)``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer

from kestream.models.durations import format_duration
from kestream.models.state import StateType


def format_instant(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as Kestra prints instants (``...T10:11:12.345Z``)."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


class _Edge(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class StateHistory(_Edge):
    state: StateType
    date: datetime

    @field_serializer("date")
    def _date(self, value: datetime) -> str:
        return format_instant(value)


class State(_Edge):
    """A state with its history; start, end and duration are derived from the history."""

    current: StateType
    histories: list[StateHistory] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def startDate(self) -> str | None:
        return format_instant(self.histories[0].date) if self.histories else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def endDate(self) -> str | None:
        if self.histories and self.current.is_terminal:
            return format_instant(self.histories[-1].date)
        return None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration(self) -> str | None:
        if not self.histories:
            return None
        end = self.histories[-1].date if self.current.is_terminal else datetime.now(UTC)
        return format_duration(max(end - self.histories[0].date, timedelta(0)))

    def count(self, state: StateType) -> int:
        """How many times ``state`` appears in the history."""
        return sum(1 for h in self.histories if h.state is state)


class TaskRunAttempt(_Edge):
    state: State


class TaskRun(_Edge):
    id: str
    executionId: str
    namespace: str
    flowId: str
    taskId: str
    parentTaskRunId: str | None = None
    value: str | None = None
    attempts: list[TaskRunAttempt] | None = None
    outputs: dict[str, Any] | None = None
    state: State


class Label(_Edge):
    key: str
    value: str


class ExecutionMetadata(_Edge):
    attemptNumber: int = 1
    originalCreatedDate: datetime

    @field_serializer("originalCreatedDate")
    def _date(self, value: datetime) -> str:
        return format_instant(value)


class ExecutionTrigger(_Edge):
    id: str
    type: str
    variables: dict[str, Any] = Field(default_factory=dict)


class Execution(_Edge):
    """Kestra 1.x's execution JSON shape."""

    id: str
    namespace: str
    flowId: str
    flowRevision: int
    originalId: str
    deleted: bool = False
    parentId: str | None = None
    labels: list[Label] = Field(default_factory=list)
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    trigger: ExecutionTrigger | None = None
    scheduleDate: datetime | None = None
    metadata: ExecutionMetadata
    state: State
    taskRunList: list[TaskRun] = Field(default_factory=list)

    @field_serializer("scheduleDate")
    def _schedule(self, value: datetime | None) -> str | None:
        return format_instant(value) if value else None

    def label_map(self) -> dict[str, str]:
        """Labels as a dict (the last value of a repeated key wins)."""
        return {label.key: label.value for label in self.labels}

    def task_runs(self, task_id: str) -> list[TaskRun]:
        """Task runs of one task, in creation order."""
        return [run for run in self.taskRunList if run.taskId == task_id]


class LogEntry(_Edge):
    """One log line of a task run (Kestra's LogEntry)."""

    executionId: str
    namespace: str
    flowId: str
    taskId: str | None = None
    taskRunId: str | None = None
    attemptNumber: int | None = None
    level: str
    message: str
    timestamp: datetime

    @field_serializer("timestamp")
    def _ts(self, value: datetime) -> str:
        return format_instant(value)
