"""What a task needs to use the internal storage from a worker: its folder and the rule on reads.

A task writes under its own task run's folder (:attr:`RunInfo.files`) and reads only the files
its execution may read (:class:`~kestream.storage.access.ExecutionFiles`: the execution's own,
those of the execution that started it, and its namespace's), so a flow cannot hand a task
another execution's URI to copy or delete.

Storage calls block (a local disk, or an S3 round trip): async tasks run them in a thread.
"""

from __future__ import annotations

import uuid

from kestream.storage.access import ExecutionFiles, FileAccessError
from kestream.storage.keys import TaskRunFiles, safe_file_name
from kestream.tasks.base import RunInfo, TaskError


def run_files(run: RunInfo) -> TaskRunFiles:
    """The task run's storage folder; a task that stores files needs one."""
    if run.files is None:
        raise TaskError("this run has no storage folder (only workers store files)")
    return run.files


def readable_key(run: RunInfo, uri: object, what: str = "uri") -> str:
    """The key of ``uri`` when the run's execution may read it; TaskError naming ``what``."""
    files = run_files(run)
    access = ExecutionFiles(files.namespace, files.flow_id, files.execution_id, run.source)
    try:
        return access.key(uri)
    except FileAccessError as exc:
        raise TaskError(f"{what}: {exc}") from None


def new_file_name(extension: str | None = None, stem: str | None = None) -> str:
    """A fresh file name for the task run's folder: ``stem`` (made safe) or a random one,
    with ``extension`` (``.txt`` or ``txt``)."""
    base = safe_file_name(stem, "") if stem else ""
    ext = safe_file_name((extension or "").lstrip("."), "")
    name = base or uuid.uuid4().hex
    return f"{name}.{ext}" if ext else name
