"""The execution JSON built directly (``execution_json``, ``task_run_json``: what the execution
updates carry) is the JSON of the pydantic models (``execution_model``) after every step of the
conformance flows, and on the values and shapes the models coerce or serialise specially."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.instants import edge_instant, iso_instant
from kestream.executor.snapshot import (
    execution_json,
    execution_model,
    task_run_json,
    task_run_model,
)
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor
from kestream.models.execution import format_instant
from kestream.models.flow import parse_flow
from kestream.models.state import StateType

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
FLOWS = sorted((SHARED / "conformance" / "flows").glob("*.yaml"))

#: What a worker answers, with the values pydantic's JSON mode writes in its own way.
OUTPUTS: dict[str, Any] = {
    "when": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "local": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    "day": date(2024, 1, 2),
    "wait": timedelta(seconds=90.5),
    "amount": Decimal("1.10"),
    "tuple": (1, "a"),
    "nested": [{"x": None, "y": 1.5}],
}


def _drop_running_durations(node: Any) -> Any:
    """A state not ended has a duration up to now: it differs between two dumps."""
    if isinstance(node, dict):
        running = "endDate" in node and node["endDate"] is None
        return {
            k: _drop_running_durations(v)
            for k, v in node.items()
            if not (running and k == "duration")
        }
    if isinstance(node, list):
        return [_drop_running_durations(v) for v in node]
    return node


def _assert_same(st: ExecutionState, where: str) -> None:
    for with_task_runs in (True, False):
        direct = execution_json(st, with_task_runs=with_task_runs)
        dumped = execution_model(st, with_task_runs=with_task_runs).model_dump(
            mode="json", by_alias=True
        )
        assert list(direct) == list(dumped), where  # the same fields, in the same order
        assert _drop_running_durations(direct) == _drop_running_durations(dumped), where
    for tr in st.task_runs.values():
        direct_run = task_run_json(st, tr)
        dumped_run = task_run_model(st, tr).model_dump(mode="json", by_alias=True)
        assert _drop_running_durations(direct_run) == _drop_running_durations(dumped_run), where


@pytest.mark.parametrize("path", FLOWS, ids=[path.stem for path in FLOWS])
def test_direct_json_equals_model_json_after_every_step(path: Path) -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(path.read_text()))
    executor = Executor(flows, inline_tasks=False)
    created = ev.ExecutionCreated(
        "x1",
        flow.namespace,
        flow.id,
        flow.revision,
        labels={"team": "a"},
        trigger={"id": "hook", "type": "io.kestra.Webhook", "variables": {"at": OUTPUTS["when"]}},
        schedule_date=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        parent_id="p0",
    )
    pending: list[ev.Event] = [created]
    state: ExecutionState | None = None
    steps = 0
    while pending and steps < 200:
        result = executor.step(state, pending.pop(0))
        state = result.state
        assert state is not None
        _assert_same(state, f"{path.stem} after step {steps}")
        for command in result.commands:
            if isinstance(command, cmd.RunTask):
                pending.append(
                    ev.WorkerResult(
                        "x1", command.task_run_id, command.attempt, StateType.SUCCESS, OUTPUTS
                    )
                )
            elif isinstance(command, cmd.SetTimer):
                pending.append(ev.TimerFired("x1", command.timer_id))
        steps += 1
    assert steps > 0


def test_a_trigger_of_another_shape_goes_through_the_model() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(FLOWS[0].read_text()))
    result = Executor(flows, inline_tasks=False).step(
        None, ev.ExecutionCreated("x1", flow.namespace, flow.id, flow.revision)
    )
    st = result.state
    assert st is not None
    st.trigger = {"id": "t", "type": "x", "extra": 1}  # extra keys: the model drops them
    _assert_same(st, "extra trigger keys")
    st.trigger = {"id": 1, "type": "x"}  # the model refuses it; so does the direct JSON
    with pytest.raises(ValueError):
        execution_json(st)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),  # truncated, never rounded up
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 1000, tzinfo=timezone(timedelta(hours=-5))),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_remembered_instants_are_the_formatted_ones(moment: datetime) -> None:
    for _ in range(2):  # made, then remembered
        assert edge_instant(moment) == format_instant(moment)
        assert iso_instant(moment) == moment.isoformat()


def test_an_equal_instant_in_another_zone_keeps_its_own_offset() -> None:
    utc = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    plus_two = utc.astimezone(timezone(timedelta(hours=2)))
    assert utc == plus_two
    assert iso_instant(utc) == "2024-01-02T03:04:05+00:00"
    assert iso_instant(plus_two) == "2024-01-02T05:04:05+02:00"
    assert edge_instant(plus_two) == edge_instant(utc) == "2024-01-02T03:04:05.000Z"
    naive = datetime(2024, 1, 2, 3, 4, 5)
    assert iso_instant(naive) == naive.isoformat()
    assert edge_instant(naive) == format_instant(naive)
