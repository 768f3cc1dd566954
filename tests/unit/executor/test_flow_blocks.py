"""finally, afterExecution, LoopUntil and Dag: the semantics the conformance corpus does not pin
(kills, failing finally tasks, limits, the graph's checks), through the broker-free driver."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.step import Executor
from kestream.models.clock import ManualClock
from kestream.models.execution import Execution, TaskRun
from kestream.models.flow import Flow, parse_flow
from kestream.models.state import StateType
from kestream.models.validation import FlowValidationError
from kestream.tasks.scripts.process import group_alive
from kestream.testing import Driver

S = StateType
NS = "test.blocks"


def _runs(execution: Execution, task_id: str) -> list[TaskRun]:
    return [run for run in execution.taskRunList if run.taskId == task_id]


def _state(execution: Execution, task_id: str) -> StateType:
    (run,) = _runs(execution, task_id)
    return run.state.current


def _history(execution: Execution) -> list[StateType]:
    return [h.state for h in execution.state.histories]


# -- finally ------------------------------------------------------------------------------------

KILLED_IN_SEQUENTIAL = f"""
id: killed
namespace: {NS}
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: wait
        type: io.kestra.plugin.core.flow.Pause
      - id: never
        type: io.kestra.plugin.core.debug.Return
        format: never
    errors:
      - id: on_error
        type: io.kestra.plugin.core.debug.Return
        format: error
    finally:
      - id: inner_cleanup
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ execution.state }}}}"
finally:
  - id: cleanup
    type: io.kestra.plugin.core.debug.Return
    format: cleaned
"""


def test_a_kill_runs_the_finally_blocks_from_the_inside_out() -> None:
    with Driver() as driver:
        driver.deploy(KILLED_IN_SEQUENTIAL)
        paused = driver.start(NS, "killed")
        assert paused.state.current is S.PAUSED
        done = driver.kill(paused.id)
    assert done.state.current is S.KILLED
    assert _history(done)[-2:] == [S.KILLING, S.KILLED]
    assert _state(done, "wait") is S.KILLED
    assert _state(done, "seq") is S.KILLED
    assert not _runs(done, "never") and not _runs(done, "on_error")  # a kill is no error
    (inner,) = _runs(done, "inner_cleanup")
    assert inner.state.current is S.SUCCESS
    assert inner.outputs == {"value": "KILLING"}  # it ran while the execution was KILLING
    assert _state(done, "cleanup") is S.SUCCESS
    order = [run.taskId for run in done.taskRunList]
    assert order.index("inner_cleanup") < order.index("cleanup")


FINALLY_WAITS = f"""
id: finally-waits
namespace: {NS}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
finally:
  - id: slow_cleanup
    type: io.kestra.plugin.core.flow.Pause
  - id: after_it
    type: io.kestra.plugin.core.debug.Return
    format: x
"""


def test_a_second_kill_stops_the_finally_block() -> None:
    with Driver() as driver:
        driver.deploy(FINALLY_WAITS)
        paused = driver.start(NS, "finally-waits")
        killing = driver.kill(paused.id)
        assert killing.state.current is S.KILLING  # its finally waits in a Pause
        assert _state(killing, "slow_cleanup") is S.PAUSED
        done = driver.kill(paused.id)
    assert done.state.current is S.KILLED
    assert _state(done, "slow_cleanup") is S.KILLED
    assert not _runs(done, "after_it")


FINALLY_FAILS = f"""
id: finally-fails
namespace: {NS}
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
finally:
  - id: warn
    type: io.kestra.plugin.core.execution.Fail
    allowFailure: true
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
  - id: skipped_after_failure
    type: io.kestra.plugin.core.debug.Return
    format: x
"""


def test_only_a_failing_finally_task_changes_the_end_state() -> None:
    with Driver() as driver:
        driver.deploy(FINALLY_FAILS)
        done = driver.start(NS, "finally-fails")
    assert _state(done, "warn") is S.WARNING  # a WARNING there changes nothing...
    assert _state(done, "broken") is S.FAILED  # ...a failure fails the execution
    assert done.state.current is S.FAILED
    assert not _runs(done, "skipped_after_failure")  # and stops the block, as errors does


# -- afterExecution -----------------------------------------------------------------------------

AFTER = f"""
id: after
namespace: {NS}
tasks:
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
afterExecution:
  - id: seen
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ execution.state }}}}"
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
  - id: not_reached
    type: io.kestra.plugin.core.debug.Return
    format: x
