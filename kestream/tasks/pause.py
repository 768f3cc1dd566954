"""Pause: stop a branch until it is resumed, its ``delay`` passes, or its ``timeout`` fails it.

The executor handles the waiting itself (the pause lives in the execution state as a timer, so it
survives restarts). The older form with child ``tasks`` runs those children after the resume.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from kestream.models.inputs import AnyInput
from kestream.tasks.base import AnyTask, ChildPlan, DurationText, FlowableTask, Task
from kestream.tasks.flow import one_lane


class Pause(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Pause"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Pause",)
    dynamic: ClassVar[tuple[str, ...]] = ("delay", "timeout")

    delay: DurationText | None = None
    onResume: list[AnyInput] = Field(default_factory=list)
    tasks: list[AnyTask] = Field(default_factory=list)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        return ChildPlan(one_lane(self.tasks))
