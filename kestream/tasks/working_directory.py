"""WorkingDirectory: children that run one after the other in one directory, on one worker.

Files one child writes are there for the next (a shell command writes ``data.csv``, a Python
script reads it). The task is a Sequential for the executor: it plans its ``tasks`` as one lane.
What makes the directory shared is the job of each runnable descendant: it names the enclosing
``WorkingDirectory`` task run (:class:`~kestream.executor.commands.SharedWorkdir`), and the worker
gives every job naming it the same directory (:mod:`kestream.worker.workdirs`), where script tasks
run and where a Python task's ``run.working_dir`` points. All jobs of an execution are keyed by
its id, hence go to one partition and one worker; the executor sends a ``release`` to that worker
when the task run ends, which removes the directory. The module doc of
:mod:`kestream.worker.workdirs` says what a rebalance mid-way does.

Tasks that run inline in the executor (Log, Return, ...) do not touch files and still run there.
The ``errors`` and ``finally`` tasks run in the same directory (it is released after them). A
restart runs a failed WorkingDirectory again from its first task, in a new directory (the
executor's ``reopen_working_directories``).

Its own ``cache`` and ``outputFiles`` are handled in the directory by jobs of its own task run,
before the first child and after the last (:mod:`.working_directory_files`).

Not supported yet, refused when the flow is deployed rather than silently ignored:
``namespaceFiles`` (set it on the script tasks inside instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, model_validator

from kestream.tasks.base import AnyTask, ChildPlan, FlowableTask, RunnableTask, Task, TaskError
from kestream.tasks.flow import one_lane
from kestream.tasks.worker_group import WorkerGroup
from kestream.tasks.working_directory_files import Cache, WorkingDirectoryFiles

_REFUSED = {
    "namespaceFiles": "not on WorkingDirectory yet: set namespaceFiles on the script tasks in it",
}


class WorkingDirectory(FlowableTask):
    """Runs ``tasks`` one after the other in one directory on one worker (see the module doc)."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.flow.WorkingDirectory"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.flows.WorkingDirectory",)
    dynamic: ClassVar[tuple[str, ...]] = ("inputFiles",)

    tasks: list[AnyTask] = Field(min_length=1)
    #: Files written into the directory before the first child runs: ``{name: contents}``.
    inputFiles: dict[str, Any] | str | None = None
    #: Globs of the files stored after the last child (output ``outputFiles``).
    outputFiles: list[str] | None = None
    cache: Cache | None = None

    _files: WorkingDirectoryFiles | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        if self.outputFiles or self.cache is not None:
            self._files = WorkingDirectoryFiles.model_validate(
                {
                    "id": f"{self.id}_files",
                    "type": WorkingDirectoryFiles.type_name,
                    "owner": self.id,
                    "outputFiles": self.outputFiles,
                    "cache": self.cache,
                    "workerGroup": self.worker_group(),  # where the directory is
                }
            )

    @property
    def files_task(self) -> WorkingDirectoryFiles | None:
        """The task whose jobs restore the cache and collect the files, when there are any."""
        return self._files

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key, why in _REFUSED.items():
                if _set(values.get(key)):
                    raise ValueError(f"WorkingDirectory '{key}' is not supported: {why}")
            values = {k: v for k, v in values.items() if k not in _REFUSED}
        return values

    @model_validator(mode="after")
    def _one_worker_group(self) -> WorkingDirectory:
        """Every child that reaches a worker must reach the same workers: they share files."""
        groups = {
            None if task.workerGroup is None else task.workerGroup.key
            for task in _worker_tasks([*self.tasks, *self.errors, *self.finally_])
        }
        if len(groups) > 1:
            named = ", ".join(sorted("(none)" if g is None else repr(g) for g in groups))
            raise ValueError(
                f"the tasks of WorkingDirectory '{self.id}' share a directory on one worker, so "
                f"they must share one workerGroup; they name several: {named}"
            )
        own = None if self.workerGroup is None else self.workerGroup.key
        if own is not None and groups and groups != {own}:
            # The jobs go where their own tasks say: a group on the WorkingDirectory alone
            # would silently not apply.
            raise ValueError(
                f"WorkingDirectory '{self.id}' has workerGroup '{own}': its tasks run on the "
                f"workers their own workerGroup names, so give them workerGroup '{own}' too"
            )
        return self

    def branches(self) -> list[list[Task]]:
        return [self.tasks]

    def children(self) -> list[Task]:
        """With the files task, so a worker finds it by id in the flow like any other."""
        return [*super().children(), *([self._files] if self._files is not None else [])]

    def plan(self, props: dict[str, Any]) -> ChildPlan:
        input_files(props)  # a bad value fails the task run before any child runs
        return ChildPlan(one_lane(self.tasks))

    def runs_on_workers(self) -> bool:
        """Whether any child (or its own files job) reaches a worker (else there is no
        directory to release)."""
        if self._files is not None:
            return True
        return next(_worker_tasks(self.tasks + list(self.errors)), None) is not None

    def worker_group(self) -> WorkerGroup | None:
        """The workerGroup of the children that run on workers (where the directory is)."""
        task = next(_worker_tasks(self.tasks + list(self.errors)), None)
        return None if task is None else task.workerGroup


def input_files(props: dict[str, Any]) -> dict[str, Any]:
    """The rendered ``inputFiles`` as a mapping (a JSON object rendered from a string works)."""
    value = props.get("inputFiles")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise TaskError("WorkingDirectory 'inputFiles' must be a map of file names to contents")
    return value


def _set(value: Any) -> bool:
    """Whether a refused property is really asked for (``namespaceFiles: {enabled: false}``,
    an empty list or map, ``false`` are not)."""
    if isinstance(value, dict) and "enabled" in value:
        return value["enabled"] not in (False, "false")
    return value not in (None, False, [], {})


def _worker_tasks(tasks: list[Task]) -> Iterator[RunnableTask]:
    """The runnable tasks among ``tasks`` and their descendants that may reach a worker (tasks
    inlined in the executor, and those of a nested WorkingDirectory, do not count here)."""
    for task in tasks:
        if isinstance(task, WorkingDirectory) or task.disabled:
            continue
        if isinstance(task, RunnableTask):
            if not (task.inline and task.workerGroup is None):
                yield task
        else:
            yield from _worker_tasks(task.children())
