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
from kestream.executor.state import ExecutionState
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


@pytest.mark.parametrize("path", FLOWS, ids=[path.stem for path in FLOWS])
def test_rebuilt_state_equals_live_state_after_every_step(path: Path) -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(path.read_text()))
    executor = Executor(flows, inline_tasks=False)
    tasks = flow.task_index()
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
                    state, changed, created=command.created, new_groups=command.planned
                ))  # fmt: skip
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
        rebuilt = codec.rebuild("x1", store, tasks)
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
