"""ForEachItem through the driver, on both storage backends: batches cut as the batch property
says, one subflow per batch reading its own rows, the counts by state, the merged outputs file,
failures passed on or not, children without waiting, kills reaching every child, restarts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.models.validation import FlowValidationError
from kestream.storage import Storage, parse_uri
from kestream.testing import Driver

S = StateType
CHILD = """id: child
namespace: company.team
inputs:
  - id: items
    type: STRING
  - id: number
    type: INT
tasks:
  - id: rows
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(inputs.items) | trim | replace({'\\n': ','}) }}"
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{ outputs.rows.value contains 'bad' }}"
outputs:
  - id: rows
    type: STRING
    value: "{{ outputs.rows.value }}"
"""
SLOW_CHILD = """id: slow
namespace: company.team
inputs:
  - id: items
    type: STRING
  - id: number
    type: INT
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def parent(lines: list[str], each: str) -> str:
    content = "\\n".join(lines) + "\\n"
    return f"""id: parent
namespace: company.team
labels:
  team: data
tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: "{content}"
    extension: .txt
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ outputs.write.uri }}}}"
    namespace: company.team
    inputs:
      items: "{{{{ taskrun.items }}}}"
      number: "{{{{ taskrun.iteration }}}}"
{each}"""


def _run(lines: list[str], each: str) -> tuple[Execution, dict[str, Any], list[Execution]]:
    with Driver() as driver:
        driver.deploy(CHILD)
        flow = driver.deploy(parent(lines, each))
        execution = driver.start(flow.namespace, flow.id)
        children = driver.children(execution.id)
    return execution, {run.taskId: run for run in execution.taskRunList}, children


def _rows(children: list[Execution]) -> list[str]:
    return sorted(run.outputs["value"] for c in children for run in c.taskRunList if run.outputs)


def test_rows_batches_and_the_merged_outputs(storage: Storage) -> None:
    lines = ["a", "b", "c", "d", "e"]
    each = "    flowId: child\n    batch:\n      rows: 2\n"
    execution, runs, children = _run(lines, each)
    assert execution.state.current is S.SUCCESS
    assert [run.taskId for run in execution.taskRunList] == [
        "write", "each", "each_split", "each_items", "each_merge",
    ]  # fmt: skip
    assert runs["each_items"].outputs == {
        "numberOfBatches": 3,
        "iterations": {"CREATED": 0, "RUNNING": 0, "SUCCESS": 3},
        "outputs": [{"rows": "a,b"}, {"rows": "c,d"}, {"rows": "e"}],
    }
    assert _rows(children) == ["a,b", "c,d", "e"]
    assert sorted(child.inputs["number"] for child in children) == [1, 2, 3]
    merged = storage.get(parse_uri(runs["each_merge"].outputs["subflowOutputs"]))
    assert sorted(orjson.loads(line)["rows"] for line in merged.splitlines()) == [
        "a,b", "c,d", "e",
    ]  # fmt: skip
    for child in children:  # each child reads a file of the split task's folder
        assert "/tasks/each-split/" in child.inputs["items"]
        assert child.label_map()["system.correlationId"] == execution.id


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ("partitions: 2", ["a,c,e", "b,d"]),
        ("bytes: 4", ["a,b", "c,d", "e"]),
        ("rows: 10", ["a,b,c,d,e"]),
    ],
)
def test_bytes_and_partitions(storage: Storage, batch: str, expected: list[str]) -> None:
    each = f"    flowId: child\n    batch:\n      {batch}\n"
    execution, runs, children = _run(["a", "b", "c", "d", "e"], each)
    assert execution.state.current is S.SUCCESS
    assert runs["each_items"].outputs["numberOfBatches"] == len(expected)
    assert _rows(children) == expected


def test_one_row_per_batch_by_default(storage: Storage) -> None:
    _, runs, children = _run(["a", "b", "c"], "    flowId: child\n")
    assert runs["each_items"].outputs["numberOfBatches"] == 3
    assert _rows(children) == ["a", "b", "c"]


def test_failed_children_fail_the_task_only_with_transmit_failed(storage: Storage) -> None:
    lines = ["ok1", "bad", "ok2"]
    execution, runs, _ = _run(lines, "    flowId: child\n")
    assert execution.state.current is S.FAILED
    assert runs["each_items"].outputs["iterations"] == {
        "CREATED": 0, "RUNNING": 0, "SUCCESS": 2, "FAILED": 1,
    }  # fmt: skip
    assert "each_merge" not in runs

    execution, runs, _ = _run(lines, "    flowId: child\n    transmitFailed: false\n")
    assert execution.state.current is S.SUCCESS
    assert runs["each_items"].state.current is S.SUCCESS
    assert runs["each_merge"].state.current is S.SUCCESS


