"""LoopUntil (Kestra's older name: WaitFor): run the children again until a condition holds.

One iteration runs ``tasks`` one after the other. Once they have all ended well, ``condition`` is
rendered (it sees their outputs) and:

- true: the loop ends SUCCESS;
- false: ``iterationCount`` goes up by one; past ``checkFrequency.maxIterations``, or once
  ``checkFrequency.maxDuration`` has passed since the loop started, the loop ends, FAILED with
  ``failOnMaxReached`` and SUCCESS without it; otherwise the next iteration starts after
  ``checkFrequency.interval``, and the task runs of the one before are dropped from the execution
  (their outputs too), as Kestra does.

A child that fails ends the loop at once (its ``errors`` branch runs). The loop's own output
``iterationCount`` is 1 during the first iteration, so children can read
``outputs.<loop id>.iterationCount``. The defaults are Kestra 1.x's: no iteration or duration
limit, one minute between iterations. The executor does the looping (``_Step.loop_again``); this
class holds the properties and the decision.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.tasks.base import AnyTask, ChildPlan, FlowableTask, Task
from kestream.tasks.flow import one_lane


def _duration(value: Any) -> timedelta:
    """``checkFrequency`` is not dynamic in Kestra: its durations are ISO-8601 literals."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 duration such as PT30S")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[timedelta, PlainValidator(_duration)]


class CheckFrequency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maxIterations: int | None = Field(default=None, ge=1)
    maxDuration: Duration | None = None
    interval: Duration = timedelta(minutes=1)


class LoopUntil(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.LoopUntil"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.plugin.core.flow.WaitFor",)

    condition: str
    tasks: list[AnyTask] = Field(min_length=1)
    checkFrequency: CheckFrequency = Field(default_factory=CheckFrequency)
    failOnMaxReached: bool = False

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        return ChildPlan(one_lane(self.tasks), outputs={"iterationCount": 1})

    def limit_reached(self, next_iteration: int, elapsed: timedelta) -> StateType | None:
        """The loop's end state when the iteration about to start may not run, else None."""
        check = self.checkFrequency
        over = check.maxIterations is not None and next_iteration > check.maxIterations
        if over or (check.maxDuration is not None and elapsed >= check.maxDuration):
            return StateType.FAILED if self.failOnMaxReached else StateType.SUCCESS
        return None
