"""The records no outputs rule covers: a flowable's plan, and an execution's header (inputs,
trigger and labels, repeated in every update). Both are refused where they appear, with the one
wording of a size refusal, so that no record the executor writes can pass the limit and be lost
(a lost plan record made its execution unrecoverable). Sizes are measured with the encoder the
processors write with, never estimated."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.codec import encode_value
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.sizes import (
    encoded_size,
    header_budget,
    human_size,
    outputs_budget,
    over_limit,
    record_json,
    too_large,
)
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult
from kestream.models.flow import Flow, parse_flow
from kestream.models.state import StateType
from kestream.runtime import command_router, execution_updates, records, worker_service
from kestream.runtime.record_limit import RecordLimit, RecordTooLarge
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

DEFAULT = RecordLimit.of(Settings.model_construct())

#: Every refusal for size reads the same way, whoever writes it.
WORDING = re.compile(
    r"^.+ (is|are) [\d.,]+ (bytes|kB|MB|GB), over the [\d.,]+ (bytes|kB|MB|GB) record limit"
    r"( for .+)?$"
)

_EACH = """
id: each
namespace: t
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, %d) }}"
    tasks:
      - id: say
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value }}"
errors:
  - id: handler
    type: io.kestra.plugin.core.log.Log
    message: "handled"
"""


def _start(flow_yaml: str, budget: int | None, **inputs: Any) -> tuple[Flow, StepResult]:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(flow_yaml))
    created = ev.ExecutionCreated("x", flow.namespace, flow.id, flow.revision, inputs=inputs)
    # the record limit itself: offloading off (a plan past the threshold is stored instead)
    result = Executor(flows, max_output_bytes=budget, inline_max_bytes=0).step(None, created)
    assert result.state is not None
    return flow, result


def _changelog(st: ExecutionState, result: StepResult) -> dict[str, bytes | None]:
    """The changelog records the step's commands make, by key, as the executor writes them."""
    out: dict[str, bytes | None] = {}
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged):
            changed = command.changed_task_runs + command.counters_changed
            for key, value in codec.encode_changes(
                st, changed, created=command.created, new_groups=command.planned
            ):
                out[key] = records.dumps(value) if value is not None else None
    return out


def _errors(result: StepResult) -> list[str]:
    return [
        line.message
        for command in result.commands
        if isinstance(command, cmd.EmitLogs)
        for line in command.lines
        if line.level == "ERROR"
    ]


# -- plans --------------------------------------------------------------------------------------


def test_a_plan_no_record_can_hold_fails_its_flowable_and_the_execution_stays_recoverable() -> None:
    budget = DEFAULT.output_bytes
    flow, result = _start(_EACH % 100_000, budget)  # Pebble's range is inclusive: 100000 lanes
    st = result.state
    assert st is not None
    states = {tr.task.id: tr.state.current for tr in st.task_runs.values()}
    assert states == {"each": StateType.FAILED, "handler": StateType.SUCCESS}
    assert st.state.current is StateType.FAILED
    plan = {"lanes": [[["say", str(i)]] for i in range(1, 100_001)]}  # the changelog's form
    size = len(records.dumps(plan))
    print(f"plan of 100000 lanes: {size} bytes; outputs budget {budget} bytes")
    assert size > DEFAULT.value_bytes  # no record could hold it, not even alone
    assert _errors(result) == [
        f"the 100000 lanes planned by task 'each' are {human_size(size)}, over the "
        f"{human_size(budget)} record limit"
    ]

    changelog = _changelog(st, result)
    assert not [key for key in changelog if key.endswith(codec.PLAN) and key != st.id + codec.PLAN]
    sizes = [len(value) for value in changelog.values() if value is not None]
    assert max(sizes) <= DEFAULT.value_bytes
    updates = execution_updates.update_records(
        st, list(st.task_runs), terminal=True, full=True, max_bytes=DEFAULT.value_bytes
    )
    assert all(len(value) <= DEFAULT.value_bytes for value in updates)
    # What a new owner of the partition does with those records: the state comes back whole.
    latest = {key: orjson.loads(value) for key, value in changelog.items() if value is not None}
    rebuilt = codec.rebuild(st.id, latest, flow)
    assert {tr.task.id: tr.state.current for tr in rebuilt.task_runs.values()} == states