def test_without_wait_the_children_are_started_and_not_waited_for(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(SLOW_CHILD)
        flow = driver.deploy(parent(["a", "b"], "    flowId: slow\n    wait: false\n"))
        execution = driver.start(flow.namespace, flow.id)
        children = driver.children(execution.id)
    assert execution.state.current is S.SUCCESS
    assert [run.taskId for run in execution.taskRunList][-1] == "each_items"  # no merge
    assert execution.taskRunList[-1].outputs == {
        "numberOfBatches": 2,
        "iterations": {"CREATED": 0, "RUNNING": 0, "SUCCESS": 2},
    }
    assert [child.state.current for child in children] == [S.PAUSED, S.PAUSED]


def test_a_kill_reaches_every_child(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(SLOW_CHILD)
        flow = driver.deploy(parent(["a", "b", "c"], "    flowId: slow\n"))
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.RUNNING
        assert len(driver.children(execution.id)) == 3
        killed = driver.kill(execution.id)
        children = driver.children(execution.id)
    assert killed.state.current is S.KILLED
    assert {child.state.current for child in children} == {S.KILLED}


def test_a_restart_runs_every_batch_again(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(CHILD)
        flow = driver.deploy(parent(["ok", "bad"], "    flowId: child\n"))
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.FAILED
        restarted = driver.restart(execution.id)
        children = driver.children(execution.id)
    assert restarted.state.current is S.FAILED
    items = next(run for run in restarted.taskRunList if run.taskId == "each_items")
    assert len(items.attempts or []) == 2
    assert items.outputs["iterations"] == {"CREATED": 0, "RUNNING": 0, "SUCCESS": 1, "FAILED": 1}
    assert len(children) == 4  # two per attempt, under new ids


def test_labels_are_passed_on_and_inherited(storage: Storage) -> None:
    each = "    flowId: child\n    inheritLabels: true\n    labels:\n      batch: yes\n"
    _, _, children = _run(["a"], each)
    (child,) = children
    assert child.label_map()["team"] == "data"
    assert child.label_map()["batch"] == "yes"


def test_two_ways_of_batching_are_refused_at_deploy() -> None:
    with Driver() as driver, pytest.raises(FlowValidationError, match="only one of rows, bytes"):
        driver.deploy(
            parent(["a"], "    flowId: child\n    batch:\n      rows: 1\n      bytes: 10\n")
        )


def test_inside_a_loop_each_iteration_splits_and_merges_its_own_file(storage: Storage) -> None:
    flow = """id: looped
namespace: company.team
tasks:
  - id: loop
    type: io.kestra.plugin.core.flow.ForEach
    values: ["x", "y"]
    tasks:
      - id: write
        type: io.kestra.plugin.core.storage.Write
        content: "{{ taskrun.value }}1\\n{{ taskrun.value }}2\\n"
      - id: each
        type: io.kestra.plugin.core.flow.ForEachItem
        items: "{{ outputs.write[taskrun.value].uri }}"
        namespace: company.team
        flowId: child
        inputs:
          items: "{{ taskrun.items }}"
          number: "{{ taskrun.iteration }}"
"""
    with Driver() as driver:
        driver.deploy(CHILD)
        deployed = driver.deploy(flow)
        execution = driver.start(deployed.namespace, deployed.id)
    assert execution.state.current is S.SUCCESS
    merged = [
        sorted(orjson.loads(line)["rows"] for line in storage.get(parse_uri(uri)).splitlines())
        for uri in (
            r.outputs["subflowOutputs"] for r in execution.taskRunList if r.taskId == "each_merge"
        )
    ]
    assert merged == [["x1", "x2"], ["y1", "y2"]]


def test_outputs_no_record_could_hold_fail_the_task_instead(storage: Storage) -> None:
    with Driver() as driver:
        driver.executor.max_output_bytes = 1000  # as a broker's record limit would
        driver.deploy(CHILD)
        lines = [f"{n:03d}" + "x" * 100 for n in range(12)]
        each = "    flowId: child\n    batch:\n      rows: 3\n"
        flow = driver.deploy(parent(lines, each))
        execution = driver.start(flow.namespace, flow.id)
        logs = [line.message for line in driver.logs(execution.id)]
    items = next(run for run in execution.taskRunList if run.taskId == "each_items")
    assert execution.state.current is S.FAILED
    assert items.state.current is S.FAILED
    assert any("outputs of task 'each_items'" in line for line in logs), logs
    assert len(orjson.dumps(items.outputs)) <= 1000
    assert 0 < len(items.outputs["outputs"]) < 4  # the ones that fitted
