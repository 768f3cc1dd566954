"""Kill and Resume carry the execution attempt they were sent to: a replay after a restart
leaves the restarted attempt alone."""

from __future__ import annotations

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records

S = StateType

ONE_TASK = """
id: one
namespace: test.attempts
tasks:
  - id: work
    type: io.kestra.plugin.core.debug.Return
    format: "done"
"""

PAUSED = """
id: paused
namespace: test.attempts
tasks:
  - id: fails
    type: io.kestra.plugin.core.debug.Return
    format: "first"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def _restarted(yaml_text: str, fail_task: str) -> tuple[Executor, ExecutionState, cmd.RunTask]:
    """An execution whose ``fail_task`` failed on a worker, restarted: attempt 2 runs, and
    its job for ``fail_task`` is returned."""
    flows = FlowRegistry()
    flow = flows.put(parse_flow(yaml_text))
    executor = Executor(flows, inline_tasks=False)
    step = executor.step(None, ev.ExecutionCreated("e1", flow.namespace, flow.id))
    (job,) = [c for c in step.commands if isinstance(c, cmd.RunTask)]
    assert job.task.id == fail_task
    failed = executor.step(step.state, ev.WorkerResult("e1", job.task_run_id, 1, S.FAILED))
    assert failed.state is not None and failed.state.state.current is S.FAILED
    restarted = executor.step(failed.state, ev.Restart("e1"))
    st = restarted.state
    assert st is not None and st.attempt_number == 2 and not st.terminal
    (again,) = [c for c in restarted.commands if isinstance(c, cmd.RunTask)]
    return executor, st, again


def test_a_kill_of_an_earlier_attempt_leaves_the_restarted_one_running() -> None:
    executor, st, _ = _restarted(ONE_TASK, "work")
    replayed = executor.step(st, ev.Kill("e1", attempt=1))
    assert replayed.commands == []
    assert st.state.current is S.RUNNING
    killed = executor.step(st, ev.Kill("e1", attempt=2))
    assert killed.state is not None and killed.state.state.current is S.KILLED


def test_a_kill_without_an_attempt_kills_whatever_attempt_runs() -> None:
    executor, st, _ = _restarted(ONE_TASK, "work")
    executor.step(st, ev.Kill("e1"))
    assert st.state.current is S.KILLED


def test_a_resume_of_an_earlier_attempt_leaves_the_later_pause_paused() -> None:
    executor, st, job = _restarted(PAUSED, "fails")
    executor.step(st, ev.WorkerResult("e1", job.task_run_id, job.attempt, S.SUCCESS))
    assert st.state.current is S.PAUSED
    executor.step(st, ev.Resume("e1", attempt=1))
    assert st.state.current is S.PAUSED
    executor.step(st, ev.Resume("e1", attempt=2))
    assert st.state.current is not S.PAUSED


def test_the_attempt_travels_with_kill_and_resume_records() -> None:
    kill = records.decode_event(records.encode_event(ev.Kill("e1", 3)))
    assert kill == ev.Kill("e1", 3)
    resume = records.decode_event(records.encode_event(ev.Resume("e1", {"a": 1}, "run", 2)))
    assert resume == ev.Resume("e1", {"a": 1}, "run", 2)
    legacy = records.decode_event(b'{"type": "kill", "id": "e1"}')  # written before attempts
    assert legacy == ev.Kill("e1", None)
    with pytest.raises(records.RecordError, match="attempt"):
        records.decode_event(b'{"type": "kill", "id": "e1", "attempt": 0}')
