"""Dag: children that run as soon as the tasks they depend on have ended well.

Each entry of ``tasks`` is ``{task, dependsOn}``. A task with no ``dependsOn`` starts at once; the
others start once every task they name has ended without failing (SUCCESS, WARNING or SKIPPED), up
to ``concurrent`` at once (0: no limit). A failure stops new tasks from starting; the Dag then ends
FAILED once the running ones have ended, after its ``errors`` and ``finally`` branches, like any
other flowable.

The graph is checked when the flow is validated: a ``dependsOn`` naming a task that is not one of
the Dag's own, a task depending on itself, and any cycle are refused, each at the line of the
``dependsOn`` concerned. A disabled task is left out, and depending on it waits for nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from kestream.tasks.base import AnyTask, ChildPlan, FlowableTask, Lane, Task


class DagTask(BaseModel):
    """One node of a Dag: a task and the ids of the Dag's tasks it waits for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: AnyTask
    dependsOn: list[str] | None = None


class Dag(FlowableTask):
    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.Dag"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.Dag",)

    tasks: list[DagTask] = Field(min_length=1)
    concurrent: int = Field(default=0, ge=0)

    @field_validator("tasks")
    @classmethod
    def _acyclic(cls, nodes: list[DagTask]) -> list[DagTask]:
        problems = graph_problems(nodes)
        if problems:
            raise ValidationError.from_exception_data("Dag", problems)
        return nodes

    def branches(self) -> list[list[Task]]:
        return [[node.task for node in self.tasks]]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        nodes = [node for node in self.tasks if not node.task.disabled]
        lane_of = {node.task.id: lane for lane, node in enumerate(nodes)}
        lanes: list[Lane] = [[(node.task, None)] for node in nodes]
        depends = [
            tuple(lane_of[need] for need in node.dependsOn or () if need in lane_of)
            for node in nodes
        ]
        return ChildPlan(lanes, concurrency=self.concurrent, depends=depends)


def graph_problems(nodes: list[DagTask]) -> list[InitErrorDetails]:
    """Unknown dependencies and cycles, each located at ``[index, "dependsOn", ...]``."""
    index = {node.task.id: position for position, node in enumerate(nodes)}
    problems: list[InitErrorDetails] = []
    for position, node in enumerate(nodes):
        for slot, need in enumerate(node.dependsOn or ()):
            if need not in index:
                known = ", ".join(f"'{task_id}'" for task_id in index)
                problems.append(
                    _problem(
                        (position, "dependsOn", slot),
                        f"task '{node.task.id}' depends on '{need}', which is not a task of"
                        f" this Dag ({known})",
                        need,
                    )
                )
    if problems:
        return problems
    cycle = _find_cycle(nodes, index)
    if cycle is not None:
        where = index[cycle[0]]
        path = " -> ".join(f"'{task_id}'" for task_id in [*cycle, cycle[0]])
        problems.append(
            _problem(
                (where, "dependsOn"),
                f"the Dag's dependencies form a cycle: {path}",
                nodes[where].dependsOn,
            )
        )
    return problems


def _problem(loc: tuple[int | str, ...], message: str, given: Any) -> InitErrorDetails:
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return InitErrorDetails(type=error, loc=loc, input=given)


def _find_cycle(nodes: list[DagTask], index: dict[str, int]) -> list[str] | None:
    """One cycle of the graph (task ids in dependency order), or None; iterative DFS."""
    needs = {node.task.id: list(dict.fromkeys(node.dependsOn or ())) for node in nodes}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in index:
        if start in state:
            continue
        path: list[str] = [start]
        cursor: list[int] = [0]
        state[start] = 1
        while path:
            current = path[-1]
            if cursor[-1] < len(needs[current]):
                following = needs[current][cursor[-1]]
                cursor[-1] += 1
                if state.get(following) == 1:
                    return path[path.index(following) :]
                if following not in state:
                    state[following] = 1
                    path.append(following)
                    cursor.append(0)
            else:
                state[current] = 2
                path.pop()
                cursor.pop()
    return None
