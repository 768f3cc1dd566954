"""One attempt of blocking task code, wherever it runs (a worker process or a pool thread).

Both paths turn the task's own failures into the same outcome: a :class:`TaskError` is a message
for the flow's author; any other exception is a bug in the task, whose traceback goes to the task
run's log at ERROR while the run fails with the traceback's last line.
"""

from __future__ import annotations

import traceback
from typing import Any

from kestream.models.state import StateType
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome


def run_blocking(task: RunnableTask, props: dict[str, Any], info: RunInfo) -> TaskOutcome:
    """``task.execute`` with its failures as outcomes: never raises but for BaseException."""
    try:
        return task.execute(props, info)
    except TaskError as exc:
        return TaskOutcome(StateType.FAILED, error=str(exc))
    except Exception as exc:  # a task's own bug must fail its task run, not the worker
        return task_bug(exc, info)


def task_bug(exc: Exception, info: RunInfo) -> TaskOutcome:
    """The outcome of an unexpected exception, its traceback logged at ERROR (call it from the
    ``except`` block that caught ``exc``)."""
    info.log(LogLevel.ERROR, traceback.format_exc().rstrip())
    return TaskOutcome(StateType.FAILED, error=f"{type(exc).__name__}: {exc}")