"""


def test_after_execution_reads_the_end_state_and_never_changes_it() -> None:
    with Driver() as driver:
        driver.deploy(AFTER)
        done = driver.start(NS, "after")
    assert done.state.current is S.FAILED
    assert _history(done).count(S.FAILED) == 1
    (seen,) = _runs(done, "seen")
    assert seen.outputs == {"value": "FAILED"}
    assert seen.state.histories[0].date >= done.state.histories[-1].date  # after the end
    assert _state(done, "broken") is S.FAILED
    assert not _runs(done, "not_reached")


AFTER_WAITS = f"""
id: after-waits
namespace: {NS}
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
afterExecution:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_an_execution_is_over_once_its_after_execution_tasks_are() -> None:
    with Driver() as driver:
        driver.deploy(AFTER_WAITS)
        running = driver.start(NS, "after-waits")
        assert running.state.current is S.SUCCESS
        assert not driver.states[running.id].terminal  # its afterExecution Pause still waits
        done = driver.kill(running.id)
        assert driver.states[running.id].terminal
    assert done.state.current is S.SUCCESS  # the kill reached the afterExecution task only
    assert _state(done, "wait") is S.KILLED


FAILED_AFTER_WAITS = f"""
id: failed-after-waits
namespace: {NS}
tasks:
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
afterExecution:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_a_restart_waits_until_the_after_execution_tasks_have_ended() -> None:
    """A FAILED execution whose afterExecution task still runs is not over: a restart then
    changes nothing (its run is not dropped while it runs); once over, the restart runs."""
    with Driver() as driver:
        driver.deploy(FAILED_AFTER_WAITS)
        failed = driver.start(NS, "failed-after-waits")
        assert failed.state.current is S.FAILED and _state(failed, "wait") is S.PAUSED
        still = driver.restart(failed.id)
        assert not driver.states[failed.id].terminal
        killed = driver.kill(failed.id)
        again = driver.restart(failed.id)
    assert still.state.current is S.FAILED and S.RESTARTED not in _history(still)
    assert still.metadata.attemptNumber == 1
    assert [run.state.current for run in _runs(still, "wait")] == [S.PAUSED]
    assert killed.state.current is S.FAILED and _state(killed, "wait") is S.KILLED
    assert S.RESTARTED in _history(again) and again.metadata.attemptNumber == 2
    assert _state(again, "broken") is S.FAILED
    assert [run.state.current for run in _runs(again, "wait")] == [S.PAUSED]  # ran again


def _after_script(marker: Path) -> str:
    """A flow whose afterExecution task runs on the worker until killed: a shell that writes
    its process group (``$$``: it leads a session of its own) to ``marker``, then sleeps."""
    return f"""
id: after-script
namespace: {NS}
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo $$ > {marker}.tmp && mv {marker}.tmp {marker}
      - sleep 1000
      - echo "never printed"
