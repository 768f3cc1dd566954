"""A WorkingDirectory's own ``outputFiles`` and ``cache``, through the driver, on both storage
backends: files collected after the last child (not after a failure), a cache restored into the
next execution's directory until its ttl has passed."""

from __future__ import annotations

from typing import Any

from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.storage import Storage, parse_uri
from kestream.testing import Driver

S = StateType
HEAD = "id: wd\nnamespace: company.team\ntasks:\n"
OUTPUTS = (
    HEAD
    + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles:
      - "*.txt"
      - sub/data.csv
    tasks:
      - id: write
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          a.txt: first
          b.txt: second
          c.log: not collected
          sub/data.csv: "x,y"
      - id: check
        type: io.kestra.plugin.core.execution.Fail
        condition: "{{ inputs.fail ?? false }}"
"""
)


def cached(ttl: str) -> str:
    return (
        HEAD
        + f"""  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      ttl: {ttl}
      patterns:
        - "*.txt"
    tasks:
      - id: exists
        type: io.kestra.plugin.core.storage.LocalFiles
        outputs:
          - "*.txt"
      - id: write
        type: io.kestra.plugin.core.storage.LocalFiles
        inputs:
          hello.txt: "{{{{ execution.id }}}}"
          other.bin: not cached
"""
    )


def _runs(execution: Execution) -> dict[str, Any]:
    return {run.taskId: run for run in execution.taskRunList}


def test_output_files_are_collected_after_the_last_child(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(OUTPUTS)
        execution = driver.start("company.team", "wd")
    assert execution.state.current is S.SUCCESS
    assert len(execution.taskRunList) == 3  # no task run of its own for the files
    workdir = _runs(execution)["workdir"]
    files = workdir.outputs["outputFiles"]
    assert sorted(files) == ["a.txt", "b.txt", "sub/data.csv"]
    assert storage.get(parse_uri(files["a.txt"])) == b"first"
    assert storage.get(parse_uri(files["sub/data.csv"])) == b"x,y"
    assert f"/tasks/workdir/{workdir.id}/" in files["b.txt"]


def test_nothing_is_collected_when_a_child_failed(storage: Storage) -> None:
    flow = OUTPUTS.replace("{{ inputs.fail ?? false }}", "true")
    with Driver() as driver:
        driver.deploy(flow)
        execution = driver.start("company.team", "wd")
    assert execution.state.current is S.FAILED
    assert not _runs(execution)["workdir"].outputs


def test_the_cache_is_restored_into_the_next_execution(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(cached("PT5M"))
        first = driver.start("company.team", "wd")
        second = driver.start("company.team", "wd")
    assert first.state.current is S.SUCCESS
    assert _runs(first)["exists"].outputs == {"uris": {}}
    assert len(first.taskRunList) == 3
    restored = _runs(second)["exists"].outputs["uris"]
    assert list(restored) == ["hello.txt"]  # other.bin does not match the patterns
    assert storage.get(parse_uri(restored["hello.txt"])) == first.id.encode()


def test_an_expired_cache_is_not_restored(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(cached("PT0S"))
        driver.start("company.team", "wd")
        second = driver.start("company.team", "wd")
    assert second.state.current is S.SUCCESS
    assert _runs(second)["exists"].outputs == {"uris": {}}
