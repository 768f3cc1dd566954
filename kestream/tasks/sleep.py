"""Sleep: an async task that waits on the worker's event loop and holds no thread while it waits."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.tasks.base import DurationText, RunInfo, RunnableTask, TaskError, TaskOutcome


class Sleep(RunnableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Sleep"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Sleep",)
    dynamic: ClassVar[tuple[str, ...]] = ("duration",)
    is_async: ClassVar[bool] = True

    duration: DurationText

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        try:
            seconds = parse_duration(str(props["duration"])).total_seconds()
        except DurationError as exc:
            raise TaskError(f"Invalid duration: {exc}") from None
        await asyncio.sleep(max(seconds, 0.0))
        return TaskOutcome(StateType.SUCCESS)
