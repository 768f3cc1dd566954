"""A ForEach's values past the inline threshold: its plan record (every lane's value) is stored
in the task run's folder and the changelog carries a reference, which recovery reads back. On
the local and the S3 storage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.storage import Storage, execution_prefix, offload, parse_uri
from kestream.storage.offload import REF_KEY, StorageUnavailable, is_reference
from kestream.testing import Driver

S = StateType
THRESHOLD = 1024
LANES = 2000  # ~30 kB of plan, past the threshold and past the 8 kB record budget below
BUDGET = 8 * 1024

EACH = """
id: each
namespace: acme.team
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, %d) }}"
    concurrencyLimit: 0
    tasks:
      - id: say
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
"""


def _step(lanes: int, threshold: int) -> tuple[Any, StepResult]:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(EACH % lanes))
    created = ev.ExecutionCreated("x-1", flow.namespace, flow.id, flow.revision)
    executor = Executor(
        flows, inline_tasks=False, max_output_bytes=BUDGET, inline_max_bytes=threshold
    )
    result = executor.step(None, created)
    assert result.state is not None
    return flow, result


def _changelog(st: ExecutionState, result: StepResult) -> dict[str, Any]:
    """The changelog records of the step, decoded as a new owner reads them."""
    out: dict[str, Any] = {}
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged):
            changed = command.changed_task_runs + command.counters_changed
            for key, value in codec.encode_changes(
                st, changed, created=command.created, new_groups=command.planned
            ):
                out[key] = None if value is None else orjson.loads(records.dumps(value))
    return {key: value for key, value in out.items() if value is not None}


def _each_run(st: ExecutionState) -> Any:
    (run,) = [tr for tr in st.task_runs.values() if tr.task.id == "each"]
    return run


def test_a_plan_past_the_threshold_is_stored_and_recovery_reads_it_back(
    storage: Storage,
) -> None:
    flow, result = _step(LANES, THRESHOLD)
    st = result.state
    assert st is not None and st.state.current is S.RUNNING
    each = _each_run(st)
    assert each.state.current is S.RUNNING  # before, over the record budget: FAILED
    assert each.group is not None and is_reference(each.group.stored)
    key = parse_uri(each.group.stored[REF_KEY])
    assert key.startswith(
        execution_prefix("acme.team", "each", "x-1") + f"tasks/each/{each.id}/_plan/"
    )
    changelog = _changelog(st, result)
    plan = changelog[codec.task_run_key(st.id, each.id, codec.PLAN)]
    assert plan == {"stored": each.group.stored}  # the record carries the reference only
    assert max(len(orjson.dumps(value)) for value in changelog.values()) < BUDGET
    assert len(orjson.loads(storage.get(key))["lanes"]) == LANES

    rebuilt = codec.rebuild(st.id, changelog, flow.task_index())
    again = rebuilt.task_runs[each.id].group
    assert again is not None and again.stored == each.group.stored
    assert [[(t.id, v) for t, v in lane] for lane in again.lanes] == [
        [("say", str(n))] for n in range(1, LANES + 1)
    ]
    # recovered, the plan is not written again: the record stays the reference
    assert codec.encode_plan(again) == plan


def test_a_plan_within_the_threshold_or_with_offloading_off_stays_in_its_record(
    storage: Storage,
) -> None:
    _, small = _step(20, THRESHOLD)
    assert small.state is not None
    group = _each_run(small.state).group
    assert group is not None and group.stored is None
    assert "lanes" in codec.encode_plan(group)
    _, off = _step(LANES, 0)  # offloading off: the record limit applies, as before
    assert off.state is not None and _each_run(off.state).state.current is S.FAILED
    assert storage.list(execution_prefix("acme.team", "each", "x-1")) == []


def test_a_missing_stored_plan_is_a_bad_record_and_an_unavailable_storage_is_not(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, result = _step(LANES, THRESHOLD)
    st = result.state
    assert st is not None
    ref = _each_run(st).group.stored
    changelog = _changelog(st, result)

    class Down(Storage):
        def get(self, key: str) -> bytes:
            raise ConnectionError("the endpoint does not answer")

    monkeypatch.setattr(offload, "PLAN_READ_BACKOFF_S", 0.0)
    down = Down(storage._store, "down")
    with pytest.raises(StorageUnavailable, match="does not answer"):
        offload.fetch_plan(ref, st.id, down)
    with pytest.raises(offload.SnapshotError, match="not a stored plan of execution"):
        offload.fetch_plan(ref, "another", storage)
    storage.delete(parse_uri(ref[REF_KEY]))
    with pytest.raises(codec.CodecError, match="missing"):
        codec.rebuild(st.id, changelog, flow.task_index())


def test_a_for_each_over_values_past_the_threshold_runs_to_its_end(storage: Storage) -> None:
    """Through the driver: the values come from a stored output (a reference), the plan is
    stored, every iteration runs with its value."""
    flow = """id: wide
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(1, 1500) | join(',') }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ outputs.make.value | split(',') }}"
    tasks:
      - id: say
        type: io.kestra.plugin.core.debug.Return
        format: "v{{ taskrun.value }}"
  - id: count
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.say | length }} {{ outputs.say['1500'].value }}"
"""
    driver = Driver(inline_tasks=True)
    driver.executor.inline_max_bytes = THRESHOLD
    driver.executor.max_output_bytes = BUDGET
    with driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "wide")
    assert done.state.current is S.SUCCESS
    (count,) = [run for run in done.taskRunList if run.taskId == "count"]
    assert count.outputs == {"value": "1500 v1500"}
    (each,) = [run for run in done.taskRunList if run.taskId == "each"]
    stored = storage.list(execution_prefix("acme.team", "wide", done.id) + "tasks/each/")
    assert [key for key in stored if f"/{each.id}/_plan/" in key]
