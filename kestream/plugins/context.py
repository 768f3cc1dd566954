"""What a Python task sees of the run it belongs to: :class:`RunContext`.

It wraps the engine's :class:`~kestream.tasks.base.RunInfo` (ids, attempt, ``log``) and adds what
user code needs: a logger whose lines become the task run's log lines, a working directory of its
own, and the kill signal. The working directory is created on first use only, so a task that never
asks for one costs nothing; whoever creates the context removes it with :meth:`RunContext.close`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import traceback
from pathlib import Path

from kestream.tasks.base import LogLevel, RunInfo, TaskError

__all__ = ["RunContext", "TaskKilled", "TaskLogger"]


class TaskKilled(TaskError):
    """Raised by :meth:`RunContext.check_killed` once the task run was killed or timed out."""


class TaskLogger:
    """A :mod:`logging`-like logger whose lines become the task run's log lines.

    ``%``-style arguments are applied as :mod:`logging` applies them. Python's levels map onto
    Kestra's: ``warning`` is WARN, ``critical`` and ``exception`` are ERROR (``exception`` adds the
    traceback being handled).
    """

    __slots__ = ("_info",)

    def __init__(self, info: RunInfo) -> None:
        self._info = info

    def log(self, level: LogLevel | str, message: object, *args: object) -> None:
        text = str(message) % args if args else str(message)
        self._info.log(LogLevel(level), text)

    def trace(self, message: object, *args: object) -> None:
        self.log(LogLevel.TRACE, message, *args)

    def debug(self, message: object, *args: object) -> None:
        self.log(LogLevel.DEBUG, message, *args)

    def info(self, message: object, *args: object) -> None:
        self.log(LogLevel.INFO, message, *args)

    def warning(self, message: object, *args: object) -> None:
        self.log(LogLevel.WARN, message, *args)

    warn = warning

    def error(self, message: object, *args: object) -> None:
        self.log(LogLevel.ERROR, message, *args)

    critical = error

    def exception(self, message: object, *args: object) -> None:
        """ERROR, followed by the traceback of the exception being handled."""
        text = str(message) % args if args else str(message)
        self.log(LogLevel.ERROR, f"{text}\n{traceback.format_exc().rstrip()}")


class RunContext:
    """The run a Python task belongs to. Ask for it with a keyword-only ``run`` parameter.

    ``execution_id``, ``task_run_id`` and ``attempt`` (1 for the first) name the attempt;
    ``logger`` writes its log lines; ``working_dir`` is an empty directory of this attempt's own,
    removed when the attempt ends (inside a ``WorkingDirectory``: the one its tasks share);
    ``killed`` is set once the attempt is killed or times out (blocking code that runs long
    should look at it, or call :meth:`check_killed`, now and then).
    Storage (files in internal storage) is not available yet.
    """

    __slots__ = ("_info", "_working_dir", "logger")

    def __init__(self, info: RunInfo) -> None:
        self._info = info
        self._working_dir: Path | None = None
        self.logger = TaskLogger(info)

    @classmethod
    def detached(
        cls, *, execution_id: str = "local", task_run_id: str = "local", attempt: int = 1
    ) -> RunContext:
        """A context outside any execution, to call a task's code directly (tests, notebooks):
        use it as a context manager (the working directory is removed at the end); what the code
        logged is in :attr:`log_lines`."""
        return cls(RunInfo(execution_id, task_run_id, attempt))

    @property
    def log_lines(self) -> list[tuple[str, str]]:
        """``(level, message)`` of the lines logged so far, where they are kept (a detached
        context; in a run they go to the task run's log as they come)."""
        return [(level.value, message) for level, message in self._info.lines]

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def execution_id(self) -> str:
        return self._info.execution_id

    @property
    def task_run_id(self) -> str:
        return self._info.task_run_id

    @property
    def attempt(self) -> int:
        return self._info.attempt

    @property
    def killed(self) -> threading.Event:
        """A :class:`threading.Event`: ``run.killed.is_set()`` once killed or timed out."""
        return self._info.killed

    def check_killed(self) -> None:
        """Raise :class:`TaskKilled` if the attempt was killed or timed out; else return."""
        if self._info.killed.is_set():
            raise TaskKilled("Task was killed")

    @property
    def working_dir(self) -> Path:
        """A fresh, empty directory for this attempt (created on first use); inside a
        ``WorkingDirectory``, the directory its tasks share (kept when the attempt ends)."""
        if self._info.working_dir is not None:
            return self._info.working_dir
        if self._working_dir is None:
            self._working_dir = Path(tempfile.mkdtemp(prefix=f"kestream-{self.task_run_id}-"))
        return self._working_dir

    def close(self) -> None:
        """Remove the working directory, if the task asked for one."""
        if self._working_dir is not None:
            shutil.rmtree(self._working_dir, ignore_errors=True)
            self._working_dir = None
