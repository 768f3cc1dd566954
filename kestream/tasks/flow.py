"""Flowable tasks that arrange their children: Sequential, Parallel, If, Switch, AllowFailure.

They run inside the executor step and never reach a worker; each turns its rendered properties into
a :class:`~kestream.tasks.base.ChildPlan`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from kestream.expressions import is_truthy
from kestream.tasks.base import AnyTask, ChildPlan, FlowableTask, Lane, Task, TaskError


def one_lane(tasks: list[Task]) -> list[Lane]:
    """A single lane running ``tasks`` in order, without loop values."""
    return [[(task, None) for task in tasks if not task.disabled]] if tasks else []


class Sequential(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Sequential"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Sequential",)

    tasks: list[AnyTask] = Field(min_length=1)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        return ChildPlan(one_lane(self.tasks))


class AllowFailure(Sequential):
    """Deprecated: a Sequential whose failure (after its errors branch) becomes WARNING."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.AllowFailure"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.AllowFailure",)

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        return ChildPlan(one_lane(self.tasks), failure_is_warning=True)


class Parallel(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Parallel"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Parallel",)

    tasks: list[AnyTask] = Field(min_length=1)
    concurrent: int = Field(default=0, ge=0)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        lanes: list[Lane] = [[(task, None)] for task in self.tasks if not task.disabled]
        return ChildPlan(lanes, concurrency=self.concurrent)


class If(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.If"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.If",)
    dynamic: ClassVar[tuple[str, ...]] = ("condition",)

    condition: str
    then: list[AnyTask] = Field(min_length=1)
    else_: list[AnyTask] | None = Field(default=None, alias="else")

    def branches(self) -> list[list[Task]]:
        return [self.then, self.else_ or []]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        """The branch the rendered condition picks; its truth is the ``evaluationResult``
        output, as Kestra gives it."""
        result = is_truthy(props["condition"])
        branch = self.then if result else (self.else_ or [])
        return ChildPlan(one_lane(branch), outputs={"evaluationResult": result})


class Switch(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Switch"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Switch",)
    dynamic: ClassVar[tuple[str, ...]] = ("value",)

    value: str
    cases: dict[str, list[AnyTask]] = Field(default_factory=dict)
    defaults: list[AnyTask] | None = None

    @field_validator("cases", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        # YAML reads `1:` as an int; Kestra matches cases on the rendered string.
        if isinstance(value, dict):
            return {_case_key(k): v for k, v in value.items()}
        return value

    def branches(self) -> list[list[Task]]:
        return [*self.cases.values(), self.defaults or []]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        value = str(props["value"])
        if value in self.cases:
            return ChildPlan(
                one_lane(self.cases[value]), outputs={"value": value, "defaults": False}
            )
        if self.defaults:
            return ChildPlan(one_lane(self.defaults), outputs={"value": value, "defaults": True})
        raise TaskError(f"Switch value '{value}' matches no case and there is no 'defaults' branch")


def _case_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
