"""The changelog codec: after every step, the state rebuilt from the latest records is the state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.executor.state import ExecutionState, Group
from kestream.executor.step import Executor
from kestream.models.flow import parse_flow
from kestream.models.state import StateType

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
CORPUS = SHARED / "conformance" / "flows"
NEXT = SHARED / "conformance-next" / "flows"
FLOWS = [
    CORPUS / "test-current-output.yaml",
    CORPUS / "allow-failure.yaml",
    CORPUS / "each-switch.yaml",
    CORPUS / "errors.yaml",
    CORPUS / "foreach-concurrent-parallel.yaml",
    CORPUS / "sequential-with-local-errors.yaml",
    CORPUS / "retry-success.yaml",
    # finally and errors branches, a Dag's graph counters, afterExecution's group, LoopUntil
    # iterations dropping task runs (their records get tombstones)
    NEXT / "finally-dag.yaml",
    NEXT / "finally-parallel.yaml",
    NEXT / "finally-foreach.yaml",
    NEXT / "dag.yaml",
    NEXT / "after-execution-error.yaml",
    NEXT / "after-execution-flowable.yaml",
    NEXT / "waitfor-multiple-tasks.yaml",
]


def _json(state: ExecutionState) -> dict[str, Any]:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(execution_model(state).model_dump(mode="json"))  # type: ignore[no-any-return]


def _apply(store: dict[str, Any], records: list[tuple[str, dict[str, Any] | None]]) -> None:
    for key, value in records:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = orjson.loads(orjson.dumps(value))  # as it travels: JSON bytes


#: Whole-record budgets: apart from the first step, whole until a few task runs exist (then
#: apart), whole throughout (the runtime's budget).
LAYOUTS = {"apart": 0, "outgrown": 2500, "whole": 1 << 20}


@pytest.mark.parametrize("whole_max", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("path", FLOWS, ids=[path.stem for path in FLOWS])
def test_rebuilt_state_equals_live_state_after_every_step(path: Path, whole_max: int) -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(path.read_text()))
    executor = Executor(flows, inline_tasks=False)
    store: dict[str, Any] = {}
    state: ExecutionState | None = None
    # flows with a ``failed`` input take their failing branch (finally after errors)
    inputs = {"failed": True} if any(i.id == "failed" for i in flow.inputs) else {}
    event: ev.Event = ev.ExecutionCreated(
        "x1", flow.namespace, flow.id, flow.revision, inputs=inputs
    )
    pending: list[ev.Event] = []
    steps = 0
    while True:
        result = executor.step(state, event)
        state = result.state
        assert state is not None
        for command in result.commands:
            if isinstance(command, cmd.ExecutionChanged):
                changed = command.changed_task_runs + command.counters_changed
                _apply(store, codec.encode_changes(
                    state, changed, created=command.created, new_groups=command.planned,
                    whole_max=whole_max,
                ))  # fmt: skip
                keys = {k for k in store if k != codec.header_key("x1", codec.ENDED)}
                whole = keys == {codec.header_key("x1", codec.DYNAMIC)}
                assert whole is not state.records_apart
            elif isinstance(command, cmd.RunTask):
                failing = "ko" in str(command.props) or command.task.type.endswith(".Fail")
                ok = not failing or command.attempt >= 4
                pending.append(
                    ev.WorkerResult(
                        "x1",
                        command.task_run_id,
                        command.attempt,
                        StateType.SUCCESS if ok else StateType.FAILED,
                        {"value": str(command.props)},
                        None if ok else "boom",
                    )
                )
            elif isinstance(command, cmd.SetTimer):
                pending.append(ev.TimerFired("x1", command.timer_id))
        rebuilt = codec.rebuild("x1", store, flow)
        assert _json(rebuilt) == _json(state), f"after step {steps}"
        assert rebuilt.outputs == state.outputs
        assert rebuilt.timers.keys() == state.timers.keys()
        state = rebuilt  # carry on from the rebuilt state: it must be just as good
        steps += 1
        if not pending:
            break
        event = pending.pop(0)
    assert state.state.current.is_terminal
    _apply(store, codec.tombstones(state))
    assert store == {}


def test_tagged_values_round_trip() -> None:
    from datetime import UTC, date, datetime, time, timedelta

    value = {
        "when": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "day": date(2024, 1, 2),
        "at": time(3, 4),
        "wait": timedelta(seconds=1.5),
        "list": [1, "a", None, {"nested": date(2020, 1, 1)}],
    }
    encoded = orjson.loads(orjson.dumps(codec.encode_value(value)))
    assert codec.decode_value(encoded) == value


TWO_TASKS = """
id: two
namespace: codec.test
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: second
    type: io.kestra.plugin.core.debug.Return
    format: two