def test_a_plan_within_the_budget_runs_as_before() -> None:
    _, result = _start(_EACH % 2_000, 64 * 1024)  # ~32 kB of plan
    st = result.state
    assert st is not None and st.state.current is StateType.SUCCESS
    assert sum(tr.task.id == "say" for tr in st.task_runs.values()) == 2_000
    assert _errors(result) == []
    plan = _changelog(st, result)[codec.task_run_key(st.id, _run_of(st, "each"), codec.PLAN)]
    assert plan is not None and 30_000 < len(plan) <= 64 * 1024


def test_a_plan_over_a_small_budget_is_refused_by_its_exact_size() -> None:
    _, fits = _start(_EACH % 2_000, 64 * 1024)
    assert fits.state is not None
    exact = fits.state.task_runs[_run_of(fits.state, "each")]
    assert exact.group is not None
    size = len(records.dumps(codec.encode_plan(exact.group)))
    _, at = _start(_EACH % 2_000, size)
    _, under = _start(_EACH % 2_000, size - 1)
    assert at.state is not None and at.state.state.current is StateType.SUCCESS
    assert under.state is not None and under.state.state.current is StateType.FAILED
    assert _errors(under) == [
        over_limit("the 2000 lanes planned by task 'each'", size, size - 1, plural=True)
    ]


def _run_of(st: ExecutionState, task_id: str) -> str:
    return next(run_id for run_id, tr in st.task_runs.items() if tr.task.id == task_id)


# -- headers ------------------------------------------------------------------------------------

_INPUTS = """
id: big-inputs
namespace: t
inputs:
  - id: blob
    type: STRING
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, 20) }}"
    concurrencyLimit: 0
    tasks:
      - id: out
        type: io.kestra.plugin.core.output.OutputValues
        values:
          text: "{{ taskrun.value }}"
"""


def _created(blob: str) -> ev.ExecutionCreated:
    return ev.ExecutionCreated("x", "t", "big-inputs", 1, inputs={"blob": blob})


def _blob_for(created_bytes: int) -> str:
    """A blob that makes the creation record exactly ``created_bytes`` long."""
    empty = len(records.encode_event(_created("")))
    return "b" * (created_bytes - empty)


def test_inputs_that_leave_their_updates_room_are_accepted_and_every_record_fits() -> None:
    limit = RecordLimit(64 * 1024, "KESTREAM_MAX_RECORD_BYTES")
    blob = _blob_for(limit.header_bytes)
    value = records.encode_event(_created(blob))
    assert len(value) == limit.header_bytes
    assert limit.check_header(value, "the execution's record") == value
    _, result = _start(_INPUTS, limit.output_bytes, blob=blob)
    st = result.state
    assert st is not None and st.state.current is StateType.SUCCESS
    for terminal in (False, True):
        updates = execution_updates.update_records(
            st, list(st.task_runs), terminal=terminal, full=terminal, max_bytes=limit.value_bytes
        )
        assert all(len(update) <= limit.value_bytes for update in updates)
        assert not any("outputsLeftOut" in orjson.loads(update) for update in updates)
    changelog = _changelog(st, result)
    assert max(len(v) for v in changelog.values() if v is not None) <= limit.value_bytes