"""


async def _group_in(marker: Path, within: float = 120.0) -> int:
    """The process group the script wrote, once it has (it runs in the runner meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not marker.exists():
        assert loop.time() < deadline, "the afterExecution script never started"
        await asyncio.sleep(0.02)
    return int(marker.read_text())


def test_a_kill_stops_an_after_execution_task_running_on_the_worker(tmp_path: Path) -> None:
    """The kill reaches the afterExecution task's code (its whole process group stops), its
    task run ends KILLED, and the execution keeps its end state: no KILLING, no KILLED."""
    marker = tmp_path / "group"
    with Driver() as driver:
        driver.deploy(_after_script(marker))

        async def scenario() -> tuple[Execution, Execution, bool, int]:
            execution_id = await driver.acreate(NS, "after-script")
            group = await _group_in(marker)
            running = driver.get(execution_id)
            alive = group_alive(group)
            done = await driver.akill(execution_id)
            await driver.asettle()  # the killed attempt's own result comes back too
            return running, done, alive, group

        running, done, alive, group = driver.drive(scenario())
        messages = [line.message for line in driver.logs(done.id)]
    assert running.state.current is S.SUCCESS and _state(running, "notify") is S.RUNNING
    assert alive  # the script ran when the kill came
    assert not group_alive(group)
    assert done.state.current is S.SUCCESS
    assert S.KILLING not in _history(done) and S.KILLED not in _history(done)
    (notify,) = _runs(done, "notify")
    assert notify.state.current is S.KILLED
    assert notify.attempts is not None and notify.attempts[-1].state.current is S.KILLED
    assert "never printed" not in messages


# -- LoopUntil ----------------------------------------------------------------------------------


def _loop(check: str, *, fail: bool = False) -> str:
    return f"""
id: loop
namespace: {NS}
tasks:
  - id: loop
    type: io.kestra.plugin.core.flow.LoopUntil
    condition: "{{{{ outputs.count.value == 'never' }}}}"
    failOnMaxReached: {str(fail).lower()}
    checkFrequency:
{check}
    tasks:
      - id: count
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ outputs.loop.iterationCount }}}}"
"""


def test_loop_until_waits_the_interval_and_keeps_only_the_last_iteration() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_loop("      interval: PT10S\n      maxIterations: 3"))
        first = driver.start(NS, "loop")
        assert first.state.current is S.RUNNING  # waiting for the interval
        assert _runs(first, "count")[0].outputs == {"value": "1"}
        driver.advance(timedelta(seconds=9))
        assert _runs(driver.get(first.id), "count")[0].outputs == {"value": "1"}
        driver.advance(timedelta(seconds=1))
        second = driver.get(first.id)
        (count,) = _runs(second, "count")  # the first iteration's run was dropped
        assert count.outputs == {"value": "2"}
        driver.advance(timedelta(seconds=10))
        done = driver.get(first.id)
    assert done.state.current is S.SUCCESS  # no failOnMaxReached: the limit ends it well
    assert _runs(done, "loop")[0].outputs == {"iterationCount": 4}
    assert [run.outputs for run in _runs(done, "count")] == [{"value": "3"}]


def test_loop_until_max_duration_fails_with_fail_on_max_reached() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_loop("      interval: PT1M\n      maxDuration: PT90S", fail=True))
        first = driver.start(NS, "loop")
        driver.advance(timedelta(minutes=1))
        assert driver.get(first.id).state.current is S.RUNNING  # 60 s < 90 s: once more
        driver.advance(timedelta(minutes=1))
        done = driver.get(first.id)
    assert done.state.current is S.FAILED  # after the 3rd iteration, 120 s in
    assert _runs(done, "loop")[0].outputs == {"iterationCount": 4}
    assert any("reached its limit" in line.message for line in driver.logs(first.id))


def test_loop_until_check_frequency_is_checked_at_deploy() -> None:
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(_loop("      interval: soon"))
    assert any("interval" in problem.path for problem in caught.value.problems)


# -- Dag ----------------------------------------------------------------------------------------


def _dag(nodes: str, concurrent: int = 0) -> str:
    return f"""
id: dag
namespace: {NS}
tasks:
  - id: dag
    type: io.kestra.plugin.core.flow.Dag
    concurrent: {concurrent}
    tasks:
{nodes}
"""


def _node(task_id: str, *needs: str, task_type: str = "io.kestra.plugin.core.debug.Return") -> str:
    text = f"""      - task:
          id: {task_id}
          type: {task_type}
"""
    if task_type.endswith("Return"):
        text += "          format: x\n"
    if needs:
        text += "        dependsOn:\n" + "".join(f"          - {need}\n" for need in needs)
    return text


def test_a_dag_naming_an_unknown_task_is_refused_at_its_line() -> None:
    source = _dag(_node("a") + _node("b", "a", "ghost"))
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    (problem,) = caught.value.problems
    assert problem.flow == f"{NS}.dag" and problem.task_id == "dag"
    assert "'ghost'" in problem.message and "not a task of this Dag" in problem.message
    assert problem.line is not None
    assert source.splitlines()[problem.line - 1].strip() == "- ghost"


