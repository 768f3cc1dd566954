"""When the API calls an execution over: an end state, and no ``afterExecution`` task left.

Kestra gives an execution its end state before its ``afterExecution`` tasks run (they read it
as ``execution.state``), and they never change it: the execution's JSON shows ``SUCCESS`` or
``FAILED`` while they still run. A wait, a follow, a kill and the log follow must not take
that state for the end, or a follow closes before the notification task's result, and a kill
is refused while a task still runs.

The executor says when an execution is over in its updates (``terminal``, which the API's
client reads); the index keeps the execution's JSON only. From that JSON, the flow says which
task runs are its ``afterExecution`` ones (root task runs of those task ids, as the executor
restores them): while one has not ended, the execution is not over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kestream.models.flow import Flow
from kestream.models.state import StateType

__all__ = ["after_execution_running", "is_over"]


def after_execution_running(execution: Mapping[str, Any], flow: Flow | None) -> bool:
    """Whether one of the flow's ``afterExecution`` task runs in ``execution`` has not ended
    (False without the flow: its revision is gone, and nothing tells them apart)."""
    if flow is None or not flow.afterExecution:
        return False
    ids = {task.id for task in flow.afterExecution}
    return any(
        run.get("parentTaskRunId") is None
        and run.get("taskId") in ids
        and not StateType(run["state"]["current"]).is_terminal
        for run in execution.get("taskRunList") or ()
    )


def is_over(execution: Mapping[str, Any], flow: Flow | None) -> bool:
    """The execution has its end state and its ``afterExecution`` tasks have ended."""
    state = StateType(execution["state"]["current"])
    return state.is_terminal and not after_execution_running(execution, flow)