"""


def _started(source: str = TWO_TASKS) -> tuple[Any, Executor, ExecutionState, dict[str, Any]]:
    """A flow, its executor, and an execution of it after its first step, with its records."""
    flows = FlowRegistry()
    flow = flows.put(parse_flow(source))
    executor = Executor(flows, inline_tasks=False)
    result = executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, flow.revision))
    assert result.state is not None
    store: dict[str, Any] = {}
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged):
            _apply(store, codec.encode_changes(
                result.state, command.changed_task_runs, created=command.created,
                new_groups=command.planned,
            ))  # fmt: skip
    return flow, executor, result.state, store


def test_the_executions_own_lanes_have_no_record_and_come_back_from_the_flow() -> None:
    flow, _, state, store = _started()
    assert codec.header_key("x1", codec.PLAN) not in store
    rebuilt = codec.rebuild("x1", store, flow)
    assert rebuilt.root is not None and state.root is not None
    assert rebuilt.root.lanes == state.root.lanes
    assert not rebuilt.root_plan_logged
    assert codec.header_key("x1", codec.PLAN) not in dict(codec.tombstones(rebuilt))


def test_a_root_plan_record_of_an_older_version_is_read_and_cleared_at_the_end() -> None:
    flow, executor, _, store = _started()
    root_plan = codec.header_key("x1", codec.PLAN)
    store[root_plan] = {"lanes": [[["first", None], ["second", None]]]}
    state = codec.rebuild("x1", store, flow)
    assert state.root_plan_logged
    for run in ("first", "second"):
        (tr,) = [t for t in state.task_runs.values() if t.task.id == run]
        result = executor.step(state, ev.WorkerResult("x1", tr.id, 1, StateType.SUCCESS, {}))
        assert result.state is not None
        state = result.state
        for command in result.commands:
            if isinstance(command, cmd.ExecutionChanged) and not command.terminal:
                _apply(store, codec.encode_changes(
                    state, command.changed_task_runs, created=False, new_groups=command.planned
                ))  # fmt: skip
        if run == "first":  # the steps that go on keep the record, and it is read again
            assert root_plan in store
            state = codec.rebuild("x1", store, flow)
    assert state.state.current is StateType.SUCCESS
    _apply(store, codec.tombstones(state))
    assert store == {}


def test_a_revision_whose_tasks_moved_under_the_same_number_is_not_resumed() -> None:
    _, _, _, store = _started()
    swapped = TWO_TASKS.replace("first", "third").replace("second", "first")
    moved = parse_flow(swapped.replace("third", "second")).model_copy(update={"revision": 1})
    with pytest.raises(codec.CodecError, match="not where revision 1"):
        codec.rebuild("x1", store, moved)


def _step_records(state: ExecutionState, result: Any, whole_max: int) -> list[Any]:
    out: list[Any] = []
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged) and not command.terminal:
            out += codec.encode_step(
                state, command.changed_task_runs + command.counters_changed,
                created=command.created, new_groups=command.planned, whole_max=whole_max,
            )  # fmt: skip
    return out


def test_a_small_execution_is_one_record_per_step_until_it_outgrows_it() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(TWO_TASKS))
    executor = Executor(flows, inline_tasks=False)
    dynamic = codec.header_key("x1", codec.DYNAMIC)
    created = executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1))
    state = created.state
    assert state is not None
    ((key, value, data),) = _step_records(state, created, 1 << 20)
    assert key == dynamic and not state.records_apart
    assert data == orjson.dumps(value)  # measured once, and written as it was measured
    store: dict[str, Any] = {}
    _apply(store, [(key, value)])
    assert codec.header_of("x1", store) == codec.encode_header(state)
    assert _json(codec.rebuild("x1", store, flow)) == _json(state)

    # The next step's whole record would pass the budget: every key is written apart, the
    # dynamic record last (the step's commit mark), and the execution stays apart.
    (first,) = state.task_runs.values()
    result = executor.step(state, ev.WorkerResult("x1", first.id, 1, StateType.SUCCESS, {}))
    assert result.state is not None
    state = result.state
    step = _step_records(state, result, len(data) + 1)
    assert state.records_apart
    assert [k for k, _, _ in step] == [
        codec.header_key("x1"),
        *(codec.task_run_key("x1", r) for r in state.task_runs),
        dynamic,
    ]
    assert all(d is None for _, _, d in step)
    _apply(store, [(k, v) for k, v, _ in step])
    rebuilt = codec.rebuild("x1", store, flow)
    assert rebuilt.records_apart and _json(rebuilt) == _json(state)
    _apply(store, codec.tombstones(rebuilt))
    assert store == {}


def test_an_execution_with_a_stored_plan_is_written_apart() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(TWO_TASKS))
    created = Executor(flows, inline_tasks=False).step(
        None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1)
    )
    state = created.state
    assert state is not None and not state.records_apart
    (tr,) = state.task_runs.values()
    ref = {"@ref": "kestra:///codec/test/x1/_plan/p.json", "size": 123}
    tr.group = Group([], 1, [], stored=ref)
    step = codec.encode_step(state, [], created=False, new_groups=set(), whole_max=1 << 20)
    records = {k: v for k, v, _ in step}
    assert state.records_apart
    assert records[codec.task_run_key("x1", tr.id, codec.PLAN)] == {codec.STORED_PLAN: ref}
    assert codec.stored_plans("x1", records) == [ref]