def test_a_dag_with_a_cycle_is_refused_naming_it() -> None:
    source = _dag(_node("a", "c") + _node("b", "a") + _node("c", "b") + _node("d"))
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(source)
    (problem,) = caught.value.problems
    assert "cycle" in problem.message
    assert "'a' -> 'c' -> 'b' -> 'a'" in problem.message
    assert problem.line is not None and problem.path.endswith("dependsOn")


def test_a_task_depending_on_itself_is_a_cycle() -> None:
    with pytest.raises(FlowValidationError, match="cycle: 'a' -> 'a'"):
        parse_flow(_dag(_node("a", "a")))


def test_a_dags_tasks_are_built_like_any_nested_task() -> None:
    defaults = """pluginDefaults:
  - type: io.kestra.plugin.core.log.Log
    values:
      message: from defaults
"""
    log = "          type: io.kestra.plugin.core.log.Log\n"
    nodes = f"      - task:\n          id: a\n{log}"
    flow = parse_flow(_dag(nodes + _node("b", "a")) + defaults)
    dag = flow.tasks[0]
    assert dag.tasks[0].task.message == "from defaults"  # type: ignore[attr-defined]
    assert Flow.model_validate(flow.model_dump()) == flow
    bad = _dag(_node("a") + _node("b", "a").replace("format: x", "format: x\n          nope: 1"))
    dup = bad + "  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: x\n"
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(dup)
    found = {(p.task_id, p.message.split(":")[0]) for p in caught.value.problems}
    assert ("b", "unknown property 'nope'") in found  # named by the nested task itself
    assert ("a", "duplicate task id 'a'") in found


def test_a_dag_failure_stops_what_depends_on_it_and_lets_the_rest_end() -> None:
    fail = "io.kestra.plugin.core.execution.Fail"
    nodes = _node("root") + _node("bad", "root", task_type=fail) + _node("after_bad", "bad")
    nodes += _node("side", "root")
    with Driver() as driver:
        driver.deploy(_dag(nodes))
        done = driver.start(NS, "dag")
    assert done.state.current is S.FAILED
    assert _state(done, "bad") is S.FAILED
    assert not _runs(done, "after_bad")
    assert _state(done, "side") is S.SUCCESS  # started with bad, once root had ended


def test_a_dag_starts_tasks_in_dependency_order_within_its_concurrency() -> None:
    nodes = _node("c", "b") + _node("b", "a") + _node("a") + _node("d", "a")
    with Driver() as driver:
        driver.deploy(_dag(nodes, concurrent=1))
        done = driver.start(NS, "dag")
    assert done.state.current is S.SUCCESS
    order = [run.taskId for run in done.taskRunList][1:]
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("a") < order.index("d")


# -- restart from a snapshot ---------------------------------------------------------------------

RESTART_FINALLY = f"""
id: restart-finally
namespace: {NS}
tasks:
  - id: flaky
    type: io.kestra.plugin.core.execution.Fail
    runIf: "{{{{ taskrun.attemptsCount == 0 }}}}"
  - id: next
    type: io.kestra.plugin.core.debug.Return
    format: x
finally:
  - id: cleanup
    type: io.kestra.plugin.core.debug.Return
    format: x
afterExecution:
  - id: notify
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ execution.state }}}}"
"""


def test_a_restart_from_a_snapshot_runs_finally_and_after_execution_again() -> None:
    with Driver() as driver:
        driver.deploy(RESTART_FINALLY)
        failed = driver.start(NS, "restart-finally")
        assert failed.state.current is S.FAILED
        assert [run.taskId for run in failed.taskRunList] == ["flaky", "cleanup", "notify"]
        snapshot = driver.forget(failed.id)
        done = driver.restart(failed.id, snapshot=snapshot)
    assert done.state.current is S.SUCCESS
    assert [run.taskId for run in done.taskRunList] == ["flaky", "next", "cleanup", "notify"]
    assert _state(done, "flaky") is S.SKIPPED  # its runIf sees the attempt that failed
    assert _runs(done, "notify")[0].outputs == {"value": "SUCCESS"}


# -- finally in a WorkingDirectory ---------------------------------------------------------------

WORKDIR_FINALLY = f"""
id: wd-finally
namespace: {NS}
tasks:
  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [exit 1]
    finally:
      - id: cleanup
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [rm -f data.csv]
"""


