"""Runnable core tasks whose whole effect is rendering: Log, Return, Echo, OutputValues, Fail.

All of them are ``inline``: the executor may run them inside its step (one broker hop saved per
task) with exactly the same task runs, attempts, outputs and log records as on a worker.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from kestream.expressions import is_truthy
from kestream.models.state import StateType
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome

_OK = StateType.SUCCESS


class Log(RunnableTask):
    """Log a message (or each message of a list) at ``level``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.log.Log"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.log.Log",)
    dynamic: ClassVar[tuple[str, ...]] = ("message",)
    inline: ClassVar[bool] = True

    message: str | list[str]
    level: LogLevel = LogLevel.INFO

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        message = props["message"]
        lines = message if isinstance(message, list) else [message]
        return TaskOutcome(_OK, logs=[(self.level, str(line)) for line in lines])


class Return(RunnableTask):
    """Render ``format`` into the ``value`` output."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.debug.Return"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.debugs.Return",)
    dynamic: ClassVar[tuple[str, ...]] = ("format",)
    inline: ClassVar[bool] = True

    format: str | None = None

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        return TaskOutcome(_OK, outputs={"value": props.get("format")})


class Echo(RunnableTask):
    """Deprecated debug task: log ``format`` at ``level``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.debug.Echo"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.debugs.Echo",)
    dynamic: ClassVar[tuple[str, ...]] = ("format",)
    inline: ClassVar[bool] = True

    format: str
    level: LogLevel = LogLevel.INFO

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        return TaskOutcome(_OK, logs=[(self.level, str(props["format"]))])


class OutputValues(RunnableTask):
    """Expose a rendered map under the ``values`` output."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.output.OutputValues"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.outputs.OutputValues",)
    dynamic: ClassVar[tuple[str, ...]] = ("values",)
    inline: ClassVar[bool] = True

    values: dict[str, Any] = Field(default_factory=dict)

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        return TaskOutcome(_OK, outputs={"values": props.get("values") or {}})


class Fail(RunnableTask):
    """Fail the task run, always or when ``condition`` renders truthy."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.execution.Fail"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.executions.Fail",)
    dynamic: ClassVar[tuple[str, ...]] = ("condition", "errorMessage")
    inline: ClassVar[bool] = True

    condition: str | None = None
    errorMessage: str = "Task failure"

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        condition = props.get("condition")
        if condition is None or is_truthy(condition):
            raise TaskError(str(props.get("errorMessage") or "Task failure"))
        return TaskOutcome(_OK)
