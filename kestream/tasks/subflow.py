"""Subflow: start another flow's execution and, with ``wait``, take its outcome as this task's.

The executor creates the child execution (a command) and waits for its end as an event. The
deprecated task-level ``outputs`` map is rendered in the child's context when the child ends.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from kestream.tasks.base import Task, TaskKind


class Subflow(Task):
    kind: ClassVar[TaskKind] = TaskKind.SUBFLOW
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Subflow"
    aliases: ClassVar[tuple[str, ...]] = (
        "io.kestra.core.tasks.flows.Subflow",
        "io.kestra.core.tasks.flows.Flow",
        "io.kestra.plugin.core.flow.Flow",
    )
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "flowId", "inputs", "labels")

    namespace: str
    flowId: str
    revision: int | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    wait: bool = True
    transmitFailed: bool = True
    inheritLabels: bool = False
    outputs: dict[str, Any] | None = None