def test_finally_tasks_share_the_working_directory_which_is_released_after_them() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(WORKDIR_FINALLY))
    executor = Executor(flows)
    result = executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1))
    st = result.state
    assert st is not None
    (write,) = [c for c in result.commands if isinstance(c, cmd.RunTask)]
    failed = ev.WorkerResult("x1", write.task_run_id, write.attempt, S.FAILED, {}, "exit 1")
    result = executor.step(st, failed)
    (cleanup,) = [c for c in result.commands if isinstance(c, cmd.RunTask)]
    assert cleanup.task.id == "cleanup" and cleanup.workdir == write.workdir is not None
    assert not [c for c in result.commands if isinstance(c, cmd.ReleaseWorkdir)]
    done = ev.WorkerResult("x1", cleanup.task_run_id, cleanup.attempt, S.SUCCESS, {})
    result = executor.step(st, done)
    assert [c.owner_id for c in result.commands if isinstance(c, cmd.ReleaseWorkdir)] == [
        write.workdir.owner_id
    ]
    assert st.state.current is S.FAILED


# -- events that reach an execution after its end -------------------------------------------------

EXIT_WITH_AFTER = f"""
id: exit-after
namespace: {NS}
tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: slow
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [sleep 1]
      - id: stop
        type: io.kestra.plugin.core.execution.Exit
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [echo done]
"""


def test_a_late_result_of_a_task_an_exit_left_running_does_not_end_after_execution() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(EXIT_WITH_AFTER))
    executor = Executor(flows)
    result = executor.step(None, ev.ExecutionCreated("x1", flow.namespace, flow.id, 1))
    st = result.state
    assert st is not None and st.state.current is S.SUCCESS  # the Exit ended it
    jobs = {c.task.id: c for c in result.commands if isinstance(c, cmd.RunTask)}
    assert set(jobs) == {"slow", "notify"}
    slow, notify = jobs["slow"], jobs["notify"]
    late = executor.step(st, ev.WorkerResult("x1", slow.task_run_id, 1, S.FAILED, {}, "late"))
    assert late.commands == [] and not st.terminal  # neither applied nor ending anything
    done = executor.step(st, ev.WorkerResult("x1", notify.task_run_id, 1, S.SUCCESS, {}))
    (change,) = [c for c in done.commands if isinstance(c, cmd.ExecutionChanged)]
    assert change.terminal and st.terminal and st.state.current is S.SUCCESS


SCHEDULED_WITH_FINALLY = f"""
id: scheduled
namespace: {NS}
tasks:
  - id: work
    type: io.kestra.plugin.core.debug.Return
    format: x
finally:
  - id: cleanup
    type: io.kestra.plugin.core.debug.Return
    format: x
"""


def test_killing_an_execution_that_has_not_started_ends_it_at_once() -> None:
    clock = ManualClock()
    flows = FlowRegistry()
    flow = flows.put(parse_flow(SCHEDULED_WITH_FINALLY))
    executor = Executor(flows, clock=clock)
    later = clock() + timedelta(hours=1)
    created = ev.ExecutionCreated("x1", flow.namespace, flow.id, 1, schedule_date=later)
    st = executor.step(None, created).state
    assert st is not None and st.state.current is S.CREATED
    executor.step(st, ev.Kill("x1"))
    assert st.state.current is S.KILLED and st.terminal and not st.task_runs


def test_a_dag_restarted_from_its_snapshot_goes_on_past_the_task_that_failed() -> None:
    flaky = (
        "      - task:\n          id: flaky\n"
        "          type: io.kestra.plugin.core.execution.Fail\n"
        '          runIf: "{{ taskrun.attemptsCount == 0 }}"\n'
        "        dependsOn: [first]\n"
    )
    nodes = _node("first") + flaky + _node("then", "flaky") + _node("side", "first")
    cleanup = "    finally:\n      - id: cleanup\n        type: io.kestra.plugin.core.log.Log\n"
    cleanup += "        message: x\n"  # the Dag's own finally block
    with Driver() as driver:
        driver.deploy(_dag(nodes) + cleanup)
        failed = driver.start(NS, "dag")
        assert failed.state.current is S.FAILED and not _runs(failed, "then")
        snapshot = driver.forget(failed.id)
        done = driver.restart(failed.id, snapshot=snapshot)
    assert done.state.current is S.SUCCESS
    assert _state(done, "flaky") is S.SKIPPED and _state(done, "then") is S.SUCCESS
    assert len(_runs(done, "side")) == 1 and len(_runs(done, "cleanup")) == 1