def test_inputs_that_would_leave_no_room_for_task_runs_are_refused_at_creation() -> None:
    limit = RecordLimit(64 * 1024, "KESTREAM_MAX_RECORD_BYTES")
    value = records.encode_event(_created(_blob_for(limit.header_bytes + 1)))
    assert limit.fits(value)  # the record itself fits: the old check let it through
    with pytest.raises(RecordTooLarge) as refused:
        limit.check_header(value, "the execution's record (inputs, trigger and labels)")
    assert str(refused.value) == (
        "the execution's record (inputs, trigger and labels) is 48,385 bytes, over the "
        "48,384 bytes record limit for a new execution"
    )
    assert (refused.value.size, refused.value.limit) == (len(value), limit.header_bytes)
    # Why: such an execution's updates (header and one task run) pass the limit.
    near = _blob_for(limit.value_bytes - 100)
    _, result = _start(_INPUTS, limit.output_bytes, blob=near)
    assert result.state is not None
    updates = execution_updates.update_records(
        result.state, list(result.state.task_runs), terminal=True, full=True,
        max_bytes=limit.value_bytes,
    )  # fmt: skip
    assert max(map(len, updates)) > limit.value_bytes


def test_the_header_budget_is_the_outputs_budget() -> None:
    for value_bytes in (4096, 64 * 1024, DEFAULT.value_bytes):
        assert header_budget(value_bytes) == outputs_budget(value_bytes)
    assert DEFAULT.header_bytes == DEFAULT.output_bytes < DEFAULT.value_bytes


# -- one encoder, one wording ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, None, True], "é": '\x01"\\😀'},
        {"$dt": "looks like a tag"},
        {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
        ["x" * 10_000],
    ],
)
def test_sizes_are_measured_with_the_encoder_records_are_written_with(value: Any) -> None:
    assert records.dumps is record_json
    assert encoded_size(value) == len(records.dumps(encode_value(value)))


def test_every_size_refusal_uses_the_one_wording() -> None:
    limit = RecordLimit(64 * 1024, "KESTREAM_MAX_RECORD_BYTES")
    say = parse_flow(_EACH % 2).task_index()["say"]
    assert isinstance(say, RunnableTask)
    job = cmd.RunTask("x", "r", 1, "t", "f", 1, say, {}, None)
    parent = ev.SubflowLink("x", "r", 1)
    created = ev.ExecutionCreated("c", "t", "child", 1, parent=parent)
    result = ev.WorkerResult("x", "r", 1, StateType.SUCCESS, {"v": 1})
    messages = [
        too_large("outputs of task 'a'", {"v": "x" * 100}, 50),
        str(RecordTooLarge("the flow's record", 70_000, 65_000)),
        command_router._job_refused(job, 70_000, limit.value_bytes).error,
        command_router._child_refused(created, parent, 70_000, limit).error,
        worker_service._result_refused(result, "a", 70_000, limit.value_bytes).error,
        over_limit("the record", 1, 0),
    ]
    for message in messages:
        assert message is not None and WORDING.match(message), message
    assert messages[2] == (
        "the rendered properties of task 'say' are 70.0 kB, over the 64.5 kB record limit"
    )
    assert messages[3] == (
        "the subflow execution of t.child is 70.0 kB, over the 48.4 kB record limit for a new "
        "execution"
    )


# -- cutting to fit -----------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["x", "é", '"', "\x01", "😀"])
def test_largest_fit_keeps_about_as_much_as_fits(unit: str) -> None:
    text = (unit * 50_000).encode()
    max_bytes = 10_000
    calls: list[int] = []

    def render(keep: int) -> bytes:
        calls.append(keep)
        return records.dumps({"k": "v", "text": text[:keep].decode("utf-8", "ignore")})

    fitted = records.largest_fit(render, len(text), max_bytes)
    width = len(records.dumps(unit)) - 2
    print(f"{unit!r}: {len(fitted)} of {max_bytes} bytes in {len(calls)} encodings")
    assert max_bytes - 2 * width <= len(fitted) <= max_bytes
    assert len(calls) <= 6
    assert records.largest_fit(render, len(text), 5) == render(0)  # nothing fits: the frame
