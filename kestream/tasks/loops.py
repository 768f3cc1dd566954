"""Loop tasks: ForEach (with ``concurrencyLimit``), and the older EachSequential and EachParallel.

Loop values follow Kestra: a JSON text or a list; strings stay as they are, numbers become their
text, objects become compact JSON text; duplicates are dropped (first one kept); a null item fails
the loop task before any child is created.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from pydantic import Field

from kestream.tasks.base import AnyTask, ChildPlan, FlowableTask, Lane, Task, TaskError


def loop_values(raw: Any) -> list[str]:
    """Turn a rendered ``values`` property into the loop's string values."""
    items = raw
    if isinstance(raw, str):
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TaskError(f"Unable to parse the loop values as a JSON array: {raw}") from None
    if not isinstance(items, list):
        raise TaskError(f"The loop values must be a list, got: {raw}")
    nulls = sum(1 for item in items if item is None)
    if nulls:
        raise TaskError(f"Found '{nulls}' null values on Each, with values={java_text(items)}")
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(_value_text(item), None)
    return list(seen)


def _value_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    return orjson.dumps(item).decode()


def java_text(value: Any) -> str:
    """Java's ``toString`` of lists and maps, which Kestra's loop error messages embed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={java_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _enabled(tasks: list[Task]) -> list[Task]:
    return [task for task in tasks if not task.disabled]


class ForEach(FlowableTask):
    """Each value is a lane running ``tasks`` in order; ``concurrencyLimit`` lanes at once."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.ForEach"
    dynamic: ClassVar[tuple[str, ...]] = ("values",)

    values: str | list[Any]
    tasks: list[AnyTask] = Field(min_length=1)
    concurrencyLimit: int = Field(default=1, ge=0)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        tasks = _enabled(self.tasks)
        lanes: list[Lane] = [
            [(task, value) for task in tasks] for value in loop_values(props["values"])
        ]
        return ChildPlan([lane for lane in lanes if lane], concurrency=self.concurrencyLimit)


class EachSequential(FlowableTask):
    """Deprecated: every (value, task) pair in one lane, value by value."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.EachSequential"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.EachSequential",)
    dynamic: ClassVar[tuple[str, ...]] = ("value",)

    value: str | list[Any]
    tasks: list[AnyTask] = Field(min_length=1)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        tasks = _enabled(self.tasks)
        lane: Lane = [(task, value) for value in loop_values(props["value"]) for task in tasks]
        return ChildPlan([lane] if lane else [])


class EachParallel(FlowableTask):
    """Deprecated: each (value, task) pair is a lane; ``concurrent`` lanes at once (0 = all)."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.EachParallel"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.EachParallel",)
    dynamic: ClassVar[tuple[str, ...]] = ("value",)

    value: str | list[Any]
    tasks: list[AnyTask] = Field(min_length=1)
    concurrent: int = Field(default=0, ge=0)

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        tasks = _enabled(self.tasks)
        lanes: list[Lane] = [
            [(task, value)] for value in loop_values(props["value"]) for task in tasks
        ]
        return ChildPlan(lanes, concurrency=self.concurrent)