FINALLY_FAILS_INSIDE = f"""
id: finally-fails-inside
namespace: {NS}
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: ok
        type: io.kestra.plugin.core.debug.Return
        format: ok
    finally:
      - id: broken
        type: io.kestra.plugin.core.execution.Fail
"""


def test_a_restart_runs_again_a_finally_block_that_alone_failed() -> None:
    with Driver() as driver:
        driver.deploy(FINALLY_FAILS_INSIDE)
        failed = driver.start(NS, "finally-fails-inside")
        assert failed.state.current is S.FAILED and _state(failed, "seq") is S.FAILED
        again = driver.restart(failed.id)
    assert again.state.current is S.FAILED  # it ends (again) rather than waiting for nothing
    assert len(_runs(again, "broken")) == 1 and len(_runs(again, "ok")) == 1
    assert _runs(again, "broken")[0].id != _runs(failed, "broken")[0].id


PAUSE_TIMES_OUT = f"""
id: pause-times-out
namespace: {NS}
tasks:
  - id: approve
    type: io.kestra.plugin.core.flow.Pause
    timeout: PT1M
    errors:
      - id: late
        type: io.kestra.plugin.core.debug.Return
        format: late
"""


def test_a_restarted_pause_that_timed_out_waits_again() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(PAUSE_TIMES_OUT)
        paused = driver.start(NS, "pause-times-out")
        driver.advance(timedelta(minutes=1))
        failed = driver.get(paused.id)
        assert failed.state.current is S.FAILED and _state(failed, "late") is S.SUCCESS
        again = driver.restart(paused.id)
    assert again.state.current is S.PAUSED
    assert _state(again, "approve") is S.PAUSED and not _runs(again, "late")


def test_a_kill_ends_a_loop_waiting_for_its_next_iteration_then_runs_finally() -> None:
    cleanup = "finally:\n  - id: cleanup\n    type: io.kestra.plugin.core.debug.Return\n"
    cleanup += "    format: x\n"
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_loop("      interval: PT1M") + cleanup)
        waiting = driver.start(NS, "loop")
        assert waiting.state.current is S.RUNNING
        done = driver.kill(waiting.id)
        assert not driver.states[waiting.id].timers  # the next iteration will not come
    assert done.state.current is S.KILLED
    assert _state(done, "loop") is S.KILLED
    assert _state(done, "cleanup") is S.SUCCESS


def _loop_with_finally(type_name: str, *, flow_finally: bool) -> str:
    """A loop that waits a minute between iterations, with a ``finally`` of its own (and, as a
    control, one at flow level)."""
    flow = f"""
id: loop-finally
namespace: {NS}
tasks:
  - id: loop
    type: {type_name}
    condition: "{{{{ outputs.count.value == 'never' }}}}"
    checkFrequency:
      interval: PT1M
    tasks:
      - id: count
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ outputs.loop.iterationCount }}}}"
    finally:
      - id: loop_cleanup
        type: io.kestra.plugin.core.log.Log
        message: "loop cleanup while {{{{ execution.state }}}}"
"""
    if flow_finally:
        flow += "finally:\n  - id: cleanup\n    type: io.kestra.plugin.core.debug.Return\n"
        flow += "    format: x\n"
    return flow


