"""The worker-job records of a WorkingDirectory: a job names its shared directory, ``release``
ends it."""

from __future__ import annotations

from kestream.executor import commands as cmd
from kestream.models.flow import parse_flow
from kestream.runtime import records
from kestream.tasks.base import RunnableTask

FLOW = """id: wd
namespace: test.workdir
tasks:
  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: t
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo hi]
"""


def _task() -> RunnableTask:
    task = parse_flow(FLOW).task_index()["t"]
    assert isinstance(task, RunnableTask)
    return task


def test_a_job_carries_its_shared_directory_and_its_input_files() -> None:
    task = _task()
    shared = cmd.SharedWorkdir("wd1", {"a.txt": "A", "b/c.txt": "C"})
    job = cmd.RunTask("e1", "r1", 1, "ns", "wd", 1, task, {}, None, shared)
    decoded = records.decode_job(records.loads(records.encode_job(job)), task)
    assert decoded.workdir == shared


def test_a_job_outside_a_working_directory_has_none() -> None:
    task = _task()
    job = cmd.RunTask("e1", "r1", 1, "ns", "wd", 1, task, {})
    body = records.loads(records.encode_job(job))
    assert "workdir" not in body
    assert records.decode_job(body, task).workdir is None


def test_release_names_the_execution_and_the_working_directory_task_run() -> None:
    body = records.loads(records.encode_release_job(cmd.ReleaseWorkdir("e1", "wd1")))
    assert body == {"type": "release", "id": "e1", "run": "wd1"}
