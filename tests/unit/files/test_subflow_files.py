"""A subflow reads the files its parent hands it (FILE inputs), in templates and in tasks, and
nothing of a sibling execution."""

from __future__ import annotations

import orjson
import pytest

from kestream.executor import commands as cmd
from kestream.models.state import StateType
from kestream.runtime.records import decode_job, encode_job
from kestream.storage import Storage
from kestream.tasks.storage import Size
from kestream.testing import Driver

S = StateType
CHILD = """id: child
namespace: company.team
inputs:
  - id: data
    type: FILE
tasks:
  - id: size
    type: io.kestra.plugin.core.storage.Size
    uri: "{{ inputs.data }}"
  - id: text
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(inputs.data) }}"
"""
PARENT = """id: parent
namespace: company.team
tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: from the parent
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: company.team
    flowId: child
    inputs:
      data: "{{ outputs.write.uri }}"
"""


def test_a_subflow_reads_its_parents_file(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        parent = driver.start("company.team", "parent")
        (child,) = driver.children(parent.id)
    assert parent.state.current is S.SUCCESS
    runs = {run.taskId: run for run in child.taskRunList}
    assert runs["size"].outputs == {"size": len("from the parent")}
    assert runs["text"].outputs == {"value": "from the parent"}


def test_an_execution_cannot_read_a_siblings_file(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        parent = driver.start("company.team", "parent")
        (child,) = driver.children(parent.id)
        uri = (child.inputs or {})["data"]
        other = driver.start("company.team", "child", {"data": uri})
    assert other.state.current is S.FAILED
    assert {run.taskId: run.state.current for run in other.taskRunList}["size"] is S.FAILED


@pytest.mark.parametrize("source", [("ns", "flow", "E0"), None])
def test_the_source_travels_in_the_worker_job(source: tuple[str, str, str] | None) -> None:
    task = Size.model_validate({"id": "s", "type": Size.type_name, "uri": "x"})
    job = cmd.RunTask("E1", "R1", 1, "ns", "flow", 1, task, {"uri": "x"}, source=source)
    decoded = decode_job(orjson.loads(encode_job(job)), task)
    assert decoded.source == source