@pytest.mark.parametrize(
    "type_name", ["io.kestra.plugin.core.flow.LoopUntil", "io.kestra.plugin.core.flow.WaitFor"]
)
@pytest.mark.parametrize("flow_finally", [False, True])
def test_a_kill_between_iterations_runs_the_loops_own_finally(
    type_name: str, flow_finally: bool
) -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_loop_with_finally(type_name, flow_finally=flow_finally))
        waiting = driver.start(NS, "loop-finally")
        assert waiting.state.current is S.RUNNING  # waiting for the interval
        assert not _runs(waiting, "loop_cleanup")
        done = driver.kill(waiting.id)
        assert not driver.states[waiting.id].timers  # the next iteration will not come
        driver.advance(timedelta(minutes=2))
        after = driver.get(waiting.id)
        messages = [line.message for line in driver.logs(waiting.id)]
    assert done.state.current is S.KILLED
    assert _history(done)[-2:] == [S.KILLING, S.KILLED]
    assert _state(done, "loop") is S.KILLED
    assert _state(done, "loop_cleanup") is S.SUCCESS
    assert "loop cleanup while KILLING" in messages
    assert [run.outputs for run in _runs(after, "count")] == [{"value": "1"}]  # no 2nd iteration
    if flow_finally:
        assert _state(done, "cleanup") is S.SUCCESS
        order = [run.taskId for run in done.taskRunList]
        assert order.index("loop_cleanup") < order.index("cleanup")


NESTED_LOOP = f"""
id: nested-loop
namespace: {NS}
tasks:
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: seq
        type: io.kestra.plugin.core.flow.Sequential
        tasks:
          - id: loop
            type: io.kestra.plugin.core.flow.LoopUntil
            condition: "{{{{ outputs.count.value == 'never' }}}}"
            checkFrequency:
              interval: PT1M
            tasks:
              - id: count
                type: io.kestra.plugin.core.debug.Return
                format: "{{{{ outputs.loop.iterationCount }}}}"
            finally:
              - id: loop_cleanup
                type: io.kestra.plugin.core.log.Log
                message: "loop cleanup while {{{{ execution.state }}}}"
        finally:
          - id: seq_cleanup
            type: io.kestra.plugin.core.log.Log
            message: seq cleanup
      - id: other
        type: io.kestra.plugin.core.flow.Pause
finally:
  - id: cleanup
    type: io.kestra.plugin.core.log.Log
    message: flow cleanup
afterExecution:
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: "after {{{{ execution.state }}}}"
"""


def test_a_kill_runs_a_waiting_loops_finally_first_then_its_parents_outward() -> None:
    """A LoopUntil waiting between iterations deep in the tree, a Pause beside it: the kill
    runs the loop's own finally, then its Sequential's, then the flow's, while KILLING; the
    afterExecution task runs after the KILLED end."""
    with Driver(clock=ManualClock()) as driver:
        driver.deploy(NESTED_LOOP)
        waiting = driver.start(NS, "nested-loop")
        assert _state(waiting, "loop") is S.RUNNING and _state(waiting, "other") is S.PAUSED
        done = driver.kill(waiting.id)
        messages = [line.message for line in driver.logs(waiting.id)]
    assert done.state.current is S.KILLED
    assert _history(done)[-2:] == [S.KILLING, S.KILLED]
    for task_id in ("par", "seq", "loop", "other"):
        assert _state(done, task_id) is S.KILLED
    for task_id in ("loop_cleanup", "seq_cleanup", "cleanup", "after"):
        assert _state(done, task_id) is S.SUCCESS
    assert messages == [
        "loop cleanup while KILLING",
        "seq cleanup",
        "flow cleanup",
        "after KILLED",
    ]


PAUSE_WITH_FINALLY = f"""
id: pause-finally
namespace: {NS}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT1M
    tasks:
      - id: after_pause
        type: io.kestra.plugin.core.debug.Return
        format: never
    errors:
      - id: on_error
        type: io.kestra.plugin.core.debug.Return
        format: error
    finally:
      - id: pause_cleanup
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ execution.state }}}}"
"""


def test_a_kill_during_a_pause_delay_runs_the_pauses_own_finally() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(PAUSE_WITH_FINALLY)
        paused = driver.start(NS, "pause-finally")
        assert paused.state.current is S.PAUSED
        done = driver.kill(paused.id)
        assert not driver.states[paused.id].timers  # the delay will not resume it
        driver.advance(timedelta(minutes=2))
        after = driver.get(paused.id)
    assert done.state.current is S.KILLED
    assert _history(done)[-2:] == [S.KILLING, S.KILLED]
    assert _state(done, "wait") is S.KILLED
    (cleanup,) = _runs(done, "pause_cleanup")
    assert cleanup.state.current is S.SUCCESS and cleanup.outputs == {"value": "KILLING"}
    assert not _runs(after, "after_pause") and not _runs(after, "on_error")  # a kill is no error
