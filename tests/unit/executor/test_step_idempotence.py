"""The step applies each event once: redeliveries, stale results, repeated timers change nothing."""

from __future__ import annotations

import copy

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.executor.step import Executor, UnknownFlow
from kestream.models.flow import parse_flow
from kestream.models.state import IllegalTransition, StateType

S = StateType

TWO_LOGS = """
id: two
namespace: test.step
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
    message: "first {{ execution.id }}"
  - id: b
    type: io.kestra.plugin.core.debug.Return
    format: "second"
"""


def _frozen(state: object) -> dict[str, object]:
    """The execution JSON without durations (a running state's duration grows with the clock)."""

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(execution_model(state).model_dump())  # type: ignore[arg-type,return-value]


def _executor(yaml_text: str = TWO_LOGS) -> tuple[Executor, str, str]:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(yaml_text))
    return Executor(flows, inline_tasks=False), flow.namespace, flow.id


def _run_tasks(result: object) -> list[cmd.RunTask]:
    return [c for c in result.commands if isinstance(c, cmd.RunTask)]  # type: ignore[attr-defined]


def test_redelivered_created_event_is_a_no_op() -> None:
    executor, ns, flow_id = _executor()
    created = ev.ExecutionCreated("e1", ns, flow_id)
    first = executor.step(None, created)
    assert first.state is not None
    before = _frozen(first.state)
    again = executor.step(first.state, created)
    assert again.commands == []
    assert _frozen(again.state) == before


def test_redelivered_worker_result_is_a_no_op() -> None:
    executor, ns, flow_id = _executor()
    started = executor.step(None, ev.ExecutionCreated("e1", ns, flow_id))
    (job,) = _run_tasks(started)
    result = ev.WorkerResult("e1", job.task_run_id, job.attempt, S.SUCCESS)
    after_first = executor.step(started.state, result)
    (second_job,) = _run_tasks(after_first)
    snapshot = _frozen(after_first.state)
    redelivered = executor.step(after_first.state, copy.copy(result))
    assert redelivered.commands == []
    assert _frozen(redelivered.state) == snapshot
    assert second_job.task.id == "b"


def test_result_for_an_old_attempt_is_ignored() -> None:
    executor, ns, flow_id = _executor()
    started = executor.step(None, ev.ExecutionCreated("e1", ns, flow_id))
    (job,) = _run_tasks(started)
    stale = ev.WorkerResult("e1", job.task_run_id, job.attempt + 1, S.SUCCESS)
    assert executor.step(started.state, stale).commands == []


def test_execution_ends_once_and_late_events_change_nothing() -> None:
    executor, ns, flow_id = _executor()
    state = None
    event: ev.Event = ev.ExecutionCreated("e1", ns, flow_id)
    terminal_updates = 0
    jobs: list[cmd.RunTask] = []
    results: list[ev.WorkerResult] = []
    while True:
        out = executor.step(state, event)
        state = out.state
        terminal_updates += sum(
            1 for c in out.commands if isinstance(c, cmd.ExecutionChanged) and c.terminal
        )
        jobs.extend(_run_tasks(out))
        if not jobs:
            break
        job = jobs.pop()
        event = ev.WorkerResult("e1", job.task_run_id, job.attempt, S.SUCCESS, {"value": "x"})
        results.append(event)
    assert state is not None and state.state.current is S.SUCCESS
    for late in (*results, ev.Kill("e1"), ev.Resume("e1"), ev.TimerFired("e1", "nope")):
        assert executor.step(state, late).commands == []
    assert terminal_updates == 1


def test_unknown_flow_is_reported_not_run() -> None:
    executor, _, _ = _executor()
    with pytest.raises(UnknownFlow, match=r"missing\.flow"):
        executor.step(None, ev.ExecutionCreated("e1", "missing", "flow"))


def test_events_for_unknown_executions_are_ignored() -> None:
    executor, _, _ = _executor()
    assert executor.step(None, ev.Kill("nope")).commands == []


def test_illegal_transition_is_raised_not_applied() -> None:
    executor, ns, flow_id = _executor()
    out = executor.step(None, ev.ExecutionCreated("e1", ns, flow_id))
    assert out.state is not None
    with pytest.raises(IllegalTransition, match="RUNNING -> CREATED"):
        out.state.state.move_execution(S.CREATED, out.state.state.start, "execution e1")
    assert out.state.state.current is S.RUNNING
