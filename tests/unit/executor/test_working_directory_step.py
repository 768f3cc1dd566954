"""What the executor step sends for a WorkingDirectory: jobs naming the shared directory (inline
tasks excepted), then one ``release`` when the task run ends, also when the execution is killed
(after the kills, so the worker stops the task before removing its directory)."""

from __future__ import annotations

from typing import Any

import orjson

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult
from kestream.models.flow import parse_flow
from kestream.models.state import StateType

S = StateType
FLOW = """id: wd
namespace: test.workdir
tasks:
  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      a.txt: "{{ flow.id }}"
    tasks:
      - id: first
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo one]
      - id: note
        type: io.kestra.plugin.core.log.Log
        message: inline
      - id: second
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo two]
  - id: after
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [echo after]
"""


def _start() -> tuple[Executor, StepResult]:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(FLOW))
    executor = Executor(flows)
    return executor, executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1))


def _jobs(result: StepResult) -> list[cmd.RunTask]:
    return [c for c in result.commands if isinstance(c, cmd.RunTask)]


def _succeed(executor: Executor, st: ExecutionState, job: cmd.RunTask) -> StepResult:
    done = ev.WorkerResult("x1", job.task_run_id, job.attempt, S.SUCCESS, {})
    return executor.step(st, done)


def _owner_id(st: ExecutionState) -> str:
    (owner,) = [tr.id for tr in st.task_runs.values() if tr.task.id == "workdir"]
    return owner


def test_children_name_the_directory_and_its_end_releases_it_once() -> None:
    executor, result = _start()
    st = result.state
    assert st is not None
    (first,) = _jobs(result)
    owner = _owner_id(st)
    assert first.workdir == cmd.SharedWorkdir(owner, {"a.txt": "wd"})
    result = _succeed(executor, st, first)
    (second,) = _jobs(result)  # the Log ran inline in between
    assert second.task.id == "second" and second.workdir == first.workdir
    assert not [c for c in result.commands if isinstance(c, cmd.ReleaseWorkdir)]
    result = _succeed(executor, st, second)
    releases = [c for c in result.commands if isinstance(c, cmd.ReleaseWorkdir)]
    assert releases == [cmd.ReleaseWorkdir("x1", owner, None)]
    (after,) = _jobs(result)
    assert after.task.id == "after" and after.workdir is None


def test_a_kill_releases_the_directory_after_killing_the_running_child() -> None:
    executor, result = _start()
    st = result.state
    assert st is not None
    (first,) = _jobs(result)
    result = executor.step(st, ev.Kill("x1"))
    sent = [c for c in result.commands if isinstance(c, cmd.KillTask | cmd.ReleaseWorkdir)]
    assert sent == [
        cmd.KillTask("x1", first.task_run_id),
        cmd.ReleaseWorkdir("x1", _owner_id(st), None),
    ]
    assert st.state.current is S.KILLED


def _changelog(store: dict[str, Any], st: ExecutionState, result: StepResult) -> None:
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged):
            changed = command.changed_task_runs + command.counters_changed
            for key, value in codec.encode_changes(
                st, changed, created=command.created, new_groups=command.planned
            ):
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = orjson.loads(orjson.dumps(value))


def _json(state: ExecutionState) -> Any:
    """The execution as JSON, without durations (computed from the clock)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(execution_model(state).model_dump(mode="json"))


def test_a_restart_runs_a_failed_working_directory_again_from_its_first_task() -> None:
    """Its directory went with its end: the task that wrote the files must run again too."""
    flows = FlowRegistry()
    flow = flows.put(parse_flow(FLOW))
    executor = Executor(flows)
    store: dict[str, Any] = {}
    result = executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1))
    st = result.state
    assert st is not None
    _changelog(store, st, result)
    (first,) = _jobs(result)
    result = _succeed(executor, st, first)
    _changelog(store, st, result)
    (second,) = _jobs(result)
    result = executor.step(st, ev.WorkerResult("x1", second.task_run_id, 1, S.FAILED, None, "no"))
    _changelog(store, st, result)
    assert st.state.current is S.FAILED
    owner = _owner_id(st)
    assert [c for c in result.commands if isinstance(c, cmd.ReleaseWorkdir)]

    result = executor.step(st, ev.Restart("x1"))
    _changelog(store, st, result)
    (again,) = _jobs(result)
    assert again.task.id == "first"
    assert again.task_run_id not in (first.task_run_id, second.task_run_id)
    assert again.workdir == cmd.SharedWorkdir(owner, {"a.txt": "wd"})
    assert {tr.task.id for tr in st.task_runs.values()} == {"workdir", "first"}
    rebuilt = codec.rebuild("x1", store, flow)
    assert _json(rebuilt) == _json(st)

    state = rebuilt
    for task_id in ("first", "second"):
        (job,) = _jobs(result)
        assert job.task.id == task_id
        result = _succeed(executor, state, job)
    (after,) = _jobs(result)
    result = _succeed(executor, state, after)
    assert state.state.current is S.SUCCESS
    ran = sorted(tr.task.id for tr in state.task_runs.values())
    assert ran == ["after", "first", "note", "second", "workdir"]
