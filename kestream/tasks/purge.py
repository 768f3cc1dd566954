"""PurgeExecutions and PurgeLogs: delete what the installation remembers of ended executions.

Semantics are Kestra's ``io.kestra.plugin.core.execution.PurgeExecutions`` and
``io.kestra.plugin.core.log.PurgeLogs``:

- an execution is purged when it *ended* no later than ``endDate`` (required), started no
  earlier than ``startDate`` (when given), is in one of ``states`` (when given), and belongs to
  ``flowId`` in ``namespace``, or to ``namespace`` or a namespace under it when there is no
  ``flowId``. An execution that has not ended has no end date, so it never matches: running and
  paused executions are never purged;
- a log line is purged when its timestamp lies within ``[startDate, endDate]``, its level is one
  of ``logLevels`` (when given) and its execution matches ``executionId``, ``flowId`` and
  ``namespace`` as above.

The task only describes *what* to purge (:class:`ExecutionPurge`, :class:`LogPurge`) and asks a
:class:`Purger` to do it. Who keeps executions and logs is not the worker's business: on a
broker it is the API's execution index, and the deletions travel through Kafka so that every
API process applies them (:class:`kestream.tasks.purge_api.ApiPurger`, the default);
``kestream.testing`` puts its own in-memory purger in :data:`PURGER` for the tasks it runs.

``purgeStorage`` removes the purged executions' files from the internal storage
(``storagesCount`` counts them); kestream keeps no metrics per execution, so ``purgeMetric`` is
accepted and reports 0 (``metricsCount``).
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import UTC, date, datetime, time
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kestream.models.instants import parse_instant
from kestream.models.state import StateType
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome

__all__ = [
    "PURGER",
    "ExecutionPurge",
    "ExecutionPurgeCounts",
    "LogPurge",
    "PurgeExecutions",
    "PurgeLogs",
    "Purger",
    "namespace_matches",
]


def _instant(value: Any) -> datetime | None:
    """A rendered date (a datetime, a date or ISO-8601 text) as an aware UTC instant."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    else:
        text = str(value).strip()
        try:
            return parse_instant(text)
        except ValueError:
            raise ValueError(f"'{text[:60]}' is not an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def namespace_matches(namespace: str, wanted: str | None, *, exact: bool) -> bool:
    """Kestra's namespace filter: equal, or (``exact`` false) equal or under ``wanted.``."""
    if wanted is None:
        return True
    return namespace == wanted or (not exact and namespace.startswith(wanted + "."))


def _within(moment: datetime | None, start: datetime | None, end: datetime) -> bool:
    return moment is not None and moment <= end and (start is None or moment >= start)


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str | None = None
    flowId: str | None = None
    startDate: datetime | None = None
    endDate: datetime

    @field_validator("startDate", "endDate", mode="before")
    @classmethod
    def _date(cls, value: Any) -> datetime | None:
        return _instant(value)

    @field_validator("namespace", "flowId", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return None if value == "" else value

    def flow_matches(self, namespace: str, flow_id: str) -> bool:
        """The namespace and flow filters (a namespace prefix without ``flowId``)."""
        if self.flowId is not None and flow_id != self.flowId:
            return False
        return namespace_matches(namespace, self.namespace, exact=self.flowId is not None)


class ExecutionPurge(_Query):
    """Which executions to purge, and what of them (the body the API's purge route takes)."""

    states: frozenset[StateType] | None = None
    purgeExecution: bool = True
    purgeLog: bool = True
    purgeStorage: bool = True

    def matches(
        self,
        namespace: str,
        flow_id: str,
        state: StateType,
        start: datetime | None,
        end: datetime | None,
    ) -> bool:
        """Whether an execution is purged (module docs); ``end`` None: it has not ended."""
        if not state.is_terminal or not _within(end, None, self.endDate):
            return False
        if self.startDate is not None and (start is None or start < self.startDate):
            return False
        if self.states is not None and state not in self.states:
            return False
        return self.flow_matches(namespace, flow_id)


class ExecutionPurgeCounts(BaseModel):
    """What a purge of executions deleted."""

    executionsCount: int = 0
    logsCount: int = 0
    storagesCount: int = 0


class LogPurge(_Query):
    """Which log lines to purge (the body the API's log purge route takes)."""

    executionId: str | None = None
    logLevels: frozenset[LogLevel] | None = None

    @field_validator("executionId", mode="before")
    @classmethod
    def _blank_id(cls, value: Any) -> Any:
        return None if value == "" else value

    def execution_matches(self, execution_id: str, namespace: str, flow_id: str) -> bool:
        """Whether the lines of this execution are concerned at all."""
        if self.executionId is not None and execution_id != self.executionId:
            return False
        return self.flow_matches(namespace, flow_id)

    def line_matches(self, level: str, timestamp: datetime) -> bool:
        """Whether one line of a concerned execution is purged (level and date)."""
        if self.logLevels is not None and level not in self.logLevels:
            return False
        return _within(timestamp.astimezone(UTC), self.startDate, self.endDate)


class Purger(Protocol):
    """Whoever keeps executions and logs, asked to delete some."""

    async def purge_executions(self, query: ExecutionPurge) -> ExecutionPurgeCounts: ...

    async def purge_logs(self, query: LogPurge) -> int: ...


#: The purger the tasks use; unset means the installation's API (:mod:`.purge_api`).
PURGER: ContextVar[Purger | None] = ContextVar("kestream_purger", default=None)


def _purger() -> Purger:
    purger = PURGER.get()
    if purger is None:
        from kestream.tasks.purge_api import ApiPurger

        purger = ApiPurger.from_settings()
    return purger


_Q = TypeVar("_Q", bound=_Query)


def _query(model: type[_Q], props: dict[str, Any], fields: dict[str, Any]) -> _Q:
    try:
        query = model.model_validate({**fields, **props})
    except ValueError as exc:  # pydantic's ValidationError is one
        raise TaskError(f"Invalid purge filter: {exc}") from None
    if query.flowId is not None and query.namespace is None:
        raise TaskError("'flowId' needs 'namespace': the namespace of the flow to purge")
    return query


class PurgeExecutions(RunnableTask):
    """Purge ended executions and their logs (module docs)."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.execution.PurgeExecutions"
    aliases: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.storage.Purge",
        "io.kestra.core.tasks.storages.Purge",
    )
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "flowId", "startDate", "endDate")
    is_async: ClassVar[bool] = True

    namespace: str | None = None
    flowId: str | None = None
    startDate: str | None = None
    endDate: str
    states: list[StateType] | None = None
    purgeExecution: bool = True
    purgeLog: bool = True
    purgeMetric: bool = True
    purgeStorage: bool = True
    batchSize: int = Field(default=100, ge=1)

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        fixed = {
            "states": self.states,
            "purgeExecution": self.purgeExecution,
            "purgeLog": self.purgeLog,
            "purgeStorage": self.purgeStorage,
        }
        query = _query(ExecutionPurge, props, fixed)
        counts = await _purger().purge_executions(query)
        run.log(
            LogLevel.INFO,
            f"Purged {counts.executionsCount} executions and {counts.logsCount} log lines",
        )
        outputs = {**counts.model_dump(), "metricsCount": 0}
        return TaskOutcome(StateType.SUCCESS, outputs)


class PurgeLogs(RunnableTask):
    """Purge log lines by execution, flow, namespace, level and date (module docs)."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.log.PurgeLogs"
    dynamic: ClassVar[tuple[str, ...]] = (
        "namespace",
        "flowId",
        "executionId",
        "startDate",
        "endDate",
    )
    is_async: ClassVar[bool] = True

    namespace: str | None = None
    flowId: str | None = None
    executionId: str | None = None
    logLevels: list[LogLevel] | None = None
    startDate: str | None = None
    endDate: str

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        query = _query(LogPurge, props, {"logLevels": self.logLevels})
        count = await _purger().purge_logs(query)
        run.log(LogLevel.INFO, f"Purged {count} log lines")
        return TaskOutcome(StateType.SUCCESS, {"count": count})
